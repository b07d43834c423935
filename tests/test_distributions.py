"""``ppgen.dist`` on both backends: the NumPyro families ported to Pyro (GaussianRandomWalk,
DiscreteUniform, NumPyro's explicitly parameterised names) against NumPyro's own, and the
refusals naming a family one backend lacks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as numpyro_dist
import pytest
import torch

import ppgen
from ppgen import dist, plate, sample
from ppgen.backend import torch_precision, use_backend


def log_prob_on_both(build, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``build(dist).log_prob(value)`` on Pyro (float64) and on NumPyro (x64)."""
    with use_backend("pyro"), torch_precision():
        pyro_value = build(dist).log_prob(torch.as_tensor(value)).numpy()
    with use_backend("numpyro"), jax.enable_x64(True):
        numpyro_value = np.asarray(build(dist).log_prob(jnp.asarray(value)))
    return pyro_value, numpyro_value


def as_tensor(x):
    return ppgen.ops.tensor(x)


# ----------------------------------------------------------------------------------------------
# GaussianRandomWalk


@pytest.mark.parametrize("scale, num_steps", [(0.7, 1), (1.3, 6), ([0.4, 2.5, 1.0], 9)])
def test_gaussian_random_walk_log_prob_matches_numpyro(scale, num_steps):
    rng = np.random.default_rng(num_steps)
    batch = np.shape(scale)
    value = np.cumsum(rng.normal(size=(5,) + batch + (num_steps,)), axis=-1)
    pyro_value, numpyro_value = log_prob_on_both(
        lambda d: d.GaussianRandomWalk(as_tensor(scale), num_steps=num_steps), value
    )
    assert pyro_value.shape == numpyro_value.shape == (5,) + batch
    np.testing.assert_allclose(pyro_value, numpyro_value, rtol=0, atol=1e-6)


def test_gaussian_random_walk_log_prob_is_the_sum_of_its_normal_steps():
    """log p(x) = log N(x₀; 0, σ) + Σ log N(x_t − x_{t−1}; 0, σ), written out by hand."""
    from scipy.stats import norm

    x = np.array([0.3, -0.4, 0.9, 1.1])
    expected = norm.logpdf(x[0], 0, 0.8) + norm.logpdf(np.diff(x), 0, 0.8).sum()
    with use_backend("pyro"), torch_precision():
        got = float(dist.GaussianRandomWalk(0.8, num_steps=4).log_prob(torch.as_tensor(x)))
    assert got == pytest.approx(expected, abs=1e-12)


def test_gaussian_random_walk_samples_have_the_walks_moments():
    """x_t has mean 0 and variance (t + 1) σ², and the increments are uncorrelated: each within
    4 standard errors of N draws."""
    num_draws, sigma, steps = 20_000, 1.5, 5
    with use_backend("pyro"), torch_precision(), torch.random.fork_rng():
        torch.manual_seed(0)
        walk = dist.GaussianRandomWalk(torch.full((2,), sigma), num_steps=steps)
        draws = walk.sample((num_draws,)).numpy()
        assert draws.shape == (num_draws, 2, steps)
        np.testing.assert_allclose(walk.variance.numpy(), sigma**2 * np.arange(1, steps + 1) * np.ones((2, 1)))
    variance = sigma**2 * np.arange(1, steps + 1)
    assert np.all(np.abs(draws.mean(0)) < 4 * np.sqrt(variance / num_draws))
    assert np.all(np.abs(draws.var(0) / variance - 1) < 4 * np.sqrt(2 / (num_draws - 1)))
    increments = np.diff(draws[:, 0], axis=-1)
    correlation = np.corrcoef(increments.T)[np.triu_indices(steps - 1, 1)]
    assert np.all(np.abs(correlation) < 4 / np.sqrt(num_draws))


