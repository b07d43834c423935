"""Simulation-based calibration (Talts et al., 2018): does an engine's posterior have the right
spread and location on data the program itself generated?

For l = 1..L: draw (θ⁽ˡ⁾, x⁽ˡ⁾) from the prior predictive, run the engine on x⁽ˡ⁾, and record the
rank r_l = #{m : θ_m < θ⁽ˡ⁾} of the true value among M posterior draws θ_1..θ_M. If the draws
are independent draws of the exact posterior, θ⁽ˡ⁾ is exchangeable with them and r_l is
uniform on {0, …, M}. Under-dispersed (too narrow) posteriors give U-shaped rank histograms,
over-dispersed (too wide) ones humps, biased ones slopes.

Three details make the ranks exactly uniform for a correct engine:

- **Thinning.** Autocorrelated MCMC draws are not exchangeable with the truth: ranks among them
  pile up at the ends even for a perfect sampler. Each chain is thinned to every k-th draw,
  k = ⌈N / ESS⌉ (N draws in all, ESS the smaller of ArviZ's bulk and tail effective sample
  sizes of that quantity in that run), so about ESS nearly independent draws remain (Talts et
  al., section 5.1); at most ``num_draws`` of them, evenly spaced, are kept. Independent draws
  (importance resampling, variational draws) have ESS ≈ N and lose nothing that matters.
- **Ties.** Discrete sites tie with the truth. The rank is randomised among the ties,
  r = #{θ_m < θ} + U{0, …, #{θ_m = θ}}, which is uniform whenever the untied rank would be.
- **Unequal draw counts.** Thinning leaves a different M_l per simulation, so ranks are mapped
  to fractional ranks u_l = (r_l + v_l) / (M_l + 1) with v_l ~ Uniform(0, 1): u_l is exactly
  Uniform(0, 1) when r_l is uniform on {0, …, M_l}, whatever M_l is, and any binning of u is fair.

The test statistic per scalar quantity (a site, or one element of a multivariate site) is
Pearson's χ² of the fractional ranks in B equal bins against B − 1 degrees of freedom; a run's
verdict is the Bonferroni combination over its K quantities, p = min(1, K · min_k p_k), valid
however the quantities depend on each other.

References
----------
S. Talts, M. Betancourt, D. Simpson, A. Vehtari, A. Gelman (2018), "Validating Bayesian
inference algorithms with simulation-based calibration", arXiv:1804.06788.
A. Vehtari, A. Gelman, D. Simpson, B. Carpenter, P.-C. Bürkner (2021), "Rank-normalization,
folding, and localization: an improved R-hat", Bayesian Analysis 16(2) (bulk and tail ESS).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np

from ppgen.engine import Engine, registered_engines, split_options
from ppgen.errors import ConvergenceWarning, EngineFailure, EngineNotApplicable, ReliabilityWarning
from ppgen.structure import ModelStructure, bind_arguments, inspect
from ppgen.sweep import check_workers, is_parallel, run_tasks
from ppgen.verbs import generate, infer


@dataclass(frozen=True)
class Calibration:
    """Ranks of the true values among posterior draws, per scalar quantity.

    Attributes
    ----------
    ranks : quantity -> integer ranks r_l, shape (num_simulations,); a multivariate site
        ``"theta"`` gives quantities ``"theta[0]"``, ``"theta[1]"``, ... (flattened, C order).
    num_draws : quantity -> M_l, the number of (thinned) draws each rank is among, same shape.
    seed : seed of the uniform offsets v_l of the fractional ranks.
    num_warned : simulations whose engine run raised a ReliabilityWarning or ConvergenceWarning.
    """

    ranks: dict[str, np.ndarray]
    num_draws: dict[str, np.ndarray]
    seed: int = 0
    num_warned: int = 0

    def __post_init__(self) -> None:
        for name, ranks in self.ranks.items():
            draws = np.asarray(self.num_draws.get(name))
            if draws.shape != np.shape(ranks) or np.any(ranks < 0) or np.any(ranks > draws):
                raise ValueError(f"Calibration: quantity {name!r} needs 0 <= ranks <= num_draws of the same shape")

    @property
    def num_simulations(self) -> int:
        return len(next(iter(self.ranks.values()))) if self.ranks else 0

    def fractional_ranks(self) -> dict[str, np.ndarray]:
        """u_l = (r_l + v_l) / (M_l + 1), v_l ~ Uniform(0, 1): Uniform(0, 1) for a calibrated
        engine. Deterministic given ``seed`` (one offset stream per quantity)."""
        out = {}
        for index, (name, ranks) in enumerate(self.ranks.items()):
            offsets = np.random.default_rng([self.seed, index]).random(len(ranks))
            out[name] = (np.asarray(ranks) + offsets) / (np.asarray(self.num_draws[name]) + 1.0)
        return out

    def statistics(self, num_bins: int = 10) -> dict[str, float]:
        """Pearson's χ² of the fractional ranks in ``num_bins`` equal bins, per quantity."""
        if not isinstance(num_bins, (int, np.integer)) or isinstance(num_bins, bool) or num_bins < 2:
            raise ValueError(f"Calibration: num_bins must be an integer >= 2, got {num_bins!r}")
        if self.num_simulations < 5 * num_bins:
            raise ValueError(
                f"Calibration: {self.num_simulations} simulations give fewer than 5 per bin in {num_bins} bins "
                f"(the χ² approximation needs >= 5); use num_bins <= {max(self.num_simulations // 5, 1)}"
            )
        expected = self.num_simulations / num_bins
        out = {}
        for name, values in self.fractional_ranks().items():
            counts = np.bincount(np.minimum((values * num_bins).astype(int), num_bins - 1), minlength=num_bins)
            out[name] = float(np.sum((counts - expected) ** 2) / expected)
        return out

    def p_values(self, num_bins: int = 10) -> dict[str, float]:
        """χ² test of uniform fractional ranks, per quantity (``num_bins`` − 1 degrees of freedom)."""
        from scipy.stats import chi2

        return {name: float(chi2.sf(value, num_bins - 1)) for name, value in self.statistics(num_bins).items()}

    def p_value(self, num_bins: int = 10) -> float:
        """One p-value for the whole run: Bonferroni over the K quantities, min(1, K · min_k p_k)."""
        values = self.p_values(num_bins)
        return min(1.0, len(values) * min(values.values())) if values else 1.0


