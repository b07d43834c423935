"""The SBC helper itself (``ppgen.calibration``), on synthetic ranks with known answers: exact
posteriors give uniform fractional ranks whatever the number of draws, autocorrelated draws
need thinning, ties need randomising, the χ² and Bonferroni numbers are the textbook ones. The
engines' own calibrations are in ``tests/inference/test_sbc.py``.

Thresholds: a check that a correct construction passes uses p > 1e-4 (it fails with
probability 1e-4 at most); a check that a broken one fails uses p < 1e-6 with a size at which
the χ² test's power at that level is above 0.999 (stated per test).
"""

import numpy as np
import pytest
from scipy import stats

from ppgen import EngineNotApplicable, dist, plate, sample
from ppgen.calibration import (
    Calibration,
    effective_sample_size,
    randomised_rank,
    simulation_based_calibration,
    thin,
)
from ppgen.inference.importance import Importance


def _calibration(ranks, num_draws, seed=0):
    return Calibration({"q": np.asarray(ranks)}, {"q": np.asarray(num_draws)}, seed=seed)


def test_fractional_ranks_of_exchangeable_draws_are_uniform_whatever_the_number_of_draws():
    """Truth and draws iid from one distribution, a different number of draws per simulation:
    the fractional ranks are Uniform(0, 1) (Kolmogorov–Smirnov against the exact cdf)."""
    rng = np.random.default_rng(11)
    num_draws = rng.integers(1, 40, size=4000)
    ranks = [randomised_rank(rng.gamma(2.0, size=m), rng.gamma(2.0), rng) for m in num_draws]
    fractional = _calibration(ranks, num_draws).fractional_ranks()["q"]
    assert stats.kstest(fractional, "uniform").pvalue > 1e-4


def test_ties_are_randomised_so_discrete_sites_calibrate():
    """A Bernoulli(0.3) 'posterior' ranked against its own draws: randomised ranks are uniform;
    counting only the draws strictly below the truth is not (about 70% of those ranks are 0
    against 1/20 expected, so the χ² p-value is astronomically small)."""
    rng = np.random.default_rng(3)
    randomised, strict = [], []
    for _ in range(500):
        draws, truth = rng.random(19) < 0.3, rng.random() < 0.3
        randomised.append(randomised_rank(draws, truth, rng))
        strict.append(int(np.sum(draws < truth)))
    assert _calibration(randomised, np.full(500, 19)).p_value() > 1e-4
    assert _calibration(strict, np.full(500, 19)).p_value() < 1e-6


def _ar1_chains(rng, num_chains, length, rho):
    """Stationary AR(1) chains with N(0, 1) marginals: exact but autocorrelated 'MCMC' draws."""
    chains = np.empty((num_chains, length))
    chains[:, 0] = rng.normal(size=num_chains)
    noise = rng.normal(size=(num_chains, length)) * np.sqrt(1 - rho**2)
    for t in range(1, length):
        chains[:, t] = rho * chains[:, t - 1] + noise[:, t]
    return chains


def test_autocorrelated_draws_calibrate_only_after_thinning_by_the_effective_sample_size():
    """Exact draws of N(0, 1) with lag-1 autocorrelation 0.995, two chains of 500 (ESS ≈
    1000 · 0.005 / 1.995 ≈ 2.5): ranks among 99 evenly spaced draws pile up at the ends (each
    end bin of 20 holds ~0.13 of the ranks instead of 0.05, a χ² noncentrality ≈ 300 · 2 ·
    0.08² / 0.05 ≈ 77 for 300 simulations, so p < 1e-6 with power > 0.999); thinned by
    ⌈N / ESS⌉ they are uniform. The ESS estimate itself is checked against the AR(1) value."""
    rng = np.random.default_rng(5)
    thinned, unthinned, ess_values = [], [], []
    for _ in range(300):
        chains, truth = _ar1_chains(rng, 2, 500, 0.995), rng.normal()
        ess = float(effective_sample_size(chains[:, :, None])[0])
        ess_values.append(ess)
        kept = thin(chains, 99, ess)
        thinned.append((randomised_rank(kept, truth, rng), kept.size))
        everything = thin(chains, 99, float("nan"))
        unthinned.append((randomised_rank(everything, truth, rng), everything.size))
    assert 1.0 < np.median(ess_values) < 6.0
    assert _calibration(*zip(*thinned)).p_value(num_bins=20) > 1e-4
    assert _calibration(*zip(*unthinned)).p_value(num_bins=20) < 1e-6


