"""Shared machinery of the MCMC engines on NumPyro (``nuts``, ``hmc``, ``gibbs``, ``mh``).

The pieces, in the order a run uses them:

1. :func:`bind_program`: split the program's arguments into arrays (traced by JAX, so one
   compiled sampler serves any data of the same shapes) and plain Python values (fixed, part
   of the cache key), and wrap the program so it runs on NumPyro. Arrays the program needs as
   values (a size computed from the data) are found when compiling fails and bound as fixed
   NumPy arrays instead (:func:`rebind_concrete`).
2. :func:`model_functions`: NumPyro's potential energy U(z) = −log p(x, z) over the
   unconstrained continuous latents z (finite discrete latents summed out by enumeration),
   and the map from z to constrained site values.
3. A :class:`Kernel` (blackjax style: ``init``, ``step``, ``info``) is compiled once per
   (program, argument shapes, options) by :func:`compiled_sampler` and kept in an in-process
   cache; JAX's persistent compilation cache (:func:`enable_compilation_cache`) keeps the
   compiled code across processes.
4. :func:`run_chains` advances all chains together (vectorised) in compiled chunks of
   iterations through :func:`ppgen.driver.iterate` (progress bar, Ctrl-C keeps the draws).
5. :func:`assemble_result`: constrained draws, draws of the enumerated discrete latents
   (``infer_discrete``), pointwise log-likelihoods, exchangeable mixture components put in
   one labelling (:mod:`ppgen.inference._relabel`), R-hat / ESS / divergences (ArviZ).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
import weakref
from collections import OrderedDict
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from ppgen.backend import Precision, jax_precision, to_numpy, use_backend
from ppgen.checkpoint import Checkpoint
from ppgen.driver import iterate
from ppgen.errors import EngineFailure, ReliabilityWarning, user_stacklevel
from ppgen.inference import _devices, _initial
from ppgen.results import Result
from ppgen.structure import ModelStructure, _call_with_bound, bind_arguments, coupled_discrete_latent

#: Location-scale families that automatic non-centring handles, with the extra parameters
#: that are copied unchanged to the standardised distribution.
LOC_SCALE_FAMILIES: dict[str, tuple[str, ...]] = {
    "Normal": (),
    "Cauchy": (),
    "Laplace": (),
    "Logistic": (),
    "StudentT": ("df",),
}

#: Iterations per compiled chunk: the progress bar and Ctrl-C act between chunks.
CHUNK_LENGTH = 50


# --------------------------------------------------------------------------------------------
# Compilation cache


def cache_directory() -> Path:
    """Where compiled samplers persist: ``$PPGEN_CACHE_DIR/jax``, else ``~/.cache/ppgen/jax``
    (``$XDG_CACHE_HOME/ppgen/jax`` when that is set)."""
    root = os.environ.get("PPGEN_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "jax"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ppgen" / "jax"


def enable_compilation_cache() -> None:
    """Turn on JAX's persistent compilation cache under :func:`cache_directory`, unless the
    user configured one already (then theirs is used). Every compiled function is stored,
    however quick its compilation, because a sampler's many small pieces add up."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    directory = cache_directory()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # read-only home: run without the persistent cache
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_COMPILED: "OrderedDict[tuple, Any]" = OrderedDict()
_MAX_COMPILED = 32


def cached(key: Optional[tuple], build: Callable[[], Any]) -> tuple[Any, bool]:
    """``build()`` once per ``key`` (least recently used of 32 kept); ``key=None`` never caches.
    Returns the object and whether it came from the cache."""
    if key is None:
        return build(), False
    try:
        hit = _COMPILED.pop(key)
    except KeyError:
        hit = None
    except TypeError:  # an unhashable piece in the key
        return build(), False
    if hit is not None:
        _COMPILED[key] = hit
        return hit, True
    value = build()
    _COMPILED[key] = value
    while len(_COMPILED) > _MAX_COMPILED:
        _COMPILED.popitem(last=False)
    return value, False


def clear_cache() -> None:
    """Forget every compiled sampler of this process (the persistent cache stays)."""
    _COMPILED.clear()


# --------------------------------------------------------------------------------------------
# 1. The program bound to its arguments


