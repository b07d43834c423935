"""Exact sums over enumerated discrete latents, shared by ``enumerate``, ``em`` and ``importance``.

A program runs once under parallel enumeration: each finite latent's values are laid along a
tensor dimension of its own, left of the plate dimensions, so that every site's log-density
becomes a *factor*, a tensor over the latents it depends on and the plates it sits in. The run
is interpreted by :mod:`ppgen.inference._interpreter` (densities evaluated a stacked group of
alike sites at a time, :mod:`ppgen.inference._batched`) or, for programs that use Pyro beyond
the ppgen primitives, traced under Pyro's ``enum`` handler. The factors are then summed (or maximised) exactly:

* A **chain**: latents z_0, ..., z_{T-1} (program order, same cardinality K, same plates) where
  every factor touches at most one consecutive pair (z_{t-1}, z_t). A hidden Markov model written
  with ``ppgen.markov`` is one; a mixture (one latent per datum) is a chain of length 1. Summed by
  a scaled forward–backward pass, vectorised over the plates, O(T K^2) per plate element::

      α_t(k) ∝ Σ_j α_{t-1}(j) A_t(j, k) E_t(k),   c_t = normaliser,   log p(x) = Σ_t log c_t

  and maximised by Viterbi (max-product with back-pointers).
* Anything else (a global discrete latent shared across a plate, trees of latents) goes through
  Pyro's tensor variable elimination (:func:`pyro.ops.contract.contract_to_tensor`), the MAP
  through :func:`pyro.infer.infer_discrete`.

Both give log p(x), every latent's posterior marginal and, for EM, each factor's posterior
*weights*: the posterior probability of each cell of the factor tensor, summed over the plate
dimensions the factor is broadcast along (so Σ weights · log-factor is the expected
complete-data log-likelihood).

References
----------
L. R. Rabiner (1989), "A tutorial on hidden Markov models and selected applications in speech
recognition", Proc. IEEE 77(2). F. Obermeyer et al. (2019), "Tensor variable elimination for
plated factor graphs", ICML.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import pyro
import torch
from opt_einsum import get_symbol
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import config_enumerate, infer_discrete
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.util import site_is_subsample

from ppgen.backend import collector_paused, torch_precision
from ppgen.inference._batched import REBUILDABLE, compact, given_arguments, group_sites, unwrap
from ppgen.inference._deferred import broadcast_shapes
from ppgen.inference._interpreter import DeeperPlates, EnumerationInterpreter, Unsupported

_DEFAULT_PLATE_NESTING = 2  # first guess; corrected after one run if the program nests deeper


@dataclass(frozen=True)
class Latent:
    """An enumerated latent site: its enumeration dim, support values (K,), plates, and the
    shape its value has in a plain (non-enumerated) run."""

    name: str
    dim: int
    support: torch.Tensor
    plates: tuple[str, ...]
    shape: tuple[int, ...]

    @property
    def cardinality(self) -> int:
        return int(self.support.shape[0])


@dataclass
class Factor:
    """One site's log-density tensor (enumeration dims left of plate dims, Pyro's layout).

    ``latent_dims`` maps each latent the tensor varies with to its dim; ``plates`` are the
    site's plates. The tensor may be broadcast (size 1) along a plate it does not vary in.
    """

    site: str
    log_prob: torch.Tensor
    latent_dims: dict[str, int]
    plates: tuple[str, ...]

    @property
    def scope(self) -> tuple[str, ...]:
        return tuple(self.latent_dims)


@dataclass
class FactorGroup:
    """Factors evaluated together (:mod:`ppgen.inference._batched`): ``log_prob`` is their
    tensors stacked, (G, *factor shape); the sites share latent dims and plates."""

    sites: list[str]
    log_prob: torch.Tensor


@dataclass
class Enumeration:
    """A program run under parallel enumeration: its latents (program order) and factors.

    ``trace`` is Pyro's trace of the run, or the interpreter's recorded sites (the same node
    keys) when the program ran on :class:`EnumerationInterpreter`; ``groups`` partitions the
    factors into stacked groups in that case (None otherwise).
    """

    trace: Any
    first_available_dim: int
    latents: dict[str, Latent]
    factors: list[Factor]
    plates: dict[str, tuple[int, int]]  # plate name -> (dim, size)
    program: Optional[Callable] = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    groups: Optional[list[FactorGroup]] = None

    @property
    def max_plate_nesting(self) -> int:
        return -self.first_available_dim - 1

    @property
    def interpreted(self) -> bool:
        """Whether the program ran on the enumeration interpreter (rather than under Pyro)."""
        return isinstance(self.trace, RecordedTrace)

    def with_factors(self, factors: list[Factor]) -> "Enumeration":
        """The same layout with other factor tensors (EM recomputes them each iteration)."""
        return Enumeration(
            self.trace, self.first_available_dim, self.latents, factors, self.plates,
            self.program, self.args, self.kwargs,
        )


@dataclass
class RecordedTrace:
    """The sites an :class:`EnumerationInterpreter` run recorded, as ``nodes`` (name -> dict
    with the keys of a Pyro trace node the engines read: "type", "name", "fn", "value",
    "is_observed", "infer", "scale", "mask"), params first."""

    nodes: dict[str, dict]


@dataclass
class Posterior:
    """What an exact pass over the factors gives.

    ``log_evidence``: log p(x) (scalar tensor). ``marginals``: latent -> probabilities of shape
    (*latent.shape, K). ``weights``: site -> tensor shaped like that site's factor (for EM).
    ``map_values``: latent -> values of the most probable joint assignment, shape latent.shape.
    ``method``: "chain" or "tensor-elimination".
    """

    log_evidence: torch.Tensor
    marginals: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    map_values: dict[str, torch.Tensor] = field(default_factory=dict)
    method: str = "chain"


# --------------------------------------------------------------------------------------------
# Running a program under enumeration


@contextmanager
def quiet_validation() -> Iterator[None]:
    """Pyro's argument and support checks off: the verbs have validated the data already, and
    the checks cost more than the sums on long chains."""
    with pyro.validation_enabled(False):
        yield


_PARALLEL_WORK = 1 << 16  # elements per tensor operation below which one thread is faster
_LARGE_WORK_THREADS: Optional[int] = None  # threads handed back to large operations inside small_ops()


@contextmanager
def small_ops() -> Iterator[None]:
    """Run an engine on one intra-op thread, handing the threads back to large operations
    (:func:`threads_for`). Programs issue many small tensor operations (a site per time step),
    torch parallelises some of them (``max`` over a dim, ``logsumexp``) whatever their size, and
    waking a second thread costs far more than the work: 100× on a loaded machine."""
    global _LARGE_WORK_THREADS
    saved, previous = torch.get_num_threads(), _LARGE_WORK_THREADS
    _LARGE_WORK_THREADS = saved if previous is None else previous
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
        _LARGE_WORK_THREADS = previous


@contextmanager
def threads_for(work: int) -> Iterator[None]:
    """All threads for an operation on ``work`` elements if it is large, one otherwise."""
    available = _LARGE_WORK_THREADS or torch.get_num_threads()
    target = available if work >= _PARALLEL_WORK else 1
    saved = torch.get_num_threads()
    if target == saved:
        yield
        return
    torch.set_num_threads(target)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def in_precision(run: Callable[[], Any], float64: Optional[bool] = None) -> Any:
    """Call ``run`` under float64 (``torch_precision``), or in torch's default precision when
    the program holds float32 torch modules (``float64=False``, or a dtype error in float64)."""
    if float64 is not None:
        with torch_precision(enabled=float64):
            return run()
    try:
        with torch_precision():
            return run()
    except RuntimeError as error:
        if "dtype" not in str(error) and "Double" not in str(error) and "Float" not in str(error):
            raise
    return run()


def _sample_sites(trace: Any) -> Iterator[tuple[str, dict]]:
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site["infer"].get("_deterministic"):
            continue
        yield name, site


def _deepest_plate_dim(trace: Any) -> int:
    dims = [f.dim for _, s in _sample_sites(trace) for f in s["cond_indep_stack"] if f.vectorized and f.dim is not None]
    return min(dims, default=0)


def _enumerated_trace(program: Callable, args: tuple, kwargs: dict, first_available_dim: int) -> Any:
    enumerated = poutine.enum(config_enumerate(program, default="parallel"), first_available_dim=first_available_dim)
    return poutine.trace(enumerated).get_trace(*args, **kwargs)


def enumerate_program(
    program: Callable,
    args: tuple = (),
    kwargs: Optional[dict] = None,
    max_plate_nesting: Optional[int] = None,
    log_probs: bool = True,
    params: Optional[dict[str, torch.Tensor]] = None,
) -> Enumeration:
    """Run ``program`` once under parallel enumeration and collect its latents and factors.

    Every latent with finite support is enumerated; other latents are sampled (callers that
    need them fixed condition the program first). ``params`` overrides param sites' values.
    ``max_plate_nesting`` is found by running the program when not given (a plate deeper than
    the first guess triggers one more run).

    The program runs on the :class:`EnumerationInterpreter` (no Pyro handlers; densities
    evaluated a stacked group at a time) when it uses nothing the interpreter does not model,
    under Pyro's ``enum`` and ``trace`` handlers otherwise; both give the same factors.
    """
    kwargs = kwargs or {}
    substituted = poutine.substitute(program, data=params) if params else program
    enumeration = _interpreted(program, args, kwargs, max_plate_nesting, log_probs, params)
    if enumeration is None:
        enumeration = _traced(substituted, args, kwargs, max_plate_nesting, log_probs)
    enumeration.program, enumeration.args, enumeration.kwargs = substituted, args, kwargs
    return enumeration


def _traced(program: Callable, args: tuple, kwargs: dict, max_plate_nesting: Optional[int], log_probs: bool) -> Enumeration:
    nesting = _DEFAULT_PLATE_NESTING if max_plate_nesting is None else max_plate_nesting
    for _attempt in range(3):
        first_available_dim = -nesting - 1
        try:
            trace = _enumerated_trace(program, args, kwargs, first_available_dim)
        except (RuntimeError, ValueError, IndexError):
            if max_plate_nesting is not None:
                raise
            deepest = _deepest_plate_dim(poutine.trace(program).get_trace(*args, **kwargs))
            if -deepest <= nesting:
                raise
            nesting = -deepest
            continue
        deepest = _deepest_plate_dim(trace)
        if deepest > first_available_dim:
            break
        if max_plate_nesting is not None:
            raise ValueError(f"a plate uses dim {deepest}, deeper than max_plate_nesting={max_plate_nesting}")
        nesting = -deepest
    return _collect(trace, first_available_dim, log_probs)


def _interpreted(
    program: Callable, args: tuple, kwargs: dict, max_plate_nesting: Optional[int], log_probs: bool, params: Optional[dict]
) -> Optional[Enumeration]:
    """The enumeration from a run on the interpreter, or None if the program needs Pyro (the
    random number generator is then as it was before the attempt)."""
    nesting = _DEFAULT_PLATE_NESTING if max_plate_nesting is None else max_plate_nesting
    rng_state = torch.random.get_rng_state()
    for _attempt in range(3):
        interpreter = EnumerationInterpreter(-nesting - 1, params, fixed_nesting=max_plate_nesting is not None)
        try:
            with collector_paused():
                interpreter.run(program, args, kwargs)
                return _collect_interpreted(interpreter, log_probs)
        except DeeperPlates as deeper:
            nesting = deeper.nesting
        except Exception:  # Unsupported, or an error Pyro will report as the program's own
            break
    torch.random.set_rng_state(rng_state)
    return None


def _plate_shape(plates: dict[str, tuple[int, int]], names: tuple[str, ...]) -> tuple[int, ...]:
    if not names:
        return ()
    depth = -min(plates[name][0] for name in names)
    shape = [1] * depth
    for name in names:
        dim, size = plates[name]
        shape[dim] = size
    return tuple(shape)


def _collect(trace: Any, first_available_dim: int, log_probs: bool) -> Enumeration:
    plates: dict[str, tuple[int, int]] = {}
    latents: dict[str, Latent] = {}
    id_to_latent: dict[int, str] = {}
    for name, site in _sample_sites(trace):
        names = []
        for frame in site["cond_indep_stack"]:
            if frame.vectorized:
                plates.setdefault(frame.name, (frame.dim, frame.size))
                names.append(frame.name)
        site["_ppgen_plates"] = tuple(sorted(names, key=lambda n: plates[n][0]))
        dim = site["infer"].get("_enumerate_dim")
        if dim is None:
            continue
        id_to_latent[site["infer"]["_dim_to_id"][dim]] = name
        value = site["value"]  # the support, laid along the latent's own dim
        laid_out = value.dim() >= -dim and value.numel() == value.shape[dim]
        support = value.reshape(-1) if laid_out else site["fn"].enumerate_support(expand=False).reshape(-1)
        latents[name] = Latent(name, dim, support, site["_ppgen_plates"], _plate_shape(plates, site["_ppgen_plates"]))
    factors = []
    for name, site in _sample_sites(trace):
        fn, value = site["fn"], site["value"]
        batch = tuple(value.shape[: value.dim() - len(fn.event_shape)])
        shape = broadcast_shapes(batch, tuple(fn.batch_shape))
        if log_probs:
            with threads_for(math.prod(shape) * max(1, math.prod(fn.event_shape))):
                log_prob = site_log_prob(site)
        else:  # only the shape: a stride-0 view, no density computed
            log_prob = torch.zeros(()).expand(shape)
        factors.append(Factor(name, log_prob, latent_dims(site, log_prob, first_available_dim, id_to_latent), site["_ppgen_plates"]))
    return Enumeration(trace, first_available_dim, latents, factors, plates)


def _collect_interpreted(interpreter: EnumerationInterpreter, log_probs: bool) -> Enumeration:
    """The latents and factors of an interpreted run: densities evaluated a stacked group at a
    time (``log_probs=False``: stride-0 zeros of their shapes), each factor a view of its row."""
    first_available_dim = interpreter.first_available_dim
    plates = interpreter.plates
    sites = list(interpreter.sites.values())
    latents = {}
    layouts: dict[Any, tuple[torch.Tensor, tuple[int, ...]]] = {}  # latents sharing a support tensor and plates
    for name, site in interpreter.sites.items():
        if site["enumerate_dim"] is not None:
            key = (id(site["value"]), site["plates"])
            if key not in layouts:
                layouts[key] = (site["value"].reshape(-1), _plate_shape(plates, site["plates"]))
            support, shape = layouts[key]
            latents[name] = Latent(name, site["enumerate_dim"], support, site["plates"], shape)
    by_site: dict[str, Factor] = {}
    groups = []
    for group in group_sites(sites):
        if log_probs:
            with threads_for(group.work):
                stacked = group.log_prob()
        else:  # only the shape: a stride-0 view, no density computed
            stacked = torch.zeros(()).expand(group.shape())
        shape = tuple(stacked.shape[1:])
        enumerated = [d for d in range(-len(shape), first_available_dim + 1) if shape[d] > 1]
        for name, log_prob in zip(group.sites, stacked.unbind(0)):
            site = interpreter.sites[name]
            visible = site["visible_dims"]
            try:
                scope = {visible[d]: d for d in enumerated}
            except KeyError:
                raise Unsupported(f"site {name!r} varies along a dim that is neither a plate nor an enumerated latent") from None
            by_site[name] = Factor(name, log_prob, scope, site["plates"])
        groups.append(FactorGroup(group.sites, stacked))
    nodes = {name: {"type": "param", "name": name, "value": value} for name, value in interpreter.params.items()}
    nodes.update(interpreter.sites)
    factors = [by_site[name] for name in interpreter.sites]
    return Enumeration(RecordedTrace(nodes), first_available_dim, latents, factors, dict(plates), groups=groups)


def site_log_prob(site: dict) -> torch.Tensor:
    """A trace site's log-density tensor, masked and scaled as Pyro does.

    A plate expands a distribution's parameters to the plate's size (stride-0 views); the
    density is computed from the compact parameters instead, so a transition shared by every
    sequence gives a (K, K, 1) factor rather than (K, K, n)."""
    fn, value = site["fn"], site["value"]
    log_prob = None
    base, reinterpreted = unwrap(fn)
    arguments = given_arguments(base) if type(base).__name__ in REBUILDABLE else {}
    compacted = {k: compact(v) for k, v in arguments.items()}
    value_batch = tuple(value.shape[: value.dim() - len(base.event_shape)])
    try:
        smaller = bool(compacted) and math.prod(
            broadcast_shapes(value_batch, *(tuple(v.shape[: v.dim() - base.arg_constraints[k].event_dim]) for k, v in compacted.items()))
        ) * 4 <= math.prod(broadcast_shapes(value_batch, tuple(base.batch_shape)))
    except (ValueError, KeyError):
        smaller = False
    if smaller:  # worth rebuilding: the density would otherwise be computed plate-size times over
        try:
            log_prob = type(base)(**compacted, validate_args=False).log_prob(value)
            if reinterpreted:
                log_prob = log_prob.sum(tuple(range(-reinterpreted, 0)))
        except (TypeError, ValueError, RuntimeError):
            log_prob = None
    if log_prob is None:
        log_prob = fn.log_prob(value)
    log_prob = scale_and_mask(log_prob, site["scale"], site["mask"])
    return log_prob if isinstance(log_prob, torch.Tensor) else torch.as_tensor(log_prob)


def latent_dims(site: dict, log_prob: torch.Tensor, first_available_dim: int, id_to_latent: dict[int, str]) -> dict[str, int]:
    """The latents ``log_prob`` varies with: its enumeration dims of size > 1, named."""
    dim_to_id = site["infer"].get("_dim_to_id", {})
    out = {}
    for dim in range(-log_prob.dim(), first_available_dim + 1):
        if log_prob.shape[dim] > 1:
            ident = dim_to_id.get(dim)
            if ident not in id_to_latent:
                raise ValueError(
                    f"site {site['name']!r}: tensor dim {dim} of its log-density is not a plate and not "
                    "an enumerated latent; give batch dimensions a ppgen.plate"
                )
            out[id_to_latent[ident]] = dim
    return out


# --------------------------------------------------------------------------------------------
# Shape helpers


def _padded(x: torch.Tensor, rank: int) -> torch.Tensor:
    return x.reshape((1,) * (rank - x.dim()) + tuple(x.shape)) if x.dim() < rank else x


def total(factor: Factor, plates: dict[str, tuple[int, int]]) -> torch.Tensor:
    """Σ of a factor over all its cells, counting broadcast plate dims at their full size."""
    return factor.log_prob.sum() * _broadcast_count(factor, plates)


def _broadcast_count(factor: Factor, plates: dict[str, tuple[int, int]]) -> int:
    """How many times each cell of the factor counts: the product of the sizes of the plates
    it is broadcast along (size 1 or absent)."""
    x = factor.log_prob
    count = 1
    for name in factor.plates:
        dim, size = plates[name]
        if x.dim() < -dim or x.shape[dim] == 1:
            count *= size
    return count


def _reduce_foreign_plates(x: torch.Tensor, factor: Factor, keep: set[str], plates: dict[str, tuple[int, int]]) -> torch.Tensor:
    """Product (log-sum) over the factor's plates that are not in ``keep``."""
    for name in factor.plates:
        if name in keep:
            continue
        dim, size = plates[name]
        x = x * size if x.shape[dim] == 1 else x.sum(dim, keepdim=True)
    return x


