"""NUTS and HMC against closed forms, posteriordb's eight schools and each other."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import ppgen
from ppgen import dist, plate, sample
from ppgen.errors import EngineNotApplicable, ReliabilityWarning
from ppgen.models import posteriordb
from ppgen.models.basics import coin
from ppgen.models.mixtures import gaussian_mixture_1d

from ._mcmc_reference import COIN, GMM, assert_within, coin_exact, mcse, nuts_gmm, relabelled_summary

FAST = dict(num_warmup=500, num_samples=1000, num_chains=4, progress=False)


@pytest.fixture(scope="module")
def coin_nuts():
    return ppgen.infer(coin, engine="nuts", seed=0, **FAST, **COIN.data)


def test_coin_matches_beta_posterior(coin_nuts):
    mean, sd = coin_exact()
    draws = coin_nuts.samples["rho"]
    assert_within(draws.mean(), mean, sd / np.sqrt(coin_nuts.diagnostics["ess_bulk"]["rho"]), what="posterior mean")
    # sd of a sample sd ≈ sd / √(2 ESS); 4 of those.
    assert abs(draws.std() / sd - 1) < 4 / np.sqrt(2 * coin_nuts.diagnostics["ess_bulk"]["rho"])
    assert coin_nuts.diagnostics["max_r_hat"] < 1.01


def test_hmc_leapfrog_steps_capped_at_nuts_budget():
    """The default trajectory 2π over the coin's adapted step size (~1) takes ~7 leapfrog steps;
    max_tree_depth=1 caps it at 2^1, and the draws stay correct."""
    result = ppgen.infer(coin, engine="hmc", seed=2, max_tree_depth=1, **FAST, **COIN.data)
    assert result.sample_stats["n_steps"].max() <= 2
    uncapped = ppgen.infer(coin, engine="hmc", seed=2, **FAST, **COIN.data)
    assert uncapped.sample_stats["n_steps"].max() > 2
    mean, sd = coin_exact()
    assert_within(result.samples["rho"].mean(), mean, sd / np.sqrt(result.diagnostics["ess_bulk"]["rho"]), what="capped hmc mean")


def test_hmc_matches_beta_posterior():
    result = ppgen.infer(coin, engine="hmc", seed=1, **FAST, **COIN.data)
    mean, sd = coin_exact()
    assert_within(result.samples["rho"].mean(), mean, sd / np.sqrt(result.diagnostics["ess_bulk"]["rho"]), what="hmc mean")


def unit_gaussian(dim=3):
    sample("w", dist.Normal(ppgen.ops.zeros(dim), 1.0).to_event(1))


def test_hmc_trajectory_is_jittered_so_a_period_of_the_dynamics_cannot_freeze_the_chain():
    """After mass adaptation a unit-scale Gaussian's dynamics have period 2π, the default L:
    with L fixed, every trajectory returns near its start and the chains barely move (bulk ESS
    9-1100 of 2,000 draws per coordinate, varying by seed). With L ~ U(L/2, 3L/2) the draws are
    close to independent; ESS ≥ N / 4 leaves room for the estimator's own noise."""
    result = ppgen.infer(unit_gaussian, engine="hmc", seed=5, **FAST)
    num_draws = FAST["num_chains"] * FAST["num_samples"]
    assert np.min(result.diagnostics["ess_bulk"]["w"]) >= num_draws / 4
    assert_within(result.samples["w"].mean(axis=0), 0.0, 1 / np.sqrt(result.diagnostics["ess_bulk"]["w"]), what="mean of w")


def normal_mean(x=None, prior_loc=1.0, prior_scale=2.0, noise=0.5, num_data=20):
    mu = sample("mu", dist.Normal(prior_loc, prior_scale))
    with plate("N", num_data if x is None else len(x)):
        sample("x", dist.Normal(mu, noise), obs=x)


def test_normal_mean_with_known_variance_matches_closed_form():
    x = np.random.default_rng(0).normal(2.5, 0.5, 20)
    precision = 1 / 2.0**2 + len(x) / 0.5**2
    mean = (1.0 / 2.0**2 + x.sum() / 0.5**2) / precision
    sd = precision**-0.5
    result = ppgen.infer(normal_mean, x, engine="nuts", seed=2, **FAST)
    ess = result.diagnostics["ess_bulk"]["mu"]
    assert_within(result.samples["mu"].mean(), mean, sd / np.sqrt(ess), what="mean")
    assert abs(result.samples["mu"].std() / sd - 1) < 4 / np.sqrt(2 * ess)


def test_same_seed_same_draws_and_compiled_sampler_is_reused(coin_nuts):
    again = ppgen.infer(coin, engine="nuts", seed=0, **FAST, **COIN.data)
    assert again.diagnostics["compiled_sampler_reused"]
    np.testing.assert_array_equal(again.samples["rho"], coin_nuts.samples["rho"])
    other = ppgen.infer(coin, engine="nuts", seed=5, **FAST, **COIN.data)
    assert not np.array_equal(other.samples["rho"], coin_nuts.samples["rho"])


