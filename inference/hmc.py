"""Hamiltonian Monte Carlo: ``engine="nuts"`` (the No-U-Turn Sampler) and ``engine="hmc"``.

Both sample the continuous latents z of a program from p(z | x) ∝ exp(−U(z)),
U(z) = −log p(x, z), by simulating Hamiltonian dynamics H(z, r) = U(z) + ½ rᵀ M⁻¹ r with a
leapfrog integrator and accepting with probability min(1, exp(H − H')) (HMC: a fixed
trajectory length; NUTS: trajectories doubled until they turn back, Hoffman & Gelman 2014).
Warmup adapts the step size (dual averaging towards ``target_accept``) and the mass matrix M
(diagonal, or dense with ``dense_mass=True``) in Stan's windows. Both run in unconstrained
space (z = T(u), T = ``biject_to(support)``, with log |det J_T| added to log p).

What ppgen adds around NumPyro's kernels:

- **Enumeration.** Finite discrete latents are summed out of p(x, z) exactly (parallel
  enumeration), then drawn from p(z_discrete | x, z_continuous) for every draw
  (``infer_discrete``), so the Result has draws for them too. Latents that form a Markov
  chain (a hidden Markov model: every site depends on one z_t or on a pair (z_{t-1}, z_t),
  :mod:`~ppgen.inference._markov_chains`) are summed by a compiled forward pass over the
  chain instead, and drawn by forward filtering, backward sampling
  (:mod:`~ppgen.inference._chain_numpyro`).
- **Automatic non-centring.** A latent from a location-scale family whose location or scale
  depends on other latents (a hierarchical model written the natural, centred way) is
  sampled as θ = μ + τ ε with ε standardised (Gorinova, Moore & Hoffman 2019), which removes
  the funnel that makes centred NUTS diverge. Draws are reported for θ itself.
  ``reparam=False`` turns it off.
- **Compile once.** The sampler is compiled once per program, argument shapes and options,
  all chains vectorised; a second run reuses it, and JAX's persistent cache
  (``~/.cache/ppgen/jax``, or ``$PPGEN_CACHE_DIR``) keeps it for the next process.
- **Float64, initial points, supports.** Runs in float64 unless ``precision="float32"``
  (for the run only); each chain starts inside every support at the best of ten finite
  points drawn from the seed on [−``init_radius``, ``init_radius``] (an ``EngineFailure``
  naming the site when none is finite); each draw is constrained through its site's support at
  that draw, so supports that depend on other latents are respected (``_mcmc``, ``_initial``).

Programs with torch modules run on Pyro's kernels instead (``backend="pyro"`` forces it).

References
----------
Neal (2011), MCMC using Hamiltonian dynamics, Handbook of MCMC ch. 5.
Hoffman & Gelman (2014), The No-U-Turn Sampler, JMLR 15.
Betancourt (2017), A conceptual introduction to Hamiltonian Monte Carlo, arXiv:1701.02434.
Gorinova, Moore & Hoffman (2019), Automatic reparameterisation of probabilistic programs, ICML.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Optional, Union

import numpy as np

from ppgen._numpyro_distributions import missing_family
from ppgen.backend import check_precision
from ppgen.checkpoint import Checkpoint
from ppgen.checkpoint import check_options as check_checkpoint_options
from ppgen.engine import Engine, missing_data, register
from ppgen.inference import _devices, _markov_chains, _mcmc
from ppgen.results import Result
from ppgen.structure import ModelStructure, inspect

#: HMC state fields kept per draw, with the names ArviZ's ``sample_stats`` uses.
SAMPLE_STATS = {
    "diverging": "diverging",
    "log_density": "lp",
    "energy": "energy",
    "num_steps": "n_steps",
    "accept_prob": "acceptance_rate",
    "step_size": "step_size",
}


def hamiltonian_kernel(
    functions: _mcmc.ModelFunctions,
    *,
    algo: str,
    num_warmup: int,
    target_accept: float,
    dense_mass: bool,
    max_tree_depth: int,
    num_leapfrog: Optional[int],
    trajectory_length: float,
    step_size: float,
    init_radius: float,
) -> _mcmc.Kernel:
    """NumPyro's HMC or NUTS transition (``algo``) as a :class:`~ppgen.inference._mcmc.Kernel`."""
    import jax.numpy as jnp
    from jax import random
    from numpyro.infer.hmc import hmc

    init_kernel, sample_kernel = hmc(potential_fn_gen=functions.potential_fn_gen, algo=algo)
    dense = [tuple(sorted(functions.prototype))] if dense_mass else []

    def init(rng_key: Any, data: dict) -> Any:
        key_start, key_chain = random.split(rng_key)
        start = _mcmc.initial_point(key_start, functions.potential_fn_gen(**data), functions.prototype, init_radius)
        return init_kernel(
            start,
            num_warmup,
            step_size=step_size,
            dense_mass=dense,
            target_accept_prob=target_accept,
            num_steps=num_leapfrog,
            trajectory_length=trajectory_length,
            max_tree_depth=max_tree_depth,
            model_kwargs=data,
            rng_key=key_chain,
        )

    def step(state: Any, data: dict) -> Any:
        if algo == "HMC" and num_leapfrog is None:
            # each transition's length drawn from U(L/2, 3L/2) (Neal 2011, §5.4.2.2): a fixed L
            # that is a period of the dynamics (2π for a unit-scale Gaussian after mass
            # adaptation) returns every trajectory to its start and freezes the chain
            rng_key, jitter_key = random.split(state.rng_key)
            length = trajectory_length * random.uniform(jitter_key, minval=0.5, maxval=1.5)
            # L / ε leapfrog steps, at most NUTS's budget 2^max_tree_depth: an adapted step size
            # that collapses would otherwise cost thousands of gradients per draw
            cap = (2**max_tree_depth) * state.adapt_state.step_size
            state = state._replace(trajectory_length=jnp.minimum(length, cap), rng_key=rng_key)
        return sample_kernel(state, model_kwargs=data)

    def info(state: Any) -> dict:
        return {
            "z": state.z,
            "log_density": -state.potential_energy,
            "diverging": state.diverging,
            "energy": state.energy,
            "num_steps": state.num_steps,
            "accept_prob": state.accept_prob,
            "step_size": state.adapt_state.step_size,
        }

    return _mcmc.Kernel(init, step, info)