# --------------------------------------------------------------------------------------------
# Chains


@dataclass
class Chain:
    """Factors arranged along a chain: ``unary`` (T, n, K), ``pairwise`` (T-1, n_p, K, K) with
    n_p in {1, n} (log A_t(j, k) for z_{t-1} = j, z_t = k), or None when no factor couples
    neighbours; ``constant`` collects factors that depend on no latent. n is the number of
    elements of the chain's plates, ``batch_shape`` their sizes in dim order."""

    names: list[str]
    batch_dims: list[int]
    batch_shape: tuple[int, ...]
    unary: torch.Tensor
    pairwise: Optional[torch.Tensor]
    constant: torch.Tensor
    placement: dict[str, tuple[int, tuple[int, ...]]]  # site -> (t, scope dims in chain order)


def find_chain(enumeration: Enumeration) -> Optional[dict[str, tuple[int, list[str]]]]:
    """If the factors form a chain, each factor site -> (t, its scope latents in chain order);
    otherwise None."""
    latents = list(enumeration.latents.values())
    if not latents:
        return None
    first = latents[0]
    K, chain_plates = first.cardinality, set(first.plates)
    covers: dict[tuple[str, ...], bool] = {}  # plates -> whether they include the chain's

    def covering(names: tuple[str, ...]) -> bool:
        if names not in covers:
            covers[names] = chain_plates <= set(names)
        return covers[names]

    if any(l.cardinality != K or not (covering(l.plates) and len(set(l.plates)) == len(chain_plates)) for l in latents):
        return None
    position = {l.name: t for t, l in enumerate(latents)}
    placement: dict[str, tuple[int, list[str]]] = {}
    for factor in enumeration.factors:
        scope = list(factor.latent_dims)
        if not scope:
            placement[factor.site] = (-1, scope)
            continue
        if len(scope) > 2 or not covering(factor.plates):
            return None
        if len(scope) == 1:
            placement[factor.site] = (position[scope[0]], scope)
            continue
        s, t = position[scope[0]], position[scope[1]]
        if s > t:
            s, t, scope = t, s, scope[::-1]
        if t - s != 1:
            return None
        placement[factor.site] = (t, scope)
    return placement


