"""Sampling warpers against Hugging Face transformers' processors on the same logits, and the
sampled frequencies of a warped site against the renormalised truncated distribution."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

import ppgen
from ppgen import dist, sample
from ppgen.warpers import MinP, Temperature, TopK, TopP, warpers

transformers = pytest.importorskip("transformers")


def _logits_with_ties() -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(6, 9, generator=generator)
    logits[0, :4] = 1.5  # a tie at the top
    logits[1, 2:5] = -0.25  # a tie in the middle, where k and p cut
    logits[2] = 0.0  # all tied
    logits[3, 7] = 8.0  # one dominant value
    # probabilities 2^-1 … 2^-8, 2^-8: masses from below land on 1 − p exactly (p = 0.5, 0.75)
    logits[4] = torch.log(torch.tensor([2.0**-k for k in range(1, 9)] + [2.0**-8]))
    return logits


def _same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    torch.testing.assert_close(ours[torch.isfinite(ours)], theirs[torch.isfinite(theirs)], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 4, 9, 20])
def test_top_k_matches_transformers(k):
    logits = _logits_with_ties()
    _same(TopK(k)(logits), transformers.TopKLogitsWarper(k)(None, logits.clone()))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.75, 0.8, 0.95, 1.0])
def test_top_p_matches_transformers(p):
    logits = _logits_with_ties()
    _same(TopP(p)(logits), transformers.TopPLogitsWarper(p)(None, logits.clone()))


@pytest.mark.parametrize("m", [0.0, 0.05, 0.2, 0.5, 0.9])
def test_min_p_matches_transformers(m):
    logits = _logits_with_ties()
    _same(MinP(m)(logits), transformers.MinPLogitsWarper(m)(None, logits.clone()))


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5])
def test_temperature_matches_transformers(t):
    logits = _logits_with_ties()
    _same(Temperature(t)(logits), transformers.TemperatureLogitsWarper(t)(None, logits.clone()))


def test_chain_is_hugging_face_order():
    logits = _logits_with_ties()
    ours = logits
    for warper in warpers(temperature=0.7, top_k=6, top_p=0.9, min_p=0.1):
        ours = warper(ours)
    theirs = logits.clone()
    for warper in (transformers.TemperatureLogitsWarper(0.7), transformers.TopKLogitsWarper(6), transformers.TopPLogitsWarper(0.9), transformers.MinPLogitsWarper(0.1)):
        theirs = warper(None, theirs)
    _same(ours, theirs)


@pytest.mark.parametrize(
    "option, value, match",
    [("top_k", 0, "top_k"), ("top_k", 2.5, "top_k"), ("top_p", 0.0, "top_p"), ("top_p", 1.2, "top_p"), ("min_p", 1.0, "min_p"), ("min_p", -0.1, "min_p")],
)
def test_bad_values_name_the_option(option, value, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ppgen.generate(_weather, num_samples=2, **{option: value})


_PROBS = torch.tensor([0.32, 0.05, 0.21, 0.02, 0.25, 0.15])


def _weather(num_days: int = 1):
    """A user's program: a finite site, a Bernoulli site and a continuous one."""
    kind = sample("kind", dist.Categorical(probs=_PROBS))
    sample("rain", dist.Bernoulli(probs=0.3 + 0.1 * (kind > 2)))
    sample("temperature", dist.Normal(15.0 + kind, 2.0))


def test_sampled_frequencies_follow_the_truncated_distribution():
    num_samples = 6000
    draws = ppgen.generate(_weather, num_samples=num_samples, seed=4, top_k=4, top_p=0.7)
    # by hand: top-4 keeps {0, 4, 2, 5}; of those renormalised (0.3445, 0.2691, 0.2261, 0.1613)
    # top-p 0.7 removes the values whose mass from below is <= 0.3: {5} (0.16), not {2} (0.39)
    kept = np.array([0, 2, 4])
    truth = _PROBS.numpy()[kept] / _PROBS.numpy()[kept].sum()
    counts = np.bincount(draws["kind"].astype(int), minlength=6)
    assert counts[[1, 3, 5]].sum() == 0
    chi2 = ((counts[kept] - num_samples * truth) ** 2 / (num_samples * truth)).sum()
    assert scipy.stats.chi2.sf(chi2, df=len(kept) - 1) > 1e-3
    # top_k=1 on a Bernoulli site is greedy: the more probable value (0: p(rain) <= 0.4)
    assert (ppgen.generate(_weather, num_samples=200, seed=4, top_k=1)["rain"] == 0).all()


def test_continuous_sites_are_left_alone():
    plain = ppgen.generate(_weather, num_samples=2000, seed=7)
    warped = ppgen.generate(_weather, num_samples=2000, seed=7, top_k=1)
    assert (warped["kind"] == 0).all()
    residual_plain = plain["temperature"] - 15.0 - plain["kind"]
    residual_warped = warped["temperature"] - 15.0 - warped["kind"]
    # the Normal's scale is untouched: both residual variances estimate 4 (F-test at 1e-3)
    ratio = residual_warped.var(ddof=1) / residual_plain.var(ddof=1)
    assert 1e-3 / 2 < scipy.stats.f.cdf(ratio, 1999, 1999) < 1 - 1e-3 / 2
