"""Simulation-based calibration of every stochastic engine (``ppgen.calibration``).

Each engine runs on programs where it is exact, or where its approximation family contains the
true posterior: MCMC (nuts, hmc, mh, gibbs) and importance sampling on any program;
mean-field Gaussian VI in unconstrained space (advi, svi's default ``AutoNormal``, a
user's log-normal guide) only on programs whose posterior is a product of Gaussians in that
space (a Normal mean with known noise in nested plates, a regression on centred covariates —
its coefficients are then independent —, a log-normal median), so a correct implementation
must pass. Deliberately broken engines — draws squeezed towards their mean (too narrow),
stretched away from it (too wide), or shifted by a posterior standard deviation (biased) — of
each kind (MCMC, variational, importance) must fail.

Thresholds and power
--------------------
A run's verdict is the Bonferroni p-value over its quantities of χ² tests on fractional ranks
in 10 bins (9 degrees of freedom). A correct engine must give p > 1e-4, which an exact engine
fails with probability at most 1e-4; a broken one must give p < 1e-4. The sizes are set by the
power of the χ² test at that level against a Gaussian posterior (noncentral χ² with 9 degrees of
freedom, bin probabilities of the broken rank distributions computed by simulation):

- default suite, 80 simulations: squeezed to 1/3 of the spread 1.0000, stretched 3× 0.9999,
  shifted by 1 sd 1.0000;
- ``slow``, 200 simulations: squeezed to 1/2 1.0000, stretched 2× 0.99995, shifted by 1 sd
  1.0000 (at 80 simulations these subtler breaks are caught only 98% / 83% of the time).

Seeds are fixed, so each run is reproducible; the numbers above say that the outcome does not
hinge on a lucky seed.

What runs where
---------------
The default suite calibrates each engine on one program (80 simulations) and catches the
broken engines of all three kinds, which reuse the runs of the correct engine they distort (80
engine runs per kind, not 320): about 100 s of CPU time (measured 95 s CPU, 222 s wall on a
shared two-core machine at load 8), most of it svi's 300 Pyro steps per run and the first
compilation of each NumPyro sampler. The tests marked ``slow`` calibrate every engine on at
least three programs with 200 simulations each and catch the subtler breaks (measured 33
minutes wall on the same loaded machine, two thirds of it svi with AutoNormal)::

    .venv/bin/python -m pytest -m slow -p no:cacheprovider tests/inference/test_sbc.py

MCMC chains are short (two chains of 300 draws), so R-hat flags some runs: the ranks do not
mind, since draws are thinned by their effective sample size, and the flags are counted in
``Calibration.num_warned`` rather than raised per run.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import pytest
import torch

from ppgen import dist, ops, param, plate, sample
from ppgen.calibration import simulation_based_calibration
from ppgen.engine import Engine
from ppgen.errors import ReliabilityWarning
from ppgen.inference.advi import ADVI
from ppgen.inference.hmc import NUTS
from ppgen.inference.importance import Importance
from ppgen.inference.mh import MetropolisHastings
from ppgen.inference.svi import SVI
from ppgen.models import basics, posteriordb

ALPHA = 1e-4
NUM_BINS = 10
DEFAULT_SIMULATIONS = 80
SLOW_SIMULATIONS = 200

pytestmark = pytest.mark.filterwarnings(f"ignore::{ReliabilityWarning.__module__}.{ReliabilityWarning.__name__}")


# ---- programs written here, with their own names ---------------------------------------------


def group_levels(scores=None, num_groups=3, num_per_group=4, spread=2.0, noise=1.0):
    """level_g ~ N(0, spread²); score_pg ~ N(level_g, noise²): independent Gaussian posteriors."""
    with plate("group", num_groups):
        level = sample("level", dist.Normal(0.0, spread))
        with plate("pupil", num_per_group):
            sample("score", dist.Normal(level, noise), obs=scores)


def typical_size(sizes=None, num_items=5, log_spread=0.5):
    """typical ~ LogNormal(0, 1); size_i ~ LogNormal(log typical, log_spread²): log typical has
    a Gaussian posterior, so a Gaussian in unconstrained (log) space is exact."""
    typical = sample("typical", dist.LogNormal(0.0, 1.0))
    with plate("item", num_items):
        sample("size", dist.LogNormal(ops.log(typical), log_spread), obs=sizes)


def typical_size_guide(sizes=None, num_items=5, log_spread=0.5):
    """A user's guide for :func:`typical_size`: q(typical) = LogNormal(m, s), the exact family."""
    loc = param("log_typical_loc", torch.tensor(0.0))
    scale = param("log_typical_scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    sample("typical", dist.LogNormal(loc, scale))


TIMES = np.linspace(-1.5, 1.5, 6)  # centred: the intercept and slope posteriors are independent


def trend(times, heights=None, noise=0.8):
    """intercept, slope ~ N(0, 2²); height_t ~ N(intercept + slope · t, noise²)."""
    intercept = sample("intercept", dist.Normal(0.0, 2.0))
    slope = sample("slope", dist.Normal(0.0, 2.0))
    with plate("time", len(times)):
        sample("height", dist.Normal(intercept + slope * times, noise), obs=heights)


def arrivals(counts=None, num_days=4):
    """rate ~ Gamma(3, 1); count_d ~ Poisson(rate): a Gamma posterior."""
    rate = sample("rate", dist.Gamma(3.0, 1.0))
    with plate("day", num_days):
        sample("count", dist.Poisson(rate), obs=counts)


def outliers(readings=None, num_readings=6, outlier_rate=0.25):
    """centre ~ N(0, 3²); bad_i ~ Bernoulli(outlier_rate); reading_i ~ N(centre, (1 + 4 bad_i)²):
    a continuous latent with a finite discrete latent per datum (enumerated, or Gibbs-sampled;
    its ranks tie and are randomised)."""
    centre = sample("centre", dist.Normal(0.0, 3.0))
    with plate("reading", num_readings):
        bad = sample("bad", dist.Bernoulli(outlier_rate))
        sample("reading_value", dist.Normal(centre, 1.0 + 4.0 * bad), obs=readings)


# ---- engine settings ---------------------------------------------------------------------------

MCMC = dict(num_chains=2, num_warmup=300, num_samples=300, progress=False)
RANDOM_WALK = dict(num_chains=2, num_warmup=1000, num_samples=2000, progress=False)
IMPORTANCE = dict(num_samples=2000)
ADVI_OPTIONS = dict(num_steps=1000, learning_rate=0.05, num_samples=200, num_elbo_evaluations=1)
SVI_OPTIONS = dict(num_steps=300, learning_rate=0.05, num_samples=200, num_elbo_evaluations=1)

# (program, positional arguments, model keyword arguments) by name
PROGRAMS: dict[str, tuple[Callable, tuple, dict]] = {
    "coin": (basics.coin, (), {"num_tosses": 8}),
    "heights": (basics.heights, (), {"num_people": 6}),
    "eight_schools": (posteriordb.eight_schools_centered, (), {"J": 4}),
    "group_levels": (group_levels, (), {}),
    "typical_size": (typical_size, (), {}),
    "trend": (trend, (TIMES,), {}),
    "arrivals": (arrivals, (), {}),
    "outliers": (outliers, (), {}),
}


def _calibrate(engine: Any, program: str, num_simulations: int, seed: int = 1, **options: Any):
    model, args, model_kwargs = PROGRAMS[program]
    return simulation_based_calibration(
        model, *args, engine=engine, num_simulations=num_simulations, num_draws=99, seed=seed, **model_kwargs, **options
    )


def _assert_calibrated(calibration) -> None:
    p_values = calibration.p_values(NUM_BINS)
    assert calibration.p_value(NUM_BINS) > ALPHA, f"ranks not uniform: {p_values}"


# ---- every engine passes (default: one program each) ---------------------------------------------

# mh, svi and importance pass in the default suite on the runs their broken versions distort
# (test_the_engine_the_broken_ones_distort_is_calibrated); nuts, hmc, gibbs and advi here.
DEFAULT_CASES = [
    ("nuts", "outliers", MCMC),
    ("hmc", "trend", MCMC),
    ("gibbs", "outliers", MCMC),
    ("advi", "group_levels", ADVI_OPTIONS),
]


@pytest.mark.parametrize("engine, program, options", DEFAULT_CASES, ids=[f"{e}-{p}" for e, p, _ in DEFAULT_CASES])
def test_engine_is_calibrated(engine, program, options):
    calibration = _calibrate(engine, program, DEFAULT_SIMULATIONS, **options)
    assert calibration.num_simulations == DEFAULT_SIMULATIONS
    _assert_calibrated(calibration)


# with the default and the shared runs below, every engine on at least three programs:
# nuts (outliers, group_levels, +2), hmc (trend, +3), mh (coin, +3), gibbs (outliers, +3),
# advi (group_levels, typical_size, trend), svi (typical_size with a user's guide, +3),
# importance (coin, arrivals, +2)
SLOW_CASES = [
    ("nuts", "coin", MCMC),
    ("nuts", "eight_schools", MCMC),  # the centred funnel, non-centred automatically
    ("hmc", "heights", MCMC),
    ("hmc", "group_levels", MCMC),
    ("hmc", "outliers", MCMC),
    ("mh", "group_levels", RANDOM_WALK),
    ("mh", "typical_size", RANDOM_WALK),
    ("mh", "arrivals", RANDOM_WALK),
    ("gibbs", "coin", MCMC),
    ("gibbs", "arrivals", MCMC),
    ("gibbs", "trend", MCMC),
    ("advi", "trend", ADVI_OPTIONS),
    ("svi", "group_levels", SVI_OPTIONS),
    ("svi", "trend", SVI_OPTIONS),
    ("svi", "typical_size", SVI_OPTIONS),
    ("importance", "outliers", IMPORTANCE),
    ("importance", "typical_size", IMPORTANCE),
]


@pytest.mark.slow
@pytest.mark.parametrize("engine, program, options", SLOW_CASES, ids=[f"{e}-{p}" for e, p, _ in SLOW_CASES])
def test_engine_is_calibrated_on_more_programs(engine, program, options):
    _assert_calibrated(_calibrate(engine, program, SLOW_SIMULATIONS, **options))


# ---- deliberately broken engines are caught --------------------------------------------------------

_RUNS: dict[tuple, Any] = {}  # engine runs shared by a correct engine and its broken versions


class Distorted(Engine):
    """``inner`` with its draws moved, per element: x → mean + scale · (x − mean) + shift · sd
    (over the run's draws). ``scale < 1`` is too narrow, ``> 1`` too wide, ``shift ≠ 0`` biased.

    Runs of ``inner`` are memoised by (label, seed, data), so the correct engine and its broken
    versions calibrate on the same runs; every run is deterministic given its seed, so sharing
    changes the time a test takes, never its outcome.
    """

    def __init__(self, inner: Engine, label: tuple, scale: float = 1.0, shift: float = 0.0) -> None:
        self.inner, self.label, self.scale, self.shift = inner, label, scale, shift
        self.name = f"{inner.name}-distorted"
        self.tasks = inner.tasks
        self.seed = getattr(inner, "seed", 0)

    def check(self, structure):
        return self.inner.check(structure)

    def run(self, model, *args, **kwargs):
        data = tuple(sorted((k, np.asarray(v).tobytes() if isinstance(v, np.ndarray) else repr(v)) for k, v in kwargs.items()))
        key = (self.label, self.seed, data)
        if key not in _RUNS:
            inner = copy.copy(self.inner)
            inner.seed = self.seed
            _RUNS[key] = inner.run(model, *args, **kwargs)
        result = _RUNS[key]
        samples = {}
        for name, draws in result.samples.items():
            draws = np.asarray(draws)
            if draws.dtype.kind == "f":
                mean, sd = draws.mean(0), draws.std(0)
                draws = mean + self.scale * (draws - mean) + self.shift * sd
            samples[name] = draws
        return replace(result, samples=samples)


def _distorted(engine: Engine, scale: float = 1.0, shift: float = 0.0) -> Distorted:
    """``engine`` with its draws distorted (not at all by default), sharing its runs with every
    other distortion of an engine of the same class and options."""
    label = (type(engine).__name__, repr(sorted(vars(engine).items(), key=str)))
    return Distorted(engine, label, scale, shift)


# kind -> (engine, program): the correct engine is calibrated on the same runs above or here
BROKEN_DEFAULT = {
    "mcmc": (MetropolisHastings(**RANDOM_WALK), "coin"),
    "variational": (SVI(guide=typical_size_guide, **SVI_OPTIONS), "typical_size"),
    "importance": (Importance(**IMPORTANCE), "coin"),
}
BROKEN_SLOW = {
    "mcmc": (NUTS(**MCMC), "group_levels"),
    "variational": (ADVI(**ADVI_OPTIONS), "typical_size"),
    "importance": (Importance(**IMPORTANCE), "arrivals"),
}
DEFAULT_BREAKS = {"too narrow": dict(scale=1 / 3), "too wide": dict(scale=3.0), "biased": dict(shift=1.0)}
SLOW_BREAKS = {"too narrow": dict(scale=0.5), "too wide": dict(scale=2.0), "biased": dict(shift=1.0)}


@pytest.mark.parametrize("kind", list(BROKEN_DEFAULT))
@pytest.mark.parametrize("how", list(DEFAULT_BREAKS))
def test_a_broken_engine_fails_calibration(kind, how):
    engine, program = BROKEN_DEFAULT[kind]
    calibration = _calibrate(_distorted(engine, **DEFAULT_BREAKS[how]), program, DEFAULT_SIMULATIONS)
    assert calibration.p_value(NUM_BINS) < ALPHA, calibration.p_values(NUM_BINS)


@pytest.mark.parametrize("kind", list(BROKEN_DEFAULT))
def test_the_engine_the_broken_ones_distort_is_calibrated(kind):
    """The undistorted wrapper on the same runs passes: the broken versions fail because of the
    distortion, not because of the program or the wrapper."""
    engine, program = BROKEN_DEFAULT[kind]
    _assert_calibrated(_calibrate(_distorted(engine), program, DEFAULT_SIMULATIONS))


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BROKEN_SLOW))
@pytest.mark.parametrize("how", list(SLOW_BREAKS))
def test_a_subtly_broken_engine_fails_calibration(kind, how):
    engine, program = BROKEN_SLOW[kind]
    calibration = _calibrate(_distorted(engine, **SLOW_BREAKS[how]), program, SLOW_SIMULATIONS)
    assert calibration.p_value(NUM_BINS) < ALPHA, calibration.p_values(NUM_BINS)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BROKEN_SLOW))
def test_the_engine_the_subtly_broken_ones_distort_is_calibrated(kind):
    engine, program = BROKEN_SLOW[kind]
    _assert_calibrated(_calibrate(_distorted(engine), program, SLOW_SIMULATIONS))