def _to_chain_layout(stacked: torch.Tensor, factor: Factor, scope: list[str], batch_dims: list[int], chain_plates: set[str], plates: dict) -> torch.Tensor:
    """A group of factors laid out like ``factor``, stacked (G, *factor shape), as
    (G, *batch, K) (one latent) or (G, *batch, K_prev, K) (two): foreign plates multiplied out,
    other dims dropped. Batch dims may stay broadcast (size 1)."""
    dims = [factor.latent_dims[n] for n in scope]
    member_rank = stacked.dim() - 1
    rank = max(member_rank, -min(batch_dims + dims + [-1]))
    x = stacked.reshape((stacked.shape[0],) + (1,) * (rank - member_rank) + tuple(stacked.shape[1:]))
    x = _reduce_foreign_plates(x, factor, chain_plates, plates)
    keep = [1 + rank + d for d in batch_dims + dims]
    rest = [i for i in range(1, rank + 1) if i not in keep]
    x = x.permute([0] + rest + keep)
    return x.reshape((x.shape[0],) + tuple(x.shape[1 + len(rest):]))


def _from_chain_layout(w: torch.Tensor, factor: Factor, scope: list[str], batch_dims: list[int]) -> torch.Tensor:
    """Inverse of :func:`_to_chain_layout` for weights: back into the factor's layout, summed
    over dims the factor is broadcast along."""
    dims = batch_dims + [factor.latent_dims[n] for n in scope]
    x = factor.log_prob
    rank = max(x.dim(), -min(dims + [-1]))
    order = sorted(range(len(dims)), key=lambda i: dims[i])
    shape = [1] * rank
    for i in order:
        shape[dims[i]] = w.shape[i]
    w = w.permute(order).reshape(shape)
    target = (1,) * (rank - x.dim()) + tuple(x.shape)
    w = w.expand(broadcast_shapes(tuple(w.shape), target))
    return w.sum_to_size(target).reshape(x.shape)