def _as_array(value: Any) -> Optional[np.ndarray]:
    """``value`` as a NumPy array if it is array data (arrays, lists of numbers), else None."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return None
    if isinstance(value, (list, tuple)):
        try:
            array = np.asarray(value)
        except (ValueError, TypeError):
            return None
        return array if array.dtype.kind in "biuf" and array.ndim >= 1 else None
    converted = to_numpy(value)
    if isinstance(converted, np.ndarray) and converted.dtype.kind in "biuf":
        return converted
    return None


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return ("unhashable", id(value))
    return value


def _array_signature(array: Any) -> tuple:
    """An array by content, for cache keys and fingerprints: shape, dtype and SHA-256."""
    array = np.ascontiguousarray(np.asarray(array))
    return ("array", array.shape, str(array.dtype), hashlib.sha256(array.tobytes()).hexdigest())


@dataclass(frozen=True)
class BoundProgram:
    """A ppgen program with its arguments bound by name.

    ``data`` holds the array arguments as JAX arrays (traced, so they can change without
    recompiling); ``static`` the other arguments (sizes, hyperparameters, and the arrays the
    program needs as concrete values, see :func:`bind_program`), fixed in the compiled
    sampler. ``key`` identifies the compiled sampler: the program, the static values (arrays
    by content) and the shapes and dtypes of the traced arrays.
    """

    model: Callable
    static: dict[str, Any]
    data: dict[str, Any]
    key: tuple

    @property
    def concrete(self) -> list[str]:
        """The array arguments bound as concrete values rather than traced."""
        return [name for name, value in self.static.items() if isinstance(value, np.ndarray)]

    def static_signature(self) -> dict[str, Any]:
        """The static values with arrays replaced by their content signature (plain values)."""
        return {name: _array_signature(v) if isinstance(v, np.ndarray) else v for name, v in self.static.items()}

    def numpyro_model(self) -> Callable[..., Any]:
        """The program as a NumPyro model taking the array arguments as keywords."""
        model, static = self.model, self.static

        def program(**data: Any) -> Any:
            with use_backend("numpyro"):
                return _call_with_bound(model, {**static, **data})

        program.__name__ = getattr(model, "__name__", "program")
        return program


#: Per program, the array arguments it needs as concrete values (found by :func:`find_concrete`
#: on its first run), so later runs bind them so from the start; also kept on disk beside the
#: compiled samplers, so a new process skips the failed first compilation too.
_CONCRETE: "weakref.WeakKeyDictionary[Callable, frozenset[str]]" = weakref.WeakKeyDictionary()


def _concrete_path(model: Callable) -> Optional[Path]:
    fingerprint = program_fingerprint(model, {}, __file__)
    if fingerprint is None:
        return None
    return cache_directory().parent / "concrete" / f"{hashlib.sha256(fingerprint.encode()).hexdigest()}.txt"


def known_concrete(model: Callable) -> frozenset[str]:
    """The array arguments ``model`` is known to need as values (this process, else the disk)."""
    if not _weakrefable(model):
        return frozenset()
    known = _CONCRETE.get(model)
    if known is None:
        path = _concrete_path(model)
        try:
            known = frozenset(path.read_text().split()) if path is not None else frozenset()
        except OSError:
            known = frozenset()
        _CONCRETE[model] = known
    return known


def _remember_concrete(model: Callable, names: frozenset[str]) -> None:
    if not _weakrefable(model):
        return
    _CONCRETE[model] = known_concrete(model) | names
    path = _concrete_path(model)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(" ".join(sorted(_CONCRETE[model])))
    except OSError:
        pass  # read-only cache: remembered in this process only


def concretization_errors() -> tuple[type[Exception], ...]:
    """What JAX raises when a program uses a traced value as a Python value (``int(np.max(x))``)."""
    import jax.errors as errors

    return (
        errors.ConcretizationTypeError,
        errors.TracerArrayConversionError,
        errors.TracerIntegerConversionError,
        errors.NonConcreteBooleanIndexError,
    )


def bind_program(model: Callable, args: tuple, kwargs: dict, concrete: frozenset[str] = frozenset()) -> BoundProgram:
    """Split ``model(*args, **kwargs)``'s arguments into traced JAX arrays and fixed values.

    Array arguments are traced (one compiled sampler serves any data of the same shapes),
    except those named in ``concrete`` or known to be needed as values (:func:`known_concrete`;
    a size computed from the data, ``int(np.max(items)) + 1``): these reach the program as
    NumPy arrays, as in NumPyro, whose functions compute on them in Python (a JAX operation
    inside the compiled sampler would be traced even on a constant); they are fixed in the
    compiled sampler, whose cache key holds their content's hash.
    """
    import jax.numpy as jnp

    bound = bind_arguments(model, args, kwargs)
    concrete = concrete | known_concrete(model)
    static, data = {}, {}
    for name, value in bound.items():
        array = _as_array(value)
        if array is None:
            static[name] = value
        elif name in concrete:
            # a copy: JAX remembers the dtype of a NumPy constant it traced by the array object,
            # so the caller's own array, traced here in float64, would break their float32 JAX code
            static[name] = np.array(array, copy=True)
        else:
            data[name] = jnp.asarray(array)
    key = (
        model,
        tuple(sorted((name, _array_signature(v) if isinstance(v, np.ndarray) else _hashable(v)) for name, v in static.items())),
        tuple(sorted((name, tuple(value.shape), str(value.dtype)) for name, value in data.items())),
    )
    return BoundProgram(model, static, data, key)


def _weakrefable(model: Callable) -> bool:
    try:
        weakref.ref(model)
    except TypeError:
        return False
    return True


def _fails_traced(bound: BoundProgram, traced: tuple[str, ...]) -> bool:
    """Whether running the program forward (NumPyro, seeded; latent values traced) with only
    the ``traced`` array arguments traced, the others concrete NumPy, raises a concretization
    error."""
    import jax
    from numpyro import handlers

    concrete = {k: np.asarray(v) for k, v in bound.data.items() if k not in traced}  # as bind_program makes them
    program = BoundProgram(bound.model, {**bound.static, **concrete}, {}, ()).numpyro_model()

    def forward(arrays: dict) -> int:
        handlers.trace(handlers.seed(program, rng_seed=0)).get_trace(**arrays)
        return 0

    try:
        jax.eval_shape(forward, {k: bound.data[k] for k in traced})
    except concretization_errors():
        return True
    except Exception:  # noqa: BLE001 - fails otherwise: not a question of concreteness
        return False
    return False


def find_concrete(bound: BoundProgram) -> Optional[frozenset[str]]:
    """The traced array arguments the program needs as values: those that fail
    :func:`_fails_traced` alone (a value computed from one traced argument is traced, so each
    is tried alone, the others concrete). None when the program fails with every argument
    concrete: it uses a latent's value in Python, which no binding fixes."""
    if _fails_traced(bound, ()):
        return None
    return frozenset(name for name in bound.data if _fails_traced(bound, (name,)))


def rebind_concrete(bound: BoundProgram, args: tuple, kwargs: dict, error: Exception) -> BoundProgram:
    """After ``error`` (a concretization error from compiling the sampler of ``bound``): the
    program bound again with the arrays it needs as values made concrete, remembered for its
    next runs. A ``TypeError`` says what happened when no array argument is the cause."""
    needed = find_concrete(bound)
    if not needed:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TypeError(
            f"{getattr(bound.model, '__name__', 'program')}: the program uses the value of a traced quantity as a "
            f"Python value ({type(error).__name__}: {first_line}). Under NumPyro's samplers the program's latent "
            "values are traced; compute sizes and loop bounds from arguments (arrays, shapes or ints), not from latents"
        ) from error
    _remember_concrete(bound.model, needed)
    return bind_program(bound.model, args, kwargs, needed)


# --------------------------------------------------------------------------------------------
# Which sites get which treatment


