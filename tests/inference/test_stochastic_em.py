"""Stochastic (online) EM, ``engine="em", subsample_size=B`` (Cappé & Moulines 2009), against
batch EM and scikit-learn's GaussianMixture on the same data.

Tolerance: after n steps a Robbins–Monro iterate with step size γ_n fluctuates around the fixed
point with variance ≈ γ_n Σ / 2, Σ the variance of one minibatch's estimate; for a mixture
component k with weight w_k and scale σ_k that is σ_k² / (B w_k) for its mean, σ_k² / (2 B w_k)
for its scale and w_k (1 − w_k) / B for its weight. Each parameter must lie within 4 of those
standard deviations of the full-data maximum-likelihood estimate.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

import ppgen
from ppgen import dist, param, plate, sample

BATCH, STEPS = 100, 150
SPREAD = 4 * np.sqrt((STEPS + 1) ** -0.6 / 2)  # 4 standard deviations of the last iterate, per unit of Σ^½


def two_groups(y, K=2):
    """A user's 1-D mixture with its own names."""
    share = param("share", torch.ones(K) / K, constraint=dist.constraints.simplex)
    centre = param("centre", torch.linspace(-1.0, 1.0, K))
    width = param("width", torch.ones(K), constraint=dist.constraints.positive)
    with plate("readings", y.shape[0]):
        group = sample("group", dist.Categorical(share))
        sample("y", dist.Normal(centre[group], width[group]), obs=y)


def _sorted(params, key, *names):
    order = np.argsort(params[key], axis=0)
    order = order if order.ndim == 1 else order[:, 0]
    return [np.asarray(params[n])[order] for n in (key, *names)]


def test_online_em_reaches_the_batch_em_estimate_of_a_user_mixture():
    rng = np.random.default_rng(5)
    y = np.concatenate([rng.normal(-2.0, 0.6, 1500), rng.normal(1.0, 1.1, 2500)])
    online = ppgen.learn(two_groups, y, engine="em", subsample_size=BATCH, num_steps=STEPS, num_restarts=1, seed=3)
    batch = ppgen.learn(two_groups, y, engine="em", num_restarts=1, tol=1e-10, num_steps=500)
    centre, width, share = _sorted(online.params, "centre", "width", "share")
    centre0, width0, share0 = _sorted(batch.params, "centre", "width", "share")
    np.testing.assert_array_less(np.abs(centre - centre0), SPREAD * width0 / np.sqrt(BATCH * share0))
    np.testing.assert_array_less(np.abs(width - width0), SPREAD * width0 / np.sqrt(2 * BATCH * share0))
    np.testing.assert_array_less(np.abs(share - share0), SPREAD * np.sqrt(share0 * (1 - share0) / BATCH))
    assert online.num_iterations == STEPS and online.converged is None
    assert online.traces["log_likelihood"].shape == (STEPS,)
    # log p(x; θ) in chunks: the closed form at the returned parameters, below the maximum
    mixture = share[None] * np.exp(-0.5 * ((y[:, None] - centre) / width) ** 2) / (width * np.sqrt(2 * np.pi))
    assert online.diagnostics["log_likelihood"] == pytest.approx(np.log(mixture.sum(1)).sum(), abs=1e-6)
    assert online.diagnostics["log_likelihood"] <= batch.diagnostics["log_likelihood"] + 1e-6


def test_online_em_of_full_covariance_components_matches_scikit_learn():
    from ppgen.models.mixtures import gaussian_mixture

    rng = np.random.default_rng(9)
    x = np.concatenate([rng.multivariate_normal([-3.0, 0.0], [[1.0, 0.4], [0.4, 0.6]], 1200), rng.multivariate_normal([2.0, 1.5], [[0.5, 0.0], [0.0, 1.5]], 1800)])
    online = ppgen.learn(gaussian_mixture, x, K=2, engine="em", subsample_size=BATCH, num_steps=STEPS, num_restarts=1, seed=1)
    reference = GaussianMixture(2, covariance_type="full", tol=1e-10, max_iter=500, random_state=0).fit(x)
    order = np.argsort(online.params["locs"][:, 0])
    locs, weights = online.params["locs"][order], online.params["weights"][order]
    truth = np.argsort(reference.means_[:, 0])
    sd = np.sqrt(np.diagonal(reference.covariances_[truth], axis1=1, axis2=2))
    np.testing.assert_array_less(np.abs(locs - reference.means_[truth]), SPREAD * sd / np.sqrt(BATCH * reference.weights_[truth])[:, None])
    w0 = reference.weights_[truth]
    np.testing.assert_array_less(np.abs(weights - w0), SPREAD * np.sqrt(w0 * (1 - w0) / BATCH))


def test_online_em_refuses_globals_without_a_closed_form_update():
    def tilted(y):
        share = param("share", torch.ones(2) / 2, constraint=dist.constraints.simplex)
        log_width = param("log_width", torch.zeros(2))
        with plate("readings", y.shape[0]):
            group = sample("group", dist.Categorical(share))
            sample("y", dist.Normal(0.0, torch.exp(log_width)[group]), obs=y)

    y = np.random.default_rng(0).normal(size=300)
    with pytest.raises(ValueError, match="'log_width' takes gradient steps"):
        ppgen.learn(tilted, y, engine="em", subsample_size=50, num_steps=5)
