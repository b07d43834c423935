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


# --------------------------------------------------------------------------------------------
# No mode: a site running to the boundary of its support


def _normal_flat(x=None):
    """x_i ~ N(m, s) with flat priors on m ∈ ℝ and s > 0: the MLE is (x̄, the biased sd)."""
    m = ppgen.sample("m", ppgen.dist.ImproperUniform(ppgen.dist.constraints.real, (), ()))
    s = ppgen.sample("s", ppgen.dist.ImproperUniform(ppgen.dist.constraints.positive, (), ()))
    with ppgen.plate("n", len(x)):
        ppgen.sample("x", ppgen.dist.Normal(m, s), obs=x)


@pytest.mark.parametrize("engine", ["map", "mle"])
def test_one_observation_has_no_scale_estimate(engine):
    """log N(x | m, s) = −log s − … → +∞ as s → 0 with m = x: no estimate of s exists."""
    from ppgen.errors import EngineFailure

    with pytest.raises(EngineFailure, match=rf"{engine}: no mode: .* as s runs to the boundary of its support \(s -> 0;") as caught:
        ppgen.infer(_normal_flat, np.array([3.0]), engine=engine)
    assert caught.value.partial.num_iterations >= 1


def _varying_intercepts(y=None, num_groups=6):
    """Centred hierarchy, other names and sizes than eight schools: log p ~ −G log ω as ω → 0."""
    centre = ppgen.sample("centre", ppgen.dist.Normal(0.0, 10.0))
    omega = ppgen.sample("omega", ppgen.dist.HalfNormal(3.0))
    with ppgen.plate("groups", num_groups):
        effect = ppgen.sample("effect", ppgen.dist.Normal(centre, omega))
        ppgen.sample("y", ppgen.dist.Normal(effect, 2.0), obs=y)


def test_a_collapsing_hierarchical_scale_has_no_map():
    from ppgen.errors import EngineFailure

    y = np.array([1.0, 2.0, -1.0, 0.5, 3.0, -2.0])
    with pytest.raises(EngineFailure, match=r"map: no mode: .* as omega runs to the boundary .*\(omega -> 0;"):
        ppgen.infer(_varying_intercepts, y, engine="map")


def test_a_mode_far_from_the_start_is_found_not_refused():
    """A small scale (0.001, seven units of log s from the start at s = 1) is a mode: the
    profile falls beyond it, so the run ends normally at the closed form."""
    x = np.random.default_rng(0).normal(0.5, 1e-3, size=50)
    result = ppgen.learn(_normal_flat, x, engine="mle")
    assert result.params["m"] == pytest.approx(x.mean(), rel=1e-6)
    assert result.params["s"] == pytest.approx(x.std(), rel=1e-5)


def test_a_bounded_supremum_on_the_boundary_is_returned():
    """All heads: log p(x | ρ) = n log ρ rises to 0 as ρ → 1, a finite supremum: ρ̂ = 1."""
    result = ppgen.learn(basics.coin, np.ones(20), engine="mle")
    assert result.params["rho"] == pytest.approx(1.0, abs=1e-6)


def _dependent_interval(first=None, second=None):
    """a ~ U(0, 1); b flat on (0, 1 − a): b's support depends on a."""
    a = ppgen.sample("a", ppgen.dist.Uniform(0.0, 1.0))
    b = ppgen.sample("b", ppgen.dist.ImproperUniform(ppgen.dist.constraints.interval(0.0, 1.0 - a), (), ()))
    with ppgen.plate("n", len(first)):
        ppgen.sample("first", ppgen.dist.Normal(a, 0.1), obs=first)
        ppgen.sample("second", ppgen.dist.Normal(b, 0.1), obs=second)


def test_map_maps_each_point_through_its_own_support():
    """With flat priors inside a + b < 1 the mode is the pair of sample means (0.2, 0.6); the
    optimiser starts at a = 0.5, where b's interval is (0, 0.5)."""
    rng = np.random.default_rng(2)
    first, second = rng.normal(0.2, 0.1, 40), rng.normal(0.6, 0.1, 40)
    result = ppgen.infer(_dependent_interval, first, second, engine="map")
    assert result.params["a"] == pytest.approx(first.mean(), abs=1e-6)
    assert result.params["b"] == pytest.approx(second.mean(), abs=1e-6)
