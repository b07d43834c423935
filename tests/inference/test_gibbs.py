"""Gibbs (exact discrete conditionals + NUTS) against the coin's closed form and NUTS on the GMM."""

from __future__ import annotations

import numpy as np
import pytest

import ppgen
from ppgen.models.basics import coin
from ppgen.models.mixtures import bayesian_gaussian_mixture_1d

from ._mcmc_reference import COIN, GMM, assert_within, coin_exact, nuts_gmm, relabelled_summary


@pytest.fixture(scope="module")
def gibbs_gmm():
    return ppgen.infer(
        bayesian_gaussian_mixture_1d, engine="gibbs", num_warmup=400, num_samples=600, num_chains=2,
        progress=False, seed=4, **GMM.data,
    )


def test_coin_matches_beta_posterior():
    result = ppgen.infer(coin, engine="gibbs", num_warmup=500, num_samples=1000, progress=False, **COIN.data)
    mean, sd = coin_exact()
    assert_within(result.samples["rho"].mean(), mean, sd / np.sqrt(result.diagnostics["ess_bulk"]["rho"]), what="mean")


def test_gmm_agrees_with_nuts(gibbs_gmm):
    gibbs, nuts = relabelled_summary(gibbs_gmm), relabelled_summary(nuts_gmm())
    for name in ("mu", "sigma", "pi"):
        assert_within(gibbs[name][0], nuts[name][0], np.hypot(gibbs[name][2], nuts[name][2]), what=name)


def test_gmm_assignment_probabilities_agree_with_nuts_infer_discrete(gibbs_gmm):
    def membership(result):
        rank = np.argsort(np.argsort(result.samples["mu"], axis=1), axis=1)
        z = np.take_along_axis(rank, result.samples["z"].astype(int), axis=1)
        return np.stack([(z == k).mean(0) for k in range(3)], -1)

    gibbs, nuts = membership(gibbs_gmm), membership(nuts_gmm())
    # Each probability is a mean of ~1200 correlated indicators: 0.15 is > 4 standard errors.
    assert np.abs(gibbs - nuts).max() < 0.15
    assert gibbs_gmm.diagnostics["gibbs_sites"] == ["z"]