def enumerated_sites(structure: ModelStructure) -> list[str]:
    """Latent sites with finite support, summed out by enumeration."""
    return [name for name, site in structure.latent.items() if site.is_enumerable]


def continuous_sites(structure: ModelStructure) -> list[str]:
    return [name for name, site in structure.latent.items() if not site.is_discrete]


def blocking_site(structure: ModelStructure, engine: str, allow_discrete: bool = True, sums_out_discrete: bool = True) -> Optional[str]:
    """Why a gradient-based or random-walk sampler cannot run on ``structure``, or None.
    ``sums_out_discrete``: the sampler enumerates discrete latents out of the density (nuts,
    hmc, mh) rather than drawing them (gibbs)."""
    for site in structure.latent.values():
        if site.is_discrete and not site.is_enumerable:
            return (
                f"latent site {site.name!r} is discrete with {site.support} support; {engine} needs "
                "continuous latents, or finite discrete ones it can sum out by enumeration"
            )
        if site.is_discrete and not allow_discrete:
            return f"latent site {site.name!r} is discrete; {engine} samples continuous latents only"
    coupled = coupled_discrete_latent(structure) if sums_out_discrete else None
    if coupled:
        return coupled
    for site in structure.params.values():
        if site.distribution != "module":
            return (
                f"site {site.name!r} is a param (a point estimate to learn, e.g. with 'map' or 'em'); "
                f"{engine} samples latents, so give {site.name!r} a prior with ppgen.sample"
            )
    return None


def location_scale_sites(structure: ModelStructure) -> list[str]:
    """Latent sites to non-centre: a location-scale family whose location or scale is computed
    from other latents (the funnel-shaped posteriors of hierarchical models)."""
    names = []
    for name, site in structure.latent.items():
        if site.distribution not in LOC_SCALE_FAMILIES or site.is_discrete:
            continue
        if any(parent in structure.latent for parent in site.parents):
            names.append(name)
    return names


def reparameterised(program: Callable, sites: list[str]) -> Callable:
    """``program`` with each named site drawn as ``loc + scale · ε``, ε standardised (NumPyro
    ``LocScaleReparam(0)``); the original site stays as a deterministic site."""
    if not sites:
        return program
    from numpyro import handlers
    from numpyro.infer.reparam import LocScaleReparam

    chosen = set(sites)

    def config(msg: dict) -> Any:
        if msg["name"] not in chosen:
            return None
        base = msg["fn"]
        while hasattr(base, "base_dist"):
            base = base.base_dist
        return LocScaleReparam(centered=0.0, shape_params=LOC_SCALE_FAMILIES.get(type(base).__name__, ()))

    return handlers.reparam(program, config=config)


def enumerated(program: Callable, sites: list[str]) -> Callable:
    """``program`` with the named discrete sites marked for parallel enumeration."""
    if not sites:
        return program
    from numpyro import handlers

    chosen = set(sites)

    def config(site: dict) -> dict:
        return {"enumerate": "parallel"} if site["name"] in chosen else {}

    return handlers.infer_config(program, config_fn=config)


# --------------------------------------------------------------------------------------------
# 2. Potential energy and the constraining map


@dataclass
class ModelFunctions:
    """What a sampler needs from a NumPyro model.

    ``potential_fn_gen(**data)`` returns U(z) = −log p(x, z) (enumerated sites summed out)
    over the unconstrained latents z (a dict); ``postprocess_fn_gen(**data)`` maps z to the
    constrained values of every latent and deterministic site; ``prototype`` gives each
    unconstrained latent's shape and dtype.
    """

    potential_fn_gen: Callable[..., Callable]
    postprocess_fn_gen: Callable[..., Callable]
    prototype: dict[str, Any]


def model_functions(program: Callable, data: dict[str, Any], seed: int = 0) -> ModelFunctions:
    """Trace ``program(**data)`` with NumPyro and build its :class:`ModelFunctions`.

    What NumPyro's ``initialize_model`` builds, without its search for an initial point: the
    chains search themselves, with the run's seed and ``init_radius`` (:mod:`._initial`), and a
    program with no finite point is reported there, naming the site. The program is traced
    once at a point drawn with ``seed`` (any point: only the latents' shapes and which sites
    are enumerated are read from it), with NumPyro's argument validation off, since the point
    may lie where the density is not finite (an overflowing recursion).

    The potential is NumPyro's ``potential_energy``, which maps each unconstrained value u
    through T = ``biject_to(support)`` of its site at every evaluation. The constraining map
    replays the program for every draw, so each draw goes through the support its site has *at
    that draw*: a flat prior on (0, 1 − α) moves with α. (NumPyro's own map reuses the
    transforms of the traced point unless it recognises a support as dependent, which it does
    not through ``IndependentConstraint``, as every ``ImproperUniform``'s is wrapped.)
    """
    import jax
    import numpyro
    from jax import random
    from numpyro import handlers
    from numpyro.distributions import biject_to
    from numpyro.infer.initialization import init_to_uniform
    from numpyro.infer.util import constrain_fn, potential_energy

    with numpyro.validation_enabled(False):
        point = handlers.substitute(handlers.seed(program, random.PRNGKey(seed)), substitute_fn=init_to_uniform)
        model_trace = handlers.trace(point).get_trace(**data)
    prototype, enumerate_out, nesting = {}, False, 0
    for name, site in model_trace.items():
        if site["type"] != "sample":
            continue
        nesting = max([nesting] + [-frame.dim for frame in site["cond_indep_stack"] if frame.dim is not None])
        if site["is_observed"]:
            continue
        if site["fn"].support.is_discrete:
            enumerate_out = True
            continue
        shape = biject_to(site["fn"].support).inverse_shape(np.shape(site["value"]))
        prototype[name] = jax.ShapeDtypeStruct(shape, jax.numpy.result_type(site["value"]))
    density = program
    if enumerate_out:
        from numpyro.contrib.funsor import config_enumerate, enum

        density = enum(config_enumerate(program), -nesting - 1)

    def potential_fn_gen(**data: Any) -> Callable[[dict], Any]:
        return lambda z: potential_energy(density, (), data, z, enum=enumerate_out)

    # enumerated discrete sites are sampled (any value) when replaying: their draws come from
    # discrete_draws, conditioned on the continuous ones
    replayed = handlers.seed(program, rng_seed=0)

    def postprocess_fn_gen(**data: Any) -> Callable[[dict], dict]:
        return lambda z: constrain_fn(replayed, (), data, z, return_deterministic=True)

    return ModelFunctions(potential_fn_gen, postprocess_fn_gen, prototype)