def choose_backend(structure: ModelStructure, backend: Optional[str]) -> str:
    """NumPyro unless the program holds torch modules or a family NumPyro lacks (or
    ``backend`` says otherwise)."""
    if backend is not None:
        return backend
    has_module = any(site.distribution == "module" for site in structure.params.values())
    return "pyro" if has_module or missing_family(structure) else "numpyro"


class _Hamiltonian(Engine):
    """Shared driver of ``nuts`` and ``hmc``; subclasses set ``algo``."""

    tasks = frozenset({"infer"})
    algo = "NUTS"

    def __init__(
        self,
        num_samples: int = 1000,
        num_warmup: int = 1000,
        num_chains: int = 4,
        target_accept: float = 0.9,
        dense_mass: bool = False,
        max_tree_depth: int = 10,
        num_leapfrog: Optional[int] = None,
        trajectory_length: float = 2 * math.pi,
        step_size: float = 1.0,
        reparam: bool = True,
        backend: Optional[str] = None,
        chain_method: str = "vectorized",
        thinning: int = 1,
        init_radius: float = 2.0,
        num_threads: Optional[int] = 1,
        precision: str = "float64",
        seed: int = 0,
        progress: bool = True,
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        checkpoint_every: int = 1,
    ) -> None:
        cls = type(self).__name__
        check_checkpoint_options(cls, checkpoint, checkpoint_every)
        for option, value, minimum in (
            ("num_samples", num_samples, 1),
            ("num_warmup", num_warmup, 0),
            ("num_chains", num_chains, 1),
            ("max_tree_depth", max_tree_depth, 1),
            ("thinning", thinning, 1),
        ):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{cls}: {option} must be an integer >= {minimum}, got {value!r}")
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"{cls}: target_accept must be in (0, 1), got {target_accept!r}")
        if num_leapfrog is not None and (not isinstance(num_leapfrog, int) or num_leapfrog < 1):
            raise ValueError(f"{cls}: num_leapfrog must be a positive integer or None, got {num_leapfrog!r}")
        if not trajectory_length > 0 or not step_size > 0 or not init_radius > 0:
            raise ValueError(
                f"{cls}: trajectory_length, step_size and init_radius must be > 0, got "
                f"{trajectory_length!r}, {step_size!r}, {init_radius!r}"
            )
        if backend not in (None, "numpyro", "pyro"):
            raise ValueError(f"{cls}: backend must be None, 'numpyro' or 'pyro', got {backend!r}")
        if chain_method not in ("vectorized", "sequential", "parallel"):
            raise ValueError(f"{cls}: chain_method must be 'vectorized', 'sequential' or 'parallel', got {chain_method!r}")
        if chain_method == "parallel":  # before JAX starts: XLA reads the device count once
            _devices.request_host_devices(int(num_chains))
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise ValueError(f"{cls}: num_threads must be a positive integer or None, got {num_threads!r}")
        self.num_samples = int(num_samples)
        self.num_warmup = int(num_warmup)
        self.num_chains = int(num_chains)
        self.target_accept = float(target_accept)
        self.dense_mass = bool(dense_mass)
        self.max_tree_depth = int(max_tree_depth)
        self.num_leapfrog = num_leapfrog
        self.trajectory_length = float(trajectory_length)
        self.step_size = float(step_size)
        self.reparam = bool(reparam)
        self.backend = backend
        self.chain_method = chain_method
        self.thinning = int(thinning)
        self.init_radius = float(init_radius)
        self.num_threads = num_threads
        self.precision = check_precision(cls, precision)
        self.seed = seed
        self.progress = progress
        self.checkpoint = checkpoint
        self.checkpoint_every = int(checkpoint_every)

    def check(self, structure: ModelStructure) -> Optional[str]:
        reason = missing_data(structure) or _mcmc.blocking_site(structure, self.name)
        if reason:
            return reason
        if not _mcmc.continuous_sites(structure):
            return (
                "the program has no continuous latent site to sample (its discrete latents can be "
                "summed out exactly: use 'enumerate')"
            )
        if choose_backend(structure, self.backend) == "numpyro":
            for site in structure.params.values():
                if site.distribution == "module":
                    return f"site {site.name!r} is a torch module, which runs on Pyro only (use backend='pyro')"
            return _markov_chains.blocking_group(structure, _mcmc.enumerated_sites(structure), self.name)
        else:
            for site in structure.latent.values():
                if site.support_parents:
                    return (
                        f"latent site {site.name!r} has a support that depends on {', '.join(map(repr, site.support_parents))}, "
                        "and Pyro's HMC maps every draw through the support at its first point (wrong draws); "
                        "run it on NumPyro (backend='numpyro'), which maps each draw through its own support"
                    )
        return None

    def _kernel_options(self) -> tuple:
        return (
            self.algo,
            self.num_warmup,
            self.num_samples,
            self.target_accept,
            self.dense_mass,
            self.max_tree_depth,
            self.num_leapfrog,
            self.trajectory_length,
            self.step_size,
            self.init_radius,
            self.reparam,
        )

    def run(self, model: Callable, *args: Any, **kwargs: Any) -> Result:
        start = time.perf_counter()
        structure = inspect(model, *args, **kwargs)
        if choose_backend(structure, self.backend) == "pyro":
            from ppgen.inference import _pyro_mcmc

            if self.checkpoint is not None:
                raise ValueError(
                    f"{type(self).__name__}: checkpoint is supported on the NumPyro backend only, and this program runs on Pyro "
                    "(Pyro's MCMC keeps its sampler state inside its own loop); pass checkpoint=None"
                )
            return _pyro_mcmc.run_hamiltonian(self, structure, model, args, kwargs, start)
        return self._run_numpyro(structure, model, args, kwargs, start)

    def _run_numpyro(self, structure: ModelStructure, model: Callable, args: tuple, kwargs: dict, start: float) -> Result:
        from ppgen.inference import _chain_numpyro

        discrete = _mcmc.enumerated_sites(structure)
        noncentred = _mcmc.location_scale_sites(structure) if self.reparam else []
        nesting = structure.max_plate_nesting
        chains = _markov_chains.find_chains(structure, discrete)
        in_chains = {name for chain in chains for name in chain.latents}
        by_funsor = [name for name in discrete if name not in in_chains]

        def build_functions(program: Callable, data: dict) -> _mcmc.ModelFunctions:
            summed = _chain_numpyro.summed_out(program, chains, nesting)
            functions = _mcmc.model_functions(_mcmc.enumerated(_mcmc.reparameterised(summed, noncentred), by_funsor), data)
            return _chain_numpyro.merged_potential(functions) if chains else functions

        def make_kernel(functions: _mcmc.ModelFunctions) -> _mcmc.Kernel:
            return hamiltonian_kernel(
                functions,
                algo=self.algo,
                num_warmup=self.num_warmup,
                target_accept=self.target_accept,
                dense_mass=self.dense_mass,
                max_tree_depth=self.max_tree_depth,
                num_leapfrog=self.num_leapfrog,
                trajectory_length=self.trajectory_length,
                step_size=self.step_size,
                init_radius=self.init_radius,
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
            options=self._kernel_options(),
            num_chains=self.num_chains,
            num_warmup=self.num_warmup,
            num_samples=self.num_samples,
            thinning=self.thinning,
            vectorized=self.chain_method == "vectorized",
            parallel=self.chain_method == "parallel",
            seed=self.seed,
            progress=self.progress,
            stats_names=SAMPLE_STATS,
            enumerated_out=discrete,
            extra_diagnostics={"reparameterised": noncentred, "markov_chains": [chain.label for chain in chains]},
            draw_chains=_chain_numpyro.drawer(chains, nesting, by_funsor) if chains else None,
            precision=self.precision,
            init_radius=self.init_radius,
            checkpoint=Checkpoint.for_engine(self, model, args, kwargs),
        )
        if self.algo == "NUTS" and "n_steps" in result.sample_stats:
            result.sample_stats["tree_depth"] = np.ceil(np.log2(result.sample_stats["n_steps"] + 1.0)).astype(np.int64)
        if "step_size" in result.sample_stats:
            result.diagnostics["step_size"] = float(result.sample_stats["step_size"][-1])
        return result


