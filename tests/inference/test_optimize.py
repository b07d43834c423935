"""MAP and MLE against closed forms."""

import numpy as np
import pytest

import ppgen
from ppgen.models import basics, factor


@pytest.fixture
def tosses():
    return basics.simulate_coin(num_tosses=25, rho=0.3, seed=1).data["x"]


def test_coin_map_is_posterior_mode(tosses):
    a, b = 3.0, 5.0
    result = ppgen.infer(basics.coin, tosses, a=a, b=b, engine="map")
    heads, n = tosses.sum(), len(tosses)
    assert result.params["rho"] == pytest.approx((heads + a - 1) / (n + a + b - 2), abs=1e-7)
    assert result.converged


def test_coin_mle_ignores_prior(tosses):
    result = ppgen.learn(basics.coin, tosses, a=3.0, b=5.0, engine="mle")
    assert result.params["rho"] == pytest.approx(tosses.mean(), abs=1e-7)


def test_gaussian_mle():
    x = basics.simulate_heights(num_people=80, seed=3).data["x"]
    result = ppgen.learn(basics.heights, x, engine="mle")
    assert result.params["mu"] == pytest.approx(x.mean(), rel=1e-7)
    assert result.params["sigma"] == pytest.approx(x.std(), rel=1e-6)


def test_ppca_mle_matches_eigendecomposition():
    simulated = factor.simulate_ppca(num_data=400, D=5, K=2, seed=0)
    x = simulated.data["x"]
    result = ppgen.learn(factor.ppca_marginal, x, K=2, engine="mle", num_steps=2000, tol=1e-12)
    truth = factor.ppca_closed_form(x, K=2)
    # W is identified only up to rotation: compare W Wᵀ, and the mean and noise exactly.
    learned_w = result.params["W"]
    np.testing.assert_allclose(learned_w @ learned_w.T, truth["W"] @ truth["W"].T, atol=1e-5)
    np.testing.assert_allclose(result.params["mu"], truth["mu"], atol=1e-6)
    assert result.params["sigma"] == pytest.approx(truth["sigma"], rel=1e-5)


def test_map_traces_and_log_likelihood_increase(tosses):
    result = ppgen.infer(basics.coin, tosses, engine="map")
    trace = result.traces["log_joint"]
    assert np.all(np.diff(trace) >= -1e-9)


def test_same_seed_same_numbers():
    x = basics.simulate_two_class(num_data=60).data
    first = ppgen.infer(basics.two_class, engine="map", seed=4, **x)
    second = ppgen.infer(basics.two_class, engine="map", seed=4, **x)
    for name in first.params:
        np.testing.assert_array_equal(first.params[name], second.params[name])


def test_two_class_bayes_rule_classifies():
    simulated = basics.simulate_two_class(num_data=400, seed=2)
    fit = ppgen.learn(basics.two_class, engine="map", **simulated.data).params
    x, y = simulated.data["x"], simulated.data["y"]
    probabilities = basics.classify(x, fit["p"], fit["mu"], fit["sigma"])
    truth = simulated.truth
    oracle = basics.classify(x, truth["p"], truth["mu"], truth["sigma"])
    accuracy, oracle_accuracy = np.mean((probabilities > 0.5) == y), np.mean((oracle > 0.5) == y)
    assert accuracy >= oracle_accuracy - 0.02


def test_mle_with_flat_prior_is_least_squares():
    """kidscore_momiq has an improper flat prior on its coefficients (no draws to start from): the
    optimiser starts inside the support, and the MLE is ordinary least squares with σ² = RSS / n."""
    from ppgen.models.posteriordb import kidscore_momiq, load_kidiq

    data = load_kidiq().data
    result = ppgen.learn(kidscore_momiq, engine="mle", **data)
    design = np.column_stack([np.ones(len(data["mom_iq"])), data["mom_iq"]])
    coefficients, residuals, *_ = np.linalg.lstsq(design, data["kid_score"], rcond=None)
    np.testing.assert_allclose(result.params["beta"], coefficients, rtol=1e-5)
    np.testing.assert_allclose(result.params["sigma"], np.sqrt(residuals[0] / len(design)), rtol=1e-5)
