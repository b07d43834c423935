"""Markov chains summed out of a NumPyro program, and their states drawn (``nuts``, ``hmc``).

The chains are found in the program's structure (:mod:`ppgen.inference._markov_chains`); here
the NumPyro program is run so that each chain becomes one factor, log Σ_z p(z, x | θ), computed
by the forward algorithm of :mod:`ppgen.inference._chain_jax`:

1. :class:`ChainEnumeration`, a NumPyro handler, runs the program with z_t's support laid along
   one of two dims left of the plates (alternating with t, as ``markov`` recycles dims), keeps
   the distribution and value of every site in a chain's scope (those sites stop there: the
   handlers above never see them) and arranges their log-densities into the tables ``unary``
   (T, n, K) and ``pairwise`` (T-1, n or 1, K, K), n the number of elements of the chain's
   plates. Sites alike (same family and argument shapes, same role) are evaluated together,
   their arguments stacked, so a chain of any length takes a few density evaluations.
2. :func:`summed_out` is the program with each chain replaced by that factor: what NUTS and HMC
   sample the continuous latents θ from, through NumPyro's usual potential and initialisation.
3. :func:`drawer` draws every chain's states for each posterior draw of θ by forward filtering,
   backward sampling, compiled once and vectorised over the draws.

Why a handler on the NumPyro program rather than ppgen's enumeration interpreter (which the
Pyro engines use): the tables must be JAX functions of θ, traced inside NumPyro's potential and
differentiated by NUTS, with NumPyro's own distributions, plates and masks; the interpreter
computes with torch.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax import random
from numpyro import handlers
from numpyro.primitives import Messenger

from ppgen.errors import EngineNotApplicable
from ppgen.inference import _chain_jax
from ppgen.inference._common_subexpressions import merged
from ppgen.inference._markov_chains import MarkovChain
from ppgen.inference._mcmc import ModelFunctions

# This module imports JAX and NumPyro: the engines import it on their NumPyro path only.


# --------------------------------------------------------------------------------------------
# 1. The chains' factor tables from a NumPyro run


class ChainEnumeration(Messenger):
    """A NumPyro handler that enumerates ``chains`` and records their factor tables.

    Latent z_t of a chain takes its support (s_1, ..., s_K) along dim ``enumeration_dim(t)``:
    −P−1 for even t and −P−2 for odd t, P the plate nesting. A pairwise factor then varies along
    both dims, and a factor of a later step reuses the dims of earlier ones, which it does not
    touch. Sites of a chain's scope stop at this handler (the handlers above never see them);
    their log-densities (masked and scaled) are kept in :attr:`records`.
    """

    def __init__(self, chains: Sequence[MarkovChain], max_plate_nesting: int) -> None:
        super().__init__()
        self.chains = list(chains)
        self.first_dim = -max_plate_nesting - 1
        self.latent_step: dict[str, tuple[int, int]] = {}
        self.factor_step: dict[str, tuple[int, int, bool]] = {}
        self.hidden: set[str] = set()
        for index, chain in enumerate(self.chains):
            self.latent_step.update({name: (index, t) for t, name in enumerate(chain.latents)})
            self.factor_step.update({name: (index, t, pairwise) for name, t, pairwise in chain.factors})
            self.hidden.update(chain.hidden)
        self.records: list[list[_Record]] = [[] for _ in self.chains]
        self.supports: dict[str, Any] = {}
        self.batch_dims: list[Optional[list[int]]] = [None for _ in self.chains]

    def enumeration_dim(self, t: int) -> int:
        return self.first_dim - (t % 2)

    def process_message(self, msg: dict) -> None:
        name = msg.get("name")
        if name in self.latent_step and msg["type"] == "sample":
            index, t = self.latent_step[name]
            support = _support(msg["fn"])
            self.supports[name] = support
            msg["value"] = support.reshape((-1,) + (1,) * (-self.enumeration_dim(t) - 1))
            self._check_plates(index, name, msg)
            msg["stop"] = True
        elif name in self.factor_step or name in self.hidden:
            msg["stop"] = True

    def postprocess_message(self, msg: dict) -> None:
        name = msg.get("name")
        if msg["type"] != "sample" or name not in self.factor_step:
            return
        index, t, pairwise = self.factor_step[name]
        frames = {frame.dim: frame.size for frame in msg["cond_indep_stack"] if frame.dim is not None}
        self.records[index].append(_Record(name, t, pairwise, msg["fn"], msg["value"], msg.get("scale"), msg.get("intermediates"), frames))

    def _check_plates(self, index: int, name: str, msg: dict) -> None:
        dims = sorted(frame.dim for frame in msg["cond_indep_stack"] if frame.dim is not None)
        if dims and dims[0] <= self.first_dim:
            raise EngineNotApplicable(
                f"latent site {name!r} sits in a plate at dim {dims[0]}, deeper than the program's "
                f"{-self.first_dim - 1} plate dims seen when it was traced"
            )
        if self.batch_dims[index] is None:
            self.batch_dims[index] = dims
        elif self.batch_dims[index] != dims:
            raise EngineNotApplicable(f"latent site {name!r} of the chain {self.chains[index].label} changes plates along the chain")

    def tables(self, index: int) -> tuple[Any, Any]:
        """The chain's ``unary`` (T, n, K) and ``pairwise`` (T-1, n or 1, K, K) log-factor tables."""
        return chain_tables(*self.layout(index))

    def log_partition(self, index: int) -> Any:
        """log Σ_z p(z, x | θ) of the chain, summed over its plates (a scalar)."""
        return _summed_log_partition(*self.layout(index))

    def layout(self, index: int) -> tuple["_Layout", list]:
        """How to build the chain's tables (static) and the arrays they are built from."""
        chain = self.chains[index]
        batch_dims = tuple(self.batch_dims[index] or ())
        batch_shape = tuple(size for _, size in sorted(self._batch_sizes(index).items()))
        groups, arrays = [], []
        for group in _alike(self.records[index]):
            first = group[0]
            dims = (self.enumeration_dim(first.t - 1), self.enumeration_dim(first.t)) if first.pairwise else (self.enumeration_dim(first.t),)
            steps = tuple(r.t - 1 if r.pairwise else r.t for r in group)
            leaves = [jax.tree.flatten(r.fn) for r in group]
            groups.append(_Group(first.name, jax.tree.structure(first.fn), steps, first.pairwise, dims, tuple(sorted(first.frames.items())), first.scale is not None, bool(first.intermediates)))
            arrays.append(([l for l, _ in leaves], [r.value for r in group], first.scale, first.intermediates or None))
        return _Layout(tuple(groups), len(chain.latents), chain.cardinality, batch_dims, batch_shape), arrays

    def _batch_sizes(self, index: int) -> dict[int, int]:
        dims = set(self.batch_dims[index] or [])
        sizes: dict[int, int] = {}
        for record in self.records[index]:
            sizes.update({dim: size for dim, size in record.frames.items() if dim in dims})
        return sizes