def test_gaussian_random_walk_shapes_expand_and_plates_as_on_numpyro():
    with use_backend("pyro"), torch_precision():
        walk = dist.GaussianRandomWalk(torch.ones(3), num_steps=4)
        expanded = walk.expand((2, 3))
        assert (walk.batch_shape, walk.event_shape) == ((3,), (4,))
        assert (expanded.batch_shape, expanded.event_shape, expanded.sample().shape) == ((2, 3), (4,), (2, 3, 4))
        assert walk.to_event(1).event_shape == (3, 4)
    with use_backend("numpyro"):
        numpyro_walk = dist.GaussianRandomWalk(jnp.ones(3), num_steps=4)
        assert (numpyro_walk.batch_shape, numpyro_walk.event_shape) == ((3,), (4,))
    with pytest.raises(ValueError, match="GaussianRandomWalk: num_steps must be a positive integer, got 0"):
        with use_backend("pyro"):
            dist.GaussianRandomWalk(1.0, num_steps=0)


def local_level(y, step_scale=0.5, noise=0.8):
    """A local-level model: a random walk observed with Gaussian noise (linear-Gaussian)."""
    level = sample("level", dist.GaussianRandomWalk(step_scale, num_steps=len(y)))
    with plate("time", len(y)):
        sample("y", dist.Normal(level, noise), obs=y)