def effective_sample_size(draws: np.ndarray) -> np.ndarray:
    """min(bulk ESS, tail ESS) of each column of ``draws`` of shape (num_chains, num_draws, K),
    shape (K,); NaN where undefined (constant draws, too few draws)."""
    import arviz as az

    draws = np.asarray(draws, dtype=float)
    out = np.full(draws.shape[-1], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for column in range(draws.shape[-1]):
            values = draws[:, :, column]
            out[column] = min(float(az.ess(values, method="bulk")), float(az.ess(values, method="tail")))
    return out


def thin(draws: np.ndarray, num_draws: int, ess: float) -> np.ndarray:
    """Nearly independent draws of one scalar from ``draws`` of shape (num_chains, n): every k-th
    draw of each chain, k = ⌈num_chains · n / ess⌉ (1 when ``ess`` is NaN or at least the
    number of draws), then at most ``num_draws`` of those, evenly spaced."""
    total = draws.size
    stride = 1 if not np.isfinite(ess) or ess >= total else math.ceil(total / max(ess, 1.0))
    kept = draws[:, stride - 1 :: stride].reshape(-1)
    if kept.size > num_draws:
        kept = kept[np.linspace(0, kept.size - 1, num_draws).round().astype(int)]
    return kept


def randomised_rank(draws: np.ndarray, value: float, rng: np.random.Generator) -> int:
    """#{draws < value} plus a uniform share of the ties: uniform on {0, …, len(draws)} when
    ``value`` is exchangeable with the draws, discrete or not."""
    below = int(np.sum(draws < value))
    ties = int(np.sum(draws == value))
    return below + int(rng.integers(0, ties + 1))


def _with_seed(engine: Union[str, Engine], seed: int) -> tuple[Union[str, Engine], dict[str, Any]]:
    """The engine for one simulation, seeded with ``seed``: a name gets ``seed=``, an instance
    a shallow copy with its ``seed`` attribute replaced (an instance without one runs as is)."""
    if isinstance(engine, str):
        return engine, {"seed": seed}
    if hasattr(engine, "seed"):
        engine = copy.copy(engine)
        engine.seed = seed
    return engine, {}


def _data_arguments(model: Callable, args: tuple, kwargs: dict, structure: ModelStructure, draws: dict) -> dict[str, str]:
    """The argument each observed site takes its data from (``obs=argument``): found by passing
    a simulated value to each argument that is None and tracing, the site's own name first."""
    free = [name for name, value in bind_arguments(model, args, kwargs).items() if value is None]
    out: dict[str, str] = {}
    for site in structure.observed:
        candidates = sorted((a for a in free if a not in out.values()), key=lambda a: a != site)
        for argument in candidates:
            try:
                probe = inspect(model, *args, **{**kwargs, argument: draws[site][0]})
            except Exception:  # the value does not fit this argument: not the site's data
                continue
            if probe.sites.get(site) is not None and probe.sites[site].data_argument == argument:
                out[site] = argument
                break
        else:
            raise ValueError(
                f"simulation_based_calibration: observed site {site!r} of {structure.name} takes its data from "
                f"none of the model's arguments left as None ({', '.join(free) or 'none'}); leave the data "
                "argument as None so that its values are simulated"
            )
    return out


def _simulation_draws(
    model: Callable, args: tuple, engine: Union[str, Engine], seeded: dict, engine_options: dict, model_kwargs: dict,
    data: dict, sites: list[str],
) -> tuple[dict[str, np.ndarray], int, Optional[str], list[tuple[type, str, str, int]]]:
    """One simulation's engine run: the draws of ``sites``, the number of chains, the first
    reliability or convergence warning (or None), and the other warnings (category, text, file,
    line), which the caller re-issues. Runs in a worker process under ``workers=`` / ``ray=``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReliabilityWarning)
        warnings.simplefilter("always", ConvergenceWarning)
        result = infer(model, *args, engine=engine, **seeded, **engine_options, **model_kwargs, **data)
    flagged = [w for w in caught if issubclass(w.category, (ReliabilityWarning, ConvergenceWarning))]
    others = [(w.category, str(w.message), w.filename, w.lineno) for w in caught if w not in flagged]
    for name in sites:
        if name not in result.samples:
            raise ValueError(
                f"simulation_based_calibration: engine {result.engine!r} returned no draws of site {name!r} "
                f"(it drew {', '.join(result.samples) or 'nothing'}); pass sites=[...]"
            )
    samples = {name: np.asarray(result.samples[name]) for name in sites}
    return samples, result.num_chains, str(flagged[0].message) if flagged else None, others


def simulation_based_calibration(
    model: Callable,
    *args: Any,
    engine: Union[str, Engine],
    sites: Optional[list[str]] = None,
    num_simulations: int = 100,
    num_draws: int = 99,
    seed: int = 0,
    workers: Optional[int] = None,
    ray: Optional[str] = None,
    **options: Any,
) -> Calibration:
    """Run SBC of ``engine`` on ``model``: ``num_simulations`` prior-predictive data sets, each
    scored by the rank of the true latent values among at most ``num_draws`` thinned posterior
    draws (see the module docstring).

    Parameters
    ----------
    model, args : the program and its positional arguments; its data arguments are left as None
        (the simulated data are passed to the argument each observed site reads, ``obs=...``).
    engine : an engine name, or an instance; simulation l runs with seed ``seed + 1 + l`` (an
        instance is copied with its ``seed`` attribute replaced, so its options are kept).
    sites : latent sites to rank (default: every latent site).
    num_simulations, num_draws : L and the largest M.
    seed : seed of the prior-predictive draws, of the engine seeds and of the rank offsets.
    workers, ray : run the simulations in ``workers`` local processes, or as Ray tasks on the
        cluster at address ``ray`` (see :mod:`ppgen.sweep`); the ranks are those of the serial
        run. A simulation that fails twice in its worker raises :class:`EngineFailure`.
    options : engine options (for an engine given by name) and model keyword arguments, split by
        name as :func:`ppgen.infer` does.

    Returns
    -------
    Calibration : ranks per scalar quantity; ``p_value()`` is the run's verdict. Engine runs
        that warned are counted in ``num_warned`` and summarised in one ReliabilityWarning.

    Examples
    --------
    >>> from ppgen.models.basics import coin
    >>> calibration = simulation_based_calibration(
    ...     coin, num_tosses=10, engine="importance", num_samples=1000, num_simulations=50)
    >>> calibration.ranks["rho"].shape
    (50,)
    """
    if not isinstance(num_simulations, (int, np.integer)) or num_simulations < 1:
        raise ValueError(f"simulation_based_calibration: num_simulations must be a positive integer, got {num_simulations!r}")
    check_workers(workers, ray, "simulation_based_calibration")
    if not isinstance(num_draws, (int, np.integer)) or num_draws < 1:
        raise ValueError(f"simulation_based_calibration: num_draws must be a positive integer, got {num_draws!r}")
    if isinstance(engine, str):
        engines = registered_engines()
        if engine not in engines:
            raise EngineNotApplicable(f"unknown engine {engine!r}; registered engines: {', '.join(sorted(engines))}")
        engine_options, model_kwargs = split_options(model, engines[engine], options)
    else:  # an instance keeps its own options: the rest are the model's
        engine_options, model_kwargs = {}, dict(options)
    structure = inspect(model, *args, **model_kwargs)
    sites = list(structure.latent) if sites is None else list(sites)
    for name in sites:
        if name not in structure.latent:
            raise ValueError(
                f"simulation_based_calibration: {name!r} is not a latent site of {structure.name} "
                f"(latent sites: {', '.join(structure.latent) or 'none'})"
            )
    truth = generate(model, *args, num_samples=num_simulations, seed=seed, **model_kwargs)
    data_arguments = _data_arguments(model, args, model_kwargs, structure, truth)
    runs = [
        (model, args, *_with_seed(engine, seed + 1 + index), engine_options, model_kwargs,
         {argument: truth[site][index] for site, argument in data_arguments.items()}, sites)
        for index in range(num_simulations)
    ]
    if is_parallel(workers, ray):
        outcomes = run_tasks(_simulation_draws, runs, workers=workers, ray=ray)
        failures = [(index, o) for index, o in enumerate(outcomes) if o.failed]
        if failures:
            index, outcome = failures[0]
            raise EngineFailure(
                f"simulation_based_calibration: {len(failures)} of {num_simulations} simulations failed in their workers "
                f"(each was run {outcome.attempts} times); simulation {index} (engine seed {seed + 1 + index}) last raised:\n{outcome.error}"
            )
        draws_by_run = [outcome.value for outcome in outcomes]
    else:
        draws_by_run = (_simulation_draws(*run) for run in runs)
    rng = np.random.default_rng(seed)
    ranks: dict[str, list[int]] = {}
    counts: dict[str, list[int]] = {}
    warned: list[str] = []
    for index, (samples, num_chains, flagged, others) in enumerate(draws_by_run):
        for category, message, filename, lineno in others:
            warnings.warn_explicit(message, category, filename, lineno)
        if flagged:
            warned.append(flagged)
        for name in sites:
            draws = samples[name]
            chains = max(num_chains, 1)
            by_chain = draws.reshape((chains, draws.shape[0] // chains, -1))
            ess = effective_sample_size(by_chain)
            true_values = np.asarray(truth[name][index]).reshape(-1)
            for element, value in enumerate(true_values):
                key = name if true_values.size == 1 and np.ndim(truth[name][index]) == 0 else f"{name}[{element}]"
                kept = thin(by_chain[:, :, element], num_draws, float(ess[element]))
                ranks.setdefault(key, []).append(randomised_rank(kept, value, rng))
                counts.setdefault(key, []).append(kept.size)
    if warned:
        warnings.warn(
            f"simulation_based_calibration: {len(warned)} of {num_simulations} runs of "
            f"{getattr(engine, 'name', engine)!r} warned (first: {warned[0]})",
            ReliabilityWarning,
            stacklevel=2,
        )
    return Calibration(
        {k: np.asarray(v) for k, v in ranks.items()},
        {k: np.asarray(v) for k, v in counts.items()},
        seed=seed,
        num_warned=len(warned),
    )