def test_thin_keeps_every_kth_draw_of_each_chain_and_at_most_num_draws():
    draws = np.arange(2 * 30, dtype=float).reshape(2, 30)
    assert thin(draws, 100, ess=6.0).tolist() == [9, 19, 29, 39, 49, 59]  # k = 60 / 6 = 10
    assert thin(draws, 100, ess=float("nan")).size == 60
    assert thin(draws, 100, ess=1000.0).size == 60
    assert thin(draws, 4, ess=1000.0).tolist() == [0, 20, 39, 59]


def test_chi_squared_and_bonferroni_numbers_are_the_textbook_ones():
    """Every rank 0 among 99 draws: all fractional ranks fall in the first of B bins, so
    χ² = S (B − 1) exactly, p is its χ²(B − 1) tail, and with four more uniform quantities the
    run's p-value is 5 p (Bonferroni)."""
    num, bins = 60, 6
    stuck = np.zeros(num, dtype=int)
    calibration = _calibration(stuck, np.full(num, 99))
    assert calibration.statistics(bins)["q"] == pytest.approx(num * (bins - 1))
    expected = stats.chi2.sf(num * (bins - 1), bins - 1)
    assert calibration.p_values(bins)["q"] == pytest.approx(expected, rel=1e-9)
    rng = np.random.default_rng(0)
    ranks = {"stuck": stuck, **{f"fine{i}": rng.integers(0, 100, num) for i in range(4)}}
    several = Calibration(ranks, {k: np.full(num, 99) for k in ranks})
    assert several.p_value(bins) == pytest.approx(5 * expected, rel=1e-9)


def test_calibration_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_bins must be an integer >= 2"):
        _calibration([0, 1], [3, 3]).p_values(num_bins=1)
    with pytest.raises(ValueError, match="fewer than 5 per bin"):
        _calibration(np.zeros(20, dtype=int), np.full(20, 9)).p_values(num_bins=10)
    with pytest.raises(ValueError, match="quantity 'q' needs 0 <= ranks <= num_draws"):
        _calibration([5], [3])


# ---- the driver: arguments, seeds, sites ------------------------------------------------------


def pollen_counts(grains=None, num_slides=5, prior_rate=4.0):
    """A user's program: a Gamma–Poisson count model whose data argument is not the site name."""
    density = sample("density", dist.Gamma(2.0, 2.0 / prior_rate))
    with plate("slide", num_slides):
        sample("grain_count", dist.Poisson(density), obs=grains)


class SeedRecordingImportance(Importance):
    name = "seed-recording-importance"
    seeds: list = []

    def run(self, model, *args, **kwargs):
        type(self).seeds.append(self.seed)
        return super().run(model, *args, **kwargs)


def test_data_go_to_the_argument_the_site_reads_and_every_simulation_gets_its_own_seed():
    SeedRecordingImportance.seeds = []
    engine = SeedRecordingImportance(num_samples=500, seed=123)
    calibration = simulation_based_calibration(pollen_counts, engine=engine, num_simulations=8, num_draws=9, seed=40)
    assert SeedRecordingImportance.seeds == list(range(41, 49))
    assert engine.seed == 123  # the caller's instance is left alone
    assert set(calibration.ranks) == {"density"} and calibration.num_draws["density"].max() <= 9


def test_model_keyword_arguments_shape_the_simulated_data():
    """``num_slides=3`` goes to the prior-predictive draws too, not only to inference."""
    seen = []

    class ShapeRecordingImportance(Importance):
        name = "shape-recording-importance"

        def run(self, model, *args, **kwargs):
            seen.append(np.shape(kwargs["grains"]))
            return super().run(model, *args, **kwargs)

    simulation_based_calibration(pollen_counts, engine=ShapeRecordingImportance(num_samples=200), num_slides=3, num_simulations=2, num_draws=9)
    assert seen == [(3,), (3,)]


def test_bad_sites_and_unsimulable_data_are_named():
    with pytest.raises(ValueError, match="'grain_count' is not a latent site of pollen_counts"):
        simulation_based_calibration(pollen_counts, engine="importance", sites=["grain_count"], num_simulations=2)
    with pytest.raises(ValueError, match="observed site 'grain_count' of pollen_counts takes its data from none"):
        simulation_based_calibration(pollen_counts, np.ones(5), engine="importance", num_simulations=2)
    with pytest.raises(EngineNotApplicable, match="unknown engine 'nutz'"):
        simulation_based_calibration(pollen_counts, engine="nutz", num_simulations=2)
