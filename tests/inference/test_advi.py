"""ADVI against posteriordb (eight schools), NUTS (breast-cancer logistic regression), closed
forms (conjugate Normal, the coin's evidence), and with a discrete latent enumerated out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ppgen
from ppgen import dist, plate, sample
from ppgen.models.basics import coin, coin_log_evidence, heights
from ppgen.models.posteriordb import eight_schools_noncentered, load_eight_schools, reference_posterior

#: mean-field Gaussians are known to shift posterior means a little (and shrink variances);
#: the tolerance is a fraction of the reference posterior standard deviation
MEAN_TOLERANCE = 0.35


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: thread hand-offs cost more than they save
    yield
    torch.set_num_threads(saved)


def logistic_regression(x, y=None):
    intercept = sample("intercept", dist.Normal(0.0, 2.0))
    with plate("D", x.shape[1]):
        beta = sample("beta", dist.Normal(0.0, 1.0))
    with plate("N", x.shape[0]):
        sample("y", dist.Bernoulli(logits=intercept + x @ beta), obs=y)


def normal_known_variance(x, m0=1.0, s0=2.0, sigma=0.7):
    mu = sample("mu", dist.Normal(m0, s0))
    with plate("N", len(x)):
        sample("x", dist.Normal(mu, sigma), obs=x)


def test_eight_schools_noncentred_matches_posteriordb():
    data = load_eight_schools().data
    result = ppgen.infer(eight_schools_noncentered, **data, engine="advi", num_steps=6000, learning_rate=0.01, num_samples=4000)
    assert result.diagnostics["backend"] == "numpyro"
    reference = reference_posterior("eight_schools_noncentered")
    for site in ("mu", "tau", "theta"):
        difference = np.abs(result.samples[site].mean(0) - reference[site]["mean"]) / reference[site]["sd"]
        assert np.all(difference < MEAN_TOLERANCE), (site, difference)
    assert result.log_evidence.kind == "lower-bound" and result.log_evidence.stderr > 0


def test_logistic_regression_matches_nuts():
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    y = y.astype(np.float64)
    nuts = ppgen.infer(logistic_regression, x, y, engine="nuts", num_warmup=500, num_samples=1000, progress=False)
    advi = ppgen.infer(logistic_regression, x, y, engine="advi", num_steps=5000, learning_rate=0.01, num_samples=2000)
    for site in ("intercept", "beta"):
        mean, sd = nuts.samples[site].mean(0), nuts.samples[site].std(0)
        monte_carlo = 3 * sd / np.sqrt(200)  # a conservative effective sample size for NUTS
        assert np.all(np.abs(advi.samples[site].mean(0) - mean) < MEAN_TOLERANCE * sd + monte_carlo), site


def test_gaussian_posterior_is_in_the_family():
    """One real latent with a Gaussian posterior: the mean-field family holds it exactly, so the
    fit is limited only by the stochastic optimiser."""
    x = np.random.default_rng(0).normal(1.5, 0.7, size=12)
    variance = 1 / (1 / 4.0 + len(x) / 0.49)
    mean = variance * (1.0 / 4.0 + x.sum() / 0.49)
    for backend in ("numpyro", "pyro"):
        result = ppgen.infer(
            normal_known_variance, x, engine="advi", backend=backend, num_steps=1500, learning_rate=0.005, num_particles=2, num_samples=4000
        )
        assert float(result.params["mu.loc"]) == pytest.approx(mean, abs=0.15 * np.sqrt(variance)), backend
        assert float(result.params["mu.scale"]) == pytest.approx(np.sqrt(variance), rel=0.15), backend
        draws = result.samples["mu"]
        assert abs(draws.mean() - float(result.params["mu.loc"])) < 5 * draws.std() / np.sqrt(len(draws))


def test_elbo_bounds_the_coin_evidence():
    x = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    result = ppgen.score(coin, x, engine="advi", num_steps=2000, learning_rate=0.02, num_elbo_evaluations=400)
    exact = coin_log_evidence(x)
    assert result.kind == "lower-bound"
    assert result.value <= exact + 3 * result.stderr
    assert result.value >= exact - 0.1  # the logit-normal is close to the Beta posterior


def mixture(x, K=2):
    weights = sample("weights", dist.Dirichlet(torch.ones(K) if ppgen.current_backend() == "pyro" else __import__("jax").numpy.ones(K)))
    with plate("K", K):
        locs = sample("locs", dist.Normal(0.0, 10.0))
    with plate("N", len(x)):
        z = sample("z", dist.Categorical(weights))
        sample("x", dist.Normal(locs[z], 1.0), obs=x)


def test_discrete_latent_is_enumerated():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, size=80)
    x = rng.normal(np.where(truth == 1, 4.0, -4.0), 1.0)
    result = ppgen.infer(mixture, x, engine="advi", num_steps=800, learning_rate=0.05, num_samples=200)
    assert result.diagnostics["enumerated"] == ["z"]
    locs = np.sort(result.samples["locs"].mean(0))
    assert locs == pytest.approx([-4.0, 4.0], abs=0.6)
    labels = result.samples["z"].mean(0) > 0.5
    high = np.argmax(result.samples["locs"].mean(0))
    agreement = np.mean(labels == (truth == 1)) if high == 1 else np.mean(labels != (truth == 1))
    assert agreement > 0.97


def test_options_are_validated():
    with pytest.raises(ValueError, match="ADVI: learning_rate must be a positive number"):
        ppgen.infer(heights, [170.0, 180.0], engine="advi", learning_rate=0)
    with pytest.raises(ValueError, match="ADVI: optimizer must be one of"):
        ppgen.infer(heights, [170.0, 180.0], engine="advi", optimizer="sgd")
    with pytest.raises(ValueError, match="ADVI: backend must be"):
        ppgen.infer(heights, [170.0, 180.0], engine="advi", backend="stan")


def rainfall(totals, season_mean=0.0, season_scale=3.0):
    """A user's program, for the compile-once test: a Normal mean with known noise."""
    level = sample("level", dist.Normal(season_mean, season_scale))
    with plate("month", len(totals)):
        sample("total", dist.Normal(level, 1.5), obs=totals)


def test_a_rerun_on_new_data_reuses_the_compiled_steps_without_depending_on_earlier_runs():
    """The second run of the same program and shapes reuses the compiled update (so SBC and
    bootstraps are cheap), yet gives bit for bit what a run in a fresh cache gives: q starts
    from the run's own seed, not from the previous run's guide."""
    from ppgen.inference import _mcmc

    rng = np.random.default_rng(4)
    first, second = rng.normal(2.0, 1.5, size=7), rng.normal(-1.0, 1.5, size=7)
    options = dict(engine="advi", num_steps=150, learning_rate=0.05, num_samples=50, num_elbo_evaluations=3)
    _mcmc.clear_cache()
    ppgen.infer(rainfall, first, seed=11, **options)
    after_another_run = ppgen.infer(rainfall, second, seed=12, **options)
    _mcmc.clear_cache()
    fresh = ppgen.infer(rainfall, second, seed=12, **options)
    np.testing.assert_array_equal(after_another_run.samples["level"], fresh.samples["level"])
    np.testing.assert_array_equal(after_another_run.traces["elbo"], fresh.traces["elbo"])
    assert after_another_run.log_evidence.value == fresh.log_evidence.value
