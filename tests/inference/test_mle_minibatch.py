"""``mle`` with ``subsample_size``: an epoch of minibatch objectives (each datum once, its sites
weighted N / B) averages to the full-data log-likelihood; modules are trained in place."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

import ppgen
from ppgen import dist, param, plate, sample


def _heights(h=None, num_people: int = 10):
    """A user's program: a learned mean and scale, one observed site in a data plate."""
    mu = param("mu", torch.tensor(170.0))
    sigma = param("sigma", torch.tensor(8.0), constraint=torch.distributions.constraints.positive)
    with plate("people", num_people if h is None else len(h)):
        sample("h", dist.Normal(mu, sigma), obs=h)


def test_an_epoch_of_minibatch_objectives_averages_to_the_full_log_likelihood():
    h = np.random.default_rng(0).normal(172.0, 7.0, size=120)
    batch = 40
    result = ppgen.learn(_heights, h, engine="mle", subsample_size=batch, num_steps=len(h) // batch, learning_rate=1e-12)
    full = scipy.stats.norm(170.0, 8.0).logpdf(h).sum()
    assert result.traces["log_likelihood"].mean() == pytest.approx(full, abs=1e-6)
    assert result.converged is None  # a fixed budget of noisy steps is not a convergence test


def test_a_network_is_trained_in_place_and_returned():
    from ppgen.models.autoregressive import make_network, nade

    x = (np.random.default_rng(1).random((30, 6)) < 0.3).astype(float)
    network = make_network("nade", 6, hidden=3, seed=2)
    before = network.b.detach().clone()
    result = ppgen.learn(nade, x, network=network, engine="mle", subsample_size=10, num_steps=5)
    assert result.diagnostics["modules"]["nade"] is network
    assert not torch.equal(before, network.b.detach())


@pytest.mark.parametrize("options, match", [({"subsample_size": 0}, "subsample_size"), ({"subsample_size": 10, "optimizer": "lbfgs"}, "subsample_size")])
def test_bad_minibatch_options(options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ppgen.learn(_heights, np.ones(20), engine="mle", **options)
