"""Ancestral sampling against exact moments (z-tests scaled by Monte Carlo error)."""

import numpy as np
import pytest

import ppgen
from ppgen import dist, ops, sample
from ppgen.models import basics, mixtures

NUM = 4000


def _z(draws, mean, variance):
    return abs(np.mean(draws) - mean) / np.sqrt(variance / len(draws))


def test_coin_prior_moments():
    draws = ppgen.generate(basics.coin, num_samples=NUM, a=2.0, b=5.0, seed=1)
    mean, variance = 2 / 7, 2 * 5 / (7**2 * 8)
    assert _z(draws["rho"], mean, variance) < 4
    assert draws["x"].shape == (NUM, 10)
    # x_i ~ Bernoulli(rho): marginal mean E[rho], variance E[rho](1 - E[rho])
    assert _z(draws["x"][:, 0], mean, mean * (1 - mean)) < 4


def test_heights_prior_moments():
    draws = ppgen.generate(basics.heights, num_samples=NUM, seed=2)
    assert _z(draws["mu"], 170.0, 20.0**2) < 4
    half_normal_mean = 20.0 * np.sqrt(2 / np.pi)
    assert _z(draws["sigma"], half_normal_mean, 20.0**2 * (1 - 2 / np.pi)) < 4


def test_mixture_assignment_frequencies():
    draws = ppgen.generate(mixtures.bernoulli_mixture, num_samples=500, num_data=20, seed=3)
    assert draws["z"].shape == (500, 20) and draws["x"].shape == (500, 20, 8)
    # z_j ~ Categorical(pi), pi ~ Dirichlet(1, 1): P(z_j = 1) = 1/2 marginally
    assert _z(draws["z"].reshape(-1), 0.5, 0.25 * 20) < 4  # variance inflated by within-draw correlation


def test_temperature_scales_gaussian_spread():
    def model():
        sample("a", dist.Normal(1.0, 2.0))

    cold = ppgen.generate(model, num_samples=NUM, temperature=0.25, seed=4)["a"]
    # at temperature T a Normal(m, s) becomes Normal(m, s sqrt(T)): sd 1.0 here
    variance_estimate = cold.var(ddof=1)
    assert abs(variance_estimate - 1.0) < 4 * np.sqrt(2 / (NUM - 1))


def test_temperature_sharpens_categorical():
    def model():
        sample("c", dist.Categorical(probs=ops.tensor([0.2, 0.8])))

    draws = ppgen.generate(model, num_samples=NUM, temperature=0.5, seed=5)["c"]
    p = 0.8**2 / (0.8**2 + 0.2**2)  # p^(1/T) renormalised
    assert _z(draws, p, p * (1 - p)) < 4


def test_temperature_rejects_unsupported_site():
    def model():
        sample("g", dist.Gamma(2.0, 1.0))

    with pytest.raises(ValueError, match="site 'g'"):
        ppgen.generate(model, num_samples=3, temperature=2.0)


def test_posterior_predictive_uses_fitted_values():
    x = basics.simulate_coin(num_tosses=40, rho=0.8, seed=6).data["x"]
    fit = ppgen.infer(basics.coin, x, engine="map")
    predictive = ppgen.generate(fit, num_samples=NUM, seed=7)
    assert np.allclose(predictive["rho"], fit.params["rho"])
    rho = float(fit.params["rho"])
    assert _z(predictive["x"].reshape(-1), rho, rho * (1 - rho) / 40 * 40) < 4


def test_generate_is_reproducible():
    first = ppgen.generate(basics.heights, num_samples=5, seed=11)
    second = ppgen.generate(basics.heights, num_samples=5, seed=11)
    np.testing.assert_array_equal(first["x"], second["x"])


# --------------------------------------------------------------------------------------------
# data with no drawn site upstream (a prompt) is kept; the rest is drawn given it

_START = np.array([0.5, 0.3, 0.2])
_MOVE = np.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.2, 0.2, 0.6]])


def _weather(prefix, num_days: int):
    """A user's Markov chain of days: the first len(prefix) days observed, the rest generated."""
    import torch

    state = None
    for t in range(num_days):
        probs = torch.as_tensor(_START) if state is None else torch.as_tensor(_MOVE)[state]
        state = sample(f"day_{t}", dist.Categorical(probs), obs=prefix[t] if t < len(prefix) else None)


def test_generate_keeps_a_prompt_and_draws_the_rest_from_its_conditional():
    from scipy.stats import chisquare

    prefix = np.array([2, 0, 1])
    structure = ppgen.inspect(_weather, prefix, 6)
    from ppgen.inference.prior import kept_data

    assert kept_data(structure) == {"day_0", "day_1", "day_2"}
    draws = ppgen.generate(_weather, prefix, 6, num_samples=NUM, seed=3)
    for t, day in enumerate(prefix):
        np.testing.assert_array_equal(draws[f"day_{t}"], np.full(NUM, day))
    # p(day_3 | prefix) = MOVE[1]; p(day_4 | prefix) = (MOVE²)[1]: χ² goodness of fit, seeded
    for name, probs in (("day_3", _MOVE[1]), ("day_4", (_MOVE @ _MOVE)[1])):
        counts = np.bincount(draws[name].astype(int), minlength=3)
        assert chisquare(counts, NUM * probs).pvalue > 1e-3, (name, counts)


def test_generate_redraws_data_downstream_of_a_latent_site():
    """Clamping x while drawing the rate from its prior would not be p(rate | x): x is replicated."""

    def noisy(x):
        rate = sample("rate", dist.Beta(2.0, 2.0))
        sample("x", dist.Bernoulli(rate), obs=x)

    from ppgen.inference.prior import kept_data

    assert kept_data(ppgen.inspect(noisy, 1.0)) == frozenset()
    draws = ppgen.generate(noisy, 1.0, num_samples=NUM, seed=5)
    assert _z(draws["x"], 0.5, 0.25) < 4  # the prior predictive mean of x is E[rate] = 0.5
