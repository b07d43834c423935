"""Random-walk Metropolis–Hastings: ``engine="mh"``, the baseline the other samplers are
compared to.

In unconstrained space u (z = T(u), log |det J_T| added to the log density), propose
u' = u + s · D^{1/2} ε with ε ~ N(0, I) and accept with probability
min(1, p(x, u') / p(x, u)). Finite discrete latents are summed out of p(x, u) by enumeration,
as for NUTS, and drawn afterwards for every kept draw.

Warmup adapts the proposal: the scale s by Robbins–Monro, log s ← log s + t^(−0.6)(α − α*)
towards the acceptance rate α* (0.44 in one dimension, 0.234 above, Roberts, Gelman & Gilks
1997); and the diagonal D from the variance of the draws of the middle half of warmup (shrunk
towards 10⁻³ as Stan does), after which s restarts from 2.38/√d (Haario et al. 2001).
Needs only the joint density, no gradient; mixes slowly in high dimension.

References
----------
Metropolis et al. (1953); Hastings (1970). Roberts, Gelman & Gilks (1997), Weak convergence and
optimal scaling of random walk Metropolis algorithms. Haario, Saksman & Tamminen (2001), An
adaptive Metropolis algorithm. Andrieu & Thoms (2008), A tutorial on adaptive MCMC.
"""

from __future__ import annotations

import math
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
from ppgen.results import Result
from ppgen.structure import ModelStructure, inspect

SAMPLE_STATS = {"log_density": "lp", "accept_prob": "acceptance_rate", "step_size": "step_size"}


class MHState(NamedTuple):
    """One chain: position ``u`` (flat, unconstrained), its log density, the proposal's
    log-scale and diagonal, and the warmup's running moments."""

    i: Any
    u: Any
    log_density: Any
    log_scale: Any
    variance: Any
    mean: Any
    m2: Any
    count: Any
    accept_prob: Any
    rng_key: Any


def random_walk_kernel(
    functions: _mcmc.ModelFunctions, *, num_warmup: int, target_accept: Optional[float], init_radius: float
) -> _mcmc.Kernel:
    """Adaptive random-walk Metropolis on the flattened unconstrained latents."""
    import jax.numpy as jnp
    from jax import random
    from jax.flatten_util import ravel_pytree

    prototype = {name: jnp.zeros(p.shape, p.dtype) for name, p in functions.prototype.items()}
    flat, unravel = ravel_pytree(prototype)
    dim = int(flat.size)
    target = target_accept if target_accept is not None else (0.44 if dim == 1 else 0.234)
    start_log_scale = math.log(2.38 / math.sqrt(dim))
    window_start, window_end = num_warmup // 4, (3 * num_warmup) // 4

    def log_density_of(u: Any, data: dict) -> Any:
        value = -functions.potential_fn_gen(**data)(unravel(u))
        return jnp.where(jnp.isfinite(value), value, -jnp.inf)

    def init(rng_key: Any, data: dict) -> MHState:
        key_start, key_chain = random.split(rng_key)
        start = _mcmc.initial_point(key_start, functions.potential_fn_gen(**data), functions.prototype, init_radius)
        u = ravel_pytree(start)[0]
        zeros = jnp.zeros_like(u)
        return MHState(
            jnp.array(0), u, log_density_of(u, data), jnp.array(start_log_scale, u.dtype), jnp.ones_like(u),
            zeros, zeros, jnp.array(0.0, u.dtype), jnp.array(1.0, u.dtype), key_chain,
        )

    def step(state: MHState, data: dict) -> MHState:
        key, key_proposal, key_accept = random.split(state.rng_key, 3)
        proposal = state.u + jnp.exp(state.log_scale) * jnp.sqrt(state.variance) * random.normal(key_proposal, state.u.shape, state.u.dtype)
        proposed_density = log_density_of(proposal, data)
        accept_prob = jnp.exp(jnp.minimum(0.0, proposed_density - state.log_density))
        accept_prob = jnp.where(jnp.isnan(accept_prob), 0.0, accept_prob)
        accepted = random.uniform(key_accept) < accept_prob
        u = jnp.where(accepted, proposal, state.u)
        log_density = jnp.where(accepted, proposed_density, state.log_density)

        # Warmup: Robbins–Monro on the scale throughout; moments of the middle half; at its
        # end, the diagonal is set and the scale restarts (its step counter too).
        i = state.i
        in_warmup = i < num_warmup
        in_window = (i >= window_start) & (i < window_end)
        count = state.count + in_window
        delta = u - state.mean
        mean = jnp.where(in_window, state.mean + delta / jnp.maximum(count, 1.0), state.mean)
        m2 = jnp.where(in_window, state.m2 + delta * (u - mean), state.m2)
        window_closes = (i == window_end - 1) & (count > 1)
        estimate = m2 / jnp.maximum(count - 1.0, 1.0)
        regularised = (count / (count + 5.0)) * estimate + 1e-3 * (5.0 / (count + 5.0))
        variance = jnp.where(window_closes, regularised, state.variance)
        since = jnp.where(i >= window_end, i - window_end + 1, i + 1).astype(u.dtype)
        adapted = state.log_scale + since ** (-0.6) * (accept_prob - target)
        log_scale = jnp.where(in_warmup, adapted, state.log_scale)
        log_scale = jnp.where(window_closes, start_log_scale, log_scale)
        return MHState(i + 1, u, log_density, log_scale, variance, mean, m2, count, accept_prob, key)

    def info(state: MHState) -> dict:
        return {
            "z": unravel(state.u),
            "log_density": state.log_density,
            "accept_prob": state.accept_prob,
            "step_size": jnp.exp(state.log_scale),
        }

    return _mcmc.Kernel(init, step, info)


