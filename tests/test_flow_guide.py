"""Flow guides in svi (``ppgen.flow_guide``) against a closed-form posterior.

Truth: Bayesian linear regression with known noise, y ~ Normal(a + b·t, s), a, b ~ Normal(0, τ²):
the posterior is Gaussian with precision Λ = I/τ² + XᵀX/s² and the evidence is
log p(y) = log Normal(y; 0, s²I + τ²XXᵀ). With covariates far from 0 the posterior of (a, b) is
strongly correlated (ρ ≈ −0.98 here). The best mean-field Gaussian then misses the evidence by
exactly KL(q*‖p) = ½ Σᵢ log Λᵢᵢ − ½ log det Λ (= −½ log(1 − ρ²) in 2-D) and its marginal standard
deviations are 1/√Λᵢᵢ, a fraction √(1 − ρ²) of the true ones; an affine IAF layer contains the
exact posterior (a triangular affine map of a Gaussian), so its ELBO reaches log p(y).
"""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import ppgen
from ppgen import dist, plate, sample

NOISE, PRIOR_SCALE = 0.5, 10.0


def line_fit(hours, scores=None):
    offset = sample("offset", dist.Normal(0.0, PRIOR_SCALE))
    rate = sample("rate", dist.Normal(0.0, PRIOR_SCALE))
    with plate("students", len(hours)):
        sample("scores", dist.Normal(offset + rate * hours, NOISE), obs=scores)


def _data():
    rng = np.random.default_rng(7)
    hours = rng.uniform(3.0, 5.0, 12)
    scores = 1.0 + 0.8 * hours + NOISE * rng.standard_normal(12)
    return hours, scores


def _exact(hours, scores):
    design = np.stack([np.ones_like(hours), hours], 1)
    precision = np.eye(2) / PRIOR_SCALE ** 2 + design.T @ design / NOISE ** 2
    covariance = np.linalg.inv(precision)
    mean = covariance @ design.T @ scores / NOISE ** 2
    evidence = multivariate_normal(np.zeros(len(hours)), NOISE ** 2 * np.eye(len(hours)) + PRIOR_SCALE ** 2 * design @ design.T).logpdf(scores)
    mean_field_gap = 0.5 * np.log(np.diag(precision)).sum() - 0.5 * np.linalg.slogdet(precision)[1]
    return mean, covariance, precision, evidence, mean_field_gap


@pytest.mark.slow
def test_iaf_guide_beats_the_best_mean_field_guide_on_a_correlated_posterior():
    hours, scores = _data()
    mean, covariance, precision, evidence, gap = _exact(hours, scores)
    rho = covariance[0, 1] / np.sqrt(covariance[0, 0] * covariance[1, 1])
    assert gap > 1.5  # the example is one where mean field is visibly worse
    options = {"engine": "svi", "num_steps": 2000, "learning_rate": 0.005, "num_samples": 4000, "num_elbo_evaluations": 40, "seed": 3}
    flow = ppgen.infer(line_fit, hours, scores, guide=ppgen.flow_guide("iaf", num_layers=1), **options)
    field = ppgen.infer(line_fit, hours, scores, **options)
    for result in (flow, field):  # a lower bound stays below the truth (within its Monte Carlo error)
        assert result.log_evidence.kind == "lower-bound"
        assert result.log_evidence.value <= evidence + 4 * result.log_evidence.stderr + 1e-6
    # mean field cannot beat its optimum log p(y) − gap; the flow closes at least half of that gap
    assert field.log_evidence.value <= evidence - gap + 4 * field.log_evidence.stderr + 1e-6
    assert flow.log_evidence.value >= evidence - 0.5 * gap + 4 * flow.log_evidence.stderr
    # the flow's draws carry the posterior correlation, the mean-field draws none (MCSE of a
    # correlation ≈ (1 − ρ²)/√n: 1e-3 and 0.016 here; 0.1 leaves room for the fit's error)
    flow_draws = np.stack([np.asarray(flow.samples[k]).ravel() for k in ("offset", "rate")], 1)
    field_draws = np.stack([np.asarray(field.samples[k]).ravel() for k in ("offset", "rate")], 1)
    assert np.corrcoef(flow_draws.T)[0, 1] == pytest.approx(rho, abs=0.1)
    assert abs(np.corrcoef(field_draws.T)[0, 1]) < 4 / np.sqrt(len(field_draws))
    # mean field's marginal sds are 1/√Λᵢᵢ = √(1 − ρ²) sd: visibly too narrow
    assert np.all(field_draws.std(0) < 0.5 * np.sqrt(np.diag(covariance)))


@pytest.mark.slow
def test_spline_guide_matches_a_conjugate_posterior_with_a_positive_latent():
    """A positive latent (gamma-Poisson, conjugate): the spline guide works in unconstrained space
    and its posterior mean matches the closed form Gamma(α + Σy, β + n)."""
    counts = np.array([3.0, 5.0, 2.0, 4.0, 6.0, 1.0, 4.0, 3.0])

    def arrivals(counts=None):
        rate = sample("rate", dist.Gamma(2.0, 1.0))
        with plate("days", len(counts)):
            sample("counts", dist.Poisson(rate), obs=counts)

    result = ppgen.infer(arrivals, counts, engine="svi", guide=ppgen.flow_guide("spline", num_layers=1), num_steps=800,
                         learning_rate=0.02, num_samples=4000, seed=1)
    shape, rate = 2.0 + counts.sum(), 1.0 + len(counts)
    draws = np.asarray(result.samples["rate"]).ravel()
    assert draws.min() > 0
    assert draws.mean() == pytest.approx(shape / rate, abs=4 * np.sqrt(shape) / rate / np.sqrt(len(draws)) + 0.05 * np.sqrt(shape) / rate)
    assert draws.std() == pytest.approx(np.sqrt(shape) / rate, rel=0.15)


@pytest.mark.parametrize("kind", ["iaf", "spline"])
def test_flow_guide_draws_every_continuous_latent_in_its_support(kind):
    """A short run (the statistics are the slow tests'): svi with a flow guide returns draws of
    each latent, a positive one positive and a vector one with its shape."""
    weights = np.array([1.2, 0.7, 2.5, 1.9, 0.4])

    def growth(weights=None):
        spread = sample("spread", dist.HalfNormal(1.0))
        effects = sample("effects", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with plate("plants", len(weights)):
            sample("weights", dist.Normal(effects[0] + effects[1], spread), obs=weights)

    result = ppgen.infer(growth, weights, engine="svi", guide=ppgen.flow_guide(kind), num_steps=30, num_samples=50, seed=0)
    assert np.asarray(result.samples["spread"]).shape == (50,) and np.all(np.asarray(result.samples["spread"]) > 0)
    assert np.asarray(result.samples["effects"]).shape == (50, 2)
    assert result.diagnostics["guide"] == repr(ppgen.flow_guide(kind))


def test_flow_guide_rejects_bad_options_with_clear_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        ppgen.flow_guide("realnvp")
    with pytest.raises(ValueError, match="num_layers"):
        ppgen.flow_guide("iaf", num_layers=0)

    def one_latent(y=None):
        level = sample("level", dist.Normal(0.0, 1.0))
        with plate("data", 3):
            sample("y", dist.Normal(level, 1.0), obs=y)

    with pytest.raises(ValueError, match="at least 2 latent dimensions"):
        ppgen.infer(one_latent, torch.tensor([0.1, 0.2, 0.3]), engine="svi", guide=ppgen.flow_guide("iaf"), num_steps=2)
