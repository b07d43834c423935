"""Stochastic variational inference with a guide program: ``engine="svi"``.

Maximises the evidence lower bound

    ELBO(φ, θ) = E_{q_φ(z | x)}[log p_θ(x, z) − log q_φ(z | x)] ≤ log p_θ(x)

over the guide's parameters φ and the model's ``param`` sites and modules θ, with
reparameterised gradients (Hoffman et al. 2013; Kingma & Welling 2014). The guide is a program
over the model's latents, or ``ppgen.amortize(encoder, latent="z")`` (an encoder network giving
q(z_i | x_i) for each datum, a Gaussian or, with ``flow=``, a Gaussian pushed through a flow), or, by default, a mean-field Gaussian (``AutoNormal``).

Minibatches: ``subsample_size=B`` slices the data plate's arguments to B random data per step
(without replacement within an epoch) and multiplies the log densities of every site in that
plate, in the model and in the guide, by N / B, so each step's ELBO is an unbiased estimate of
the full-data ELBO. The default guide keeps its factors q(z_i) of per-datum latents for all N
data, and its plate picks the minibatch's. Finite discrete latents the guide does not sample
are summed out (``TraceEnum_ELBO``). With an amortised Gaussian guide the KL terms are analytic
(``TraceMeanField_ELBO``); through a flow, by Monte Carlo.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO, config_enumerate
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_median, init_to_sample
from pyro.poutine.messenger import Messenger

from ppgen.backend import to_numpy, torch_precision, use_backend
from ppgen.checkpoint import Checkpoint
from ppgen.checkpoint import check_options as check_checkpoint_options
from ppgen.engine import Engine, current_task, missing_data, register
from ppgen.results import Estimate, Result
from ppgen.structure import ModelStructure, improper_latent, inspect

from ._chain_elbo import STEP_SAMPLINGS, WEIGHTINGS, ChainELBO, closed_form_chain
from ._distributed import GlobalBatchNoise, World, world
from ._gradient_steps import GradientSteps, copy_modules, named_modules, optimizer_factory, sliced
from ._restarts import INITS, Restarts, StartRecord, check_restart_options, resolve_restarts, start_kinds, symmetric_sites, warn_symmetric
from ._vi import Info, check_common_options, draw_from_guide, estimate_elbo, guide_sites, param_values, pyro_arguments, run_svi

ELBOS = ("auto", "trace", "meanfield")
_INITS = tuple(kind for kind in INITS if kind in ("auto", "program", "random"))
_AGREEMENT = 2.0  # starts agree when their ELBO estimates differ by at most 2 standard errors of the difference


@dataclass
class _Fit:
    """One trained start and what the result is read from."""

    progress: Any
    estimate: Estimate
    store: dict
    guide: Callable
    guide_name: str
    program: Callable
    loss: Any
    args: tuple
    kwargs: dict
    copies: dict
    guided: dict
    batch_rank: int
    enumerated: list
    plate: Optional[str]
    training_seconds: float


class _ScalePlate(Messenger):
    """Multiplies the log density of every site inside plate ``name`` by ``factor`` (N / B)."""

    def __init__(self, name: str, factor: float) -> None:
        super().__init__()
        self.name, self.factor = name, factor

    def _pyro_sample(self, msg: dict) -> None:
        if any(frame.name == self.name for frame in msg["cond_indep_stack"]):
            msg["scale"] = msg["scale"] * self.factor


def _scaled(program: Callable, plate: str, factor: float) -> Callable:
    def scaled(*args: Any, **kwargs: Any) -> Any:
        with _ScalePlate(plate, factor):
            return program(*args, **kwargs)

    return scaled


def _gaussian_amortized(guide: Callable) -> bool:
    """An amortised guide whose q(z | x) is the encoder's Gaussian: its KL to a Gaussian prior is
    analytic. Through a flow it is not, and the ELBO is estimated by Monte Carlo."""
    amortized = getattr(guide, "amortized", None)
    return amortized is not None and amortized.flow is None


@register
class SVI(Engine):
    """Stochastic variational inference with a guide program or an amortised encoder.

    Parameters
    ----------
    guide : a guide program (same signature as the model), ``ppgen.amortize(encoder)``,
        ``ppgen.flow_guide("iaf")`` (a flow over all continuous latents), or None
        for a mean-field Gaussian over the continuous latents (``AutoNormal``).
    num_steps : gradient steps (an epoch is N / subsample_size steps).
    learning_rate : step size of Adam / ClippedAdam.
    optimizer : ``"adam"`` or ``"clipped_adam"`` (gradient norm clipped to ``clip_norm``).
    subsample_size : minibatch size B over the data plate (None: full batches).
    subsample_plate : the plate to subsample (default: the largest plate holding observed data).
    num_particles : draws of the guide per gradient estimate.
    elbo : ``"auto"`` (enumeration when needed, analytic KL for amortised guides, else Monte
        Carlo), ``"trace"`` or ``"meanfield"`` (analytic KL; for guides whose sites are plain
        distributions with a registered KL to the prior).
    weighting : for a guide with closed-form Gaussian marginals q(x_t | x_0) over a chain (a
        diffusion program's ``forward_process``), whose ELBO svi estimates from one sampled step
        per datum instead of all T (:mod:`ppgen.inference._chain_elbo`): ``"simple"``
        trains on Ho et al.'s reweighted loss ‖ε − ε_θ‖², ``"elbo"`` on the bound itself. Either
        way the reported objective and ``log_evidence`` are the ELBO.
    step_sampling : for such a guide, how each datum draws its own step t: ``"uniform"`` or
        ``"importance"`` (p_t ∝ √E[L_t²] from the terms seen so far, Nichol & Dhariwal 2021;
        uniform until every step has been seen 10 times), each term weighted by 1 / p_t.
    num_step_groups : for such a guide, K, the most distinct steps t per gradient step. None:
        one per datum when the program declares its chain with ``ppgen.chain`` (its step runs
        once on the minibatch), 8 for a ``markov`` loop (one run of its step per distinct t).
    num_samples : draws from the guide returned in ``Result.samples``.
    num_elbo_evaluations : full-data ELBO estimates averaged for ``log_evidence``.
    copy_modules : train copies of the torch modules passed as arguments and of the encoder
        (the originals stay untouched, so runs are reproducible); the trained ones are in
        ``Result.diagnostics["modules"]``. With ``False`` the given modules are trained in place.
    num_restarts : number of starts (seeds ``seed``, ``seed + 1``, ...); the one with the best
        final ELBO estimate is kept. ``"auto"``: up to 4 when the program has a discrete latent
        (a mixture's components can collapse onto each other), stopping once two starts' ELBOs
        agree within two standard errors of their difference; else 1. Needs ``copy_modules``.
    init : the first start of the automatic guide: ``"auto"`` / ``"program"`` (the prior
        median, ``init_to_median``) or ``"random"`` (a prior draw, ``init_to_sample``); later
        starts are prior draws. A guide program starts from its own parameters, differently
        seeded per start.
    tol, seed, progress : early stopping on the (noisy) ELBO (0: run all steps), seed, progress bar.
    checkpoint, checkpoint_every : a file (path) the run's state is saved to every
        ``checkpoint_every`` steps, on SIGINT / SIGTERM (the run then returns the state reached
        with ``interrupted=True``) and at the end; the same call again resumes from it (see
        :mod:`ppgen.checkpoint`).

    Returns a :class:`~ppgen.Result` with ``params`` (the parameter store: guide and model
    parameters, modules as ``name$$$weight``), ``samples`` (latents drawn from the guide on the
    full data), ``log_evidence`` (ELBO ± standard error, a lower bound), ``traces["elbo"]``
    (per-step full-data estimates), ``diagnostics["modules"]`` (trained modules by name),
    ``diagnostics["restarts"]`` (every start's final ELBO estimate) and, for programs with
    discrete latents, ``marginals`` (q of each discrete latent) and ``diagnostics["symmetric"]``
    (the latents whose q is the same for every datum: collapsed components, reported with a
    :class:`~ppgen.errors.ConvergenceWarning` and ``converged=False``).

    Examples
    --------
    >>> import ppgen
    >>> from ppgen.models.basics import heights
    >>> result = ppgen.infer(heights, [172.0, 168.5, 181.2, 175.0], engine="svi", num_steps=200, learning_rate=0.05)
    >>> sorted(result.samples)
    ['mu', 'sigma']
    """

    name = "svi"
    tasks = frozenset({"infer", "learn", "score"})
    summary = "stochastic VI with a guide program or amortised encoder; minibatches (Pyro)"

    def __init__(
        self,
        guide: Optional[Callable] = None,
        num_steps: int = 1000,
        learning_rate: float = 0.01,
        optimizer: str = "adam",
        subsample_size: Optional[int] = None,
        subsample_plate: Optional[str] = None,
        num_particles: int = 1,
        elbo: str = "auto",
        weighting: str = "simple",
        step_sampling: str = "uniform",
        num_step_groups: Optional[int] = None,
        num_samples: int = 1000,
        num_elbo_evaluations: int = 10,
        clip_norm: float = 10.0,
        copy_modules: bool = True,
        num_restarts: Restarts = "auto",
        init: str = "auto",
        tol: float = 0.0,
        seed: int = 0,
        progress: bool = False,
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        checkpoint_every: int = 100,
    ) -> None:
        check_common_options("SVI", num_steps, learning_rate, num_particles, optimizer, num_samples)
        check_checkpoint_options("SVI", checkpoint, checkpoint_every)
        if guide is not None and not callable(guide):
            raise TypeError(f"SVI: guide must be a program, ppgen.amortize(encoder) or None, got {type(guide).__name__}")
        if subsample_size is not None and (not isinstance(subsample_size, (int, np.integer)) or subsample_size < 1):
            raise ValueError(f"SVI: subsample_size must be a positive integer or None, got {subsample_size!r}")
        if elbo not in ELBOS:
            raise ValueError(f"SVI: elbo must be one of {ELBOS}, got {elbo!r}")
        if not isinstance(num_elbo_evaluations, int) or num_elbo_evaluations < 1:
            raise ValueError(f"SVI: num_elbo_evaluations must be a positive integer, got {num_elbo_evaluations!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"SVI: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if step_sampling not in STEP_SAMPLINGS:
            raise ValueError(f"SVI: step_sampling must be one of {STEP_SAMPLINGS}, got {step_sampling!r}")
        if num_step_groups is not None and (not isinstance(num_step_groups, (int, np.integer)) or isinstance(num_step_groups, bool) or num_step_groups < 1):
            raise ValueError(f"SVI: num_step_groups must be a positive integer or None, got {num_step_groups!r}")
        check_restart_options("SVI", num_restarts, init, _INITS)
        if not copy_modules and num_restarts not in ("auto", 1):
            raise ValueError(f"SVI: num_restarts={num_restarts!r} needs copy_modules=True (every start trains fresh copies of the modules)")
        if guide is not None and init != "auto":
            raise ValueError(f"SVI: init={init!r} sets the start of the automatic guide; a guide program starts from its own parameters (use init='auto')")
        self.num_restarts = num_restarts
        self.init = init
        self.guide = guide
        self.num_steps = int(num_steps)
        self.learning_rate = float(learning_rate)
        self.optimizer = optimizer
        self.subsample_size = None if subsample_size is None else int(subsample_size)
        self.subsample_plate = subsample_plate
        self.num_particles = int(num_particles)
        self.elbo = elbo
        self.weighting = weighting
        self.step_sampling = step_sampling
        self.num_step_groups = None if num_step_groups is None else int(num_step_groups)
        self.num_samples = int(num_samples)
        self.num_elbo_evaluations = num_elbo_evaluations
        self.clip_norm = clip_norm
        self.copy_modules = copy_modules
        self.tol = tol
        self.seed = seed
        self.progress = progress
        self.checkpoint = checkpoint
        self.checkpoint_every = int(checkpoint_every)

    def check(self, structure: ModelStructure) -> Optional[str]:
        reason = missing_data(structure)
        if reason:
            return reason
        for site in structure.latent.values():
            if site.is_discrete and not site.is_enumerable:
                return f"latent site {site.name!r} is discrete with {site.support} support; svi enumerates discrete latents and needs finite support"
        if not structure.latent and not structure.params:
            return "the program has no latent and no param site"
        if self.subsample_plate is not None and self.subsample_plate not in structure.plates:
            return f"subsample_plate {self.subsample_plate!r} is not a plate of the program (plates: {', '.join(structure.plates) or 'none'})"
        improper = improper_latent(structure) if self.guide is None else None
        if improper:
            return (
                f"latent site {improper!r} has an improper flat prior (ImproperUniform), which svi's automatic guide "
                "cannot draw its starting point from; pass a guide, or use advi or nuts"
            )
        return None

    # ---- pieces -------------------------------------------------------------------------------
    def _data_plate(self, structure: ModelStructure) -> str:
        if self.subsample_plate is not None:
            return self.subsample_plate
        candidates = {p for site in structure.observed.values() for p in site.plates}
        if not candidates:
            raise ValueError("SVI: subsample_size needs a plate holding observed data; the program has none")
        return max(candidates, key=lambda name: structure.plates[name].size)

    def _guide_program(
        self, model: Callable, structure: ModelStructure, discrete: list[str], minibatch: dict[str, Any], kind: str
    ) -> tuple[Callable, str]:
        if self.guide is None:
            # the program's start (the prior median) or a prior draw, which breaks the
            # symmetry of exchangeable components that the median keeps
            guide = AutoNormal(
                poutine.block(model, hide=discrete), init_loc_fn=init_to_sample if kind == "random" else init_to_median, init_scale=0.1,
                create_plates=self._minibatch_plate(structure, minibatch),
            )
            return guide, "AutoNormal"
        if hasattr(self.guide, "bind"):
            bound = self.guide.bind(model, structure, copy_encoder=self.copy_modules)
            return bound.program, repr(self.guide)
        return self.guide, getattr(self.guide, "__name__", type(self.guide).__name__)

    def _minibatch_plate(self, structure: ModelStructure, minibatch: dict[str, Any]) -> Optional[Callable]:
        """For ``AutoNormal`` under minibatches (or data-parallel shards): its data plate,
        subsampled to the step's indices ``minibatch["index"]`` (all data when None). Its
        per-datum parameters keep the full size N and are indexed by the plate, and the plate
        scales their log density by N / B."""
        if self.subsample_size is None and minibatch.get("world") is None:
            return None
        plate = structure.plates[self._data_plate(structure)]
        return lambda *args, **kwargs: pyro.plate(plate.name, plate.size, dim=plate.dim, subsample=minibatch["index"])

    # ---- run -----------------------------------------------------------------------------------
    def run(self, model: Callable, *args: Any, **kwargs: Any) -> Result:
        start = time.perf_counter()
        structure = inspect(model, *args, **kwargs)
        discrete_latents = [name for name, site in structure.latent.items() if site.is_discrete]
        count, until_agree = resolve_restarts(self.num_restarts, bool(discrete_latents) and self.copy_modules)
        checkpoint = Checkpoint.for_engine(self, model, args, kwargs)
        shards = world()
        with use_backend("pyro"), torch_precision(enabled=structure.float64), torch.random.fork_rng(), pyro.get_param_store().scope():
            store = pyro.get_param_store()
            record = StartRecord()
            for index, kind in enumerate(start_kinds(self.init, count, derived="random")):
                store.clear()
                torch.manual_seed(self.seed + index)
                fit = self._fit(model, structure, discrete_latents, args, kwargs, kind, checkpoint, f"start {index}")
                bound = fit.estimate
                record.add(kind, bound.value, fit)
                if fit.progress.interrupted or (until_agree and record.agree(_AGREEMENT * bound.stderr * math.sqrt(2))):
                    break
            fit = record.best
            store.clear()
            store.set_state(fit.store)
            # a noising chain's T latents per datum are q's own noise, not worth drawing
            chain_guide = closed_form_chain(fit.guide) is not None
            latent = {} if chain_guide else {name: fit.guided[name] for name in structure.latent if name in fit.guided}
            samples = draw_from_guide(fit.guide, fit.args, fit.kwargs, self.num_samples, latent, fit.batch_rank) if latent else {}
            params = param_values(store)
            modules = named_modules(fit.guide, fit.copies, fit.args, fit.kwargs, store)
            marginals = self._discrete_marginals(fit) if discrete_latents else {}
        symmetric = symmetric_sites(marginals)
        if symmetric:
            warn_symmetric("svi", symmetric)
        converged = fit.progress.converged if self.tol > 0 else None
        return Result(
            engine=self.name,
            samples=samples,
            params=params,
            marginals=marginals,
            log_evidence=fit.estimate,
            traces={"elbo": np.asarray(fit.progress.objectives)},
            converged=False if symmetric else converged,
            num_iterations=fit.progress.num_iterations,
            interrupted=fit.progress.interrupted,
            diagnostics={
                "guide": fit.guide_name,
                "elbo": type(fit.loss).__name__,
                "enumerated": fit.enumerated,
                "subsample_size": self.subsample_size,
                "subsample_plate": fit.plate,
                "modules": Info(modules),
                "elbo_stderr": fit.estimate.stderr,
                "training_seconds": fit.training_seconds,
                "processes": 1 if shards is None else shards.size,  # data-parallel ranks (torch.distributed)
                **record.diagnostics(),
                "symmetric": symmetric,
            },
            seconds=time.perf_counter() - start,
        )

    def _fit(
        self, model: Callable, structure: ModelStructure, discrete_latents: list[str], args: tuple, kwargs: dict, kind: str,
        checkpoint: Optional[Checkpoint] = None, key: str = "start 0",
    ) -> _Fit:
        """One start: fresh module copies and guide, trained; its full-data ELBO estimate and
        the parameter store it reached."""
        copies: dict[int, torch.nn.Module] = {}
        if self.copy_modules:
            args, kwargs = copy_modules(args, copies), copy_modules(kwargs, copies)
        args, kwargs = pyro_arguments(args, kwargs)
        # the step's data indices, while training (the rank's shard of them under torch.distributed)
        minibatch: dict[str, Any] = {"index": None, "world": world()}
        guide, guide_name = self._guide_program(model, structure, discrete_latents, minibatch, kind)
        guided, batch_rank = guide_sites(guide, args, kwargs)
        enumerated = [name for name in discrete_latents if name not in guided]
        missing = [name for name, site in structure.latent.items() if not site.is_discrete and name not in guided]
        if missing:
            raise ValueError(f"SVI: the guide does not sample the continuous latent site(s) {missing}")
        program = config_enumerate(model, default="parallel") if enumerated else model
        chain = closed_form_chain(guide)
        num_steps = self.num_steps
        if current_task() == "score":
            # a score scores the program as given: only the guide's parameters are fitted (the
            # model's are hidden from the optimiser), and a fixed guide (a noising chain) is not
            # fitted at all
            num_steps = 0 if chain is not None else num_steps
            program = poutine.block(program, hide_types=["param"])
        loss = ChainELBO(chain, self.weighting, self.num_particles, self.step_sampling, self.num_step_groups) if chain is not None else self._loss(structure, enumerated, amortized=_gaussian_amortized(guide))
        optimizer = optimizer_factory(self.optimizer, self.learning_rate, self.clip_norm)
        if chain is not None and minibatch["world"] is not None and self.step_sampling == "importance":
            # p_t would follow each rank's own terms: the ranks would draw different steps
            raise ValueError("SVI: step_sampling='importance' is not trained data-parallel; use step_sampling='uniform' under torch.distributed")
        step_args, plate, factor = self._minibatches(structure, args, kwargs, minibatch)
        if chain is not None and minibatch.get("noise") is not None:
            loss.noise = minibatch["noise"]  # the data's steps t and x_t noise drawn for the global batch
        shards = minibatch["world"]
        if plate is None:
            steps = GradientSteps(program, guide, loss, optimizer)
        else:
            # AutoNormal's own subsampled plate scales its sites; other guides see the sliced data
            scaled_guide = guide if self.guide is None else _scaled(guide, plate, factor)
            noise = minibatch.get("noise")
            steps = GradientSteps(
                _scaled(program, plate, factor), scaled_guide if noise is None else noise.around(scaled_guide), loss, optimizer,
                world=shards, noise=noise,
            )
        training_start = time.perf_counter()
        try:
            shown = self.progress and (shards is None or shards.rank == 0)
            progress = run_svi(steps, step_args, num_steps, self.tol, shown, self.name, checkpoint, key)
        finally:
            minibatch["index"] = None
        training_seconds = time.perf_counter() - training_start
        estimate = estimate_elbo(loss, program, guide, args, kwargs, self.num_elbo_evaluations)
        return _Fit(
            progress, estimate, pyro.get_param_store().get_state(), guide, guide_name, program, loss, args, kwargs,
            copies, guided, batch_rank, enumerated, plate, training_seconds,
        )

    def _discrete_marginals(self, fit: _Fit) -> dict[str, np.ndarray]:
        """q of each discrete latent on the full data, shape (*site_shape, K): the exact
        conditional of the enumerated ones given one draw of the guide, and the guide's own
        probabilities for the ones it samples (categorical or Bernoulli)."""
        out = {}
        with torch.no_grad():
            if fit.enumerated:
                try:
                    computed = TraceEnum_ELBO(max_plate_nesting=fit.loss.max_plate_nesting).compute_marginals(fit.program, fit.guide, *fit.args, **fit.kwargs)
                except NotImplementedError:  # the guide enumerates too: no marginals to read
                    computed = {}
                for name in fit.enumerated:
                    if name in computed and hasattr(computed[name], "probs"):
                        out[name] = to_numpy(computed[name].probs)
            trace = poutine.trace(poutine.block(fit.guide)).get_trace(*fit.args, **fit.kwargs)
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or name not in fit.guided or name in out:
                    continue
                fn = site["fn"]
                while hasattr(fn, "base_dist"):
                    fn = fn.base_dist
                if isinstance(fn, torch.distributions.Categorical):
                    out[name] = to_numpy(fn.probs)
                elif isinstance(fn, torch.distributions.Bernoulli):
                    out[name] = to_numpy(torch.stack([1 - fn.probs, fn.probs], -1))
        return out

    def _loss(self, structure: ModelStructure, enumerated: list[str], amortized: bool) -> Any:
        """TraceEnum_ELBO when discrete latents are summed out; analytic KL terms
        (TraceMeanField_ELBO) for amortised Gaussian guides or when asked; Trace_ELBO otherwise
        (AutoNormal's guide sites are Delta distributions carrying a Jacobian, which the
        analytic-KL path would drop)."""
        if enumerated:
            if self.elbo == "meanfield":
                raise ValueError("SVI: elbo='meanfield' cannot sum out discrete latents; use 'auto' or 'trace'")
            return TraceEnum_ELBO(max_plate_nesting=structure.max_plate_nesting, num_particles=self.num_particles)
        if self.elbo == "meanfield" or (self.elbo == "auto" and amortized):
            return TraceMeanField_ELBO(num_particles=self.num_particles)
        return Trace_ELBO(num_particles=self.num_particles)

    def _minibatches(
        self, structure: ModelStructure, args: tuple, kwargs: dict, minibatch: dict[str, Any]
    ) -> tuple[Callable, Optional[str], float]:
        """Per-step argument function (which also sets ``minibatch["index"]``), the subsampled
        plate and the scale N / B. Under torch.distributed (``minibatch["world"]``) every step
        takes the rank's shard of the global batch (all N data without ``subsample_size``),
        scaled N P / B (see :mod:`ppgen.inference._distributed`), and ``minibatch["noise"]``
        draws the guide's per-datum sites for the global batch."""
        shards: Optional[World] = minibatch["world"]
        no_data_plate = self.subsample_plate is None and not any(site.plates for site in structure.observed.values())
        if self.subsample_size is None and (shards is None or no_data_plate):
            return (lambda _: (args, kwargs)), None, 1.0  # (every rank then runs the same full steps)
        plate = self._data_plate(structure)
        size = structure.plates[plate].size
        batch = min(self.subsample_size or size, size)
        if batch == size and shards is None:
            return (lambda _: (args, kwargs)), None, 1.0
        sliceable = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor) and a.dim() >= 1 and a.shape[0] == size]
        if not sliceable:
            raise ValueError(f"SVI: no argument has plate {plate!r}'s size {size} as its leading dimension to subsample")
        lo, hi = shards.shard(batch, "SVI") if shards is not None else (0, batch)
        if shards is not None:
            minibatch["noise"] = GlobalBatchNoise(plate, batch, lo, hi)
        per_epoch = size // batch
        # the full data need no permutation (none is drawn, as in a single process)
        order = {"permutation": torch.randperm(size) if batch < size else torch.arange(size)}

        def step_args(step: int) -> tuple[tuple, dict]:
            position = step % per_epoch
            if position == 0 and step > 0 and batch < size:
                order["permutation"] = torch.randperm(size)
            index = order["permutation"][position * batch:(position + 1) * batch][lo:hi]
            minibatch["index"] = index
            return (
                tuple(sliced(a, index, size) for a in args),
                {k: sliced(v, index, size) for k, v in kwargs.items()},
            )

        step_args.order = order  # the epoch's permutation, saved with a checkpoint
        return step_args, plate, size / (hi - lo)