def _stacked_groups(enumeration: Enumeration, placement: dict[str, tuple[int, list[str]]]) -> Iterator[tuple[list[Factor], torch.Tensor]]:
    """The factors in stacked groups whose members sit alike in the chain (same dims in
    chain order): the interpreter's groups, split where members differ; one per factor else."""
    by_site = {f.site: f for f in enumeration.factors}
    for group in enumeration.groups or []:
        members = [by_site[site] for site in group.sites]
        first = members[0]
        dims = [first.latent_dims[n] for n in placement[first.site][1]]
        if all([m.latent_dims[n] for n in placement[m.site][1]] == dims for m in members[1:]):
            yield members, group.log_prob
        else:
            yield from (([m], m.log_prob.unsqueeze(0)) for m in members)
    if enumeration.groups is None:
        yield from (([f], f.log_prob.unsqueeze(0)) for f in enumeration.factors)


def _add_at(target: torch.Tensor, steps: list[int], x: torch.Tensor) -> None:
    """target[steps[g]] += x[g] (x broadcast), by a strided slice when the steps are evenly
    spaced (a group's sites usually are: every other step), else by ``index_add_``."""
    stride = steps[1] - steps[0] if len(steps) > 1 else 1
    if stride > 0 and steps == list(range(steps[0], steps[0] + stride * len(steps), stride)):
        target[steps[0] : steps[-1] + 1 : stride] += x
    else:
        target.index_add_(0, torch.tensor(steps), x.expand((len(steps),) + tuple(target.shape[1:])))


