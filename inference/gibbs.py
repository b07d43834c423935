"""Gibbs sampling with HMC inside: ``engine="gibbs"``.

Each sweep updates every finite discrete latent from its exact complete conditional, then
the continuous latents by one NUTS transition given the discrete values (Metropolis-within-
Gibbs with an HMC block, as NumPyro's ``HMCGibbs``/``DiscreteHMCGibbs`` do).

The complete conditional of a discrete site z with cardinality K is computed by enumeration
over its Markov blanket:

    p(z_i = k | everything else) ∝ p(z_i = k | parents) · Π_{c ∈ children(z)} p(c_i | z_i = k, ...).

The plates z sits in declare its elements conditionally independent given everything else,
so all elements of z are drawn at once: the log-probabilities of z and its children at
z ≡ k (k = 0..K−1, vectorised) are summed over every dimension that is not one of z's
plates, giving logits of shape (K, *z_shape). Discrete sites are updated one after another.
After a discrete update the HMC state's potential energy and gradient are recomputed under
the new values; NUTS adapts its step size and mass matrix during warmup as usual.

References
----------
Geman & Geman (1984); Gelfand & Smith (1990), Sampling-based approaches to calculating
marginal densities. Hoffman & Gelman (2014) for the NUTS block.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, NamedTuple, Optional, Union

import numpy as np

from ppgen._numpyro_distributions import missing_family
from ppgen.backend import check_precision
from ppgen.checkpoint import Checkpoint
from ppgen.checkpoint import check_options as check_checkpoint_options
from ppgen.engine import Engine, missing_data, register
from ppgen.inference import _mcmc
from ppgen.inference.hmc import SAMPLE_STATS
from ppgen.results import Result
from ppgen.structure import ModelStructure, improper_latent, inspect

_DISCRETE = "_ppgen_discrete"  # keyword carrying the discrete values into the conditioned program


class GibbsState(NamedTuple):
    hmc: Any
    discrete: dict
    rng_key: Any


def conditioned_program(program: Callable) -> Callable:
    """``program`` with its discrete sites fixed to the values passed as ``_ppgen_discrete``."""
    from numpyro import handlers

    def conditioned(**data: Any) -> Any:
        values = data.pop(_DISCRETE, None)
        if values is None:  # constraining continuous draws: discrete values do not matter
            return handlers.seed(program, 0)(**data)
        return handlers.condition(program, data=values)(**data)

    return conditioned


def _log_blanket(program: Callable, site: str, blanket: list[str], plates: set[str], values: dict, data: dict) -> Any:
    """Σ over ``blanket`` sites of log p(site | parents), each summed over every dimension that
    is not a plate of ``site``, shaped like ``site``'s batch shape."""
    import jax.numpy as jnp
    from numpyro import handlers

    model_trace = handlers.trace(handlers.seed(handlers.condition(program, data=values), 0)).get_trace(**data)
    target = model_trace[site]
    shape = tuple(target["fn"].batch_shape)
    total = jnp.zeros(shape)
    for name in blanket:
        node = model_trace[name]
        log_prob = node["fn"].log_prob(node["value"])
        if node.get("mask") is not None:
            log_prob = jnp.where(node["mask"], log_prob, 0.0)
        kept = {frame.dim for frame in node["cond_indep_stack"] if frame.name in plates}
        axes = tuple(axis for axis in range(-jnp.ndim(log_prob), 0) if axis not in kept)
        log_prob = jnp.sum(log_prob, axis=axes, keepdims=True)
        if len(shape) < jnp.ndim(log_prob):
            log_prob = log_prob.reshape(log_prob.shape[jnp.ndim(log_prob) - len(shape) :] if shape else ())
        total = total + log_prob
    return total