def _support(fn: Any) -> Any:
    """The values of a finite distribution, (K,): a NumPy array when they do not depend on
    traced arguments (they rarely do), so that indexing with them (``theta[z]``) is a static
    gather, without the checks of negative indices a traced index needs."""
    try:
        with jax.ensure_compile_time_eval():
            return np.asarray(fn.enumerate_support(expand=False)).reshape(-1)
    except (jax.errors.ConcretizationTypeError, TypeError):
        return fn.enumerate_support(expand=False).reshape(-1)


class _Record(NamedTuple):
    """A site of a chain's scope, as the program ran it."""

    name: str
    t: int
    pairwise: bool
    fn: Any
    value: Any
    scale: Any
    intermediates: Any
    frames: dict[int, int]


def _alike(records: list[_Record]) -> list[list[_Record]]:
    """``records`` grouped by what their densities' computation depends on: the distribution's
    structure and argument shapes, the value's shape, the role (unary or pairwise, and the step's
    parity, which decides the latents' dims) and the plates. Sites with intermediates or a scale
    stay alone."""
    groups: dict[Any, list[_Record]] = {}
    for number, record in enumerate(records):
        leaves, treedef = jax.tree.flatten(record.fn)
        alone = record.intermediates or record.scale is not None
        key = (
            number if alone else None,
            treedef,
            tuple((jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves),
            jnp.shape(record.value),
            jnp.result_type(record.value),
            record.pairwise,
            record.t % 2,
            tuple(sorted(record.frames.items())),
        )
        groups.setdefault(key, []).append(record)
    return list(groups.values())


class _Group(NamedTuple):
    """Alike sites of a chain's scope, evaluated together (static part)."""

    name: str  # the first site's, for messages
    treedef: Any  # of the distribution
    steps: tuple[int, ...]  # t for unary sites, t - 1 for pairwise ones
    pairwise: bool
    latent_dims: tuple[int, ...]
    frames: tuple[tuple[int, int], ...]  # plate dim -> size
    scaled: bool
    has_intermediates: bool


class _Layout(NamedTuple):
    """How a chain's tables are built from the densities of its sites (hashable: a compiled
    function is kept per layout)."""

    groups: tuple[_Group, ...]
    num_steps: int
    cardinality: int
    batch_dims: tuple[int, ...]
    batch_shape: tuple[int, ...]


def _log_densities(group: _Group, leaves: list, values: list, scale: Any, intermediates: Any) -> Any:
    """The log-densities of a group of alike sites, stacked: (G, *batch shape)."""
    if len(leaves) == 1:
        fn = jax.tree.unflatten(group.treedef, leaves[0])
        log_prob = fn.log_prob(values[0], intermediates) if group.has_intermediates else fn.log_prob(values[0])
        log_prob = scale * log_prob if group.scaled else log_prob
        return jnp.asarray(log_prob)[None]
    fns = jax.tree.unflatten(group.treedef, [jnp.stack(column) for column in zip(*leaves)])
    return jax.vmap(lambda fn, value: fn.log_prob(value))(fns, jnp.stack(values))


def chain_tables(layout: _Layout, arrays: list) -> tuple[Any, Any]:
    """A chain's ``unary`` (T, n, K) and ``pairwise`` (T-1, n or 1, K, K) log-factor tables
    from its sites' distributions and values (:meth:`ChainEnumeration.layout`). Sites alike
    (same distribution family and argument shapes, same step parity and role) are evaluated
    together, their arguments stacked: a few density evaluations per chain, whatever its length."""
    T, K, batch_shape = layout.num_steps, layout.cardinality, layout.batch_shape
    n = math.prod(batch_shape)
    unary_parts, pairwise_parts = [], []
    for group, (leaves, values, scale, intermediates) in zip(layout.groups, arrays):
        stacked = _log_densities(group, leaves, values, scale, intermediates)
        x = _chain_layout(group.name, stacked, dict(group.frames), list(layout.batch_dims), list(group.latent_dims))
        (pairwise_parts if group.pairwise else unary_parts).append((np.array(group.steps), x))
    dtype = jnp.result_type(*[x for _, x in unary_parts + pairwise_parts], jnp.zeros(()).dtype)
    unary = jnp.zeros((T,) + batch_shape + (K,), dtype)
    for steps, x in unary_parts:
        unary = unary.at[steps].add(jnp.broadcast_to(x, (len(steps),) + batch_shape + (K,)))
    shared = all(math.prod(x.shape[1:-2]) == 1 for _, x in pairwise_parts)
    pairwise_shape = ((1,) * len(batch_shape) if shared else batch_shape) + (K, K)
    pairwise = jnp.zeros((T - 1,) + pairwise_shape, dtype)
    for steps, x in pairwise_parts:
        x = x.reshape((len(steps),) + x.shape[x.ndim - 2 - len(batch_shape):])
        pairwise = pairwise.at[steps].add(jnp.broadcast_to(x, (len(steps),) + pairwise_shape))
    return unary.reshape(T, n, K), pairwise.reshape(T - 1, 1 if shared else n, K, K)


@partial(jax.jit, static_argnums=0)
def _summed_log_partition(layout: _Layout, arrays: list) -> Any:
    # Compiled as one function: NumPyro's initialisation evaluates the potential eagerly, where
    # every distinct operation would otherwise be compiled on its own.
    return _chain_jax.log_partition(*chain_tables(layout, arrays)).sum()


def _chain_layout(name: str, stacked: Any, frames: dict[int, int], batch_dims: list[int], latent_dims: list[int]) -> Any:
    """Stacked log-density tensors (G, *shape) as (G, *batch, K) or (G, *batch, K_prev, K): the
    chain's plate dims then its latent dims, the sites' other plates multiplied out (summed in
    log space). Dims the tensors are broadcast along stay of size 1."""
    x = jnp.asarray(stacked)
    size = x.shape[0]
    keep = batch_dims + latent_dims
    rank = max(x.ndim - 1, -min(keep + list(frames) + [-1]))
    x = x.reshape((size,) + (1,) * (rank + 1 - x.ndim) + tuple(x.shape[1:]))
    for dim, plate_size in frames.items():
        if dim in batch_dims:
            continue
        x = x.sum(axis=dim, keepdims=True) if x.shape[dim] != 1 else x * plate_size
    stray = [d for d in range(-rank, 0) if d not in keep and x.shape[d] != 1]
    if stray:
        raise EngineNotApplicable(
            f"site {name!r}: its log-density varies along dim {stray[0]}, which is neither one of its "
            "plates nor a chain latent it was traced to depend on; declare batch dimensions with ppgen.plate"
        )
    x = jnp.moveaxis(x, keep, list(range(-len(keep), 0)))
    return x.reshape((size,) + x.shape[x.ndim - len(keep):])


def _enumerated_run(program: Callable, chains: Sequence[MarkovChain], max_plate_nesting: int, data: dict) -> tuple[Any, Any]:
    """Run ``program(**data)`` under :class:`ChainEnumeration`; return (its value, the handler).

    NumPyro's argument checks are off: the verb has checked the data and parameters when it
    traced the program, and on a long chain the checks are most of the traced operations."""
    enumeration = ChainEnumeration(chains, max_plate_nesting)
    with numpyro.validation_enabled(False), enumeration:
        value = program(**data)
    return value, enumeration


# --------------------------------------------------------------------------------------------
# 2. The program with its chains summed out


def summed_out(program: Callable, chains: Sequence[MarkovChain], max_plate_nesting: int) -> Callable:
    """``program`` with each chain's latents summed out exactly: its sites are replaced by one
    factor site, ``"<first>..<last>"``, holding log Σ_z p(z, x | θ) summed over the plates."""
    if not chains:
        return program

    def summed(**data: Any) -> Any:
        value, enumeration = _enumerated_run(program, chains, max_plate_nesting, data)
        for index, chain in enumerate(chains):
            numpyro.factor(chain.label, enumeration.log_partition(index))
        return value

    summed.__name__ = getattr(program, "__name__", "program")
    return summed


def merged_potential(functions: ModelFunctions) -> ModelFunctions:
    """``functions`` with the potential evaluated with its common subexpressions merged
    (:mod:`ppgen.inference._common_subexpressions`): the program recomputes the same transition
    rows and emission parameters at every step, and the gradient then accumulates each copy
    separately, O(T) small kernels per leapfrog step; merged, they are computed and
    differentiated once."""
    generate = functions.potential_fn_gen
    return replace(functions, potential_fn_gen=lambda **data: merged(generate(**data)))


# --------------------------------------------------------------------------------------------
# 3. Draws of the chains' states


def drawer(chains: Sequence[MarkovChain], max_plate_nesting: int, others: Sequence[str] = ()) -> Callable[..., dict[str, np.ndarray]]:
    """A function ``(sampler, samples, data, seed) -> draws`` giving, for every draw θ of the
    continuous latents in ``samples`` (site -> (draws, *shape)), one joint draw from
    p(z | x, θ) of each chain's latents (by FFBS) and of the ``others`` enumerated latents (by
    funsor's ``infer_discrete`` on the program with its chains summed out: they are not in a
    chain's group, so given θ they are independent of it), site -> (draws, *shape)."""

    def draw(sampler: Any, samples: dict[str, np.ndarray], data: dict, seed: int) -> dict[str, np.ndarray]:
        if not samples:
            return {}

        def build() -> Callable:
            one = merged(partial_draw(sampler.program, chains, max_plate_nesting, others))  # a smaller graph to compile
            return jax.vmap(one, in_axes=(0, 0, None))

        num = next(iter(samples.values())).shape[0]
        keys = random.split(random.PRNGKey(seed + 104729), num)
        values = jax.device_get(sampler.call("markov_chains", build, keys, samples, data))
        return {name: np.asarray(value) for name, value in values.items()}

    return draw


def partial_draw(program: Callable, chains: Sequence[MarkovChain], max_plate_nesting: int, others: Sequence[str] = ()) -> Callable:
    """``(key, values, data) -> draws``: one draw of every chain latent (FFBS) and of the
    ``others`` enumerated latents given the continuous latents' ``values`` (one draw, not
    batched), and the values of the deterministic sites computed from the chains (hidden from
    the potential), the program replayed on the draws."""
    from numpyro.contrib.funsor import infer_discrete

    from ppgen.inference._mcmc import enumerated

    hidden = [name for chain in chains for name in chain.hidden]

    def one(key: Any, values: dict, data: dict) -> dict:
        key_program, key_chains, key_others = random.split(key, 3)
        with handlers.seed(rng_seed=key_program), handlers.condition(data=values):
            _, enumeration = _enumerated_run(program, chains, max_plate_nesting, data)
        out = {}
        for index, chain in enumerate(chains):
            unary, pairwise = enumeration.tables(index)
            states = _chain_jax.sample(random.fold_in(key_chains, index), unary, pairwise)
            for t, name in enumerate(chain.latents):
                out[name] = jnp.asarray(enumeration.supports[name])[states[t]].reshape(chain.shape)
        if others:
            conditioned = handlers.condition(enumerated(summed_out(program, chains, max_plate_nesting), list(others)), data=values)
            decoded = infer_discrete(conditioned, first_available_dim=-1 - max_plate_nesting, temperature=1, rng_key=key_others)
            drawn = handlers.trace(decoded).get_trace(**data)
            out.update({name: drawn[name]["value"] for name in others})
        if hidden:
            with numpyro.validation_enabled(False), handlers.seed(rng_seed=key_program), handlers.condition(data={**values, **out}):
                replayed = handlers.trace(program).get_trace(**data)
            out.update({name: replayed[name]["value"] for name in hidden if name in replayed})
        return out

    return one


def exact_marginals(program: Callable, chains: Sequence[MarkovChain], max_plate_nesting: int, values: dict, data: dict) -> dict[str, np.ndarray]:
    """p(z_t = k | x, θ = ``values``) of every chain latent, site -> (*shape, K), for a NumPyro
    ``program(**data)`` (forward–backward on the tables, compiled)."""

    def marginals(values: dict, data: dict) -> dict:
        with handlers.seed(rng_seed=random.PRNGKey(0)), handlers.condition(data=values):
            _, enumeration = _enumerated_run(program, chains, max_plate_nesting, data)
        out = {}
        for index, chain in enumerate(chains):
            probs = _chain_jax.marginals(*enumeration.tables(index))
            out.update({name: probs[t].reshape(chain.shape + (chain.cardinality,)) for t, name in enumerate(chain.latents)})
        return out

    return {name: np.asarray(p) for name, p in jax.jit(marginals)(values, data).items()}