def build_chain(enumeration: Enumeration, placement: dict[str, tuple[int, list[str]]]) -> Chain:
    """Arrange the factors of a chain (see :func:`find_chain`) for the forward pass: each
    stacked group is permuted into chain layout once and added at its steps."""
    latents = list(enumeration.latents.values())
    first = latents[0]
    plates = enumeration.plates
    chain_plates = set(first.plates)
    batch_dims = sorted(plates[n][0] for n in first.plates)
    batch_shape = tuple(plates[n][1] for n in sorted(first.plates, key=lambda n: plates[n][0]))
    n = math.prod(batch_shape)
    T, K = len(latents), first.cardinality
    dtype = next((f.log_prob.dtype for f in enumeration.factors if f.log_prob.is_floating_point()), torch.get_default_dtype())
    unary = torch.zeros((T,) + batch_shape + (K,), dtype=dtype)
    pairwise: list[tuple[torch.Tensor, torch.Tensor]] = []  # (steps t - 1, (G, *batch or 1s, K, K))
    constant = torch.zeros((), dtype=dtype)
    for members, stacked in _stacked_groups(enumeration, placement):
        scope = placement[members[0].site][1]
        if not scope:
            constant = constant + stacked.sum() * _broadcast_count(members[0], plates)
            continue
        x = _to_chain_layout(stacked, members[0], scope, batch_dims, chain_plates, plates).to(dtype)
        steps = [placement[m.site][0] for m in members]
        if len(scope) == 1:
            _add_at(unary, steps, x)
        else:
            pairwise.append(([t - 1 for t in steps], x))
    pairwise_tensor = None
    if pairwise:
        shared = all(math.prod(x.shape[1:-2]) == 1 for _, x in pairwise)
        width = 1 if shared else n
        pairwise_tensor = torch.zeros((T - 1, width, K, K), dtype=dtype)
        for steps, x in pairwise:
            x = x.reshape((x.shape[0], 1, K, K)) if shared else x.expand((x.shape[0],) + batch_shape + (K, K)).reshape(x.shape[0], n, K, K)
            _add_at(pairwise_tensor, steps, x)
    return Chain([l.name for l in latents], batch_dims, batch_shape, unary.reshape(T, n, K), pairwise_tensor, constant, placement)