#: Re-exported: the kernels start their chains with it.
initial_point = _initial.initial_point


# --------------------------------------------------------------------------------------------
# 3. Kernels and their compilation


class Kernel(NamedTuple):
    """One Markov chain's transition, blackjax style (all three traceable, per chain).

    ``init(rng_key, data) -> state``; ``step(state, data) -> state``; ``info(state)`` -> dict
    with ``z`` (unconstrained continuous latents), ``log_density`` (log p(x, z), the objective
    the progress bar shows) and the per-draw statistics to keep (``diverging``, ...).
    ``discrete(state)`` -> dict of discrete latents the kernel samples itself (Gibbs), or {}.
    """

    init: Callable[[Any, dict], Any]
    step: Callable[[Any, dict], Any]
    info: Callable[[Any], dict]


class CompiledSampler:
    """A kernel's compiled functions for one program, argument shapes and options.

    Each function (``init``, ``chunk``, ``constrain``, and the post-processing ones) is traced
    and compiled on its first call for given argument shapes, then kept. With a
    ``persistent_key`` (a program whose code can be fingerprinted, see
    :func:`program_fingerprint`), the traced function is also exported (``jax.export``) to
    the cache directory, so a new process skips tracing as well as compiling: that is what
    brings its time to the first draw under two seconds. The model's NumPyro functions
    (``build_functions``, the slowest part of a cold start) are only built when some function
    has to be traced.
    """

    def __init__(
        self,
        build_functions: Callable[[], ModelFunctions],
        make_kernel: Callable[[ModelFunctions], Kernel],
        chunk_length: int,
        program: Callable,
        persistent_key: Optional[str] = None,
    ) -> None:
        self.build_functions = build_functions
        self.make_kernel = make_kernel
        self.chunk_length = chunk_length
        self.program = program
        self.persistent_key = persistent_key
        self._functions: Optional[ModelFunctions] = None
        self._kernel: Optional[Kernel] = None
        self._compiled: dict[tuple, Callable] = {}

    @property
    def functions(self) -> ModelFunctions:
        if self._functions is None:
            self._functions = self.build_functions()
        return self._functions

    @property
    def kernel(self) -> Kernel:
        if self._kernel is None:
            self._kernel = self.make_kernel(self.functions)
        return self._kernel

    def call(self, name: str, build: Callable[[], Callable], *args: Any) -> Any:
        """``build()(*args)``, compiled once per argument shapes (and exported if persistent)."""
        import jax

        leaves, treedef = jax.tree.flatten(args)
        signature = (name, str(treedef), tuple((tuple(np.shape(x)), str(getattr(x, "dtype", type(x)))) for x in leaves))
        function = self._compiled.get(signature)
        if function is None:
            function = _load_exported(self.persistent_key, signature) if self.persistent_key else None
            if function is None:
                function = _compile(build(), args, self.persistent_key, signature)
            self._compiled[signature] = function
        return function(*args)

    # The kernel's pieces, vectorised over chains. The chain state crosses between calls as a
    # flat list of arrays, so the exported functions need no custom pytree types.

    def call_parallel(self, name: str, build: Callable[[], Callable], state: Any, data: dict) -> Any:
        """``build()`` mapped over XLA devices (``jax.pmap``; leading axis of ``state``: one
        device each, ``data`` sent to all), compiled once per argument shapes, never exported."""
        import jax

        leaves, treedef = jax.tree.flatten((state, data))
        signature = ("parallel " + name, str(treedef), tuple((tuple(np.shape(x)), str(getattr(x, "dtype", type(x)))) for x in leaves))
        function = self._compiled.get(signature)
        if function is None:
            function = self._compiled[signature] = jax.pmap(build(), in_axes=(0, None))
        return function(state, data)

    def init(self, keys: Any, data: dict, parallel: bool = False) -> tuple[list, Any]:
        """Every chain's initial state, and its log density (NaN where the chain found no
        finite initial point). ``parallel``: one chain per XLA device (the state then has a
        leading device axis)."""
        import jax

        def build() -> Callable:
            kernel = self.kernel

            def init(keys: Any, data: dict) -> tuple:
                states = jax.vmap(kernel.init, in_axes=(0, None))(keys, data)
                return jax.tree.leaves(states), jax.vmap(kernel.info)(states)["log_density"]

            return init

        if parallel:
            leaves, log_density = self.call_parallel("init", build, keys[:, None], data)
            return leaves, log_density.reshape(-1)
        return self.call("init", build, keys, data)

    def chunk(self, state: list, data: dict, keys: Any, parallel: bool = False) -> tuple[list, dict]:
        """``chunk_length`` transitions of every chain; ``keys`` are the chains' init keys
        (used only to rebuild the state's structure when tracing). ``parallel``: one chain per
        XLA device; the infos come back as in the vectorised run, (iterations, chains, ...)."""
        import jax

        if not parallel:
            return self.call("chunk", lambda: self._chunk_function(keys, data), state, data)
        state, infos = self.call_parallel("chunk", lambda: self._chunk_function(keys[:1], data), state, data)
        infos = jax.tree.map(lambda v: np.moveaxis(np.asarray(v), 0, 1).reshape((v.shape[1], -1) + v.shape[3:]), infos)
        return state, infos

    def _chunk_function(self, keys: Any, data: dict) -> Callable:
        """The vectorised chunk, for as many chains as ``keys`` has rows."""
        import jax
        from jax import lax

        kernel, length = self.kernel, self.chunk_length
        treedef = jax.tree.structure(jax.eval_shape(jax.vmap(kernel.init, in_axes=(0, None)), keys, data))

        def chunk(leaves: list, data: dict) -> tuple:
            def body(carry: Any, _: Any) -> tuple:
                carry = jax.vmap(kernel.step, in_axes=(0, None))(carry, data)
                return carry, jax.vmap(kernel.info)(carry)

            final, infos = lax.scan(body, jax.tree.unflatten(treedef, leaves), None, length=length)
            return jax.tree.leaves(final), infos

        return chunk

    def constrain(self, z: dict, data: dict) -> dict:
        import jax

        def build() -> Callable:
            postprocess_fn_gen = self.functions.postprocess_fn_gen
            return lambda z, data: jax.vmap(postprocess_fn_gen(**data))(z)

        return self.call("constrain", build, z, data)


