"""score(fit, x_new): held-out log-densities under a fitted Result, total and pointwise,
against closed forms (conjugate posterior predictive, mixture densities under fitted values)."""

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal, norm

import ppgen
from ppgen import EngineNotApplicable


def heights(h, prior_sd=3.0):
    """Unknown mean, known noise 0.8; the conjugate posterior predictive is Gaussian."""
    centre = ppgen.sample("centre", ppgen.dist.Normal(0.0, prior_sd))
    with ppgen.plate("people", len(h)):
        ppgen.sample("h", ppgen.dist.Normal(centre, 0.8), obs=h)


def two_clusters(reading, num_clusters=3):
    weights = ppgen.param("weights", np.ones(num_clusters) / num_clusters, constraint=ppgen.dist.constraints.simplex)
    centres = ppgen.param("centres", np.linspace(-3.0, 3.0, num_clusters))
    spread = ppgen.param("spread", 1.0, constraint=ppgen.dist.constraints.positive)
    with ppgen.plate("readings", len(reading)):
        cluster = ppgen.sample("cluster", ppgen.dist.Categorical(weights))
        ppgen.sample("reading", ppgen.dist.Normal(centres[cluster], spread), obs=reading)


def location_scale(values):
    loc = ppgen.param("loc", 0.0)
    scale = ppgen.param("scale", 1.0, constraint=ppgen.dist.constraints.positive)
    with ppgen.plate("items", len(values)):
        ppgen.sample("values", ppgen.dist.Normal(loc, scale), obs=values)


def test_learned_parameters_without_latents_give_the_exact_log_likelihood():
    rng = np.random.default_rng(0)
    fit = ppgen.learn(location_scale, rng.normal(2.0, 1.5, 40), engine="mle")
    new = rng.normal(2.0, 1.5, 9)
    expected = norm.logpdf(new, fit.params["loc"], fit.params["scale"])
    total = ppgen.score(fit, new)
    assert total.kind == "exact" and float(total) == pytest.approx(expected.sum(), rel=1e-9)
    assert ppgen.score(fit, values=new, pointwise=True) == pytest.approx(expected, rel=1e-9)


def test_em_fit_scored_by_enumeration_matches_the_mixture_density():
    rng = np.random.default_rng(1)
    train = np.concatenate([rng.normal(-4, 1, 70), rng.normal(0.5, 1, 50), rng.normal(5, 1, 30)])
    fit = ppgen.learn(two_clusters, train, engine="em")
    held_out = rng.normal(0.0, 4.0, 13)
    weights, centres, spread = fit.params["weights"], fit.params["centres"], fit.params["spread"]
    expected = np.log(np.sum(weights * norm.pdf(held_out[:, None], centres, spread), axis=1))
    total = ppgen.score(fit, held_out, engine="enumerate")
    assert total.kind == "exact" and float(total) == pytest.approx(expected.sum(), rel=1e-9)
    pointwise = ppgen.score(fit, held_out, engine="enumerate", pointwise=True)
    assert pointwise.shape == (13,)
    assert pointwise == pytest.approx(expected, rel=1e-9)
    assert pointwise.sum() == pytest.approx(float(total), rel=1e-9)


def test_posterior_predictive_of_a_conjugate_model():
    rng = np.random.default_rng(2)
    train, new = rng.normal(1.0, 0.8, 25), rng.normal(1.0, 0.8, 6)
    posterior = ppgen.infer(heights, train, engine="cavi", num_samples=2000)
    precision = 1 / 3.0**2 + len(train) / 0.8**2
    mean, variance = train.sum() / 0.8**2 / precision, 1 / precision
    # joint: the new data share the centre, so they are correlated through it
    joint = multivariate_normal.logpdf(new, np.full(6, mean), 0.8**2 * np.eye(6) + variance)
    estimate = ppgen.score(posterior, new)
    assert estimate.kind == "estimate" and abs(float(estimate) - joint) < 4 * estimate.stderr
    # pointwise: each datum's own predictive N(mean, 0.8² + variance), within 4 Monte Carlo errors
    centres = posterior.samples["centre"]
    likelihoods = norm.pdf(new[None, :], centres[:, None], 0.8)
    mcse = likelihoods.std(axis=0, ddof=1) / (likelihoods.mean(axis=0) * np.sqrt(len(centres)))
    pointwise = ppgen.score(posterior, new, pointwise=True)
    assert np.all(np.abs(pointwise - norm.logpdf(new, mean, np.sqrt(0.8**2 + variance))) < 4 * mcse)


