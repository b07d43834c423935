"""The compiled conjugate factor graph against closed forms: E_q[log p(x, u)] under random
mean-field factors, for programs whose pair factors index a matrix by two memberships
(``B[z[i], z[j]]``), the case the compiler reads off in one probe per probe point."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import betaln, digamma, gammaln

from ppgen import dist, ops, plate, sample
from ppgen.backend import torch_precision, use_backend
from ppgen.inference._conjugate import ConjugateGraph, compile_program
from ppgen.inference._vi import pyro_arguments
from ppgen.models.graphs import _pairs, stochastic_block_model
from ppgen.structure import inspect


def _compile(model, *args, **kwargs) -> ConjugateGraph:
    structure = inspect(model, *args, **kwargs)
    args, kwargs = pyro_arguments(args, kwargs)
    return compile_program(model, args, kwargs, structure)


def _augmented(graph: ConjugateGraph, name: str, eta: np.ndarray) -> torch.Tensor:
    """(E_q T(u), 1) per element of node ``name`` for natural parameters ``eta``."""
    expected = graph.nodes[name].family.expected_stats(torch.as_tensor(eta))
    return torch.cat([expected, torch.ones(expected.shape[0], 1)], -1)


def _random_graph(rng: np.random.Generator, n: int) -> np.ndarray:
    upper = np.triu(rng.random((n, n)) < 0.4, 1)
    return (upper | upper.T).astype(float)


def test_sbm_expected_log_joint_matches_closed_form():
    """Dirichlet–categorical memberships and Beta–Bernoulli edges:
    E log p = E log p(π) + Σ_kl E log p(B_kl) + Σ_i Σ_k q_ik E log π_k
    + Σ_{i<j} Σ_kl q_ik q_jl [a_ij E log B_kl + (1 − a_ij) E log(1 − B_kl)]."""
    rng = np.random.default_rng(0)
    n, K = 7, 3
    adjacency = _random_graph(rng, n)
    gamma, a_in, b_in, a_out, b_out = 0.7, 2.0, 1.0, 1.0, 3.0
    alpha = 0.5 + 3 * rng.random(K)
    a, b = 0.5 + 3 * rng.random((K, K)), 0.5 + 3 * rng.random((K, K))  # asymmetric: B[z_i, z_j] ≠ B[z_j, z_i]
    q = rng.dirichlet(np.ones(K), size=n)
    with use_backend("pyro"), torch_precision():
        graph = _compile(stochastic_block_model, adjacency, K=K, concentration=gamma, a_in=a_in, b_in=b_in, a_out=a_out, b_out=b_out)
        stats = {"pi": _augmented(graph, "pi", (alpha - 1)[None]), "B": _augmented(graph, "B", np.stack([a - 1, b - 1], -1).reshape(K * K, 2))}
        value = float(graph.expected_log_joint(stats, {"z": torch.as_tensor(q)}))

    log_pi = digamma(alpha) - digamma(alpha.sum())
    log_b, log_1mb = digamma(a) - digamma(a + b), digamma(b) - digamma(a + b)
    a0, b0 = np.where(np.eye(K) > 0, a_in, a_out), np.where(np.eye(K) > 0, b_in, b_out)
    expected = gammaln(K * gamma) - K * gammaln(gamma) + (gamma - 1) * log_pi.sum()
    expected += (-betaln(a0, b0) + (a0 - 1) * log_b + (b0 - 1) * log_1mb).sum()
    expected += (q @ log_pi).sum()
    for i in range(n):
        for j in range(i + 1, n):
            expected += q[i] @ (adjacency[i, j] * log_b + (1 - adjacency[i, j]) * log_1mb) @ q[j]
    assert value == pytest.approx(expected, rel=1e-10)


def weighted_block_model(weights, K=2):
    """Edge weights with a Gaussian mean per ordered block pair: μ_kl ~ Normal(0, 2),
    z_i ~ Categorical(1/K), w_ij ~ Normal(μ[z_i, z_j], 1) for i < j."""
    rows, cols = _pairs(weights.shape[0], "pyro")
    with plate("from", K, dim=-2), plate("to", K, dim=-1):
        mu = sample("mu", dist.Normal(0.0, 2.0))
    with plate("nodes", weights.shape[0]):
        z = sample("z", dist.Categorical(ops.ones(K) / K))
    with plate("pairs", len(rows)):
        sample("w", dist.Normal(mu[z[rows], z[cols]], 1.0), obs=weights[rows, cols])


def _gaussian_blocks_under_random_q(model, weights, K, rng):
    """E_q[log p] of a Gaussian block-mean program under random mean-field factors
    q(μ_kl) = N(m_kl, v_kl) and q(z_i), with (m, E μ², q) and the closed form of the terms that
    do not involve the pairs: E log N(μ_kl | 0, 2²) summed, plus n log(1/K) for the memberships."""
    n = weights.shape[0]
    mean, variance = rng.normal(size=(K, K)), 0.2 + rng.random((K, K))
    q = rng.dirichlet(np.ones(K), size=n)
    with use_backend("pyro"), torch_precision():
        graph = _compile(model, weights, K=K)
        eta = np.stack([mean / variance, -0.5 / variance], -1).reshape(K * K, 2)
        value = float(graph.expected_log_joint({"mu": _augmented(graph, "mu", eta)}, {"z": torch.as_tensor(q)}))
    second = mean**2 + variance
    without_pairs = (-0.5 * np.log(2 * np.pi * 4.0) - second / 8.0).sum() + n * np.log(1.0 / K)
    return value, mean, second, q, without_pairs


def _expected_normal(w, mean, second):
    """E log N(w | μ, 1) = −½ log 2π − ½ (w² − 2w E μ + E μ²)."""
    return -0.5 * np.log(2 * np.pi) - 0.5 * (w * w - 2 * w * mean + second)


@pytest.mark.parametrize("at_probe_points", [False, True], ids=["generic", "weights-at-probe-points"])
def test_gaussian_pair_factor_matches_closed_form(at_probe_points):
    """A Normal parent gathered by two memberships: E log N(w | μ, 1) = −½ log 2π − ½ (w² − 2w E μ + E μ²).
    Weights equal to the Normal family's probe points (−1, 0.5, 2) sit at a stationary point of
    their density there, so the compiler must read their gather map elsewhere."""
    rng = np.random.default_rng(1)
    n, K = 6, 2
    weights = rng.choice([-1.0, 0.5, 2.0], size=(n, n)) if at_probe_points else rng.normal(size=(n, n))
    weights = np.triu(weights, 1) + np.triu(weights, 1).T
    value, mean, second, q, expected = _gaussian_blocks_under_random_q(weighted_block_model, weights, K, rng)
    for i in range(n):
        for j in range(i + 1, n):
            expected += q[i] @ _expected_normal(weights[i, j], mean, second) @ q[j]
    assert value == pytest.approx(expected, rel=1e-10)


def labelled_block_model(weights, K=2):
    """The second index of the block mean is a fixed label, not a membership:
    μ_kl ~ Normal(0, 2), z_i ~ Categorical(1/K), w_ij ~ Normal(μ[z_i, c_ij], 1) with c_ij = (i + j) mod K."""
    rows, cols = _pairs(weights.shape[0], "pyro")
    with plate("from", K, dim=-2), plate("to", K, dim=-1):
        mu = sample("mu", dist.Normal(0.0, 2.0))
    with plate("nodes", weights.shape[0]):
        z = sample("z", dist.Categorical(ops.ones(K) / K))
    with plate("pairs", len(rows)):
        sample("w", dist.Normal(mu[z[rows], (rows + cols) % K], 1.0), obs=weights[rows, cols])


def test_pair_factor_indexed_by_a_membership_and_a_label_matches_closed_form():
    """Both dimensions of μ have size K, but only the first is indexed by a membership: the
    compiler must read the second as a fixed index per pair, not as a second membership."""
    rng = np.random.default_rng(2)
    n, K = 7, 3
    weights = rng.normal(size=(n, n))
    weights = np.triu(weights, 1) + np.triu(weights, 1).T
    value, mean, second, q, expected = _gaussian_blocks_under_random_q(labelled_block_model, weights, K, rng)
    for i in range(n):
        for j in range(i + 1, n):
            label = (i + j) % K
            expected += q[i] @ _expected_normal(weights[i, j], mean[:, label], second[:, label])
    assert value == pytest.approx(expected, rel=1e-10)