def _export_path(persistent_key: str, signature: tuple) -> Path:
    digest = hashlib.sha256(repr((persistent_key, signature)).encode()).hexdigest()
    return cache_directory().parent / "exported" / f"{digest}.bin"


def _load_exported(persistent_key: str, signature: tuple) -> Optional[Callable]:
    import jax
    from jax import export

    path = _export_path(persistent_key, signature)
    try:
        exported = export.deserialize(bytearray(path.read_bytes()))
    except (OSError, ValueError, TypeError):
        return None
    return jax.jit(exported.call)


def _compile(function: Callable, args: tuple, persistent_key: Optional[str], signature: tuple) -> Callable:
    """``function`` jitted; with a persistent key, traced once through ``jax.export`` and
    written to the cache directory for the next process."""
    import jax
    from jax import export

    jitted = jax.jit(function)
    if persistent_key is None:
        return jitted
    try:
        exported = export.export(jitted)(*args)
        blob = exported.serialize()
    except Exception:  # noqa: BLE001 - a function JAX cannot export still runs, uncached
        return jitted
    path = _export_path(persistent_key, signature)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial_path = path.with_suffix(f".{os.getpid()}.tmp")
        partial_path.write_bytes(bytes(blob))
        partial_path.replace(path)
    except OSError:
        pass
    return jax.jit(exported.call)


def compiled_sampler(key: Optional[tuple], build: Callable[[], CompiledSampler]) -> tuple[CompiledSampler, bool]:
    """The compiled sampler for ``key`` from the in-process cache, or ``build()`` it."""
    enable_compilation_cache()
    return cached(("sampler",) + key if key is not None else None, build)


# --------------------------------------------------------------------------------------------
# Fingerprints: when may a compiled sampler be reused by another process?


