"""From a program to its structure: one traced run, with provenance tracking.

How it works, in four steps (the whole tracing core is this file):

1. Bind the model's arguments. Every float or array argument is wrapped in a
   :class:`ppgen.provenance.TrackedTensor` whose provenance is ``{"@name"}``.
2. Run the program once on Pyro under :class:`_StructureTracer`. At every site the tracer reads
   the provenance of the distribution's parameters (which sites and arguments they were
   computed from), then replaces the site's value by a tracked tensor carrying only the
   site's own name, so downstream sites see *direct* parents only.
3. Classify: sites into latent / observed / param / deterministic / factor; arguments into
   observed data, covariates (per-datum inputs) and hyperparameters (the rest that flow into
   a distribution); plates from each site's ``cond_indep_stack``.
4. Reuse: the structure is kept for the next call of the same program with arguments of the
   same signature (:mod:`ppgen.structure_cache`: shapes and dtypes of arrays, values of plain
   arguments), unless the program read the values of its data in Python or shaped tensors by
   them (:func:`ppgen.provenance.recording_value_reads`). Arguments whose values the trace
   used (a distribution's parameters, a support, a mask, data that other sites read) are keyed
   by their content; observed data are re-bound to the new call (each site's value is a view
   of an argument) and checked again on every call.

Data checks (NaN, values outside a distribution's support, data shapes that disagree with a
plate) and parameter checks (a distribution's arguments inside their constraints) happen here
too, naming the site, because every verb traces the program first. Pyro's own validation is
off during the trace: it would run every check on tracked tensors, at several times the cost.
"""

from __future__ import annotations

import inspect as pyinspect
import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Callable, Iterator, Literal, Optional

import numpy as np
import pyro
import torch
from pyro.ops.provenance import detach_provenance, get_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from pyroapi.dispatch import GenericModule
from torch.distributions import constraints
from torch.distributions.utils import lazy_property

from ppgen._transform_cache import flow_modules
from ppgen.backend import collector_paused, to_backend, to_numpy, torch_precision, use_backend
from ppgen.errors import DataError, ParameterError
from ppgen.primitives import DATA_SITE
from ppgen.provenance import recording_value_reads, track
from ppgen.structure_cache import StructureCache, call_key, content_digest

SiteKind = Literal["latent", "observed", "param", "deterministic", "factor"]
_ARG = "@"  # provenance prefix marking a model argument


@dataclass(frozen=True)
class Support:
    """Where a site's values live: ``finite`` (with ``cardinality`` per element),
    ``infinite-discrete`` (counts) or ``continuous`` (with its constraint)."""

    kind: Literal["finite", "infinite-discrete", "continuous"]
    constraint: str
    cardinality: Optional[int] = None

    def __str__(self) -> str:
        if self.kind == "finite" and self.cardinality is not None:
            return f"finite({self.cardinality})"
        return f"{self.kind}: {self.constraint}"


@dataclass(frozen=True)
class Plate:
    """A plate: ``size`` conditionally independent copies along tensor dimension ``dim``."""

    name: str
    size: int
    dim: Optional[int]
    subsample_size: Optional[int] = None


@dataclass(frozen=True)
class Site:
    """One named site of a program.

    ``plates`` lists the enclosing plates from outermost to innermost. ``parents`` are the
    sites whose values the distribution's parameters or support are computed from (direct
    parents only); ``support_parents`` those its support's bounds are computed from (a
    *dependent support*, such as a flat prior on (0, 1 − a): draws must be mapped through the
    support at each draw); ``arguments`` the model arguments they are computed from. ``distribution_args`` maps each
    distribution parameter (``concentration1``, ``loc``, ...) to the names it comes from, or to
    a short constant, for diagram labels such as ``θ ~ Beta(α, β)``. ``reparameterized``: the
    distribution draws by a differentiable path from its parameters (``rsample``).
    """

    name: str
    kind: SiteKind
    distribution: Optional[str] = None
    support: Optional[Support] = None
    batch_shape: tuple[int, ...] = ()
    event_shape: tuple[int, ...] = ()
    plates: tuple[str, ...] = ()
    parents: tuple[str, ...] = ()
    arguments: tuple[str, ...] = ()
    distribution_args: tuple[tuple[str, str], ...] = ()
    has_data: bool = True
    data_argument: Optional[str] = None
    support_parents: tuple[str, ...] = ()
    reparameterized: bool = False

    @property
    def is_discrete(self) -> bool:
        return self.support is not None and self.support.kind != "continuous"

    @property
    def is_enumerable(self) -> bool:
        """Finite support, one value per element (no event dimensions): enumerable."""
        support = self.support
        return support is not None and support.kind == "finite" and support.cardinality is not None and not self.event_shape


@dataclass(frozen=True)
class Argument:
    """A model argument that flows into the program's distributions.

    ``role`` is ``hyperparameter`` (a fixed float or array, drawn as a small dot),
    ``covariate`` (per-datum input, drawn as a shaded node in its plate) or ``data`` (the
    value of an observed site)."""

    name: str
    role: Literal["hyperparameter", "covariate", "data"]
    feeds: tuple[str, ...]
    shape: tuple[int, ...] = ()
    value: Optional[float] = None


