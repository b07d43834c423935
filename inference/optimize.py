"""Point estimates by optimisation: ``engine="map"`` and ``engine="mle"``.

MAP maximises the log joint log p(x, z; θ) over every continuous latent z and parameter θ; MLE
maximises the log-likelihood log p(x | z; θ), i.e. the same with the priors dropped. Both work
in unconstrained space (z = T(u) with T = ``biject_to(support)``) but without the Jacobian of
T, so the optimum is the mode in the natural parameterisation: for the coin with a Beta(a, b)
prior, MAP gives (h + a − 1)/(n + a + b − 2), not the mode of the logit. Each point maps u
through the support the program gives *at that point*, so a support that depends on another
latent (β flat on (0, 1 − α)) is respected everywhere. L-BFGS with a strong-Wolfe line search
by default; Adam for neural programs (programs registering ``ppgen.module``).

Minibatches (``subsample_size=B``): each Adam step evaluates the program on B data drawn without
replacement within an epoch from the data plate (the largest plate holding observed data),
with the log density of every site in that plate multiplied by N / B, so the step's objective
is an unbiased estimate of the full-data one. This is how ``mle`` trains a neural
autoregressive model by exact maximum likelihood; the objective trace then holds the
minibatch estimates, and the run stops after ``num_steps`` (a noisy objective never meets
``tol``). The no-mode check below needs the objective on the full data and is not run.

A program without latent sites has the log-likelihood of its data as its objective; it is
computed without Pyro's per-site messages (:mod:`ppgen.inference._log_density_interpreter`)
once the first evaluation shows the interpreter's value equal to Pyro's (float tolerance), and
``Result.diagnostics["log_density"]`` says which computed it (and why Pyro, if Pyro).

Where no mode exists (the objective still rising as a site runs to the boundary of its
support: a hierarchical scale collapsing to 0, a variance fitted to one datum) the run ends in
an :class:`~ppgen.errors.EngineFailure` naming the site, keeping the last finite point
(:mod:`ppgen.inference._no_mode`), whether the optimiser stalled there or overflowed.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Optional, Union

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median
from pyro.poutine.messenger import Messenger

from ppgen.backend import torch_precision, to_backend, to_numpy, use_backend
from ppgen.checkpoint import Checkpoint
from ppgen.checkpoint import check_options as check_checkpoint_options
from ppgen.engine import Engine, missing_data, register
from ppgen.driver import NonFiniteStep, Progress, iterate
from ppgen.errors import EngineFailure
from ppgen.inference._epoch_order import EpochOrder
from ppgen.inference._no_mode import Runaway, Variable, find_runaway
from ppgen.inference._nonfinite import point_fault
from ppgen.results import Result
from ppgen.structure import ModelStructure, inspect, structure_cache
from ppgen.structure_cache import call_key

from ._distributed import World, world
from ._gradient_steps import named_modules
from ._log_density_interpreter import VerifiedLogDensity
from ._vi import Info
from .svi import _scaled


def _blocking_discrete(structure: ModelStructure) -> Optional[str]:
    for site in structure.latent.values():
        if site.is_discrete:
            return (
                f"latent site {site.name!r} is discrete ({site.support}); gradient-based point "
                "estimates need continuous latents (marginalise it with 'em' or 'enumerate')"
            )
    return None


def _initial_value(site: dict) -> torch.Tensor:
    """Where the optimiser starts: the prior median, or for a flat improper prior (which has no
    draws) the image of 0 in its support."""
    fn = site["fn"]
    if type(fn).__name__ == "ImproperUniform":
        transform = biject_to(fn.support)
        return transform(torch.zeros(transform.inverse_shape(tuple(fn.batch_shape) + tuple(fn.event_shape))))
    return init_to_median(site)


class _PointEstimate(Engine):
    """Shared optimiser for MAP and MLE; subclasses choose which log densities count.

    Parameters
    ----------
    num_steps : optimiser iterations at most (an L-BFGS iteration runs up to 20 evaluations).
    tol : stop when the objective changes by at most ``tol * max(1, |objective|)``.
    seed, progress : random seed and progress bar.
    optimizer : ``"lbfgs"`` (strong-Wolfe line search) or ``"adam"``; default: Adam for
        neural programs and with minibatches, L-BFGS otherwise.
    learning_rate : step size (default 1 for L-BFGS, 0.01 for Adam).
    subsample_size : minibatch size B over the data plate (None: full data). Needs Adam.
    checkpoint, checkpoint_every : a file (path) the run's state (point, optimiser state, path
        of objectives) is saved to every ``checkpoint_every`` iterations, on SIGINT / SIGTERM
        (the run then returns the point reached with ``interrupted=True``) and at the end; the
        same call again resumes from it (see :mod:`ppgen.checkpoint`).
    """

    include_priors = True

    def __init__(
        self,
        num_steps: int = 500,
        tol: float = 1e-9,
        seed: int = 0,
        progress: bool = False,
        optimizer: Optional[str] = None,
        learning_rate: Optional[float] = None,
        subsample_size: Optional[int] = None,
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        checkpoint_every: int = 100,
    ) -> None:
        check_checkpoint_options(self.name, checkpoint, checkpoint_every)
        if optimizer not in (None, "lbfgs", "adam"):
            raise ValueError(f"{self.name}: optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
        if subsample_size is not None and (isinstance(subsample_size, bool) or not isinstance(subsample_size, (int, np.integer)) or subsample_size < 1):
            raise ValueError(f"{self.name}: subsample_size must be a positive integer or None, got {subsample_size!r}")
        if subsample_size is not None and optimizer == "lbfgs":
            raise ValueError(f"{self.name}: subsample_size needs optimizer='adam' (L-BFGS's line search needs the full-data objective)")
        if subsample_size is not None and checkpoint is not None:
            raise ValueError(f"{self.name}: checkpoint is not available with subsample_size; pass one of them")
        if num_steps < 1:
            raise ValueError(f"{self.name}: num_steps must be >= 1, got {num_steps}")
        self.num_steps = num_steps
        self.tol = tol
        self.seed = seed
        self.progress = progress
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.subsample_size = None if subsample_size is None else int(subsample_size)
        self.checkpoint = checkpoint
        self.checkpoint_every = int(checkpoint_every)

    def check(self, structure: ModelStructure) -> Optional[str]:
        reason = missing_data(structure) or _blocking_discrete(structure)
        if reason:
            return reason
        if not structure.latent and not structure.params:
            return "the program has no latent sites and no param sites to estimate"
        return None

    def _objective_sites(self, structure: ModelStructure) -> set[str]:
        kinds = {"observed", "factor"} | ({"latent"} if self.include_priors else set())
        return {name for name, site in structure.sites.items() if site.kind in kinds}

    def run(self, model: Callable, *args: Any, **kwargs: Any) -> Result:
        start = time.perf_counter()
        structure = inspect(model, *args, **kwargs)
        # the structure this run trains with is the one of the trained modules too (rekeyed below)
        given, key_before = (args, kwargs), (call_key(model, args, kwargs) if structure.has_modules else None)
        args, kwargs = to_backend(args, "pyro"), to_backend(kwargs, "pyro")
        counted = self._objective_sites(structure)
        latent_names = list(structure.latent)
        checkpoint = Checkpoint.for_engine(self, model, args, kwargs)
        with use_backend("pyro"), torch_precision(enabled=structure.float64), torch.random.fork_rng(), pyro.get_param_store().scope():
            torch.manual_seed(self.seed)
            # a run of the whole data to start the latents from (none to start: no run)
            with torch.no_grad():
                init_trace = poutine.trace(InitMessenger(_initial_value)(model)).get_trace(*args, **kwargs) if latent_names else None
            supports = {name: init_trace.nodes[name]["fn"].support for name in latent_names}
            unconstrained = {
                name: biject_to(supports[name]).inv(init_trace.nodes[name]["value"].detach()).clone().requires_grad_(True)
                for name in latent_names
            }
            constrained = _Constrained(unconstrained)
            param_store = pyro.get_param_store()

            def run_program() -> Any:
                return poutine.trace(constrained(model)).get_trace(*args, **kwargs)

            # without latent sites the objective is the log-likelihood of the data alone: once shown
            # equal to Pyro's, computed without Pyro's per-site messages (_log_density_interpreter)
            fast_reason = f"latent sites {latent_names[:3]}" if latent_names else None
            fast = VerifiedLogDensity(model, reason=fast_reason)

            def log_objective() -> torch.Tensor:
                return fast(lambda: run_program().log_prob_sum(site_filter=lambda name, site: name in counted), args, kwargs)

            optimizer = self.optimizer or ("adam" if structure.has_modules or self._subsampled(structure) else "lbfgs")
            # L-BFGS's line search needs the full-data objective: every rank then runs the same full steps
            shards = world() if optimizer == "adam" else None
            if shards is not None and checkpoint is not None:
                raise ValueError(f"{self.name}: checkpoint is not available under torch.distributed (the ranks step on shards); pass one of them")
            minibatch_objective = self._minibatch_objective(structure, constrained(model), args, kwargs, counted, shards, model, fast_reason)

            with torch.no_grad():  # creates param sites in the (scoped) store, on one minibatch if there are minibatches
                minibatch_objective(0) if minibatch_objective is not None else log_objective()
            variables = [Variable(name, u, supports[name]) for name, u in unconstrained.items()] + [
                Variable(name, param_store._params[name], param_store._constraints.get(name)) for name in param_store.keys()
            ]

            def fault(value: float, bad_gradients: list[str]) -> NonFiniteStep:
                parameters = {variable.site: variable.tensor for variable in variables}
                return point_fault(self._objective_name, value, run_program(), counted, parameters, bad_gradients)

            def named(trace: Optional[Any]) -> dict[str, np.ndarray]:
                values = {name: trace.nodes[name]["value"] for name in latent_names}
                values.update({name: param_store[name] for name in param_store.keys() if "$$$" not in name})
                return {name: to_numpy(value) for name, value in values.items()}

            # inspect has checked data and parameters; a step to a non-finite point, or a run that
            # ends with a site still running to the edge of its support, is an EngineFailure
            # keeping the last finite point
            with pyro.validation_enabled(False):
                try:
                    if minibatch_objective is not None:
                        progress = self._optimise_minibatches(variables, minibatch_objective, fault, shards)
                    else:
                        progress = self._optimise(variables, log_objective, fault, optimizer, checkpoint)
                except EngineFailure as failure:
                    # the variables hold the last finite point; the partial state names its values
                    with torch.no_grad():
                        failure.partial.state = named(run_program() if latent_names else None)
                    raise
            with torch.no_grad():  # (a program without latents has only its parameters to report: no run)
                estimates = named(run_program() if latent_names else None)
            modules = named_modules(None, {}, args, kwargs, param_store) if structure.has_modules else {}
        if key_before is not None:
            structure_cache().rekey(model, key_before, call_key(model, *given))
        return Result(
            engine=self.name,
            params=estimates,
            map_estimate={name: estimates[name] for name in latent_names},
            samples={name: estimates[name][None] for name in latent_names},
            traces={self._objective_name: np.asarray(progress.objectives)},
            converged=None if self.subsample_size is not None or minibatch_objective is not None else progress.converged,  # a fixed budget of steps
            num_iterations=progress.num_iterations,
            interrupted=progress.interrupted,
            diagnostics={
                **({"modules": Info(modules), "subsample_size": self.subsample_size} if modules else {}),
                **({"processes": shards.size} if shards is not None else {}),  # data-parallel ranks (torch.distributed)
                "log_density": getattr(minibatch_objective, "fast", fast).how,
            },
            seconds=time.perf_counter() - start,
        )

    @property
    def _objective_name(self) -> str:
        return "log_joint" if self.include_priors else "log_likelihood"

    def _optimise(
        self,
        variables: list[Variable],
        log_objective: Callable[[], torch.Tensor],
        fault: Callable[[float, list[str]], NonFiniteStep],
        optimizer_name: str,
        checkpoint: Optional[Checkpoint] = None,
    ) -> Progress:
        """Climb the objective; the state is the point reached (a copy of every variable).
        A ``checkpoint`` keeps the point, the optimiser's state and the path. Raises
        :class:`EngineFailure` when a step ends where the objective or its gradient is not
        finite (``fault(value, parameters with non-finite gradients)`` names the sites), or
        when a site runs to the boundary of its support (no mode), leaving the variables at the
        last finite point."""
        tensors = [variable.tensor for variable in variables]
        if optimizer_name == "lbfgs":
            optimizer = torch.optim.LBFGS(
                tensors, lr=self.learning_rate or 1.0, max_iter=20, line_search_fn="strong_wolfe",
                tolerance_grad=1e-12, tolerance_change=1e-14, history_size=20,
            )
        else:
            optimizer = torch.optim.Adam(tensors, lr=self.learning_rate or 0.01)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = -log_objective()
            loss.backward()
            return loss

        def snapshot() -> list[torch.Tensor]:
            return [tensor.detach().clone() for tensor in tensors]

        with torch.no_grad():
            path = [(snapshot(), float(log_objective()))]

        def restore(point: list[torch.Tensor]) -> None:
            with torch.no_grad():
                for tensor, value in zip(tensors, point):
                    tensor.copy_(value)

        def step(state: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
            optimizer.step(closure)
            # the objective and its gradient where the step ended; a non-finite one is not kept
            objective = log_objective()
            gradients = torch.autograd.grad(objective, tensors, allow_unused=True)
            value = float(objective.detach())
            finite = [g is None or bool(torch.isfinite(g).all()) for g in gradients]
            if not (math.isfinite(value) and all(finite)):
                bad = [variable.site for variable, ok in zip(variables, finite) if not ok] if math.isfinite(value) else []
                error = fault(value, bad)
                restore(state)
                raise error
            point = snapshot()
            path.append((point, value))
            return point, value

        def capture() -> dict[str, Any]:
            return {"point": snapshot(), "optimizer": optimizer.state_dict(), "path": [list(entry) for entry in path]}

        def resume(saved: dict[str, Any]) -> None:
            restore(saved["point"])
            optimizer.load_state_dict(saved["optimizer"])
            path[:] = [tuple(entry) for entry in saved["path"]]

        section = checkpoint.section("start 0", capture, resume) if checkpoint is not None else None
        try:
            progress = iterate(
                step, path[0][0], num_steps=self.num_steps, tol=self.tol, progress=self.progress, name=self.name,
                objective=self._objective_name, checkpoint=section,
            )
        except EngineFailure as failure:
            runaway = find_runaway(variables, path, log_objective)
            if runaway is None:
                raise
            raise EngineFailure(self._no_mode_message(runaway, path, variables), partial=failure.partial) from None
        runaway = find_runaway(variables, path, log_objective)
        if runaway is not None:
            raise EngineFailure(self._no_mode_message(runaway, path, variables), partial=progress)
        return progress

    def _subsampled(self, structure: ModelStructure) -> bool:
        """Whether ``subsample_size`` leaves out data of the data plate at each step."""
        sizes = [structure.plates[p].size for site in structure.observed.values() for p in site.plates]
        return self.subsample_size is not None and (not sizes or self.subsample_size < max(sizes))

    def _minibatch_objective(
        self,
        structure: ModelStructure,
        program: Callable,
        args: tuple,
        kwargs: dict,
        counted: set[str],
        shards: Optional[World] = None,
        model: Optional[Callable] = None,
        fast_reason: Optional[str] = "no model given",
    ) -> Optional[Callable[[int], torch.Tensor]]:
        """With ``subsample_size`` B < N: step -> the objective on that step's minibatch, its
        data-plate sites weighted N / B (a fresh permutation every epoch). Under
        torch.distributed (``shards``): the rank's shard of the global batch (of all N data
        without ``subsample_size``), weighted N P / B, so that the mean over the ranks is the
        single-process objective (:mod:`ppgen.inference._distributed`). None otherwise. The
        objective's ``fast.how`` says whether it runs ``model`` by the log-density interpreter (when
        ``fast_reason`` is None and the first minibatch showed it equal to Pyro's) or by Pyro."""
        plates = {p for site in structure.observed.values() for p in site.plates}
        if self.subsample_size is None and (shards is None or not plates):
            return None  # (every rank then runs the same full steps)
        if not plates:
            raise ValueError(f"{self.name}: subsample_size needs a plate holding observed data; the program has none")
        plate = max(plates, key=lambda name: structure.plates[name].size)
        size = structure.plates[plate].size
        batch = min(self.subsample_size or size, size)
        if batch == size and shards is None:
            return None
        if not any(isinstance(a, torch.Tensor) and a.dim() >= 1 and a.shape[0] == size for a in list(args) + list(kwargs.values())):
            raise ValueError(f"{self.name}: no argument has plate {plate!r}'s size {size} as its leading dimension to subsample")
        lo, hi = shards.shard(batch, self.name) if shards is not None else (0, batch)
        per_epoch = size // batch
        # the epoch's permutation a minibatch at a time (nothing of size N); the full data need
        # none (none is drawn, as in a single process)
        order = EpochOrder(size) if batch < size else None
        scaled = _scaled(program, plate, size / (hi - lo))
        fast = VerifiedLogDensity(model, plate, size / (hi - lo), reason=fast_reason)

        def sliced(value: Any, index: torch.Tensor) -> Any:
            return value[index] if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == size else value

        def objective(step: int) -> torch.Tensor:
            position = step % per_epoch
            if position == 0 and step > 0 and order is not None:
                order.new_epoch()
            index = order.batch(position, batch)[lo:hi] if order is not None else torch.arange(lo, hi)
            step_args = tuple(sliced(a, index) for a in args)
            step_kwargs = {k: sliced(v, index) for k, v in kwargs.items()}

            def by_pyro() -> torch.Tensor:
                trace = poutine.trace(scaled).get_trace(*step_args, **step_kwargs)
                return trace.log_prob_sum(site_filter=lambda name, site: name in counted)

            return fast(by_pyro, step_args, step_kwargs)

        objective.fast = fast  # type: ignore[attr-defined]
        return objective

    def _optimise_minibatches(
        self,
        variables: list[Variable],
        objective: Callable[[int], torch.Tensor],
        fault: Callable[[float, list[str]], NonFiniteStep],
        shards: Optional[World] = None,
    ) -> Progress:
        """Adam on minibatch estimates of the objective, one evaluation per step. A step whose
        estimate or gradient is not finite is not applied (:class:`EngineFailure` naming the
        sites, the variables left where the step evaluated them). Under torch.distributed the
        estimate and the gradients are averaged over the ranks before the update."""
        tensors = [variable.tensor for variable in variables]
        optimizer = torch.optim.Adam(tensors, lr=self.learning_rate or 0.01)
        counter = {"step": 0}

        def step(state: None) -> tuple[None, float]:
            optimizer.zero_grad(set_to_none=False)
            value = objective(counter["step"])
            (-value).backward()
            counter["step"] += 1
            number = float(value.detach())
            if shards is not None:
                shards.average([t.grad for t in tensors if t.grad is not None])
                number = shards.mean(number)
            finite = [t.grad is None or bool(torch.isfinite(t.grad).all()) for t in tensors]
            if not (math.isfinite(number) and all(finite)):
                raise fault(number, [variable.site for variable, ok in zip(variables, finite) if not ok])
            optimizer.step()
            return None, number

        shown = self.progress and (shards is None or shards.rank == 0)
        progress = iterate(step, None, num_steps=self.num_steps, tol=0.0, progress=shown, name=self.name, objective=self._objective_name)
        optimizer.zero_grad(set_to_none=True)
        return progress

    def _no_mode_message(self, runaway: Runaway, path: list, variables: list[Variable]) -> str:
        variable = next(v for v in variables if v.site == runaway.site)
        where = f"{runaway.site}{list(runaway.index) if runaway.index else ''}"
        edge = _edge(variable, runaway)
        value = float(biject_to(variable.support)(variable.tensor.detach()).reshape(-1)[_flat(variable.tensor, runaway.index)])
        estimate = "MAP estimate" if self.include_priors else "maximum-likelihood estimate"
        return (
            f"{self.name}: no mode: the {self._objective_name} keeps rising as {where} runs to the boundary of its "
            f"support ({where} -> {edge}; {value:.3g} after {len(path) - 1} iterations, {self._objective_name} "
            f"{path[-1][1]:.6g}, up {runaway.gain:.3g} over the last stretch), so no {estimate} exists inside the "
            f"support. The density is unbounded there or has its supremum on the boundary (e.g. a hierarchical scale "
            f"collapsing to 0): sample the posterior with 'nuts', or give {runaway.site!r} a prior that keeps it off "
            "the boundary; if the value really is this extreme, rescale the data"
        )