def gibbs_kernel(
    functions: _mcmc.ModelFunctions,
    program: Callable,
    structure: ModelStructure,
    discrete_prototype: dict[str, Any],
    *,
    num_warmup: int,
    target_accept: float,
    dense_mass: bool,
    max_tree_depth: int,
    init_radius: float,
) -> _mcmc.Kernel:
    """Discrete sites by exact complete conditionals, then one NUTS transition."""
    import jax
    import jax.numpy as jnp
    from jax import random
    from numpyro.infer.hmc import hmc

    discrete_names = list(discrete_prototype)
    has_continuous = bool(functions.prototype)
    init_kernel, sample_kernel = hmc(potential_fn_gen=functions.potential_fn_gen, algo="NUTS")
    dense = [tuple(sorted(functions.prototype))] if dense_mass else []

    def constrained(hmc_state: Any, discrete: dict, data: dict) -> dict:
        if not has_continuous:
            return {}
        values = functions.postprocess_fn_gen(**data, **{_DISCRETE: discrete})(hmc_state.z)
        return {name: values[name] for name in _mcmc.continuous_sites(structure) if name in values}

    def update_discrete(rng_key: Any, discrete: dict, continuous: dict, data: dict) -> dict:
        discrete = dict(discrete)
        for name in discrete_names:
            site = structure.sites[name]
            blanket = [name] + [child for child in structure.children(name) if child in structure.sites]
            cardinality = site.support.cardinality
            current = discrete[name]

            def logits_at(k: Any, name: str = name, blanket: list = blanket, current: Any = current) -> Any:
                values = {**continuous, **discrete, name: jnp.full_like(current, k)}
                return _log_blanket(program, name, blanket, set(site.plates), values, data)

            logits = jax.vmap(logits_at)(jnp.arange(cardinality))  # (K, *site_shape)
            rng_key, key = random.split(rng_key)
            draw = random.categorical(key, logits, axis=0)
            discrete[name] = draw.astype(current.dtype).reshape(current.shape)
        return discrete

    def refresh(hmc_state: Any, discrete: dict, data: dict) -> Any:
        potential = functions.potential_fn_gen(**data, **{_DISCRETE: discrete})
        energy, grad = jax.value_and_grad(potential)(hmc_state.z)
        return hmc_state._replace(potential_energy=energy, z_grad=grad)

    def init(rng_key: Any, data: dict) -> GibbsState:
        key_discrete, key_start, key_chain, key_state = random.split(rng_key, 4)
        keys = random.split(key_discrete, max(len(discrete_names), 1))
        discrete = {
            name: random.randint(k, proto.shape, 0, structure.sites[name].support.cardinality).astype(proto.dtype)
            for k, (name, proto) in zip(keys, discrete_prototype.items())
        }
        state = None
        if has_continuous:
            kwargs = {**data, _DISCRETE: discrete}
            start = _mcmc.initial_point(key_start, functions.potential_fn_gen(**kwargs), functions.prototype, init_radius)
            state = init_kernel(
                start, num_warmup, dense_mass=dense, target_accept_prob=target_accept,
                max_tree_depth=max_tree_depth, model_kwargs=kwargs, rng_key=key_chain,
            )
            discrete = update_discrete(key_state, discrete, constrained(state, discrete, data), data)
            state = refresh(state, discrete, data)
        return GibbsState(state, discrete, key_state)

    def step(state: GibbsState, data: dict) -> GibbsState:
        key, key_discrete = random.split(state.rng_key)
        hmc_state = state.hmc
        discrete = update_discrete(key_discrete, state.discrete, constrained(hmc_state, state.discrete, data), data)
        if has_continuous:
            hmc_state = refresh(hmc_state, discrete, data)
            hmc_state = sample_kernel(hmc_state, model_kwargs={**data, _DISCRETE: discrete})
        return GibbsState(hmc_state, discrete, key)

    def info(state: GibbsState) -> dict:
        out: dict = {"discrete": state.discrete}
        if has_continuous:
            hmc_state = state.hmc
            out.update(
                z=hmc_state.z,
                log_density=-hmc_state.potential_energy,
                diverging=hmc_state.diverging,
                energy=hmc_state.energy,
                num_steps=hmc_state.num_steps,
                accept_prob=hmc_state.accept_prob,
                step_size=hmc_state.adapt_state.step_size,
            )
        else:
            out.update(z={}, log_density=jnp.zeros(()))
        return out

    return _mcmc.Kernel(init, step, info)