def _file_digest(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _plain(value: Any) -> bool:
    """A value whose ``repr`` identifies it across processes."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def program_fingerprint(model: Callable, static: dict[str, Any], engine_file: str) -> Optional[str]:
    """A string that changes whenever the compiled sampler of ``model`` could: the source
    files of the program, of the functions and classes it refers to by global name, of the
    ppgen core, of this module and of the engine; the fixed arguments; the JAX and NumPyro
    versions. None when
    that cannot be told (a closure over non-plain values, a callable object, non-plain fixed
    arguments): then the sampler is compiled per process only."""
    import inspect as pyinspect

    import jax
    import numpyro

    if not pyinspect.isfunction(model) or not _plain(static):
        return None
    closure = []
    for cell in model.__closure__ or ():
        try:
            contents = cell.cell_contents
        except ValueError:
            return None
        if not _plain(contents):
            return None
        closure.append(contents)
    files = {pyinspect.getsourcefile(model)}
    for name in model.__code__.co_names:
        referenced = model.__globals__.get(name)
        if pyinspect.isfunction(referenced) or pyinspect.isclass(referenced):
            try:
                files.add(pyinspect.getsourcefile(referenced))
            except TypeError:
                continue
    import ppgen

    here = Path(__file__)
    files.update({str(here), str(Path(engine_file))})
    files.update(str(path) for path in here.parent.glob("_*.py"))  # the engines' shared helpers
    files.update(str(path) for path in Path(ppgen.__file__).parent.glob("*.py"))  # the language itself
    digests = sorted((str(f), _file_digest(f)) for f in files if f)
    if any(d is None for _, d in digests):
        return None
    return repr(
        (
            model.__qualname__,  # not __module__: a script's program is __main__ there, a module elsewhere
            digests,
            closure,
            sorted((k, repr(v)) for k, v in static.items()),
            jax.__version__,
            numpyro.__version__,
        )
    )


def chunk_length_for(num_warmup: int, num_samples: int) -> int:
    return max(1, min(CHUNK_LENGTH, num_warmup + num_samples))


# --------------------------------------------------------------------------------------------
# 4. Running the chains


@dataclass
class ChainRun:
    """Kept iterations of every chain: ``infos[key]`` has shape (chains, draws, ...)."""

    infos: dict[str, np.ndarray]
    num_chains: int
    num_draws: int
    interrupted: bool
    seconds_to_first_draw: float
    seconds: float
    devices: int = 1  # XLA devices the chains ran on at once (chain_method="parallel")


def run_chains(
    sampler: CompiledSampler,
    data: dict,
    *,
    seed: int,
    num_chains: int,
    num_warmup: int,
    num_samples: int,
    thinning: int = 1,
    vectorized: bool = True,
    parallel: bool = False,
    progress: bool,
    name: str,
    start: Optional[float] = None,
    init_radius: float = 2.0,
    checkpoint: Optional[Checkpoint] = None,
) -> ChainRun:
    """Run ``num_chains`` chains for ``num_warmup + num_samples`` iterations and keep the last
    ``num_samples`` (every ``thinning``-th). Vectorised chains share one compiled program;
    sequential ones reuse the program compiled for one chain; ``parallel`` ones run that
    program on one XLA device each (see :mod:`ppgen.inference._devices`), so their draws are
    those of sequential chains. A chain that found no finite
    initial point (its kernel drew them with ``init_radius``) stops the run before sampling,
    with an :class:`EngineFailure` naming the site to blame. A ``checkpoint`` keeps, per group
    of chains, the chain states after the last finished chunk and the iterations so far."""
    import jax
    from jax import random

    start = time.perf_counter() if start is None else start
    total = num_warmup + num_samples
    num_chunks = math.ceil(total / sampler.chunk_length)
    keys = random.split(random.PRNGKey(seed), num_chains)
    if parallel:  # one chain per XLA device, in rounds of as many chains as devices
        devices = _devices.parallel_devices(num_chains, name)
        parallel = devices > 1
        groups = [keys[i : i + devices] for i in range(0, num_chains, devices)] if parallel else [keys[i : i + 1] for i in range(num_chains)]
    else:
        groups = [keys] if vectorized else [keys[i : i + 1] for i in range(num_chains)]
    first_draw: list[float] = []
    per_group: list[dict[str, np.ndarray]] = []
    interrupted = False
    for index, group_keys in enumerate(groups):
        states, log_density = sampler.init(group_keys, data, parallel=parallel)
        stuck = np.flatnonzero(~np.isfinite(np.asarray(log_density))) + index * len(group_keys)
        if stuck.size:
            chains = ", ".join(str(chain + 1) for chain in stuck)
            who = f"{name} (chain{'s' if stuck.size > 1 else ''} {chains} of {num_chains})"
            raise _initial.no_start(who, sampler.program, data, seed=seed, radius=init_radius)
        collected: list[dict[str, np.ndarray]] = []

        def step(states: Any) -> tuple[Any, float]:
            states, info = sampler.chunk(states, data, group_keys, parallel=parallel)
            info = jax.device_get(info)
            if not first_draw:
                first_draw.append(time.perf_counter() - start)
            collected.append(info)
            return states, float(np.mean(info["log_density"][-1]))

        def restore(saved: dict[str, Any], collected: list = collected) -> None:
            collected[:] = saved["collected"]

        section = None
        if checkpoint is not None:
            section = checkpoint.section(f"chains {index}", lambda collected=collected: {"collected": collected}, restore, jax_state=True)
        label = name if len(groups) == 1 else f"{name} chain {index + 1}/{len(groups)}"
        outcome = iterate(
            step, states, num_steps=num_chunks, tol=0.0, progress=progress, name=label, objective="log_density", checkpoint=section
        )
        if not collected:
            break
        stacked = jax.tree.map(lambda *chunks: np.concatenate(chunks, axis=0), *collected)
        per_group.append(jax.tree.map(lambda v: np.swapaxes(v, 0, 1), stacked))  # (chains, iterations, ...)
        if outcome.interrupted:
            interrupted = True
            break
    if not per_group:
        raise EngineFailure(f"{name}: interrupted before the first draw")
    infos = jax.tree.map(lambda *groups: np.concatenate(groups, axis=0), *per_group)
    reached = infos["log_density"].shape[1]
    kept = slice(num_warmup, min(total, reached), thinning)
    infos = jax.tree.map(lambda v: v[:, kept], infos)
    num_draws = infos["log_density"].shape[1]
    if num_draws == 0:
        raise EngineFailure(f"{name}: interrupted during warmup, before any draw was kept")
    return ChainRun(
        infos=infos,
        num_chains=infos["log_density"].shape[0],
        num_draws=num_draws,
        interrupted=interrupted,
        seconds_to_first_draw=first_draw[0] if first_draw else float("nan"),
        seconds=time.perf_counter() - start,
        devices=len(groups[0]) if parallel else 1,
    )


# --------------------------------------------------------------------------------------------
# 5. From chains to a Result


def _flatten_chains(array: np.ndarray) -> np.ndarray:
    return array.reshape((-1,) + array.shape[2:])


def constrained_draws(sampler: CompiledSampler, run: ChainRun, data: dict, keep: list[str]) -> dict[str, np.ndarray]:
    """Constrained values of the ``keep`` sites, each (chains · draws, *site_shape)."""
    import jax

    if not run.infos.get("z"):
        return {}
    z = {k: _flatten_chains(v) for k, v in run.infos["z"].items()}
    values = jax.device_get(sampler.constrain(z, data))
    return {name: np.asarray(values[name]) for name in keep if name in values}


def discrete_draws(
    sampler: CompiledSampler,
    sites: list[str],
    samples: dict[str, np.ndarray],
    data: dict,
    seed: int,
    first_available_dim: int,
) -> dict[str, np.ndarray]:
    """Draws of enumerated discrete sites from p(z_discrete | x, continuous draw), one per
    continuous draw (NumPyro ``infer_discrete`` with temperature 1)."""
    if not sites or not samples:
        return {}
    import jax
    from jax import random
    from numpyro import handlers
    from numpyro.contrib.funsor import infer_discrete

    def build() -> Callable:
        enumerated_program = enumerated(sampler.program, sites)

        def one(key: Any, draw: dict, data: dict) -> dict:
            conditioned = handlers.condition(enumerated_program, data=draw)
            discrete = infer_discrete(conditioned, first_available_dim=first_available_dim, temperature=1, rng_key=key)
            trace = handlers.trace(discrete).get_trace(**data)
            return {name: trace[name]["value"] for name in sites}

        return jax.vmap(one, in_axes=(0, 0, None))

    num = next(iter(samples.values())).shape[0]
    keys = random.split(random.PRNGKey(seed + 7919), num)
    values = jax.device_get(sampler.call("discrete", build, keys, samples, data))
    return {name: np.asarray(values[name]) for name in sites}


def pointwise_log_likelihood(
    sampler: CompiledSampler, samples: dict[str, np.ndarray], data: dict, observed: list[str]
) -> dict[str, np.ndarray]:
    """log p(x_site | latent draw) per element of each observed site, (draws, *batch_shape)."""
    if not observed or not samples:
        return {}
    import jax
    from numpyro.infer.util import log_likelihood

    def build() -> Callable:
        program = sampler.program
        return lambda s, d: log_likelihood(program, s, parallel=True, batch_ndims=1, **d)

    values = jax.device_get(sampler.call("log_likelihood", build, samples, data))
    return {name: np.asarray(values[name]) for name in observed if name in values}


def chain_diagnostics(samples: dict[str, np.ndarray], num_chains: int) -> dict[str, dict[str, np.ndarray]]:
    """Split R-hat, bulk and tail ESS of every site (ArviZ), each of the site's shape."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az

        grouped = {
            name: np.asarray(v, dtype=float).reshape((num_chains, -1) + v.shape[1:]) for name, v in samples.items()
        }
        dataset = az.convert_to_dataset(grouped)
        r_hat = az.rhat(dataset)
        ess_bulk = az.ess(dataset, method="bulk")
        ess_tail = az.ess(dataset, method="tail")
    return {
        "r_hat": {name: np.asarray(r_hat[name].values) for name in samples},
        "ess_bulk": {name: np.asarray(ess_bulk[name].values) for name in samples},
        "ess_tail": {name: np.asarray(ess_tail[name].values) for name in samples},
    }


def relabelled_diagnostics(
    structure: ModelStructure, samples: dict[str, np.ndarray], num_chains: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The draws with exchangeable mixture components put in one labelling
    (:func:`ppgen.inference._relabel.relabel_components`: chains in different labellings
    otherwise give R-hat ~ 1e15), and :func:`chain_diagnostics` of the relabelled draws.
    Where components were found, ``diagnostics["relabelling"]`` says so: the groups, the
    number of draws permuted and ``max_r_hat_before`` (R-hat of the draws as sampled)."""
    from ppgen.inference._relabel import relabel_components

    relabelled, records = relabel_components(structure, samples, num_chains)
    diagnostics: dict[str, Any] = chain_diagnostics(relabelled, num_chains)
    if records:
        before = chain_diagnostics(samples, num_chains) if any(r["draws_relabelled"] for r in records) else diagnostics
        diagnostics["relabelling"] = {
            "method": "Hungarian alignment of each draw's components to the mean labelling (pivotal reordering)",
            "groups": records,
            "max_r_hat_before": max_over(before["r_hat"]),
        }
    return relabelled, diagnostics


def observed_values(structure: ModelStructure, bound: BoundProgram) -> dict[str, np.ndarray]:
    """Each observed site's data, as NumPy."""
    out = {}
    for name, site in structure.observed.items():
        argument = site.data_argument
        if argument is not None and argument in bound.data:
            out[name] = np.asarray(bound.data[argument])
        elif argument in bound.concrete:
            out[name] = bound.static[argument]
    return out


def max_over(values: dict[str, np.ndarray]) -> float:
    finite = [np.nanmax(v) for v in values.values() if np.size(v) and np.isfinite(v).any()]
    return float(max(finite)) if finite else float("nan")


def min_over(values: dict[str, np.ndarray]) -> float:
    finite = [np.nanmin(v) for v in values.values() if np.size(v) and np.isfinite(v).any()]
    return float(min(finite)) if finite else float("nan")


#: Fewer effective draws than this (bulk ESS, smallest over the quantities) means the chains
#: barely moved: their draws are a handful of values, whatever R-hat says (chains stuck alike
#: agree with each other; one chain has no between-chain check).
MIN_ESS_BULK = 10.0


def stuck(diagnostics: dict[str, Any]) -> bool:
    """Whether the smallest bulk ESS is below :data:`MIN_ESS_BULK`."""
    ess = diagnostics.get("min_ess_bulk", float("nan"))
    return bool(np.isfinite(ess) and ess < MIN_ESS_BULK)


def warn_if_unreliable(name: str, diagnostics: dict[str, Any], num_chains: int) -> None:
    """A :class:`ReliabilityWarning` for divergences, R-hat above 1.01 or a bulk ESS below
    :data:`MIN_ESS_BULK`."""
    divergences = diagnostics.get("divergences", 0)
    if divergences:
        warnings.warn(
            f"{name}: {divergences} divergent transitions after warmup; the draws may be biased. "
            "Raise target_accept, or reparameterise the model",
            ReliabilityWarning,
            stacklevel=user_stacklevel(),
        )
    r_hat = diagnostics.get("max_r_hat", float("nan"))
    if num_chains > 1 and np.isfinite(r_hat) and r_hat > 1.01:
        warnings.warn(
            f"{name}: max R-hat is {r_hat:.3f} (> 1.01): the chains disagree; run longer "
            "(num_warmup, num_samples) or check for multimodality",
            ReliabilityWarning,
            stacklevel=user_stacklevel(),
        )
    if stuck(diagnostics):
        warnings.warn(
            f"{name}: smallest bulk ESS is {diagnostics['min_ess_bulk']:.1f} (< {MIN_ESS_BULK:g}): the chains "
            "barely moved and their draws may not have left the starting point; run longer or reparameterise",
            ReliabilityWarning,
            stacklevel=user_stacklevel(),
        )


def stats_from_infos(infos: dict[str, np.ndarray], names: dict[str, str]) -> dict[str, np.ndarray]:
    """Per-draw statistics renamed to ArviZ's names (``diverging``, ``lp``, ...), chains
    concatenated."""
    return {arviz_name: _flatten_chains(infos[key]) for key, arviz_name in names.items() if key in infos}


def assemble_result(
    *,
    engine: str,
    structure: ModelStructure,
    bound: BoundProgram,
    sampler: CompiledSampler,
    run: ChainRun,
    samples: dict[str, np.ndarray],
    sample_stats: dict[str, np.ndarray],
    seed: int,
    extra_diagnostics: Optional[dict[str, Any]] = None,
    seconds: float,
    warn: bool = True,
) -> Result:
    """A :class:`Result` with draws of the program's own latent and deterministic sites in
    program order, pointwise log-likelihoods, observed data and chain diagnostics.
    Log-likelihoods come from ``sampler.program``, the program without reparameterisation
    or enumeration, given every latent's draw."""
    order = [n for n, s in structure.sites.items() if s.kind in ("latent", "deterministic") and n in samples]
    samples = {name: samples[name] for name in order}
    observed_names = list(structure.observed)
    log_likelihood = pointwise_log_likelihood(sampler, samples, bound.data, observed_names)
    samples, diagnostics = relabelled_diagnostics(structure, samples, run.num_chains)
    diverging = sample_stats.get("diverging")
    diagnostics["divergences"] = int(np.sum(diverging)) if diverging is not None else 0
    diagnostics["max_r_hat"] = max_over(diagnostics["r_hat"])
    diagnostics["min_ess_bulk"] = min_over(diagnostics["ess_bulk"])
    diagnostics["seconds_to_first_draw"] = run.seconds_to_first_draw
    diagnostics["chain_devices"] = run.devices
    diagnostics.update(extra_diagnostics or {})
    if warn:
        warn_if_unreliable(engine, diagnostics, run.num_chains)
    return Result(
        engine=engine,
        samples=samples,
        diagnostics=diagnostics,
        sample_stats=sample_stats,
        log_likelihood=log_likelihood,
        observed=observed_values(structure, bound),
        num_chains=run.num_chains,
        num_iterations=run.num_draws,
        converged=False if stuck(diagnostics) else (
            (diagnostics["max_r_hat"] < 1.01 and diagnostics["divergences"] == 0) if run.num_chains > 1 else None
        ),
        seconds=seconds,
    )


def latent_and_deterministic(structure: ModelStructure) -> list[str]:
    """Sites reported as draws: the program's continuous latents and deterministic sites."""
    return [
        name
        for name, site in structure.sites.items()
        if (site.kind == "latent" and not site.is_discrete) or site.kind == "deterministic"
    ]


def sample_program(
    *,
    engine: str,
    engine_file: str,
    structure: ModelStructure,
    model: Callable,
    args: tuple,
    kwargs: dict,
    start: float,
    build_functions: Callable[[Callable, dict], ModelFunctions],
    make_kernel: Callable[[ModelFunctions], Kernel],
    options: tuple,
    num_chains: int,
    num_warmup: int,
    num_samples: int,
    thinning: int,
    vectorized: bool,
    seed: int,
    parallel: bool = False,
    progress: bool,
    stats_names: dict[str, str],
    enumerated_out: list[str],
    extra_diagnostics: dict[str, Any],
    draw_chains: Optional[Callable[[CompiledSampler, dict, dict, int], dict[str, np.ndarray]]] = None,
    precision: Precision = "float64",
    init_radius: float = 2.0,
    checkpoint: Optional[Checkpoint] = None,
) -> Result:
    """Everything an engine on NumPyro does around its kernel: bind the program, fetch or
    build its compiled sampler, run the chains, constrain the draws, draw the enumerated
    discrete sites, and assemble the :class:`Result`.

    ``build_functions(program, data)`` gives the potential the kernel samples (the program
    reparameterised or conditioned as the engine needs); ``options`` are the engine options
    the compiled sampler depends on; discrete sites the kernel samples itself are returned by
    its ``info`` under ``"discrete"``. ``draw_chains(sampler, continuous draws, data, seed)``
    draws the enumerated sites of Markov chains summed out of the potential (see
    :mod:`ppgen.inference._chain_numpyro`); the other enumerated sites are drawn given them.
    Everything runs in ``precision`` (JAX's x64 flag set for this scope only, see
    :func:`ppgen.backend.jax_precision`), which is part of the compiled sampler's keys;
    ``init_radius`` is the one the kernel draws initial points with; a ``checkpoint`` saves
    and resumes the chains (see :func:`run_chains`).
    """
    options = options + (precision,)
    extra_diagnostics = {**extra_diagnostics, "precision": precision}

    def compile_and_run(bound: BoundProgram) -> tuple[CompiledSampler, bool, ChainRun]:
        def build() -> CompiledSampler:
            program = bound.numpyro_model()
            fingerprint = program_fingerprint(model, bound.static_signature(), engine_file)
            return CompiledSampler(
                lambda: build_functions(program, bound.data),
                make_kernel,
                chunk_length_for(num_warmup, num_samples),
                program,
                None if fingerprint is None else fingerprint + repr(options),
            )

        sampler, reused = compiled_sampler(bound.key + (engine,) + options, build)
        run = run_chains(
            sampler,
            bound.data,
            seed=seed,
            num_chains=num_chains,
            num_warmup=num_warmup,
            num_samples=num_samples,
            thinning=thinning,
            vectorized=vectorized,
            parallel=parallel,
            progress=progress,
            name=engine,
            start=start,
            init_radius=init_radius,
            checkpoint=checkpoint,
        )
        return sampler, reused, run

    with jax_precision(precision):
        bound = bind_program(model, args, kwargs)
        try:
            sampler, reused, run = compile_and_run(bound)
        except concretization_errors() as error:  # e.g. a size computed from the data: bind it concrete
            bound = rebind_concrete(bound, args, kwargs, error)
            sampler, reused, run = compile_and_run(bound)
        samples = constrained_draws(sampler, run, bound.data, latent_and_deterministic(structure))
        for name, values in run.infos.get("discrete", {}).items():
            samples[name] = _flatten_chains(values)
        continuous = {name: samples[name] for name in continuous_sites(structure) if name in samples}
        chain_draws = draw_chains(sampler, continuous, bound.data, seed) if draw_chains is not None else {}
        samples.update(chain_draws)
        others = [name for name in enumerated_out if name not in chain_draws]
        samples.update(
            discrete_draws(sampler, others, {**continuous, **chain_draws}, bound.data, seed, -1 - structure.max_plate_nesting)
        )
        stats = stats_from_infos(run.infos, stats_names)
        diagnostics = {
            "backend": "numpyro",
            "enumerated": enumerated_out,
            "compiled_sampler_reused": reused,
            "concrete_arguments": bound.concrete,
            **extra_diagnostics,
        }
        result = assemble_result(
            engine=engine,
            structure=structure,
            bound=bound,
            sampler=sampler,
            run=run,
            samples=samples,
            sample_stats=stats,
            seed=seed,
            extra_diagnostics=diagnostics,
            seconds=time.perf_counter() - start,
        )
        return dataclasses.replace(result, interrupted=run.interrupted)