def _flat(tensor: torch.Tensor, index: tuple[int, ...]) -> int:
    return int(np.ravel_multi_index(index, tuple(tensor.shape))) if index else 0


def _edge(variable: Variable, runaway: Runaway) -> str:
    """The limit of the element as its unconstrained coordinate goes to direction · ∞."""
    with torch.no_grad():
        far = variable.tensor.detach().clone()
        flat = _flat(far, runaway.index)
        far.view(-1)[flat] = runaway.direction * 1e4
        return f"{float(biject_to(variable.support)(far).reshape(-1)[flat]):g}"


class _Constrained(Messenger):
    """Sets each named latent to T(u) with T = ``biject_to`` of its support *in this run*: a
    support that depends on other latents (β flat on (0, 1 − α)) maps u through its own
    interval at the current α, so every point the optimiser visits is inside the support."""

    def __init__(self, unconstrained: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.unconstrained = unconstrained

    def _pyro_sample(self, msg: dict) -> None:
        u = self.unconstrained.get(msg["name"])
        if u is None or msg["is_observed"]:
            return
        msg["value"] = biject_to(msg["fn"].support)(u)
        msg["is_observed"] = True  # as poutine.condition marks it: scored, not sampled


@register
class MAP(_PointEstimate):
    """Maximum a posteriori: argmax over continuous latents and params of log p(x, z; θ)."""

    name = "map"
    summary = "maximum a posteriori point estimate (L-BFGS / Adam)"
    include_priors = True


@register
class MLE(_PointEstimate):
    """Maximum likelihood: argmax of log p(x | z; θ), priors on latents dropped."""

    name = "mle"
    summary = "maximum likelihood point estimate (L-BFGS / Adam)"
    include_priors = False