def test_result_is_complete_for_arviz(coin_nuts):
    import arviz as az

    data = coin_nuts.to_arviz()
    for group in ("posterior", "sample_stats", "log_likelihood", "observed_data"):
        assert hasattr(data, group), group
    assert data.posterior["rho"].shape == (4, 1000)
    assert data.log_likelihood["x"].shape == (4, 1000, len(COIN.data["x"]))
    summary = az.summary(data)
    assert summary.loc["rho", "r_hat"] < 1.01
    loo = az.loo(data)
    # elpd_loo ≈ Σ log p(x_i | x_-i), exact here: Beta-Bernoulli predictive.
    from ppgen.models.basics import coin_posterior

    x = COIN.data["x"]
    a, b = coin_posterior(x)
    exact = sum(np.log(((a - xi) / (a + b - 1)) if xi == 1 else ((b - (1 - xi)) / (a + b - 1))) for xi in x)
    assert abs(loo.elpd_loo - exact) < 4 * 0.05 + 0.1
    for stat in ("diverging", "lp", "tree_depth", "acceptance_rate", "step_size"):
        assert coin_nuts.sample_stats[stat].shape == (4000,)
    assert set(coin_nuts.diagnostics) >= {"divergences", "r_hat", "ess_bulk", "ess_tail"}


@pytest.fixture(scope="module")
def eight_schools():
    data = posteriordb.load_eight_schools().data
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReliabilityWarning)
        centred = ppgen.infer(posteriordb.eight_schools_centered, engine="nuts", progress=False, **data)
    noncentred = ppgen.infer(posteriordb.eight_schools_noncentered, engine="nuts", progress=False, seed=1, **data)
    return centred, noncentred


def test_centred_eight_schools_has_no_divergences_with_defaults(eight_schools):
    centred, _ = eight_schools
    assert centred.diagnostics["reparameterised"] == ["theta"]
    assert centred.diagnostics["divergences"] == 0
    assert centred.diagnostics["max_r_hat"] < 1.01
    assert centred.samples["theta"].shape == (4000, 8)  # reported for the original site


def test_centred_eight_schools_agrees_with_non_centred(eight_schools):
    centred, noncentred = eight_schools
    for name in ("mu", "tau"):
        stderr = np.hypot(
            mcse(centred.samples[name], centred.diagnostics["ess_bulk"][name]),
            mcse(noncentred.samples[name], noncentred.diagnostics["ess_bulk"][name]),
        )
        assert_within(centred.samples[name].mean(), noncentred.samples[name].mean(), stderr, what=name)


def test_without_reparameterisation_the_funnel_diverges():
    data = posteriordb.load_eight_schools().data
    with pytest.warns(ReliabilityWarning, match="divergent"):
        result = ppgen.infer(
            posteriordb.eight_schools_centered, engine="nuts", reparam=False, progress=False,
            num_warmup=500, num_samples=1000, **data,
        )
    assert result.diagnostics["divergences"] > 0


def test_enumerated_gmm_draws_assignments_and_lands_near_em():
    from sklearn.mixture import GaussianMixture

    result = nuts_gmm()
    x = GMM.data["x"]
    assert result.samples["z"].shape == (1200, len(x))
    assert result.log_likelihood["x"].shape == (1200, len(x))
    fit = GaussianMixture(3, random_state=0, n_init=3).fit(x[:, None])
    order = np.argsort(fit.means_.ravel())
    em = {"mu": fit.means_.ravel()[order], "sigma": np.sqrt(fit.covariances_.ravel()[order]), "pi": fit.weights_[order]}
    summary = relabelled_summary(result)
    for name, (mean, sd, _) in summary.items():
        # The MLE sits within a few posterior sds of the posterior mean (N = 120).
        assert np.all(np.abs(mean - em[name]) < 3 * sd), (name, mean, em[name], sd)
    # Assignments: posterior membership of each point agrees with the EM responsibilities.
    rank = np.argsort(np.argsort(result.samples["mu"], axis=1), axis=1)  # component -> rank by mean
    z_ranked = np.take_along_axis(rank, result.samples["z"].astype(int), axis=1)
    em_ranked = np.argsort(order)[fit.predict(x[:, None])]
    assert (z_ranked == em_ranked[None, :]).mean() > 0.9


def test_options_are_validated_and_params_block_mcmc():
    with pytest.raises(ValueError, match="target_accept must be in \\(0, 1\\), got 1.5"):
        ppgen.infer(coin, COIN.data["x"], engine="nuts", target_accept=1.5)
    with pytest.raises(EngineNotApplicable, match="site 'weights' is a param"):
        ppgen.infer(gaussian_mixture_1d, GMM.data["x"], engine="nuts")


def test_pyro_backend_matches_beta_posterior():
    result = ppgen.infer(
        coin, engine="nuts", backend="pyro", num_warmup=150, num_samples=300, num_chains=2, progress=False, **COIN.data
    )
    assert result.diagnostics["backend"] == "pyro"
    mean, sd = coin_exact()
    assert_within(result.samples["rho"].mean(), mean, sd / np.sqrt(result.diagnostics["ess_bulk"]["rho"]), what="pyro mean")
    assert result.log_likelihood["x"].shape == (600, len(COIN.data["x"]))
