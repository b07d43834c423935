"""User-written flows train under the gradient engines (issue 13's bug).

A flow's observed site is ``TransformedDistribution(base, [transform])``; Pyro's transforms cache
their last (x, f(x)) pair, and an observed site passes the same data tensor at every step, so
without :mod:`ppgen._transform_cache` the second step reused the first step's freed graph
("Trying to backward through the graph a second time"). The truth each run is compared with is a
plain torch loop (Adam on −log p(y) with the same transform, copied before training), which
sidesteps the cache by passing a fresh copy of the data at every step.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pyro.distributions.transforms import affine_autoregressive, spline_coupling

import ppgen
from ppgen import dist, module, plate, sample

NUM_STEPS = 6
LEARNING_RATE = 0.02


def density_of(flow, dim):
    return torch.distributions.TransformedDistribution(
        torch.distributions.Independent(torch.distributions.Normal(torch.zeros(dim), torch.ones(dim)), 1), [flow]
    )


def plain_loop_log_likelihoods(flow, y, dim):
    """log p(y) at the start and after each of NUM_STEPS Adam steps, fresh data tensor each time."""
    optimizer = torch.optim.Adam(flow.parameters(), lr=LEARNING_RATE)
    values = []
    for _ in range(NUM_STEPS + 1):
        optimizer.zero_grad()
        log_likelihood = density_of(flow, dim).log_prob(y.clone()).sum()
        values.append(float(log_likelihood.detach()))
        (-log_likelihood).backward()
        optimizer.step()
    return np.array(values)


def measurements(num_points, dim, seed):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return torch.tensor(rng.standard_normal((num_points, dim)) @ mixing + 0.7, dtype=torch.float32)


def shifted_cloud(readings=None, count=30, width=3, bijector=None):
    """A user's own flow program: the observed points are a transformed standard normal."""
    module("bijector", bijector)
    base = dist.Normal(torch.zeros(width), torch.ones(width)).to_event(1)
    with plate("readings", count):
        sample("reading", dist.TransformedDistribution(base, [bijector]), obs=readings)


@pytest.mark.parametrize("engine", ["mle", "svi"])
@pytest.mark.parametrize("make_transform", [spline_coupling, affine_autoregressive], ids=["spline_coupling", "affine_autoregressive"])
def test_pyro_flow_trains_like_a_plain_torch_loop(engine, make_transform):
    torch.manual_seed(7)
    width, count = 3, 30
    bijector = make_transform(width)
    readings = measurements(count, width, seed=11)
    expected = plain_loop_log_likelihoods(copy.deepcopy(bijector), readings, width)

    options = dict(num_steps=NUM_STEPS, learning_rate=LEARNING_RATE)
    if engine == "mle":
        options["optimizer"] = "adam"
        options["tol"] = 0.0
    result = ppgen.learn(shifted_cloud, readings, count=count, width=width, bijector=bijector, engine=engine, **options)
    # svi records the ELBO (here log p(y): no latents) before each step; mle the objective after it
    trace = result.traces["log_likelihood"] if engine == "mle" else result.traces["elbo"]
    expected = expected[1:] if engine == "mle" else expected[:-1]
    # the log-likelihood moves by tens of nats over these steps; float32 rounding is ~1e-4
    np.testing.assert_allclose(trace, expected, rtol=1e-4, atol=1e-3)
    assert expected[-1] > expected[0] + 1.0  # the check is not vacuous: training moved the density


def test_score_after_learn_uses_the_trained_transform():
    """A stale cache would score the data with the inverse computed before the last update."""
    torch.manual_seed(3)
    width, count = 2, 25
    bijector = spline_coupling(width, count_bins=6)
    readings = measurements(count, width, seed=5)
    ppgen.learn(shifted_cloud, readings, count=count, width=width, bijector=bijector, engine="mle",
                optimizer="adam", num_steps=4, learning_rate=0.05, tol=0.0)
    with torch.no_grad():
        bijector.clear_cache()  # the truth: a density evaluated from scratch
        expected = float(density_of(bijector, width).log_prob(readings.clone()).sum())
    estimate = ppgen.score(shifted_cloud, readings, count=count, width=width, bijector=bijector, engine="enumerate")
    assert estimate.value == pytest.approx(expected, rel=1e-5, abs=1e-4)


def test_zuko_flow_with_a_cached_transform_trains():
    zuko = pytest.importorskip("zuko")
    torch.manual_seed(2)
    width, count = 2, 30
    network = zuko.flows.NSF(features=width, transforms=2, hidden_features=(16,))
    # zuko's f maps data to the base; its inverse generates, and caches its pair like Pyro's
    transform = zuko.transforms.ComposedTransform(*network.transform().transforms, cache_size=1).inv
    readings = measurements(count, width, seed=9)

    def zuko_cloud(readings=None, count=30, network=None):
        module("network", network)
        with plate("readings", count):
            sample("reading", dist.TransformedDistribution(dist.Normal(torch.zeros(width), torch.ones(width)).to_event(1), [transform]), obs=readings)

    reference = copy.deepcopy(network)
    reference_transform = zuko.transforms.ComposedTransform(*reference.transform().transforms).inv
    optimizer = torch.optim.Adam(reference.parameters(), lr=LEARNING_RATE)
    expected = []
    for _ in range(NUM_STEPS + 1):
        optimizer.zero_grad()
        log_likelihood = density_of(reference_transform, width).log_prob(readings.clone()).sum()
        expected.append(float(log_likelihood.detach()))
        (-log_likelihood).backward()
        optimizer.step()
    result = ppgen.learn(zuko_cloud, readings, count=count, network=network, engine="mle",
                         optimizer="adam", num_steps=NUM_STEPS, learning_rate=LEARNING_RATE, tol=0.0)
    np.testing.assert_allclose(result.traces["log_likelihood"], expected[1:], rtol=1e-4, atol=1e-3)