def _transition(a: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Σ_j a(n, j) M(n or 1, j, k)."""
    if matrix.shape[0] == 1:
        return a @ matrix[0]
    return torch.bmm(a.unsqueeze(1), matrix).squeeze(1)


def forward_backward(chain: Chain, marginals: bool = True, pairwise: bool = False):
    """Scaled forward–backward on a chain.

    Returns (log p(x) per batch element (n,), γ (T, n, K) or None, ξ (T-1, n, K, K) or None)
    with γ_t(k) = p(z_t = k | x) and ξ_t(j, k) = p(z_{t-1} = j, z_t = k | x).
    """
    U = chain.unary
    T, n, K = U.shape
    shift = U.max(-1, keepdim=True).values
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    E = (U - shift).exp()
    A = chain.pairwise.exp() if chain.pairwise is not None else None
    alpha = torch.empty_like(E) if (marginals or pairwise) else None
    emissions = E.unbind(0)  # views, taken once: indexing per step costs as much as the step
    shared = A is not None and A.shape[1] == 1
    transitions = (A[:, 0] if shared else A).unbind(0) if A is not None else ()
    normalisers = []
    a = E[0].clone()
    for t in range(T):
        if t > 0:
            if A is None:
                a = a.sum(-1, keepdim=True) * emissions[t]
            else:
                a = torch.mm(a, transitions[t - 1]) if shared else torch.bmm(a.unsqueeze(1), transitions[t - 1]).squeeze(1)
                a *= emissions[t]
        c = a.sum(-1, keepdim=True)
        normalisers.append(c)
        a /= c
        if alpha is not None:
            alpha[t] = a
    scales = torch.cat(normalisers, -1).T  # (T, n)
    log_z = scales.log().sum(0) + shift.squeeze(-1).sum(0)
    if not (marginals or pairwise):
        return log_z, None, None
    gamma = torch.empty_like(E)
    xi = torch.empty((T - 1, n, K, K), dtype=U.dtype) if pairwise and T > 1 else None
    beta = torch.ones((n, K), dtype=U.dtype)
    gamma[T - 1] = alpha[T - 1]
    for t in range(T - 1, 0, -1):
        emitted = E[t] * beta / scales[t].unsqueeze(-1)
        if A is None:
            step = torch.ones((1, K, K), dtype=U.dtype)
        else:
            step = A[t - 1]
        if xi is not None:
            xi[t - 1] = alpha[t - 1].unsqueeze(-1) * step * emitted.unsqueeze(-2)
        beta = _transition(emitted, step.transpose(-1, -2))
        gamma[t - 1] = alpha[t - 1] * beta
    return log_z, gamma, xi


def viterbi(chain: Chain) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-product on a chain: (max log joint per batch element (n,), argmax path (T, n))."""
    U, P = chain.unary, chain.pairwise
    T, n, K = U.shape
    delta = U[0]
    pointers = torch.empty((max(T - 1, 0), n, K), dtype=torch.long)
    for t in range(1, T):
        scores = delta.unsqueeze(-1) + (P[t - 1] if P is not None else 0.0)
        delta, pointers[t - 1] = scores.max(-2)
        delta = delta + U[t]
    best, last = delta.max(-1)
    path = torch.empty((T, n), dtype=torch.long)
    path[T - 1] = last
    for t in range(T - 2, -1, -1):
        path[t] = pointers[t].gather(-1, path[t + 1].unsqueeze(-1)).squeeze(-1)
    return best, path


def _single_latent_posterior(enumeration: Enumeration, marginals: bool, weights: bool, map_estimate: bool) -> Posterior:
    """One latent (per plate element): a mixture. Everything stays in the factors' own layout,
    so the sum is one logsumexp over the latent's dim and the posterior one softmax."""
    work = max(f.log_prob.numel() for f in enumeration.factors)
    with threads_for(work):
        return _single_latent_sums(enumeration, marginals, weights, map_estimate)


def _single_latent_sums(enumeration: Enumeration, marginals: bool, weights: bool, map_estimate: bool) -> Posterior:
    latent = next(iter(enumeration.latents.values()))
    plates = enumeration.plates
    own_plates = set(latent.plates)
    rank = max([-latent.dim] + [f.log_prob.dim() for f in enumeration.factors])
    joint: Any = None
    constant = torch.zeros(())
    for factor in enumeration.factors:
        if not factor.scope:
            constant = constant + total(factor, plates)
            continue
        term = _reduce_foreign_plates(_padded(factor.log_prob, rank), factor, own_plates, plates)
        joint = term if joint is None else joint + term
    full = [1] * rank
    full[latent.dim] = latent.cardinality
    for name in latent.plates:
        dim, size = plates[name]
        full[dim] = size
    log_z = torch.logsumexp(joint, latent.dim, keepdim=True)
    posterior = Posterior(log_z.expand([1 if d == rank + latent.dim else n for d, n in enumerate(full)]).sum() + constant, method="chain")
    if marginals or weights:
        gamma = (joint - log_z).exp().expand(full)
        if marginals:
            probs = gamma.movedim(latent.dim, -1)
            posterior.marginals[latent.name] = probs.reshape(latent.shape + (latent.cardinality,))
        if weights:
            for factor in enumeration.factors:
                if not factor.scope:
                    posterior.weights[factor.site] = torch.ones_like(factor.log_prob)
                    continue
                target = (1,) * (rank - factor.log_prob.dim()) + tuple(factor.log_prob.shape)
                w = gamma.expand(broadcast_shapes(tuple(gamma.shape), target))
                posterior.weights[factor.site] = w.sum_to_size(target).reshape(factor.log_prob.shape)
    if map_estimate:
        best = joint.expand(full).argmax(latent.dim)
        posterior.map_values[latent.name] = latent.support[best].reshape(latent.shape)
    return posterior


def _chain_posterior(enumeration: Enumeration, placement, marginals: bool, weights: bool, map_estimate: bool) -> Posterior:
    if len(enumeration.latents) == 1:
        return _single_latent_posterior(enumeration, marginals, weights, map_estimate)
    with threads_for(max(f.log_prob.numel() for f in enumeration.factors)):
        chain = build_chain(enumeration, placement)
    need_gamma = marginals or weights
    T, n, K = chain.unary.shape
    with threads_for(n * K * K):
        log_z, gamma, xi = forward_backward(chain, marginals=need_gamma, pairwise=weights)
    posterior = Posterior(log_z.sum() + chain.constant, method="chain")
    latents = list(enumeration.latents.values())
    K = latents[0].cardinality
    if marginals:
        for t, latent in enumerate(latents):
            posterior.marginals[latent.name] = gamma[t].reshape(latent.shape + (K,))
    if weights:
        for factor in enumeration.factors:
            t, scope = placement[factor.site]
            if not scope:
                posterior.weights[factor.site] = torch.ones_like(factor.log_prob)
                continue
            w = gamma[t] if len(scope) == 1 else xi[t - 1]
            w = w.reshape(chain.batch_shape + tuple(w.shape[1:]))
            posterior.weights[factor.site] = _from_chain_layout(w, factor, scope, chain.batch_dims)
    if map_estimate:
        with threads_for(n * K * K):
            _, path = viterbi(chain)
        for t, latent in enumerate(latents):
            posterior.map_values[latent.name] = latent.support[path[t]].reshape(latent.shape)
    return posterior


# --------------------------------------------------------------------------------------------
# General plated factor graphs (Pyro's tensor variable elimination)


def _full_plate_view(x: torch.Tensor, factor: Factor, plates: dict) -> torch.Tensor:
    """Broadcast along the factor's plates: Pyro's contraction multiplies over a plate only
    along dims that are present."""
    if not factor.plates:
        return x
    rank = max(x.dim(), -min(plates[n][0] for n in factor.plates))
    x = _padded(x, rank)
    shape = list(x.shape)
    for name in factor.plates:
        dim, size = plates[name]
        shape[dim] = size
    return x.expand(shape)


def _tensor_elimination(enumeration: Enumeration, marginals: bool, weights: bool, map_estimate: bool) -> Posterior:
    plates = enumeration.plates
    symbols = {}
    for name in list(enumeration.latents) + list(plates):
        symbols[name] = get_symbol(len(symbols))
    plate_dim_symbols = {plates[p][0]: symbols[p] for p in plates}
    symbol_to_dim = {symbols[p]: plates[p][0] for p in plates}
    symbol_to_dim.update({symbols[l.name]: l.dim for l in enumeration.latents.values()})
    leaves = {}
    tree: OrderedDict = OrderedDict()
    with torch.enable_grad() if weights else torch.no_grad():
        for factor in enumeration.factors:
            leaf = factor.log_prob.detach().requires_grad_(weights)
            leaves[factor.site] = leaf
            x = _full_plate_view(leaf, factor, plates)
            dim_to_symbol = dict(plate_dim_symbols)
            dim_to_symbol.update({dim: symbols[name] for name, dim in factor.latent_dims.items()})
            term = packed.pack(x, dim_to_symbol)
            ordinal = frozenset(symbols[p] for p in factor.plates)
            tree.setdefault(ordinal, []).append(term)
        sum_dims = {symbols[name] for name in enumeration.latents}
        log_z = contract_to_tensor(tree, set(sum_dims), target_ordinal=frozenset())
        posterior = Posterior(log_z.detach(), method="tensor-elimination")
        if weights:
            grads = torch.autograd.grad(log_z, list(leaves.values()), allow_unused=True)
            for (site, leaf), grad in zip(leaves.items(), grads):
                posterior.weights[site] = torch.zeros_like(leaf) if grad is None else grad.detach()
    if marginals:
        with torch.no_grad():
            cache: dict = {}
            for latent in enumeration.latents.values():
                ordinal = frozenset(symbols[p] for p in latent.plates)
                logits = contract_to_tensor(tree, set(sum_dims), target_ordinal=ordinal, target_dims={symbols[latent.name]}, cache=cache)
                logits = packed.unpack(logits, symbol_to_dim).detach()
                logits = _padded(logits, -latent.dim)
                logits = logits.unsqueeze(-1).transpose(-1, latent.dim - 1)
                logits = logits.reshape(tuple(logits.shape[logits.dim() - len(latent.shape) - 1:]))
                probs = torch.softmax(logits, -1)
                posterior.marginals[latent.name] = probs.expand(latent.shape + (latent.cardinality,))
    if map_estimate:
        posterior.map_values = map_by_infer_discrete(enumeration)
    return posterior


def map_by_infer_discrete(enumeration: Enumeration) -> dict[str, torch.Tensor]:
    """The joint MAP of the latents by Pyro's max-product ``infer_discrete`` (temperature 0)."""
    program = config_enumerate(enumeration.program, default="parallel")
    decoded = infer_discrete(program, first_available_dim=enumeration.first_available_dim, temperature=0)
    trace = poutine.trace(decoded).get_trace(*enumeration.args, **enumeration.kwargs)
    return {name: trace.nodes[name]["value"].reshape(latent.shape) for name, latent in enumeration.latents.items()}


# --------------------------------------------------------------------------------------------
# Entry point


def exact_posterior(
    enumeration: Enumeration,
    marginals: bool = True,
    weights: bool = False,
    map_estimate: bool = False,
) -> Posterior:
    """Sum (and optionally maximise) the factors of ``enumeration`` exactly.

    Chains (HMMs, mixtures) take the forward–backward path; other factor graphs Pyro's tensor
    variable elimination.
    """
    if not enumeration.latents:
        log_z = sum((total(f, enumeration.plates) for f in enumeration.factors), torch.zeros(()))
        weights_out = {f.site: torch.ones_like(f.log_prob) for f in enumeration.factors} if weights else {}
        return Posterior(log_z, weights=weights_out, method="no latents")
    placement = find_chain(enumeration)
    if placement is not None:
        return _chain_posterior(enumeration, placement, marginals, weights, map_estimate)
    with threads_for(max(f.log_prob.numel() for f in enumeration.factors)):
        return _tensor_elimination(enumeration, marginals, weights, map_estimate)