@register
class Gibbs(Engine):
    """Gibbs sampling: finite discrete latents from their exact complete conditionals
    (by enumeration, vectorised over plates), continuous latents by NUTS in the same sweep.

    Parameters
    ----------
    num_samples, num_warmup, num_chains : sweeps kept per chain, warmup sweeps, chains
        (vectorised).
    target_accept, dense_mass, max_tree_depth : of the NUTS block (see ``nuts``).
    thinning : keep every ``thinning``-th sweep.
    init_radius, precision : initial points and floating-point precision, as for ``nuts``.
    checkpoint, checkpoint_every : a file (path) the chains' states and draws are saved to
        every ``checkpoint_every`` chunks of iterations, on SIGINT / SIGTERM and at the end;
        the same call again resumes from it (see :mod:`ppgen.checkpoint`).
    seed, progress : random seed; show a progress bar.

    Examples
    --------
    >>> import ppgen
    >>> from ppgen.models.basics import coin
    >>> result = ppgen.infer(coin, [1, 1, 0, 1], engine="gibbs", num_samples=200, num_warmup=200, progress=False)
    >>> result.samples["rho"].shape
    (800,)
    """

    name = "gibbs"
    tasks = frozenset({"infer"})
    summary = "Gibbs: discrete latents from exact conditionals, continuous by NUTS (NumPyro, compiled)"

    def __init__(
        self,
        num_samples: int = 1000,
        num_warmup: int = 1000,
        num_chains: int = 4,
        target_accept: float = 0.9,
        dense_mass: bool = False,
        max_tree_depth: int = 10,
        thinning: int = 1,
        init_radius: float = 2.0,
        precision: str = "float64",
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        checkpoint_every: int = 1,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        check_checkpoint_options("Gibbs", checkpoint, checkpoint_every)
        for option, value, minimum in (
            ("num_samples", num_samples, 1), ("num_warmup", num_warmup, 0), ("num_chains", num_chains, 1),
            ("max_tree_depth", max_tree_depth, 1), ("thinning", thinning, 1),
        ):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"Gibbs: {option} must be an integer >= {minimum}, got {value!r}")
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"Gibbs: target_accept must be in (0, 1), got {target_accept!r}")
        if not init_radius > 0:
            raise ValueError(f"Gibbs: init_radius must be > 0, got {init_radius!r}")
        self.num_samples = int(num_samples)
        self.num_warmup = int(num_warmup)
        self.num_chains = int(num_chains)
        self.target_accept = float(target_accept)
        self.dense_mass = bool(dense_mass)
        self.max_tree_depth = int(max_tree_depth)
        self.thinning = int(thinning)
        self.init_radius = float(init_radius)
        self.precision = check_precision("Gibbs", precision)
        self.checkpoint = checkpoint
        self.checkpoint_every = int(checkpoint_every)
        self.seed = seed
        self.progress = progress

    def check(self, structure: ModelStructure) -> Optional[str]:
        reason = missing_data(structure) or _mcmc.blocking_site(structure, self.name, sums_out_discrete=False)
        if reason:
            return reason
        for site in structure.params.values():
            return f"site {site.name!r} is a torch module; 'gibbs' runs on NumPyro only"
        lacking = missing_family(structure)
        if lacking:
            return f"{lacking}; 'gibbs' runs on NumPyro only (nuts and hmc run such programs on Pyro)"
        if not structure.latent:
            return "the program has no latent site"
        improper = improper_latent(structure)
        if improper:
            return (
                f"latent site {improper!r} has an improper flat prior (ImproperUniform), which gibbs cannot draw "
                "from; use nuts or hmc"
            )
        return None

    def run(self, model: Callable, *args: Any, **kwargs: Any) -> Result:
        start = time.perf_counter()
        structure = inspect(model, *args, **kwargs)
        discrete = _mcmc.enumerated_sites(structure)
        prototypes: dict[str, Any] = {}

        def build_functions(program: Callable, data: dict) -> _mcmc.ModelFunctions:
            import jax
            from numpyro import handlers

            model_trace = handlers.trace(handlers.seed(program, 0)).get_trace(**data)
            prototypes.update(
                {name: jax.ShapeDtypeStruct(model_trace[name]["value"].shape, model_trace[name]["value"].dtype) for name in discrete}
            )
            initial = {name: model_trace[name]["value"] for name in discrete}
            if not _mcmc.continuous_sites(structure):
                return _mcmc.ModelFunctions(lambda **_: (lambda z: 0.0), lambda **_: (lambda z: {}), {})
            return _mcmc.model_functions(conditioned_program(program), {**data, _DISCRETE: initial})

        def make_kernel(functions: _mcmc.ModelFunctions) -> _mcmc.Kernel:
            return gibbs_kernel(
                functions, sampler_program[0], structure, dict(prototypes),
                num_warmup=self.num_warmup, target_accept=self.target_accept, dense_mass=self.dense_mass,
                max_tree_depth=self.max_tree_depth, init_radius=self.init_radius,
            )

        sampler_program: list[Callable] = []

        def build_functions_and_remember(program: Callable, data: dict) -> _mcmc.ModelFunctions:
            sampler_program[:] = [program]
            return build_functions(program, data)

        result = _mcmc.sample_program(
            engine=self.name,
            engine_file=__file__,
            structure=structure,
            model=model,
            args=args,
            kwargs=kwargs,
            start=start,
            build_functions=build_functions_and_remember,
            make_kernel=make_kernel,
            options=(self.num_warmup, self.num_samples, self.target_accept, self.dense_mass, self.max_tree_depth, self.init_radius),
            num_chains=self.num_chains,
            num_warmup=self.num_warmup,
            num_samples=self.num_samples,
            thinning=self.thinning,
            vectorized=True,
            seed=self.seed,
            progress=self.progress,
            stats_names=SAMPLE_STATS,
            enumerated_out=[],
            extra_diagnostics={"gibbs_sites": discrete},
            precision=self.precision,
            init_radius=self.init_radius,
            checkpoint=Checkpoint.for_engine(self, model, args, kwargs),
        )
        return result
