"""Random-walk Metropolis–Hastings against the closed-form coin posterior and NUTS on the GMM."""

from __future__ import annotations

import numpy as np
import pytest

import ppgen
from ppgen.models.basics import coin
from ppgen.models.mixtures import bayesian_gaussian_mixture_1d

from ._mcmc_reference import COIN, GMM, assert_within, coin_exact, nuts_gmm, relabelled_summary


def test_coin_matches_beta_posterior():
    result = ppgen.infer(coin, engine="mh", num_warmup=2000, num_samples=4000, num_chains=4, progress=False, **COIN.data)
    mean, sd = coin_exact()
    ess = result.diagnostics["ess_bulk"]["rho"]
    assert_within(result.samples["rho"].mean(), mean, sd / np.sqrt(ess), what="mh mean")
    assert abs(result.samples["rho"].std() / sd - 1) < 4 / np.sqrt(2 * ess)
    assert 0.3 < result.diagnostics["acceptance_rate"] < 0.6  # adapted towards 0.44 in 1-D


def test_gmm_agrees_with_nuts():
    result = ppgen.infer(
        bayesian_gaussian_mixture_1d, engine="mh", num_warmup=4000, num_samples=8000, num_chains=2,
        thinning=4, progress=False, seed=3, **GMM.data,
    )
    assert result.samples["z"].shape == (4000, len(GMM.data["x"]))
    mh, nuts = relabelled_summary(result), relabelled_summary(nuts_gmm())
    for name in ("mu", "sigma", "pi"):
        assert_within(mh[name][0], nuts[name][0], np.hypot(mh[name][2], nuts[name][2]), what=name)


def test_options_are_validated():
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1, got 0"):
        ppgen.infer(coin, COIN.data["x"], engine="mh", num_samples=0)