def local_level_posterior(y, step_scale=0.5, noise=0.8) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior mean and sd of the level: prior Cov(x_s, x_t) = σ² (min(s, t) + 1)."""
    t = np.arange(len(y))
    prior = step_scale**2 * (np.minimum.outer(t, t) + 1)
    gain = prior @ np.linalg.inv(prior + noise**2 * np.eye(len(y)))
    return gain @ y, np.sqrt(np.diag(prior - gain @ prior))


def test_gaussian_random_walk_posterior_on_both_backends_matches_the_kalman_answer():
    """Pyro's port (map: the mode of a Gaussian posterior is its mean) to 1e-4, and NumPyro's
    (nuts) within 4 MCSE, against the closed-form posterior of the linear-Gaussian model."""
    y = np.cumsum(np.random.default_rng(4).normal(0, 0.5, 12)) + np.random.default_rng(5).normal(0, 0.8, 12)
    mean, sd = local_level_posterior(y)
    mode = ppgen.infer(local_level, y, engine="map", progress=False)
    np.testing.assert_allclose(np.asarray(mode.params["level"]), mean, atol=1e-4)
    result = ppgen.infer(local_level, y, engine="nuts", num_warmup=300, num_samples=600, num_chains=2, seed=3, progress=False)
    draws = result.samples["level"]
    mcse = sd / np.sqrt(result.diagnostics["ess_bulk"]["level"])
    assert np.all(np.abs(draws.mean(0) - mean) < 4 * mcse)


# ----------------------------------------------------------------------------------------------
# DiscreteUniform


@pytest.mark.parametrize("low, high", [(0, 1), (2, 7), (-3, 3)])
def test_discrete_uniform_log_prob_and_support_match_numpyro(low, high):
    value = np.arange(low, high + 1, dtype=np.float64)
    pyro_value, numpyro_value = log_prob_on_both(lambda d: d.DiscreteUniform(low, high), value)
    np.testing.assert_allclose(pyro_value, numpyro_value, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pyro_value, -np.log(high - low + 1), rtol=1e-12)
    with use_backend("pyro"):
        support = dist.DiscreteUniform(low, high).enumerate_support()
        assert bool(dist.DiscreteUniform(low, high).support.check(torch.tensor(float(high + 1)))) is False
    with use_backend("numpyro"):
        numpyro_support = dist.DiscreteUniform(low, high).enumerate_support()
    np.testing.assert_array_equal(support.numpy(), np.asarray(numpyro_support))


def test_discrete_uniform_samples_are_uniform():
    """Every value's frequency within 4 binomial standard errors of 1/K; mean and variance
    ((K² − 1)/12) within 4 standard errors."""
    num_draws, low, high = 30_000, 3, 8
    K = high - low + 1
    with use_backend("pyro"), torch_precision(), torch.random.fork_rng():
        torch.manual_seed(1)
        uniform = dist.DiscreteUniform(torch.full((2,), float(low)), torch.full((2,), float(high)))
        draws = uniform.sample((num_draws,)).numpy()
        assert float(uniform.mean[0]) == (low + high) / 2 and float(uniform.variance[0]) == (K**2 - 1) / 12
    assert draws.shape == (num_draws, 2) and set(np.unique(draws)) == set(range(low, high + 1))
    frequencies = np.array([(draws == k).mean() for k in range(low, high + 1)])
    assert np.all(np.abs(frequencies - 1 / K) < 4 * np.sqrt((1 / K) * (1 - 1 / K) / (2 * num_draws)))
    variance = (K**2 - 1) / 12
    assert abs(draws.mean() - (low + high) / 2) < 4 * np.sqrt(variance / (2 * num_draws))


def test_discrete_uniform_with_differing_bounds_is_not_enumerable():
    with use_backend("pyro"):
        uneven = dist.DiscreteUniform(torch.tensor([0.0, 1.0]), torch.tensor([3.0, 3.0]))
        assert uneven.expand((4, 2)).batch_shape == (4, 2)
        with pytest.raises(NotImplementedError, match="Inhomogeneous"):
            uneven.enumerate_support()
        with pytest.raises(ValueError, match="DiscreteUniform: high must be >= low"):
            dist.DiscreteUniform(3, 1)


def die_roll(rolls, num_faces_low=1, num_faces_high=4):
    """Which die (faces low..high, equally likely a priori) produced noisy readings of its value."""
    face = sample("face", dist.DiscreteUniform(num_faces_low, num_faces_high))
    with plate("rolls", len(rolls)):
        sample("reading", dist.Normal(face, 1.5), obs=rolls)


def test_discrete_uniform_latent_is_enumerated_exactly():
    """p(face | readings) ∝ Π N(reading; face, 1.5), over faces 1..4 (not starting at 0)."""
    rolls = np.array([2.9, 3.6, 2.2, 4.1, 3.3])
    faces = np.arange(1, 5)
    log_post = np.array([-((rolls - f) ** 2).sum() / (2 * 1.5**2) for f in faces])
    exact = np.exp(log_post - log_post.max())
    exact /= exact.sum()
    structure = ppgen.inspect(die_roll, rolls)
    assert structure.sites["face"].support.cardinality == 4
    result = ppgen.infer(die_roll, rolls, engine="enumerate")
    np.testing.assert_allclose(result.marginals["face"], exact, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# NumPyro's explicitly parameterised names


PARAMETERISED = [
    ("BernoulliLogits", lambda d: d.BernoulliLogits(as_tensor([-0.3, 1.2])), [0.0, 1.0]),
    ("BernoulliProbs", lambda d: d.BernoulliProbs(as_tensor([0.2, 0.9])), [1.0, 0.0]),
    ("BinomialLogits", lambda d: d.BinomialLogits(as_tensor([0.4, -1.0]), total_count=as_tensor([5.0, 9.0])), [3.0, 1.0]),
    ("BinomialProbs", lambda d: d.BinomialProbs(as_tensor([0.4, 0.7]), 6), [0.0, 6.0]),
    ("CategoricalLogits", lambda d: d.CategoricalLogits(as_tensor([0.1, -2.0, 1.5])), [0, 2]),
    ("CategoricalProbs", lambda d: d.CategoricalProbs(as_tensor([0.1, 0.3, 0.6])), [1, 2]),
    ("GeometricLogits", lambda d: d.GeometricLogits(as_tensor([0.3, -0.5])), [0.0, 4.0]),
    ("GeometricProbs", lambda d: d.GeometricProbs(as_tensor([0.3, 0.8])), [2.0, 0.0]),
    ("MultinomialLogits", lambda d: d.MultinomialLogits(as_tensor([0.2, -0.1, 0.5]), total_count=4), [[1.0, 1.0, 2.0]]),
    ("MultinomialProbs", lambda d: d.MultinomialProbs(as_tensor([0.2, 0.3, 0.5]), 4), [[0.0, 3.0, 1.0]]),
    ("NegativeBinomialLogits", lambda d: d.NegativeBinomialLogits(3.5, as_tensor([0.3, -0.2])), [0.0, 7.0]),
    ("NegativeBinomialProbs", lambda d: d.NegativeBinomialProbs(3.5, as_tensor([0.3, 0.6])), [2.0, 5.0]),
    ("NegativeBinomial2", lambda d: d.NegativeBinomial2(as_tensor([2.0, 6.5]), 1.7), [1.0, 11.0]),
    ("LogUniform", lambda d: d.LogUniform(0.5, as_tensor([4.0, 20.0])), [0.7, 13.0]),
]


@pytest.mark.parametrize("name, build, value", PARAMETERISED, ids=[p[0] for p in PARAMETERISED])
def test_numpyro_parameterised_names_score_as_on_numpyro(name, build, value):
    pyro_value, numpyro_value = log_prob_on_both(build, np.asarray(value))
    assert np.all(np.isfinite(pyro_value))
    np.testing.assert_allclose(pyro_value, numpyro_value, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Refusals


def test_a_numpyro_only_family_is_refused_by_name_on_pyro():
    with use_backend("pyro"):
        with pytest.raises(NotImplementedError, match=r"ppgen.dist.ZeroSumNormal: NumPyro has ZeroSumNormal but Pyro does not.*no equivalent"):
            dist.ZeroSumNormal(1.0, event_shape=(3,))
        with pytest.raises(NotImplementedError, match=r"BetaProportion.*write ppgen.dist.Beta\(mean \* concentration, \(1 - mean\) \* concentration\)"):
            dist.BetaProportion(0.3, 5.0)


def test_a_pyro_only_family_is_refused_by_name_on_numpyro():
    with use_backend("numpyro"):
        with pytest.raises(NotImplementedError, match=r"ppgen.dist.OneHotCategorical: Pyro has OneHotCategorical but NumPyro does not; run it on an engine on Pyro"):
            dist.OneHotCategorical(jnp.ones(3) / 3)
        with pytest.raises(NotImplementedError, match=r"LKJCorrCholesky.*write ppgen.dist.LKJCholesky\(dimension, concentration\)"):
            dist.LKJCorrCholesky(2, 1.0)


def sum_to_zero_effects(y):
    effects = sample("effects", dist.ZeroSumNormal(1.0, event_shape=(len(y),)))
    sample("y", dist.Normal(effects, 1.0).to_event(1), obs=y)


def test_a_program_using_a_numpyro_only_family_fails_naming_it_before_any_engine_runs():
    with pytest.raises(NotImplementedError, match="ppgen.dist.ZeroSumNormal: NumPyro has ZeroSumNormal but Pyro does not"):
        ppgen.infer(sum_to_zero_effects, np.zeros(3), engine="nuts", progress=False)


def test_numpyro_families_stay_numpyros_own():
    """The NumPyro namespace adds nothing: NumPyro's classes are returned unchanged."""
    with use_backend("numpyro"):
        assert dist.GaussianRandomWalk is numpyro_dist.GaussianRandomWalk
        assert dist.Normal is numpyro_dist.Normal


