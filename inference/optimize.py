"""Point estimates by optimisation: ``engine="map"`` and ``engine="mle"``.

MAP maximises the log joint log p(x, z; θ) over every continuous latent z and parameter θ; MLE
maximises the log-likelihood log p(x | z; θ), i.e. the same with the priors dropped. Both work
in unconstrained space (z = T(u) with T = ``biject_to(support)``) but without the Jacobian of
T, so the optimum is the mode in the natural parameterisation: for the coin with a Beta(a, b)
prior, MAP gives (h + a − 1)/(n + a + b − 2), not the mode of the logit.
L-BFGS with a strong-Wolfe line search by default; Adam for neural programs.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median

from ppgen.backend import torch_precision, to_backend, to_numpy, use_backend
from ppgen.engine import Engine, missing_data, register
from ppgen.driver import Progress, iterate
from ppgen.results import Result
from ppgen.structure import ModelStructure, inspect


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
    """Shared optimiser for MAP and MLE; subclasses choose which log densities count."""

    include_priors = True

    def __init__(
        self,
        num_steps: int = 500,
        tol: float = 1e-9,
        seed: int = 0,
        progress: bool = False,
        optimizer: str = "lbfgs",
        learning_rate: Optional[float] = None,
    ) -> None:
        if optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"{self.name}: optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
        if num_steps < 1:
            raise ValueError(f"{self.name}: num_steps must be >= 1, got {num_steps}")
        self.num_steps = num_steps
        self.tol = tol
        self.seed = seed
        self.progress = progress
        self.optimizer = optimizer
        self.learning_rate = learning_rate

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
        args, kwargs = to_backend(args, "pyro"), to_backend(kwargs, "pyro")
        counted = self._objective_sites(structure)
        latent_names = list(structure.latent)
        with use_backend("pyro"), torch_precision(enabled=structure.float64), torch.random.fork_rng(), pyro.get_param_store().scope():
            torch.manual_seed(self.seed)
            with torch.no_grad():
                init_trace = poutine.trace(InitMessenger(_initial_value)(model)).get_trace(*args, **kwargs)
            transforms = {name: biject_to(init_trace.nodes[name]["fn"].support) for name in latent_names}
            unconstrained = {
                name: transforms[name].inv(init_trace.nodes[name]["value"].detach()).clone().requires_grad_(True)
                for name in latent_names
            }
            param_store = pyro.get_param_store()

            def log_objective() -> torch.Tensor:
                values = {name: transforms[name](u) for name, u in unconstrained.items()}
                trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
                return trace.log_prob_sum(site_filter=lambda name, site: name in counted)

            log_objective()  # creates param sites in the (scoped) store
            variables = list(unconstrained.values()) + [
                param_store._params[name] for name in param_store.keys()
            ]
            # inspect has checked data and parameters; a step to a non-finite point (no mode: a
            # hierarchical scale collapsing to 0) then ends the run as EngineFailure, keeping the last point
            with pyro.validation_enabled(False):
                progress = self._optimise(variables, log_objective)
            with torch.no_grad():
                point = {name: transforms[name](u) for name, u in unconstrained.items()}
                params = {name: param_store[name] for name in param_store.keys() if "$$$" not in name}
        estimates = {name: to_numpy(value) for name, value in {**point, **params}.items()}
        return Result(
            engine=self.name,
            params=estimates,
            map_estimate={name: estimates[name] for name in latent_names},
            samples={name: estimates[name][None] for name in latent_names},
            traces={"log_joint" if self.include_priors else "log_likelihood": np.asarray(progress.objectives)},
            converged=progress.converged,
            num_iterations=progress.num_iterations,
            seconds=time.perf_counter() - start,
        )

    def _optimise(self, variables: list[torch.Tensor], log_objective: Callable[[], torch.Tensor]) -> Progress:
        if self.optimizer == "lbfgs":
            optimizer = torch.optim.LBFGS(
                variables, lr=self.learning_rate or 1.0, max_iter=20, line_search_fn="strong_wolfe",
                tolerance_grad=1e-12, tolerance_change=1e-14, history_size=20,
            )
        else:
            optimizer = torch.optim.Adam(variables, lr=self.learning_rate or 0.01)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = -log_objective()
            loss.backward()
            return loss

        def step(state: None) -> tuple[None, float]:
            optimizer.step(closure)
            with torch.no_grad():
                return state, float(log_objective())

        return iterate(
            step, None, num_steps=self.num_steps, tol=self.tol, progress=self.progress, name=self.name,
            objective="log_joint" if self.include_priors else "log_likelihood",
        )


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
