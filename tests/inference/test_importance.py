"""Importance sampling against the Beta–Bernoulli closed forms."""

import warnings

import numpy as np
import pyro
import pytest
import torch

import ppgen
from ppgen import dist, sample
from ppgen.errors import ReliabilityWarning
from ppgen.models import basics, mixtures


@pytest.fixture(scope="module")
def tosses():
    return basics.simulate_coin(num_tosses=30, rho=0.7, seed=2).data["x"]


def test_evidence_within_three_standard_errors(tosses):
    truth = basics.coin_log_evidence(tosses)
    for seed in range(3):
        estimate = ppgen.score(basics.coin, tosses, engine="importance", num_samples=4000, seed=seed)
        assert estimate.kind == "estimate" and estimate.stderr > 0
        assert abs(estimate.value - truth) < 3 * estimate.stderr


def test_standard_error_shrinks_like_one_over_root_n(tosses):
    small = ppgen.score(basics.coin, tosses, engine="importance", num_samples=2000, seed=0).stderr
    large = ppgen.score(basics.coin, tosses, engine="importance", num_samples=32000, seed=0).stderr
    assert small / large == pytest.approx(4.0, rel=0.15)


def test_posterior_draws_match_closed_form(tosses):
    a, b = basics.coin_posterior(tosses)
    result = ppgen.infer(basics.coin, tosses, engine="importance", num_samples=20000, seed=1)
    ess = result.diagnostics["ess"]
    mean, sd = a / (a + b), np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    assert result.diagnostics["vectorized"]
    assert result.samples["rho"].shape == (20000,)
    assert abs(result.samples["rho"].mean() - mean) < 4 * sd / np.sqrt(ess)
    assert result.diagnostics["pareto_k"] < 0.7


def exact_guide(x, num_tosses=10, a=2.0, b=2.0):
    heads = x.sum()
    sample("rho", dist.Beta(a + heads, b + len(x) - heads))


def test_posterior_proposal_is_exact(tosses):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReliabilityWarning)
        estimate = ppgen.score(basics.coin, tosses, engine="importance", guide=exact_guide, num_samples=50)
    assert estimate.value == pytest.approx(basics.coin_log_evidence(tosses), abs=1e-9)
    assert estimate.stderr < 1e-9


def learned_guide(x, num_tosses=10, a=2.0, b=2.0):
    concentration = pyro.param("q_concentration", torch.ones(2), constraint=dist.constraints.positive)
    sample("rho", dist.Beta(concentration[0], concentration[1]))


def test_guide_params_are_read_from_the_store(tosses):
    heads = float(tosses.sum())
    pyro.param("q_concentration", torch.tensor([2.0 + heads, 2.0 + len(tosses) - heads], dtype=torch.float64), constraint=dist.constraints.positive)
    estimate = ppgen.score(basics.coin, tosses, engine="importance", guide=learned_guide, num_samples=50)
    assert estimate.value == pytest.approx(basics.coin_log_evidence(tosses), abs=1e-9)


class Encoder(torch.nn.Module):
    """Maps the data to Beta concentrations (a tiny amortised guide)."""

    def __init__(self, heads: float, tails: float):
        super().__init__()
        self.linear = torch.nn.Linear(1, 2)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.copy_(torch.tensor([np.log(2.0 + heads), np.log(2.0 + tails)]))

    def forward(self, x):
        return self.linear(x.mean().reshape(1, 1)).exp().squeeze(0)


def test_guide_with_a_torch_module(tosses):
    encoder = Encoder(float(tosses.sum()), float(len(tosses) - tosses.sum()))

    def amortised_guide(x, num_tosses=10, a=2.0, b=2.0):
        ppgen.module("encoder", encoder)
        concentration = encoder(x.float())
        sample("rho", dist.Beta(concentration[0], concentration[1]))

    x32 = tosses.astype(np.float32)
    estimate = ppgen.score(basics.coin, x32, engine="importance", guide=amortised_guide, num_samples=100)
    assert estimate.value == pytest.approx(basics.coin_log_evidence(tosses), abs=1e-4)