def ballot(votes, concentration=1.0):
    """Shares of the vote, from one-hot ballots (OneHotCategorical: Pyro has it, NumPyro not)."""
    shares = sample("shares", dist.Dirichlet(ppgen.ops.ones(votes.shape[-1]) * concentration))
    with plate("ballots", len(votes)):
        sample("votes", dist.OneHotCategorical(shares), obs=votes)


def test_a_program_with_a_pyro_only_family_runs_under_nuts_on_pyro_and_gibbs_says_why_not():
    """nuts picks Pyro's sampler by itself; the shares match their Dirichlet(1 + counts)
    posterior within 4 MCSE. gibbs and mh, NumPyro-only, refuse naming the site."""
    choices = np.random.default_rng(2).choice(3, size=25, p=[0.5, 0.3, 0.2])
    votes = np.eye(3)[choices]
    counts = 1.0 + votes.sum(0)
    mean = counts / counts.sum()
    sd = np.sqrt(mean * (1 - mean) / (counts.sum() + 1))
    result = ppgen.infer(ballot, votes, engine="nuts", num_warmup=200, num_samples=400, num_chains=1, seed=0, progress=False)
    assert result.diagnostics["backend"] == "pyro"
    mcse = sd / np.sqrt(result.diagnostics["ess_bulk"]["shares"])
    assert np.all(np.abs(result.samples["shares"].mean(0) - mean) < 4 * mcse)
    checks = {c.name: c for c in ppgen.engines_for(ballot, votes)}
    for engine in ("gibbs", "mh"):
        assert checks[engine].reason == (
            f"site 'votes' is a OneHotCategorical, which NumPyro lacks; '{engine}' runs on NumPyro only "
            "(nuts and hmc run such programs on Pyro)"
        )