@dataclass(frozen=True)
class ModelStructure:
    """Everything ppgen knows about a program from one traced run."""

    name: str
    sites: dict[str, Site]
    plates: dict[str, Plate]
    arguments: dict[str, Argument] = field(default_factory=dict)
    precision: str = "float64"

    @property
    def hyperparameters(self) -> dict[str, Argument]:
        return {k: a for k, a in self.arguments.items() if a.role == "hyperparameter"}

    @property
    def covariates(self) -> dict[str, Argument]:
        return {k: a for k, a in self.arguments.items() if a.role == "covariate"}

    def of_kind(self, kind: SiteKind) -> dict[str, Site]:
        return {name: site for name, site in self.sites.items() if site.kind == kind}

    # Cached: engines look these up per site, and a long chain has thousands of sites.
    @cached_property
    def latent(self) -> dict[str, Site]:
        return self.of_kind("latent")

    @cached_property
    def observed(self) -> dict[str, Site]:
        return self.of_kind("observed")

    @cached_property
    def params(self) -> dict[str, Site]:
        return self.of_kind("param")

    @property
    def has_modules(self) -> bool:
        """Whether the program registers torch modules (``ppgen.module``): a neural program."""
        return any(site.distribution == "module" for site in self.params.values())

    @property
    def float64(self) -> bool:
        """Whether Pyro engines should run this program in float64 (``torch_precision``): yes,
        unless it ran only in torch's default precision (float32 torch modules)."""
        return self.precision == "float64"

    @property
    def max_plate_nesting(self) -> int:
        dims = [-p.dim for p in self.plates.values() if p.dim is not None]
        return max(dims, default=0)

    def children(self, name: str) -> list[str]:
        return [s.name for s in self.sites.values() if name in s.parents]

    def summary(self) -> str:
        """A plain-text table of sites: kind, distribution, support, plates, parents."""
        rows = [f"{'site':<16} {'kind':<13} {'distribution':<22} {'support':<34} {'plates':<14} parents"]
        for s in self.sites.values():
            rows.append(
                f"{s.name:<16} {s.kind:<13} {s.distribution or '':<22} {str(s.support or ''):<34} "
                f"{','.join(s.plates):<14} {','.join(s.parents)}"
            )
        for a in self.arguments.values():
            rows.append(f"{a.name:<16} {a.role:<13} feeds {', '.join(a.feeds)}")
        return "\n".join(rows)


# --------------------------------------------------------------------------------------------
# Step 1: arguments


def check_model(model: Any) -> None:
    """``TypeError`` unless ``model`` is a program: a Python callable with a signature."""
    if not callable(model):
        raise TypeError(f"model must be a program (a Python function using ppgen.sample), got {type(model).__name__} {model!r}")
    try:
        pyinspect.signature(model)
    except (TypeError, ValueError):
        raise TypeError(f"model {model!r} has no Python signature to bind its arguments to; wrap it in a def") from None


