"""Automatic differentiation variational inference: ``engine="advi"``.

Every continuous latent u is mapped to unconstrained space, u = T(η) with T = ``biject_to`` its
support, and given a fully factorised Gaussian q(η) = Π_i Normal(η_i | m_i, s_i) (Pyro's
``AutoNormal``). The ELBO

    L(m, s) = E_q[log p(x, T(η)) + log |det J_T(η)|] + H[q]

is maximised by stochastic gradient ascent with reparameterised draws η = m + s ε
(Kucukelbir et al. 2017). Finite discrete latents are summed out exactly inside the ELBO
(``TraceEnum_ELBO``: parallel enumeration), so q covers the continuous latents and the discrete
ones get their exact conditional given each draw. ``param`` sites of the program are learned
jointly (variational EM).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, Union

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO, TraceEnum_ELBO, config_enumerate, infer_discrete
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_median

from ppgen._numpyro_distributions import missing_family
from ppgen.backend import check_precision, jax_precision, torch_precision, to_numpy, use_backend
from ppgen.checkpoint import Checkpoint
from ppgen.checkpoint import check_options as check_checkpoint_options
from ppgen.engine import Engine, missing_data, register
from ppgen.results import Result
from ppgen.structure import ModelStructure, inspect

from ._gradient_steps import GradientSteps, optimizer_factory
from ._vi import check_common_options, draw_from_guide, estimate_elbo, guide_sites, param_values, pyro_arguments, run_svi, site_shapes


def advi_reason(structure: ModelStructure) -> Optional[str]:
    """Why ADVI does not apply (or None)."""
    reason = missing_data(structure)
    if reason:
        return reason
    for site in structure.latent.values():
        if site.is_discrete and not site.is_enumerable:
            return (
                f"latent site {site.name!r} is discrete with {site.support} support; advi enumerates "
                "discrete latents and needs finite support"
            )
    if not any(not s.is_discrete for s in structure.latent.values()) and not structure.params:
        return "the program has no continuous latent and no param site to fit"
    return None


@register
class ADVI(Engine):
    """Mean-field Gaussian VI in unconstrained space, trained by reparameterised SVI.

    Parameters
    ----------
    num_steps : number of gradient steps.
    learning_rate : Adam step size.
    num_particles : draws of q per gradient estimate.
    optimizer : ``"adam"`` or ``"clipped_adam"``.
    init_scale : initial standard deviation of every Gaussian factor (means start at the prior
        median).
    num_samples : draws from the fitted q returned in ``Result.samples``.
    num_elbo_evaluations : independent ELBO estimates averaged for ``log_evidence``.
    tol : stop early when the (noisy) ELBO changes by less than ``tol`` relatively; 0 runs all steps.
    backend : ``"numpyro"`` (compiled with JAX; the default for programs without torch modules)
        or ``"pyro"`` (the default for neural programs).
    precision : "float64" (default) or "float32", on either backend, for this run only.
    seed, progress : random seed and progress bar.
    checkpoint, checkpoint_every : a file (path) the run's state is saved to every
        ``checkpoint_every`` steps, on SIGINT / SIGTERM (the run then returns the state reached
        with ``interrupted=True``) and at the end; the same call again resumes from it (see
        :mod:`ppgen.checkpoint`).

    Returns a :class:`~ppgen.Result` with ``samples`` (continuous latents from q, discrete ones
    from their exact conditional given each draw), ``params`` (``"<site>.loc"`` and
    ``"<site>.scale"`` of each Gaussian factor in unconstrained space, and the program's own
    ``param`` sites), ``log_evidence`` (ELBO ± standard error, a lower bound) and
    ``traces["elbo"]`` (the per-step estimates).

    Examples
    --------
    >>> import ppgen
    >>> from ppgen.models.basics import heights
    >>> result = ppgen.infer(heights, [172.0, 168.5, 181.2, 175.0], engine="advi", num_steps=300)
    >>> sorted(result.samples)
    ['mu', 'sigma']

    References
    ----------
    Kucukelbir, Tran, Ranganath, Gelman & Blei (2017), Automatic differentiation variational
    inference, JMLR 18.
    """

    name = "advi"
    tasks = frozenset({"infer", "learn", "score"})
    summary = "mean-field Gaussian VI in unconstrained space (AutoNormal, reparameterised gradients)"

    def __init__(
        self,
        num_steps: int = 2000,
        learning_rate: float = 0.02,
        num_particles: int = 1,
        optimizer: str = "adam",
        init_scale: float = 0.1,
        num_samples: int = 1000,
        num_elbo_evaluations: int = 100,
        tol: float = 0.0,
        backend: Optional[str] = None,
        precision: str = "float64",
        seed: int = 0,
        progress: bool = False,
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        checkpoint_every: int = 100,
    ) -> None:
        check_common_options("ADVI", num_steps, learning_rate, num_particles, optimizer, num_samples)
        check_checkpoint_options("ADVI", checkpoint, checkpoint_every)
        if backend not in (None, "pyro", "numpyro"):
            raise ValueError(f"ADVI: backend must be None (automatic), 'pyro' or 'numpyro', got {backend!r}")
        if not init_scale > 0:
            raise ValueError(f"ADVI: init_scale must be > 0, got {init_scale!r}")
        if not isinstance(num_elbo_evaluations, int) or num_elbo_evaluations < 1:
            raise ValueError(f"ADVI: num_elbo_evaluations must be a positive integer, got {num_elbo_evaluations!r}")
        self.num_steps = int(num_steps)
        self.learning_rate = float(learning_rate)
        self.num_particles = int(num_particles)
        self.optimizer = optimizer
        self.init_scale = float(init_scale)
        self.num_samples = int(num_samples)
        self.num_elbo_evaluations = num_elbo_evaluations
        self.tol = tol
        self.backend = backend
        self.precision = check_precision("ADVI", precision)
        self.seed = seed
        self.progress = progress
        self.checkpoint = checkpoint
        self.checkpoint_every = int(checkpoint_every)

    def check(self, structure: ModelStructure) -> Optional[str]:
        return advi_reason(structure)

    def run(self, model: Callable, *args: Any, **kwargs: Any) -> Result:
        structure = inspect(model, *args, **kwargs)
        has_modules = any(site.distribution == "module" for site in structure.params.values())
        backend = self.backend or ("pyro" if has_modules or missing_family(structure) else "numpyro")
        if backend == "numpyro" and has_modules:
            raise ValueError("ADVI: programs with torch modules run on backend='pyro'")
        if backend == "numpyro":
            from ._advi_numpyro import run_numpyro

            with jax_precision(self.precision):
                return run_numpyro(self, model, structure, args, kwargs)
        return self._run_pyro(model, structure, args, kwargs)

    def _run_pyro(self, model: Callable, structure: ModelStructure, args: tuple, kwargs: dict) -> Result:
        start = time.perf_counter()
        args, kwargs = pyro_arguments(args, kwargs)
        discrete = [name for name, site in structure.latent.items() if site.is_discrete]
        continuous = [name for name, site in structure.latent.items() if not site.is_discrete]
        nesting = structure.max_plate_nesting
        checkpoint = Checkpoint.for_engine(self, model, args, kwargs)
        with use_backend("pyro"), torch_precision(getattr(torch, self.precision)), torch.random.fork_rng(), pyro.get_param_store().scope():
            torch.manual_seed(self.seed)
            store = pyro.get_param_store()
            program = config_enumerate(model, default="parallel") if discrete else model
            guide = AutoNormal(poutine.block(model, hide=discrete), init_loc_fn=init_to_median, init_scale=self.init_scale)
            if discrete:
                loss = TraceEnum_ELBO(max_plate_nesting=nesting, num_particles=self.num_particles)
            else:
                loss = Trace_ELBO(num_particles=self.num_particles)
            steps = GradientSteps(program, guide, loss, optimizer_factory(self.optimizer, self.learning_rate))
            progress = run_svi(steps, lambda _: (args, kwargs), self.num_steps, self.tol, self.progress, self.name, checkpoint)
            estimate = estimate_elbo(loss, program, guide, args, kwargs, self.num_elbo_evaluations)
            samples = {}
            if continuous:
                shapes, batch_rank = guide_sites(guide, args, kwargs)
                samples = draw_from_guide(guide, args, kwargs, self.num_samples, {name: shapes[name] for name in continuous}, batch_rank)
            if discrete:
                samples.update(self._discrete_draws(program, guide, args, kwargs, discrete, nesting, site_shapes(model, args, kwargs)))
            params = param_values(store)
        return Result(
            engine=self.name,
            samples=samples,
            params=params,
            log_evidence=estimate,
            traces={"elbo": np.asarray(progress.objectives)},
            converged=progress.converged if self.tol > 0 else None,
            num_iterations=progress.num_iterations,
            interrupted=progress.interrupted,
            diagnostics={"guide": "AutoNormal", "backend": "pyro", "enumerated": discrete, "elbo_stderr": estimate.stderr},
            seconds=time.perf_counter() - start,
        )

    def _discrete_draws(
        self, program: Callable, guide: Callable, args: tuple, kwargs: dict, discrete: list[str], nesting: int, shapes: dict
    ) -> dict[str, np.ndarray]:
        """Discrete latents drawn from p(z | x, u) for each draw u of q (``infer_discrete``)."""
        # one draw at a time: Predictive's vectorising plate and the enumeration dimensions of
        # infer_discrete do not compose reliably in Pyro
        sampler = infer_discrete(program, first_available_dim=-nesting - 1, temperature=1)
        with torch.no_grad():
            draws = Predictive(sampler, guide=guide, num_samples=self.num_samples, return_sites=discrete)(*args, **kwargs)
        return {k: to_numpy(v).reshape((self.num_samples,) + shapes[k]) for k, v in draws.items()}