def test_trained_modules_are_used():
    def curve(inputs, targets, net):
        ppgen.module("curve_net", net)
        with ppgen.plate("rows", len(targets)):
            ppgen.sample("targets", ppgen.dist.Normal(net(inputs).squeeze(-1), 0.5), obs=targets)

    generator = torch.Generator().manual_seed(0)
    net = torch.nn.Linear(2, 1, dtype=torch.float64)
    with torch.no_grad():
        net.weight.copy_(torch.randn(1, 2, generator=generator, dtype=torch.float64))
    rng = np.random.default_rng(3)
    inputs = torch.as_tensor(rng.normal(size=(60, 2)))
    targets = inputs @ torch.tensor([1.5, -2.0], dtype=torch.float64) + 0.1
    fit = ppgen.learn(curve, inputs, targets, net, engine="svi", num_steps=300, learning_rate=0.05)
    trained = fit.diagnostics["modules"]["curve_net"]
    new_inputs = torch.as_tensor(rng.normal(size=(5, 2)))
    new_targets = new_inputs @ torch.tensor([1.5, -2.0], dtype=torch.float64) + 0.1
    with torch.no_grad():
        expected = norm.logpdf(new_targets.numpy(), trained(new_inputs).squeeze(-1).numpy(), 0.5)
        untrained = norm.logpdf(new_targets.numpy(), net(new_inputs).squeeze(-1).numpy(), 0.5)
    assert not np.allclose(expected, untrained)
    assert ppgen.score(fit, new_inputs, new_targets, pointwise=True) == pytest.approx(expected, rel=1e-9)


def test_refusals_name_the_problem():
    rng = np.random.default_rng(4)
    fit = ppgen.learn(two_clusters, rng.normal(size=30), engine="em")
    with pytest.raises(EngineNotApplicable, match="engine 'svi' cannot score under the fitted parameters .* enumerate, importance"):
        ppgen.score(fit, rng.normal(size=5), engine="svi")
    with pytest.raises(EngineNotApplicable, match="latent site 'cluster' must be marginalised; pass engine="):
        ppgen.score(fit, rng.normal(size=5))
    posterior = ppgen.infer(two_clusters, rng.normal(size=30), engine="enumerate")
    with pytest.raises(EngineNotApplicable, match="latent site 'cluster' is a per-datum latent"):
        ppgen.score(posterior, rng.normal(size=5))
    with pytest.raises(ValueError, match="latent site 'centre' is shared by all data"):
        ppgen.score(heights, rng.normal(size=5), engine="importance", pointwise=True)
    with pytest.raises(TypeError, match="pointwise must be True or False"):
        ppgen.score(heights, rng.normal(size=5), engine="importance", pointwise="yes")
    with pytest.raises(TypeError, match="engine= is required"):
        ppgen.score(heights, rng.normal(size=5))


def test_pointwise_for_a_model_with_per_datum_latents_only():
    rng = np.random.default_rng(5)
    readings = rng.normal(size=8)
    pointwise = ppgen.score(two_clusters, readings, engine="enumerate", pointwise=True)
    expected = np.log(np.mean(norm.pdf(readings[:, None], np.linspace(-3.0, 3.0, 3), 1.0), axis=1))
    assert pointwise == pytest.approx(expected, rel=1e-9)


def test_map_point_estimate_of_a_global_latent_is_plugged_in():
    rng = np.random.default_rng(6)
    train, new = rng.normal(1.0, 0.8, 15), rng.normal(1.0, 0.8, 4)
    fit = ppgen.learn(heights, train, engine="map")
    centre = (train.sum() / 0.8**2) / (1 / 3.0**2 + len(train) / 0.8**2)  # the posterior mode
    assert fit.map_estimate["centre"] == pytest.approx(centre, rel=1e-5)
    expected = norm.logpdf(new, fit.map_estimate["centre"], 0.8)
    assert ppgen.score(fit, new, pointwise=True) == pytest.approx(expected, rel=1e-9)


def test_per_datum_latents_of_the_training_data_are_never_reused():
    def noisy_means(y):
        centre = ppgen.sample("centre", ppgen.dist.Normal(0.0, 2.0))
        with ppgen.plate("obs", len(y)):
            own = ppgen.sample("own", ppgen.dist.Normal(centre, 1.0))
            ppgen.sample("y", ppgen.dist.Normal(own, 0.5), obs=y)

    rng = np.random.default_rng(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ppgen.ReliabilityWarning)  # the draws' quality does not matter here
        posterior = ppgen.infer(noisy_means, rng.normal(size=6), engine="importance", num_samples=200)
    with pytest.raises(EngineNotApplicable, match="latent site 'own' .* a per-datum latent"):
        ppgen.score(posterior, rng.normal(size=6))  # same size as the training data


def test_posterior_predictive_carried_by_few_draws_warns():
    # many new data far in the tail: p(x_new | θ_s) is dominated by the most extreme draw
    rng = np.random.default_rng(8)
    posterior = ppgen.infer(heights, rng.normal(0.0, 0.8, 10), engine="cavi", num_samples=500)
    with pytest.warns(ppgen.ReliabilityWarning, match="carried by .* of 500 posterior draws"):
        ppgen.score(posterior, np.full(400, 3.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ppgen.ReliabilityWarning)
        ppgen.score(posterior, rng.normal(0.0, 0.8, 3))