def bind_arguments(model: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The model's arguments by name, defaults applied (``TypeError`` naming a bad one)."""
    check_model(model)
    signature = pyinspect.signature(model)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(f"{_model_name(model)}: {error}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _model_name(model: Callable) -> str:
    return getattr(model, "__name__", type(model).__name__)


def _is_tracked(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return True
    if isinstance(value, (torch.Tensor, np.ndarray)) or type(value).__module__.startswith("jax"):
        return True
    return False


def _check_argument(name: str, value: Any, default: Any) -> None:
    """``DataError`` for an argument no program can use: an array of strings, objects or
    complex numbers, or an empty array or list (given explicitly: an empty default is the
    program's own choice). Such data would otherwise fail deep inside the program, or, with
    a size read from the data (``T = len(x)``), run silently on no data at all."""
    if value is default or isinstance(value, (str, bytes)):
        return
    if _is_empty(value):
        raise DataError(f"argument {name!r} is empty (shape {np.shape(to_numpy(value))}); pass at least one value")
    if isinstance(value, np.ndarray) or _is_tracked(value) and not isinstance(value, float):
        dtype = np.asarray(to_numpy(value)).dtype if not isinstance(value, np.ndarray) else value.dtype
        if dtype.kind not in _NUMERIC_KINDS:
            kind = "complex numbers" if dtype.kind == "c" else f"values of dtype {dtype}"
            raise DataError(f"argument {name!r} holds {kind}; a distribution takes an array of real numbers")


def _track(name: str, value: Any) -> Any:
    tensor = torch.tensor(value) if isinstance(value, float) else to_backend(value, "pyro")
    return track(tensor, frozenset({_ARG + name}))


_NUMERIC_KINDS = "biuf"  # NumPy dtype kinds a distribution can take: bool, int, unsigned, float
_LIST_LIKE = (list, tuple, int, float, np.number, np.bool_)  # observed data ppgen turns into arrays


def _data_argument_of(value: Any, arguments: dict[str, Any]) -> Optional[str]:
    """The name of the model argument that *is* ``value`` (by identity), if any."""
    return next((name for name, argument in arguments.items() if argument is value), None)


def _observed_tensor(site: str, value: Any, argument: Optional[str]) -> torch.Tensor:
    """Observed data given as a list, tuple or Python number, as a tensor for the trace;
    ``DataError`` naming the site (and argument) for anything that is not numbers."""
    source = f" (argument {argument!r})" if argument else ""
    expected = "a NumPy array, a tensor or a (nested) list of numbers"
    if not (isinstance(value, _LIST_LIKE) or _is_tracked(value)):
        raise DataError(f"site {site!r}: observed data{source} must be {expected}, got {type(value).__name__} {_short(value)}")
    try:
        array = np.asarray(value)
    except ValueError:  # NumPy refuses ragged lists
        raise DataError(f"site {site!r}: observed data{source} is a ragged list; every row must have the same length") from None
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise DataError(f"site {site!r}: observed data{source} must be {expected}, got a list holding {array.dtype} values")
    return torch.as_tensor(array)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def with_array_data(model: Callable, args: tuple, kwargs: dict, structure: "ModelStructure") -> tuple[tuple, dict, bool]:
    """``args`` and ``kwargs`` with each observed site's data argument given as a list (or a
    Python number) replaced by ``np.asarray`` of it, so every engine receives arrays; and
    whether anything was converted. The tracer has already checked such data are numbers."""
    data_arguments = {site.data_argument for site in structure.observed.values() if site.data_argument}
    bound = bind_arguments(model, args, kwargs)
    convert = {name for name in data_arguments if isinstance(bound.get(name), _LIST_LIKE) and not isinstance(bound.get(name), (float, np.floating))}
    if not convert:
        return args, kwargs, False
    names = [n for n, p in pyinspect.signature(model).parameters.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    args = tuple(np.asarray(value) if index < len(names) and names[index] in convert else value for index, value in enumerate(args))
    kwargs = {key: np.asarray(value) if key in convert else value for key, value in kwargs.items()}
    return args, kwargs, True


# --------------------------------------------------------------------------------------------
# Step 2: the tracer


_WRAPPERS = ("Independent", "MaskedDistribution", "ExpandedDistribution")


def _unwrap(fn: Any) -> Any:
    """The distribution inside ``.to_event`` / ``.mask`` / ``.expand`` wrappers."""
    while type(fn).__name__ in _WRAPPERS:
        fn = fn.base_dist
    return fn


def _distribution_args(fn: Any) -> dict[str, Any]:
    """The arguments the distribution was built with: recorded at construction when the
    program used ``ppgen.dist`` (see ``_recording_distributions``), otherwise read back from
    its parameters (lazily derived ones left out)."""
    base = _unwrap(fn)
    recorded = getattr(base, "_ppgen_arguments", None)
    if recorded is not None:
        return dict(recorded)
    out = {}
    for key in getattr(base, "arg_constraints", {}):
        if _derived_lazily(base, key):
            continue  # logits when the program gave probs
        try:
            out[key] = getattr(base, key)
        except (AttributeError, NotImplementedError):
            continue
    if type(base).__name__ == "Unit":
        out["log_factor"] = base.log_factor
    return out


def _derived_lazily(base: Any, key: str) -> bool:
    """Whether parameter ``key`` of ``base`` is a lazy_property the program did not give."""
    return key not in base.__dict__ and isinstance(getattr(type(base), key, None), lazy_property)


def _check_parameters(name: str, fn: Any) -> None:
    """Each parameter of the site's distribution inside its constraint (torch's argument
    validation, run on plain tensors and naming the site and the arguments it came from)."""
    base = _unwrap(fn)
    for key, constraint in getattr(base, "arg_constraints", {}).items():
        if constraints.is_dependent(constraint) or _derived_lazily(base, key):
            continue
        try:
            value = getattr(base, key)
        except (AttributeError, NotImplementedError):
            continue
        if not isinstance(value, torch.Tensor):
            continue
        plain = detach_provenance(value)
        valid = constraint.check(plain)
        if bool(torch.all(valid)):
            continue
        given = _distribution_args(fn).get(key, value)  # before broadcasting with the other arguments
        sources = sorted(p[1:] for p in _provenance(given) if p.startswith(_ARG))
        origin = f" (computed from argument{'s' if len(sources) > 1 else ''} {', '.join(map(repr, sources))})" if sources else ""
        index = tuple(int(i) for i in torch.nonzero(~valid)[0]) if valid.dim() else ()
        offending = plain[index] if index else plain
        where = f" at index {index}" if index else ""
        raise ParameterError(
            f"site {name!r}: parameter {key!r} of {type(base).__name__}{origin} must satisfy {constraint!r}, "
            f"but is {offending.flatten()[:5].tolist() if offending.dim() else float(offending)}{where}"
        )


def _describe_constant(value: Any) -> str:
    """A constant argument as a diagram shows it: the number if all elements are equal."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    if isinstance(value, torch.Tensor) and value.numel() > 0:
        value = detach_provenance(value).detach()  # a network output may require grad
        first = value.reshape(-1)[0]
        if bool((value == first).all()):
            return f"{float(first):g}"
    return "·"


def _provenance(value: Any) -> frozenset:
    """Provenance of a tensor, of the tensors inside a list/tuple argument, or of the arguments
    of a distribution argument (a ``TransformedDistribution``'s base, whose location may come
    from an encoder)."""
    if isinstance(value, torch.Tensor):
        return get_provenance(value)
    if isinstance(value, (list, tuple)):
        return frozenset().union(*(_provenance(item) for item in value))
    if isinstance(value, torch.distributions.Distribution):
        return frozenset().union(*(_provenance(item) for item in _distribution_args(value).values()))
    return frozenset()


def _wrapper_provenance(fn: Any) -> frozenset:
    """Provenance of the tensors of ``.mask`` / ``.expand`` / ``.to_event`` wrappers (a mask
    computed from the data)."""
    sources: frozenset = frozenset()
    while type(fn).__name__ in _WRAPPERS:
        for value in vars(fn).values():
            if isinstance(value, torch.Tensor):
                sources |= get_provenance(value)
        fn = fn.base_dist
    return sources


def _support_provenance(constraint: Any) -> frozenset:
    """Provenance of the tensors a support is built from: the bounds of
    ``interval(0, 1 - a)``, through ``independent``/``to_event`` wrappers."""
    sources: frozenset = frozenset()
    for value in vars(constraint).values() if constraint is not None else ():
        if isinstance(value, torch.Tensor):
            sources |= get_provenance(value)
        elif isinstance(value, constraints.Constraint):
            sources |= _support_provenance(value)
    return sources


def _declared_support(fn: Any) -> Optional[constraints.Constraint]:
    """``fn.support``, or None for a distribution that does not declare one (torch's default
    raises NotImplementedError; Pyro scores such a distribution all the same)."""
    try:
        return fn.support
    except NotImplementedError:
        return None


def support_of(fn: Any, enumerate_support: bool = True) -> Support:
    """Classify a distribution's support.

    A discrete support is ``finite`` when the distribution can enumerate it. Its
    ``cardinality`` K is read from ``enumerate_support`` only when asked to (a latent site;
    an observed site's support is never enumerated), and only when it is one K for every
    element: a latent whose support is not one set (a Binomial whose ``total_count`` differs
    per element) is ``infinite-discrete``, a count that engines sample rather than sum out.
    """
    base = _unwrap(fn)
    constraint = _declared_support(fn)
    if constraint is None:
        return Support("continuous", "undeclared")
    name = repr(constraint)
    if not getattr(constraint, "is_discrete", False):
        return Support("continuous", name)
    if not getattr(base, "has_enumerate_support", False):
        return Support("infinite-discrete", name)
    if not enumerate_support:
        return Support("finite", name)
    try:
        cardinality = int(base.enumerate_support(expand=False).shape[0])
    except (NotImplementedError, ValueError, RuntimeError):  # no single support to enumerate
        return Support("infinite-discrete", name)
    return Support("finite", name, cardinality)


class _StructureTracer(Messenger):
    """Records sites, the provenance of their distributions' parameters, and plates."""

    def __init__(self, arguments: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        self.arguments = arguments or {}  # the values the program was called with, by name
        self.records: dict[str, dict[str, Any]] = {}
        self.plates: dict[str, Plate] = {}
        self._hooks: list[Any] = []
        self.value_reads: list[str] = []  # operations that read the values of a tracked tensor
        self.tracked: dict[str, Any] = {}  # the arguments as the program received them
        self.module_dtypes: set[torch.dtype] = set()  # of the registered modules' parameters
        self.modules: dict[str, torch.nn.Module] = {}  # registered by ppgen.module, by name

    def register_module(self, name: str, nn_module: torch.nn.Module) -> None:
        """Called by ``ppgen.module``: make the module's outputs carry provenance ``{name}``."""

        def tag(value):
            if isinstance(value, torch.Tensor):
                return track(value, get_provenance(value) | {name})
            return value

        def hook(_module, _inputs, output):
            if isinstance(output, (tuple, list)):  # e.g. an encoder returning (loc, scale)
                return type(output)(tag(item) for item in output)
            return tag(output)

        self._hooks.append(nn_module.register_forward_hook(hook))
        self.modules[name] = nn_module
        self.module_dtypes.update(p.dtype for p in nn_module.parameters() if p.is_floating_point())
        self.records.setdefault(name, {"kind": "param", "name": name, "module": True, "sources": frozenset()})

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()

    def _record_plates(self, msg: dict) -> tuple[str, ...]:
        frames = [f for f in msg["cond_indep_stack"] if f.name is not None]
        frames.sort(key=lambda f: f.dim if f.dim is not None else -10_000)
        for f in frames:
            full_size = f.full_size if f.full_size is not None else f.size
            subsample = f.size if f.size != full_size else None
            self.plates.setdefault(f.name, Plate(f.name, int(full_size), f.dim, subsample))
        return tuple(f.name for f in frames)

    def _pyro_sample(self, msg: dict) -> None:
        fn = msg["fn"]
        if not site_is_subsample(msg):
            if msg["name"] in self.records:
                # Pyro would say so only later, with a trace dump; NumPyro not at all.
                raise ValueError(
                    f"two sites of the program are named {msg['name']!r}: every site needs its own name "
                    f"(in a loop, number them, e.g. f\"{msg['name']}_{{i}}\")"
                )
            if msg["is_observed"] and not isinstance(msg["value"], torch.Tensor):
                argument = _data_argument_of(msg["value"], self.arguments)
                tensor = _observed_tensor(msg["name"], msg["value"], argument)
                msg["value"] = track(tensor, frozenset({_ARG + argument})) if argument else tensor
            _check_parameters(msg["name"], fn)
        # A flat prior (ImproperUniform) cannot be sampled: trace it at a point of its support.
        if msg["value"] is None and not msg["is_observed"] and type(_unwrap(fn)).__name__ == "ImproperUniform":
            transform = torch.distributions.biject_to(fn.support)
            shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
            msg["value"] = transform(torch.zeros(transform.inverse_shape(shape)))
            msg["done"] = True

    def _pyro_post_sample(self, msg: dict) -> None:
        name = msg["name"]
        fn = msg["fn"]
        if site_is_subsample(msg):
            return
        if msg["infer"].get("_deterministic"):
            kind: SiteKind = "deterministic"
        elif type(_unwrap(fn)).__name__ == "Unit":
            kind = "factor"
        elif msg["is_observed"] or msg["infer"].get(DATA_SITE):
            kind = "observed"
        else:
            kind = "latent"
        arg_sources = {}
        if kind == "deterministic":
            arg_sources["value"] = get_provenance(msg["value"])
        else:
            for key, value in _distribution_args(fn).items():
                arg_sources[key] = _provenance(value)
            transform_owners = flow_modules(fn, self.modules) if self.modules else set()
            if transform_owners:  # x = f_θ(z₀): θ is a parent though f runs only when x is scored
                arg_sources["transform"] = frozenset(transform_owners)
        value_provenance = get_provenance(msg["value"]) if isinstance(msg["value"], torch.Tensor) else frozenset()
        data_argument = next((p[1:] for p in value_provenance if p.startswith(_ARG)), None)
        plain_value = detach_provenance(msg["value"])
        self.records[name] = {
            "name": name,
            "kind": kind,
            "fn": fn,
            "value": plain_value,
            "plates": self._record_plates(msg),
            "arg_sources": arg_sources,
            "distribution_args": _distribution_args(fn) if kind != "deterministic" else {},
            "support_sources": _support_provenance(_declared_support(fn)) if kind == "latent" else frozenset(),
            "has_data": bool(msg["is_observed"]) if kind == "observed" else True,
            "data_argument": data_argument if kind == "observed" else None,
            "value_sources": value_provenance if kind == "observed" else frozenset(),
            "wrapper_sources": _wrapper_provenance(fn),
        }
        if isinstance(plain_value, torch.Tensor):
            msg["value"] = track(plain_value, frozenset({name}))

    def _pyro_post_param(self, msg: dict) -> None:
        name = msg["name"]
        if "$$$" in name:  # a torch module's parameter: grouped under the module's name
            module_name = name.split("$$$")[0]
            msg["value"] = track(msg["value"], frozenset({module_name}))
            return
        sources = get_provenance(msg["value"])  # an initial value computed from the arguments
        value = detach_provenance(msg["value"])
        self.records[name] = {"name": name, "kind": "param", "value": value, "plates": (), "arg_sources": {}, "init_sources": sources}
        msg["value"] = track(value, frozenset({name}))


@contextmanager
def _recording_distributions() -> Iterator[None]:
    saved = GenericModule.current_backend["distributions"]
    GenericModule.current_backend["distributions"] = "ppgen._recording_distributions"
    try:
        yield
    finally:
        GenericModule.current_backend["distributions"] = saved


def trace_model(model: Callable, args: tuple = (), kwargs: Optional[dict] = None, seed: int = 0):
    """Run ``model`` once on Pyro with provenance tracking; return (tracer, bound arguments).

    Arguments no program can use (empty, strings, objects, complex numbers) are refused first
    (:func:`_check_argument`). A program that then fails on its data (a value outside the
    support or a NaN used as an index, a list where it expects an array) fails with an error
    naming the site or argument, not deep inside the program (:func:`_blame_data`,
    :func:`_blame_arguments`).
    """
    bound = bind_arguments(model, args, kwargs or {})
    defaults = {name: parameter.default for name, parameter in pyinspect.signature(model).parameters.items()}
    for name, value in bound.items():
        _check_argument(name, value, defaults.get(name))
    tracers: list[_StructureTracer] = []
    try:
        return _trace(model, bound, seed, tracers), bound
    except (DataError, ParameterError):
        raise
    except Exception as error:
        blamed = _blame_data(tracers[-1], error) if tracers else None
        blamed = blamed or _blame_arguments(_model_name(model), bound, error)
        if blamed is None:
            raise
        raise blamed from None


def _trace(model: Callable, bound: dict[str, Any], seed: int, tracers: list) -> "_StructureTracer":
    for precision in (torch.float64, torch.get_default_dtype()):
        tracer = _StructureTracer(bound)
        tracers.append(tracer)
        with use_backend("pyro"), _recording_distributions(), torch_precision(precision), torch.random.fork_rng(), pyro.get_param_store().scope(), torch.no_grad(), pyro.validation_enabled(False):
            tracked = {name: (_track(name, value) if _is_tracked(value) else value) for name, value in bound.items()}
            torch.manual_seed(seed)
            try:
                with tracer, recording_value_reads() as tracer.value_reads:
                    _call_with_bound(model, tracked)
                if precision == torch.float64 and tracer.module_dtypes - {torch.float64}:
                    # a float32 module the trace did not call (a flow's transform, run only
                    # when a density is scored) cannot take float64 inputs either
                    continue
                tracer.tracked = tracked
                tracer.precision = str(precision).replace("torch.", "")
                return tracer
            except RuntimeError as error:
                # float32 torch modules cannot take float64 inputs: run in their precision
                if precision != torch.float64 or "dtype" not in str(error) and "Double" not in str(error):
                    raise
            finally:
                tracer.remove_hooks()
    raise AssertionError("unreachable")


def _blame_data(tracer: "_StructureTracer", error: Exception) -> Optional[DataError]:
    """The data error behind ``error``, which the program raised while tracing, if the data
    observed so far explain it: a site's data fail its checks (the program used a value
    outside the support, say as an index, before the trace ended), or a data argument holds
    a value outside the support of a site that observes it."""
    failure = f"{type(error).__name__}: {error}"
    observed = [r for r in tracer.records.values() if r["kind"] == "observed" and r["has_data"]]
    for record in observed:
        try:
            _check_data(record, tracer.plates)
        except DataError as data_error:
            return DataError(f"{data_error}; the program failed on it ({failure})")
    for record in observed:
        argument = record.get("data_argument")
        support = _declared_support(record["fn"])
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        value = tracer.arguments.get(argument) if argument else None
        if support is None or constraints.is_dependent(support) or support.event_dim or not _is_tracked(value):
            continue
        data = torch.as_tensor(np.asarray(to_numpy(value), dtype=np.float64))
        inside = support.check(data)
        if not bool(torch.all(inside)):
            index = tuple(int(i) for i in torch.nonzero(~inside)[0]) if inside.dim() else ()
            return DataError(
                f"argument {argument!r} holds {float(data[index]):g} at index {index}, outside the support of site "
                f"{record['name']!r} ({type(_unwrap(record['fn'])).__name__}, {support!r}) that observes it; the program "
                f"failed on it ({failure})"
            )
    return None


def _blame_arguments(model_name: str, bound: dict[str, Any], error: Exception) -> Optional[Exception]:
    """The error to raise instead of ``error``, which the program raised while tracing, when
    an argument explains it, or None: NaN or ±inf (used as an index, a size), a list or string
    where the program needs an array (it asked for an attribute only arrays have), or a plate
    of size 0 (empty data the program sized a plate from)."""
    failure = f"{type(error).__name__}: {error}"
    for name, value in bound.items():
        if _is_tracked(value) and not isinstance(value, float):
            array = np.asarray(to_numpy(value))
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
                what = "NaN" if np.isnan(array).any() else "inf"
                return DataError(f"{model_name}: argument {name!r} contains {what} (first at index {index}), on which the program failed ({failure})")
    if isinstance(error, (AttributeError, TypeError)):
        for name, value in bound.items():
            if isinstance(value, (list, tuple, str, dict)) and f"'{type(value).__name__}' object" in str(error):
                return TypeError(
                    f"{model_name}: argument {name!r} is a {type(value).__name__}, but the program uses it as an array "
                    f"({failure}); pass a NumPy array of numbers"
                )
    plate = _empty_plate(error) if isinstance(error, ZeroDivisionError) else None
    if plate is not None:
        return DataError(f"{model_name}: plate {plate!r} has size 0; the program needs at least one data point")
    return None


def _empty_plate(error: Exception) -> Optional[str]:
    """The name of the plate whose size was 0, if ``error`` is Pyro's complaint about one."""
    from pyro.poutine.indep_messenger import IndepMessenger

    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code is IndepMessenger.__init__.__code__:
            return str(frame.tb_frame.f_locals.get("name"))
        frame = frame.tb_next
    return None


def _is_empty(value: Any) -> bool:
    """An array, list or tuple without elements."""
    if isinstance(value, (list, tuple)):
        return len(value) == 0
    return _is_tracked(value) and not isinstance(value, float) and int(np.prod(np.shape(value))) == 0


def _call_with_bound(model: Callable, bound: dict[str, Any]) -> Any:
    signature = pyinspect.signature(model)
    args, kwargs = [], {}
    for name, parameter in signature.parameters.items():
        if name not in bound:
            continue
        if parameter.kind == parameter.VAR_POSITIONAL:
            args.extend(bound[name])
        elif parameter.kind == parameter.VAR_KEYWORD:
            kwargs.update(bound[name])
        elif parameter.kind == parameter.KEYWORD_ONLY:
            kwargs[name] = bound[name]
        else:
            args.append(bound[name])
    return model(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# Step 3: classification and checks


def _check_data(record: dict, plates: dict[str, Plate]) -> None:
    name, fn, value = record["name"], record["fn"], record["value"]
    if not isinstance(value, torch.Tensor):
        return
    if value.dtype == torch.bool or value.is_complex():
        kind = "bool" if value.dtype == torch.bool else "complex"
        raise DataError(
            f"site {name!r}: observed data are {kind} ({value.dtype}); {type(_unwrap(fn)).__name__} scores real "
            f"numbers: pass x.astype(float)" + (" (or its real part)" if kind == "complex" else "")
        )
    if value.numel() == 0:
        raise DataError(f"site {name!r}: observed data are empty (shape {tuple(value.shape)}); pass at least one value")
    if value.is_floating_point() and not torch.isfinite(value).all():
        # No distribution scores ±inf: a Normal's support check (x == x) lets it through,
        # and the engine would then fail with a NaN far from the cause.
        what, bad = ("NaN", torch.isnan(value)) if torch.isnan(value).any() else ("inf", torch.isinf(value))
        index = tuple(int(i) for i in torch.nonzero(bad)[0]) if value.dim() else ()
        raise DataError(f"site {name!r}: observed data contains {what} (first at index {index})")
    expected = tuple(fn.batch_shape) + tuple(fn.event_shape)
    missing = _missing_plate_dims(value, fn, record["plates"], plates)
    if missing:
        raise DataError(
            f"site {name!r}: data of shape {tuple(value.shape)} does not match the site's shape {expected}; {missing}"
        )
    if tuple(value.shape) != expected:
        try:
            broadcast = torch.broadcast_shapes(value.shape, expected) == expected
        except RuntimeError:
            broadcast = False
        if not broadcast:
            hint = ""
            for plate_name in record["plates"]:
                plate = plates[plate_name]
                if plate.dim is not None and len(expected) >= -plate.dim + len(fn.event_shape):
                    position = plate.dim - len(fn.event_shape)
                    size = plate.subsample_size or plate.size
                    if len(value.shape) >= -position and value.shape[position] != size:
                        hint = f"; plate {plate_name!r} has size {size} but the data has {value.shape[position]} along dim {position}"
            raise DataError(
                f"site {name!r}: data of shape {tuple(value.shape)} does not match the site's shape {expected}{hint}"
            )
    support = _declared_support(fn)
    if support is None or constraints.is_dependent(support):
        return  # a support the distribution does not state cannot be checked
    inside = support.check(value)
    if not bool(torch.all(inside)):
        bad = torch.nonzero(~inside)[0] if inside.dim() else torch.tensor([])
        index = tuple(int(i) for i in bad)
        offending = value[index] if index else value
        if offending.dim():
            offending = offending.flatten()[0]
        raise DataError(
            f"site {name!r}: observed value {float(offending):g} at index {index} is outside the support "
            f"of {type(_unwrap(fn)).__name__} ({fn.support!r})"
        )


def _missing_plate_dims(value: torch.Tensor, fn: Any, plate_names: tuple[str, ...], plates: dict[str, Plate]) -> Optional[str]:
    """Why ``value`` only fits a site inside a plate by broadcasting along the plate (a single
    value where the plate needs one per element), or None. Such data would be silently
    repeated across the plate."""
    event_dims = len(fn.event_shape)
    for plate_name in plate_names:
        plate = plates[plate_name]
        size = plate.subsample_size or plate.size
        if plate.dim is None or size == 1:
            continue
        position = plate.dim - event_dims
        if value.dim() < -position or value.shape[position] == 1:
            return f"plate {plate_name!r} has size {size} but the data have no dimension {position} of that size"
    return None


def _site_from_record(record: dict, bound: dict[str, Any]) -> Site:
    kind = record["kind"]
    if kind == "param":
        shape = tuple(record["value"].shape) if isinstance(record.get("value"), torch.Tensor) else ()
        return Site(record["name"], "param", distribution="module" if record.get("module") else None, batch_shape=shape)
    sources = frozenset().union(*record["arg_sources"].values()) if record["arg_sources"] else frozenset()
    support_parents = tuple(sorted(p for p in record.get("support_sources", ()) if not p.startswith(_ARG) and p != record["name"]))
    parents = tuple(sorted({p for p in sources if not p.startswith(_ARG) and p != record["name"]} | set(support_parents)))
    arguments = tuple(sorted(p[1:] for p in sources if p.startswith(_ARG)))
    described = []
    for key, provenance in record["arg_sources"].items():
        names = sorted(p[1:] if p.startswith(_ARG) else p for p in provenance)
        if names:
            described.append((key, ", ".join(names) if len(names) == 1 else f"f({', '.join(names)})"))
        else:
            described.append((key, _describe_constant(record["distribution_args"].get(key))))
    fn = record["fn"]
    distribution = None if kind == "deterministic" else type(_unwrap(fn)).__name__
    support = None if kind in ("deterministic", "factor") else support_of(fn, enumerate_support=kind == "latent")
    return Site(
        name=record["name"],
        kind=kind,
        distribution=distribution,
        support=support,
        batch_shape=tuple(fn.batch_shape),
        event_shape=tuple(fn.event_shape),
        plates=record["plates"],
        parents=parents,
        arguments=arguments,
        distribution_args=tuple(described),
        has_data=record["has_data"],
        data_argument=record.get("data_argument"),
        support_parents=support_parents,
        reparameterized=bool(getattr(fn, "has_rsample", False)),
    )


def _classify_arguments(sites: dict[str, Site], plates: dict[str, Plate], bound: dict[str, Any]) -> dict[str, Argument]:
    data_args = {s.data_argument for s in sites.values() if s.data_argument}
    feeds: dict[str, list[str]] = {}
    for site in sites.values():
        for arg in site.arguments:
            feeds.setdefault(arg, []).append(site.name)
    out = {}
    for name, value in bound.items():
        if not _is_tracked(value):
            continue
        shape = tuple(np.shape(value)) if not isinstance(value, float) else ()
        fed = tuple(feeds.get(name, ()))
        if name in data_args:
            role = "data"
        elif not fed:
            continue
        else:
            plate_sizes = {plates[p].size for site in fed for p in sites[site].plates}
            role = "covariate" if shape and any(d in plate_sizes for d in shape) else "hyperparameter"
        scalar = float(np.asarray(to_numpy(value)).reshape(-1)[0]) if int(np.prod(shape)) == 1 else None
        out[name] = Argument(name, role, fed, shape, scalar)
    return out


_known_structure: ContextVar[Optional[tuple[Callable, tuple, dict, ModelStructure]]] = ContextVar("known_structure", default=None)


@contextmanager
def known_structure(structure: ModelStructure, model: Callable, args: tuple, kwargs: dict) -> Iterator[None]:
    """Within this block, :func:`inspect` of ``model`` on these very argument objects returns
    ``structure`` instead of tracing again. A verb traces the program to check the engine
    applies; the engine then asks for the structure of the same call."""
    token = _known_structure.set((model, args, kwargs, structure))
    try:
        yield
    finally:
        _known_structure.reset(token)


def _same_call(known: tuple[Callable, tuple, dict, ModelStructure], model: Callable, args: tuple, kwargs: dict) -> bool:
    known_model, known_args, known_kwargs, _ = known
    return (
        model is known_model
        and len(args) == len(known_args)
        and all(a is b for a, b in zip(args, known_args))
        and kwargs.keys() == known_kwargs.keys()
        and all(kwargs[key] is known_kwargs[key] for key in kwargs)
    )


def inspect(model: Callable, *args: Any, **kwargs: Any) -> ModelStructure:
    """Trace ``model(*args, **kwargs)`` once and return its :class:`ModelStructure`.

    Observed data are checked on the way: NaN, values outside the support of the site's
    distribution and shapes that disagree with a plate raise :class:`ppgen.DataError` naming
    the site.

    A later call of the same program with arguments of the same signature reuses the traced
    structure (step 4 above; ``structure_cache().statistics`` counts traces and reuses): its
    data are checked again, and it is traced afresh if the program read the values of its
    data when traced, or if the values of an argument its distributions' parameters came from
    changed.

    Examples
    --------
    >>> from ppgen.models.basics import coin
    >>> structure = inspect(coin, [1, 0, 1])
    >>> structure.sites["rho"].support.constraint
    'Interval(lower_bound=0.0, upper_bound=1.0)'
    """
    known = _known_structure.get()
    if known is not None and _same_call(known, model, args, kwargs):
        return known[3]
    key = call_key(model, args, kwargs)
    entry = _STRUCTURES.get(model, key) if key is not None else None
    if entry is not None:
        bound = bind_arguments(model, args, kwargs)
        with collector_paused():
            structure = entry.reuse(bound)
        if structure is not None:
            _STRUCTURES.statistics.reuses += 1
            return structure
        _STRUCTURES.discard(model, key)
    with collector_paused():
        tracer, bound = trace_model(model, args, kwargs)
        _STRUCTURES.statistics.traces += 1
        plates = tracer.plates
        sites: dict[str, Site] = {}
        for record in tracer.records.values():
            if record["kind"] == "observed" and record["has_data"]:
                _check_data(record, plates)
            sites[record["name"]] = _site_from_record(record, bound)
        arguments = _classify_arguments(sites, plates, bound)
        structure = ModelStructure(_model_name(model), sites, dict(plates), arguments, tracer.precision)
        if key is not None:
            entry = _ReusableStructure.from_trace(structure, tracer, bound)
            if entry is not None:
                _STRUCTURES.put(model, key, entry)
    return structure


# --------------------------------------------------------------------------------------------
# Step 4: reuse across calls


@dataclass(frozen=True)
class _ObservedBinding:
    """How to find an observed site's value in a new call: the site's record, and the view
    (size, stride, storage offset) of argument ``argument`` its value was, when the argument's
    own layout was ``argument_layout``. ``argument`` None: the value is a constant of the call
    signature (computed from plain arguments or in the program) and is kept in the record."""

    record: dict
    argument: Optional[str] = None
    view: tuple = ()
    argument_layout: tuple = ()


@dataclass(frozen=True)
class _ReusableStructure:
    """A traced structure, with what a new call of the same signature must redo: the data
    checks on the new observed values, the digest of each argument whose values the trace
    depended on (distribution parameters, supports, masks, deterministic values, param
    initial values, observed values that other sites read), and the arguments' classification
    (which holds scalar values)."""

    structure: ModelStructure
    observed: tuple[_ObservedBinding, ...]
    digests: dict[str, tuple]

    @classmethod
    def from_trace(cls, structure: ModelStructure, tracer: _StructureTracer, bound: dict[str, Any]) -> Optional["_ReusableStructure"]:
        """The reusable form of a trace, or None when the structure depends on the values of
        the data: the program read them in Python, or an observed value is not a view of one
        argument (so it cannot be re-bound to new data)."""
        if tracer.value_reads:
            return None
        records = tracer.records
        consumed: set[str] = set()
        for record in records.values():
            for sources in record.get("arg_sources", {}).values():
                consumed |= sources
            consumed |= record.get("support_sources", frozenset())
            consumed |= record.get("wrapper_sources", frozenset())
            consumed |= record.get("init_sources", frozenset())
        observed = []
        for record in records.values():
            if record["kind"] != "observed" or not record["has_data"]:
                continue
            arguments = {p[1:] for p in record["value_sources"] if p.startswith(_ARG)}
            if record["value_sources"] - {_ARG + a for a in arguments}:
                return None  # an observed value computed from other sites
            if record["name"] in consumed:
                consumed |= record["value_sources"]  # read by other sites: their checks saw the data
            binding = _bind_observed(record, arguments, bound, tracer.tracked)
            if binding is None:
                return None
            observed.append(binding)
        keyed = sorted({p[1:] for p in consumed if p.startswith(_ARG) and _is_array_argument(bound.get(p[1:]))})
        digests = {name: content_digest(bound[name]) for name in keyed}
        return cls(structure, tuple(observed), digests)

    def reuse(self, bound: dict[str, Any]) -> Optional[ModelStructure]:
        """The structure for the call ``bound`` (same signature), its data checked; None when
        the trace must be redone (a digested argument's values changed, or an argument's
        memory layout did)."""
        if any(content_digest(bound[name]) != digest for name, digest in self.digests.items()):
            return None
        bases: dict[str, torch.Tensor] = {}
        plates = self.structure.plates
        for binding in self.observed:
            if binding.argument is None:
                continue  # the same value as when traced, already checked
            base = bases.get(binding.argument)
            if base is None:
                base = bases[binding.argument] = to_backend(bound[binding.argument], "pyro")
                if (tuple(base.stride()), base.storage_offset()) != binding.argument_layout:
                    return None
            size, stride, offset = binding.view
            _check_data({**binding.record, "value": base.as_strided(size, stride, offset)}, plates)
        arguments = _classify_arguments(self.structure.sites, plates, bound)
        if arguments == self.structure.arguments:
            return self.structure
        return replace(self.structure, arguments=arguments)


def _is_array_argument(value: Any) -> bool:
    """An argument traced by shape (so its values may differ between calls of one signature)."""
    return _is_tracked(value) and not isinstance(value, float)


def _bind_observed(record: dict, arguments: set[str], bound: dict[str, Any], tracked: dict[str, Any]) -> Optional[_ObservedBinding]:
    if not arguments or not any(_is_array_argument(bound[a]) for a in arguments):
        return _ObservedBinding(record)
    value = record["value"]
    if len(arguments) != 1 or not isinstance(value, torch.Tensor):
        return None
    (argument,) = arguments
    base = detach_provenance(tracked[argument])
    if value.dtype != base.dtype or value.untyped_storage().data_ptr() != base.untyped_storage().data_ptr():
        return None  # a copy (``y.float()``, ``y[mask]``): which elements cannot be told
    return _ObservedBinding(
        {**record, "value": None},  # not kept: the data of the first call
        argument,
        (tuple(value.shape), tuple(value.stride()), value.storage_offset()),
        (tuple(base.stride()), base.storage_offset()),
    )


_STRUCTURES: StructureCache[_ReusableStructure] = StructureCache(size=4)


def structure_cache() -> StructureCache:
    """The cache of traced structures (``statistics``: traces and reuses; ``clear()``)."""
    return _STRUCTURES


def coupled_discrete_latent(structure: ModelStructure) -> Optional[str]:
    """Why the discrete latents cannot be summed out one plate element at a time, or None: a
    site that depends on a discrete latent outside the latent's plates (e.g. ``B[z[i], z[j]]``
    over pairs, indexing z by position) couples every element of that plate, so an exact sum
    costs K^n."""
    for site in structure.sites.values():
        for parent in site.parents:
            latent = structure.latent.get(parent)
            if latent is not None and latent.is_discrete and not set(latent.plates) <= set(site.plates):
                outside = sorted(set(latent.plates) - set(site.plates))
                return (
                    f"site {site.name!r} depends on latent {parent!r} across its plate(s) {outside} (e.g. by indexing "
                    f"{parent!r} by position), which couples every element of the plate: summing {parent!r} out "
                    "would cost K^n; use an engine that samples the latents (gibbs) or approximates them"
                )
    return None


def improper_latent(structure: ModelStructure) -> Optional[str]:
    """The first latent with an improper flat prior (``ImproperUniform``), which cannot be
    sampled: engines that draw their starting point from the prior do not apply."""
    return next((name for name, site in structure.latent.items() if site.distribution == "ImproperUniform"), None)


def site_plates_size(structure: ModelStructure, site: Site) -> int:
    """Number of elements of a site across its plates (1 for a global site)."""
    return math.prod(structure.plates[p].size for p in site.plates)