@register
class MetropolisHastings(Engine):
    """Adaptive random-walk Metropolis–Hastings on the continuous latents (discrete ones
    enumerated out), compiled on NumPyro with chains vectorised.

    Parameters
    ----------
    num_samples, num_warmup : draws kept per chain, and adaptation iterations before them
        (random-walk chains are strongly autocorrelated: expect an ESS of a few percent of
        the draws; use ``thinning`` to keep fewer).
    num_chains : chains, vectorised.
    target_accept : acceptance rate the scale adapts to; None picks 0.44 in one dimension and
        0.234 above.
    thinning : keep every ``thinning``-th draw.
    init_radius, precision : initial points and floating-point precision, as for ``nuts``.
    checkpoint, checkpoint_every : a file (path) the chains' states and draws are saved to
        every ``checkpoint_every`` chunks of iterations, on SIGINT / SIGTERM and at the end;
        the same call again resumes from it (see :mod:`ppgen.checkpoint`).
    seed, progress : random seed; show a progress bar.

    Examples
    --------
    >>> import ppgen
    >>> from ppgen.models.basics import coin
    >>> result = ppgen.infer(coin, [1, 1, 0, 1], engine="mh", num_samples=500, num_warmup=500, progress=False)
    >>> result.samples["rho"].shape
    (2000,)
    """

    name = "mh"
    tasks = frozenset({"infer"})
    summary = "adaptive random-walk Metropolis-Hastings (NumPyro, compiled; discrete latents enumerated)"

    def __init__(
        self,
        num_samples: int = 5000,
        num_warmup: int = 5000,
        num_chains: int = 4,
        target_accept: Optional[float] = None,
        thinning: int = 1,
        init_radius: float = 2.0,
        precision: str = "float64",
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        checkpoint_every: int = 1,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        check_checkpoint_options("MetropolisHastings", checkpoint, checkpoint_every)
        for option, value, minimum in (("num_samples", num_samples, 1), ("num_warmup", num_warmup, 0), ("num_chains", num_chains, 1), ("thinning", thinning, 1)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"MetropolisHastings: {option} must be an integer >= {minimum}, got {value!r}")
        if target_accept is not None and not 0.0 < target_accept < 1.0:
            raise ValueError(f"MetropolisHastings: target_accept must be in (0, 1) or None, got {target_accept!r}")
        if not init_radius > 0:
            raise ValueError(f"MetropolisHastings: init_radius must be > 0, got {init_radius!r}")
        self.num_samples = int(num_samples)
        self.num_warmup = int(num_warmup)
        self.num_chains = int(num_chains)
        self.target_accept = target_accept
        self.thinning = int(thinning)
        self.init_radius = float(init_radius)
        self.precision = check_precision("MetropolisHastings", precision)
        self.checkpoint = checkpoint
        self.checkpoint_every = int(checkpoint_every)
        self.seed = seed
        self.progress = progress

    def check(self, structure: ModelStructure) -> Optional[str]:
        reason = missing_data(structure) or _mcmc.blocking_site(structure, self.name)
        if reason:
            return reason
        for site in structure.params.values():
            return f"site {site.name!r} is a torch module; 'mh' runs on NumPyro only"
        lacking = missing_family(structure)
        if lacking:
            return f"{lacking}; 'mh' runs on NumPyro only (nuts and hmc run such programs on Pyro)"
        if not _mcmc.continuous_sites(structure):
            return "the program has no continuous latent site to sample (use 'enumerate' for discrete-only programs)"
        return None

    def run(self, model: Callable, *args: Any, **kwargs: Any) -> Result:
        start = time.perf_counter()
        structure = inspect(model, *args, **kwargs)
        discrete = _mcmc.enumerated_sites(structure)

        def build_functions(program: Callable, data: dict) -> _mcmc.ModelFunctions:
            return _mcmc.model_functions(_mcmc.enumerated(program, discrete), data)

        def make_kernel(functions: _mcmc.ModelFunctions) -> _mcmc.Kernel:
            return random_walk_kernel(
                functions, num_warmup=self.num_warmup, target_accept=self.target_accept, init_radius=self.init_radius
            )

        result = _mcmc.sample_program(
            engine=self.name,
            engine_file=__file__,
            structure=structure,
            model=model,
            args=args,
            kwargs=kwargs,
            start=start,
            build_functions=build_functions,
            make_kernel=make_kernel,
            options=(self.num_warmup, self.num_samples, self.target_accept, self.init_radius),
            num_chains=self.num_chains,
            num_warmup=self.num_warmup,
            num_samples=self.num_samples,
            thinning=self.thinning,
            vectorized=True,
            seed=self.seed,
            progress=self.progress,
            stats_names=SAMPLE_STATS,
            enumerated_out=discrete,
            extra_diagnostics={},
            precision=self.precision,
            init_radius=self.init_radius,
            checkpoint=Checkpoint.for_engine(self, model, args, kwargs),
        )
        result.diagnostics["acceptance_rate"] = float(np.mean(result.sample_stats["acceptance_rate"]))
        return result