@register
class NUTS(_Hamiltonian):
    """The No-U-Turn Sampler on the continuous latents (discrete ones enumerated out).

    Parameters
    ----------
    num_samples, num_warmup : draws kept per chain, and adaptation iterations before them.
    num_chains : chains, run vectorised (``chain_method="vectorized"``), one after another
        (``"sequential"``), or one per XLA device (``"parallel"``: on CPU ppgen asks XLA for
        ``num_chains`` host devices, which works only if the engine is created before JAX has
        run anything; otherwise a warning, and the chains run one after another). Parallel
        chains give the draws of sequential ones, in less wall time on several cores. NumPyro
        backend only (the Pyro backend runs chains one after another).
    target_accept : mean acceptance probability the step size adapts to. The default 0.9
        (NumPyro's is 0.8) is what gives zero divergences on the centred eight-schools funnel
        once it is non-centred automatically.
    dense_mass : adapt a dense mass matrix (for strongly correlated posteriors).
    max_tree_depth : NUTS doubles the trajectory at most this many times.
    reparam : non-centre location-scale latents whose loc/scale depend on other latents.
    backend : None (NumPyro, or Pyro for programs with torch modules), "numpyro" or "pyro".
    num_threads : torch intra-op threads on the Pyro backend (1 is fastest for small models
        on a shared machine); None leaves torch's setting alone.
    init_radius : each chain starts at a point drawn uniformly from [−init_radius,
        init_radius] on the unconstrained scale (inside every support), redrawn up to 100 times
        while the log density or its gradient is not finite (Stan's rule); if none is, the run
        stops with an ``EngineFailure`` naming the site to blame.
    precision : "float64" (default, as Stan and PyMC) or "float32" (faster on some hardware,
        but a covariance with a small jitter or a long recursion can lose the posterior). Set
        for this run only: JAX's process-wide x64 flag is left as it was.
    seed, progress : random seed (also of the initial points); show a progress bar.
    checkpoint, checkpoint_every : a file (path) the chains' states and draws are saved to
        every ``checkpoint_every`` chunks of iterations (NumPyro backend only), on SIGINT /
        SIGTERM (the run then returns the draws kept so far with ``interrupted=True``) and at
        the end; the same call again resumes from it (see :mod:`ppgen.checkpoint`).

    Examples
    --------
    >>> import ppgen
    >>> from ppgen.models.basics import coin
    >>> result = ppgen.infer(coin, [1, 1, 0, 1], engine="nuts", num_samples=200, num_warmup=200, progress=False)
    >>> result.samples["rho"].shape
    (800,)
    """

    name = "nuts"
    summary = "No-U-Turn Sampler (NumPyro, compiled; discrete latents enumerated; auto non-centring)"
    algo = "NUTS"


@register
class HMC(_Hamiltonian):
    """Hamiltonian Monte Carlo with a trajectory length around ``trajectory_length`` L (each
    transition's drawn from U(L/2, 3L/2), so that an L that is a period of the dynamics cannot
    freeze the chain), or exactly ``num_leapfrog`` steps, step size and mass matrix adapted in
    warmup; otherwise as :class:`NUTS` (same options). A trajectory takes L / ε leapfrog steps, at most
    2^``max_tree_depth`` (NUTS's budget): where the adapted step size collapses, the trajectory
    is shortened rather than running thousands of gradients per draw."""

    name = "hmc"
    summary = "Hamiltonian Monte Carlo, fixed trajectory length (NumPyro, compiled)"
    algo = "HMC"