def test_poor_proposal_warns(tosses):
    def far_guide(x, num_tosses=10, a=2.0, b=2.0):
        sample("rho", dist.Beta(1.0, 30.0))

    with pytest.warns(ReliabilityWarning, match="Pareto k"):
        result = ppgen.infer(basics.coin, tosses, engine="importance", guide=far_guide, num_samples=2000)
    assert result.diagnostics["pareto_k"] > 0.7


def test_unvectorisable_program_falls_back(tosses):
    def coin_with_branch(x, a=2.0, b=2.0):
        rho = sample("rho", dist.Beta(a, b))
        p = rho if float(rho) > -1.0 else 1.0 - rho  # Python control flow on a sampled value
        with ppgen.plate("N", len(x)):
            sample("x", dist.Bernoulli(p), obs=x)

    result = ppgen.infer(coin_with_branch, tosses, engine="importance", num_samples=600, seed=0)
    assert not result.diagnostics["vectorized"]
    assert abs(result.log_evidence.value - basics.coin_log_evidence(tosses)) < 3 * result.log_evidence.stderr


def test_per_datum_weights_agree_with_enumeration():
    """Latents only inside the data plate: the weights factorise per datum, so even the prior
    as proposal gives log p(x) to a fraction of a nat, and the resampled z match the exact
    marginals."""
    data = mixtures.simulate_gaussian_mixture_1d(num_data=200, seed=0).data
    result = ppgen.infer(mixtures.gaussian_mixture_1d, engine="importance", num_samples=4000, **data)
    exact = ppgen.infer(mixtures.gaussian_mixture_1d, engine="enumerate", **data)
    assert result.diagnostics["per_datum_plate"] == "N"
    assert result.samples["z"].shape == (4000, 200)
    assert abs(result.log_evidence.value - exact.log_evidence.value) < 3 * result.log_evidence.stderr
    assert result.diagnostics["pareto_k"] < 0.7
    frequencies = np.stack([(result.samples["z"] == k).mean(0) for k in range(3)], -1)
    np.testing.assert_allclose(frequencies, exact.marginals["z"], atol=4 * np.sqrt(0.25 / 4000))


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"num_samples": 1}, ValueError, "num_samples must be an integer >= 2"),
        ({"guide": "prior"}, TypeError, "guide must be a program"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
    ],
)
def test_rejects_bad_options(tosses, options, error, message):
    with pytest.raises(error, match=message):
        ppgen.score(basics.coin, tosses, engine="importance", **options)


def bulb_lifetimes(hours=None, num_bulbs=200):
    """Mean log-lifetime of a batch of bulbs: a vague prior, many bulbs."""
    mean = sample("mean", dist.Normal(0.0, 10.0))
    with ppgen.plate("bulbs", num_bulbs if hours is None else len(hours)):
        sample("log_hours", dist.Normal(mean, 1.0), obs=hours)


def test_effective_sample_size_near_one_is_flagged_in_the_result():
    """A prior proposal 140× wider than the posterior: the resampled draws are one or two
    particles repeated. The engine says so (warning, converged=False), not only the tour."""
    hours = np.random.default_rng(8).normal(7.5, 1.0, 200)
    with pytest.warns(ReliabilityWarning, match="effective sample size"):
        result = ppgen.infer(bulb_lifetimes, hours, engine="importance", num_samples=400, seed=1)
    log_w = result.diagnostics["log_weights"]
    weights = np.exp(log_w - log_w.max())
    assert weights.sum() ** 2 / np.square(weights).sum() < 10  # independent of the engine's summary
    assert result.converged is False
    assert len(np.unique(result.samples["mean"])) < 10


def test_a_good_proposal_is_not_flagged():
    hours = np.random.default_rng(8).normal(7.5, 1.0, 200)
    posterior_sd = 1.0 / np.sqrt(len(hours) + 1e-2)

    def near_posterior(hours=None, num_bulbs=200):
        sample("mean", dist.Normal(float(hours.mean()), 1.5 * posterior_sd))

    with warnings.catch_warnings():
        warnings.simplefilter("error", ReliabilityWarning)
        result = ppgen.infer(bulb_lifetimes, hours, engine="importance", guide=near_posterior, num_samples=400, seed=1)
    assert result.converged is None and result.diagnostics["ess"] > 100
