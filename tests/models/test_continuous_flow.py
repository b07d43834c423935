"""The continuous-flow log-density (:mod:`ppgen.models._continuous_flow`) against closed forms.

A linear vector field v(t, x) = A x moves z ~ N(0, I) to x = exp(A (t1 − t0)) z, a Gaussian with
covariance M Mᵀ (M = exp(A τ)), so log p(x) is known exactly; the Hutchinson estimator is checked
for unbiasedness against the exact trace of a nonlinear field.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ppgen.models._continuous_flow import divergence, ode_log_prob, ode_sample


def standard_normal_log_prob(z):
    return -0.5 * (z ** 2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


@pytest.mark.parametrize("dim,trace", [(3, "exact"), (6, "hutchinson")])
def test_linear_field_matches_the_gaussian_closed_form(dim, trace):
    generator = torch.Generator().manual_seed(dim)
    drift = torch.randn(dim, dim, generator=generator, dtype=torch.float64) * 0.4
    tau = 0.8
    x = torch.randn(50, dim, generator=generator, dtype=torch.float64)

    def linear(t, state):
        return state @ drift.T

    mixing = torch.linalg.matrix_exp(drift * tau)
    truth = torch.distributions.MultivariateNormal(torch.zeros(dim, dtype=torch.float64), covariance_matrix=mixing @ mixing.T)
    # Hutchinson's estimate of a linear field's trace is εᵀ A ε, constant along the path: average
    # over many independent solves to test the integral, not one draw
    repeats = 1 if trace == "exact" else 40
    with torch.no_grad():
        estimates = torch.stack([
            ode_log_prob(linear, x[:4] if trace != "exact" else x, standard_normal_log_prob, 0.0, tau, trace=trace,
                         rtol=1e-8, atol=1e-8, generator=generator, probe="gaussian" if i % 2 else "rademacher")
            for i in range(repeats)
        ])
    expected = truth.log_prob(x[:4] if trace != "exact" else x)
    if trace == "exact":
        torch.testing.assert_close(estimates[0], expected, rtol=0, atol=1e-6)
    else:
        mean, error = estimates.mean(0), estimates.std(0) / math.sqrt(repeats)
        assert torch.all((mean - expected).abs() < 4 * error), (mean, expected, error)


def test_sample_then_log_prob_round_trip():
    """ode_sample forward, then backwards with t0 and t1 swapped, returns the start."""
    generator = torch.Generator().manual_seed(1)
    weights = torch.randn(3, 3, generator=generator, dtype=torch.float64)

    def swirl(t, state):
        return torch.tanh(state @ weights) * (1 + t)

    z = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    x = ode_sample(swirl, z, 0.0, 1.0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ode_sample(swirl, x, 1.0, 0.0, rtol=1e-10, atol=1e-10), z, rtol=0, atol=1e-6)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_trace_is_unbiased(probe):
    generator = torch.Generator().manual_seed(5)
    dim = 7
    first = torch.randn(dim, 16, generator=generator, dtype=torch.float64)
    second = torch.randn(16, dim, generator=generator, dtype=torch.float64)

    def field(t, state):
        return torch.tanh(state @ first) @ second

    x = torch.randn(3, dim, generator=generator, dtype=torch.float64)
    t = torch.tensor(0.0, dtype=torch.float64)
    _, exact = divergence(field, t, x, trace="exact", create_graph=False)
    from ppgen.models._continuous_flow import draw_probes

    num_probes = 4000
    probes = draw_probes((num_probes, *x.shape), probe, generator, x.dtype)
    with torch.enable_grad():
        state = x.clone().requires_grad_(True)
        velocity = field(t, state)
        single = torch.stack([(torch.autograd.grad(velocity, state, p, retain_graph=True)[0] * p).sum(-1) for p in probes])
    mean, error = single.mean(0), single.std(0) / math.sqrt(num_probes)
    assert torch.all((mean - exact).abs() < 4 * error)
    _, averaged = divergence(field, t, x, trace="hutchinson", probes=probes, create_graph=False)
    torch.testing.assert_close(averaged, mean)
