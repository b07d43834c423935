"""What every engine returns: :class:`Estimate` for log p(x) and :class:`Result` for a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

import numpy as np

EstimateKind = Literal["exact", "lower-bound", "estimate"]


@dataclass(frozen=True)
class Estimate:
    """A log-evidence ``log p(x)``: ``exact``, a ``lower-bound`` (ELBO) or a stochastic
    ``estimate`` with standard error ``stderr``."""

    value: float
    stderr: float = 0.0
    kind: EstimateKind = "exact"

    def __post_init__(self) -> None:
        if self.kind not in ("exact", "lower-bound", "estimate"):
            raise ValueError(f"Estimate.kind must be exact, lower-bound or estimate, got {self.kind!r}")

    def __float__(self) -> float:
        return float(self.value)

    def __str__(self) -> str:
        if self.kind == "estimate":
            return f"{self.value:.4f} ± {self.stderr:.4f} (estimate)"
        return f"{self.value:.4f} ({self.kind})"


@dataclass(frozen=True)
class Result:
    """The outcome of one engine run.

    Attributes
    ----------
    engine : name of the engine that ran (for ``meanfield``, the one it chose).
    samples : site -> array of shape (num_draws, *site_shape), chains concatenated.
    params : learned values: ``param`` sites, and point estimates for MAP/MLE.
    marginals : site -> exact posterior probabilities, shape (*site_shape, cardinality).
    map_estimate : the most probable joint assignment of the latents, where the engine has it.
    log_evidence : log p(x) as an :class:`Estimate`, or None where the engine has none.
    diagnostics : engine-specific; MCMC uses ``divergences``, ``r_hat``, ``ess_bulk``.
    traces : per-iteration objectives, e.g. ``{"log_likelihood": array}`` for EM.
    converged, num_iterations : for iterative engines.
    interrupted : the run was stopped early (Ctrl-C, or SIGINT / SIGTERM with a
        ``checkpoint``) and holds the last state reached; the same call with the same
        ``checkpoint`` resumes it.
    sample_stats : per-draw statistics (MCMC), each of shape (num_draws,).
    log_likelihood : observed site -> per-draw pointwise log-likelihood (num_draws, *site_shape).
    observed : observed site -> its data.
    num_chains : chains concatenated in ``samples``.
    seconds : wall time of the run.
    task : the verb that ran the engine ("infer", "learn", "score"), set by the verbs;
        ``score(result, x_new)`` reads it (posterior predictive for infer, fitted values for learn).
    """

    engine: str
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    marginals: dict[str, np.ndarray] = field(default_factory=dict)
    map_estimate: dict[str, np.ndarray] = field(default_factory=dict)
    log_evidence: Optional[Estimate] = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    traces: dict[str, np.ndarray] = field(default_factory=dict)
    converged: Optional[bool] = None
    num_iterations: Optional[int] = None
    interrupted: bool = False
    sample_stats: dict[str, np.ndarray] = field(default_factory=dict)
    log_likelihood: dict[str, np.ndarray] = field(default_factory=dict)
    observed: dict[str, np.ndarray] = field(default_factory=dict)
    num_chains: int = 1
    seconds: float = 0.0
    task: Optional[str] = None
    model: Optional[Callable] = field(default=None, repr=False, compare=False)
    model_args: tuple = field(default=(), repr=False, compare=False)
    model_kwargs: dict = field(default_factory=dict, repr=False, compare=False)

    def mean(self, site: str) -> np.ndarray:
        """Posterior mean of ``site`` over its draws."""
        return np.asarray(self.samples[site]).mean(axis=0)

    def _by_chain(self, array: np.ndarray) -> np.ndarray:
        array = np.asarray(array)
        return array.reshape((self.num_chains, array.shape[0] // self.num_chains) + array.shape[1:])

    def to_arviz(self):
        """The run as ArviZ's ``InferenceData`` (posterior, sample_stats, log_likelihood,
        observed_data groups where present), ready for ``arviz.summary``, ``plot_trace``, ``loo``."""
        import arviz as az

        groups: dict[str, dict[str, np.ndarray]] = {
            "posterior": {k: self._by_chain(v) for k, v in self.samples.items()},
        }
        if self.sample_stats:
            groups["sample_stats"] = {k: self._by_chain(v) for k, v in self.sample_stats.items()}
        if self.log_likelihood:
            groups["log_likelihood"] = {k: self._by_chain(v) for k, v in self.log_likelihood.items()}
        if self.observed:
            groups["observed_data"] = {k: np.asarray(v) for k, v in self.observed.items()}
        return az.from_dict(**groups)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per scalar quantity: posterior mean and sd (and params), as plain numbers."""
        out: dict[str, dict[str, float]] = {}
        for name, draws in self.samples.items():
            draws = np.asarray(draws, dtype=float)
            flat = draws.reshape(draws.shape[0], -1)
            for index in range(flat.shape[1]):
                key = name if flat.shape[1] == 1 else f"{name}[{index}]"
                out[key] = {"mean": float(flat[:, index].mean()), "sd": float(flat[:, index].std())}
        for name, value in self.params.items():
            value = np.asarray(value, dtype=float).ravel()
            for index, number in enumerate(value):
                key = name if value.size == 1 else f"{name}[{index}]"
                out.setdefault(key, {})["value"] = float(number)
        return out
