"""Random graphs: Erdős–Rényi closed form, the stochastic block model against exhaustive
enumeration of memberships, planted partitions, and Zachary's karate club."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
from scipy.special import betaln, gammaln, logsumexp

import ppgen
from ppgen.models.graphs import (
    erdos_renyi,
    fit_blocks,
    normalized_mutual_information,
    planted_partition,
    simulate_erdos_renyi,
    spectral_init,
    stochastic_block_model,
    to_adjacency,
    to_graph,
)


def test_erdos_renyi_posterior_and_evidence_are_exact():
    sim = simulate_erdos_renyi(num_nodes=30, p=0.2, seed=1)
    adjacency = sim.data["adjacency"]
    pairs, edges = 30 * 29 // 2, adjacency.sum() / 2
    result = ppgen.infer(erdos_renyi, adjacency, a=2.0, b=3.0, engine="cavi", num_samples=10)
    assert float(result.params["p.concentration1"]) == pytest.approx(2 + edges, rel=1e-10)
    assert float(result.params["p.concentration0"]) == pytest.approx(3 + pairs - edges, rel=1e-10)
    log_evidence = betaln(2 + edges, 3 + pairs - edges) - betaln(2, 3)
    assert result.log_evidence.value == pytest.approx(log_evidence, abs=1e-8)


def test_networkx_round_trip():
    graph = nx.karate_club_graph()
    adjacency = to_adjacency(graph)
    assert adjacency.shape == (34, 34) and np.allclose(adjacency, adjacency.T) and adjacency.trace() == 0
    assert nx.utils.graphs_equal(to_graph(adjacency), nx.Graph(nx.to_numpy_array(graph, weight=None) > 0))
    rows, cols = np.triu_indices(34, 1)
    assert to_graph(adjacency[rows, cols]).number_of_edges() == graph.number_of_edges()
    with pytest.raises(ValueError, match="undirected"):
        to_adjacency(nx.DiGraph([(0, 1)]))


def _exact_sbm(adjacency, K, concentration, a_in, b_in, a_out, b_out):
    """p(z | A) and log p(A) by summing over all K^n memberships, with π and B integrated out
    (Dirichlet–multinomial and Beta–Bernoulli marginals)."""
    n = adjacency.shape[0]
    rows, cols = np.triu_indices(n, 1)
    edge = adjacency[rows, cols]
    a = np.where(np.eye(K) > 0, a_in, a_out)
    b = np.where(np.eye(K) > 0, b_in, b_out)
    configurations = np.array(list(itertools.product(range(K), repeat=n)))
    log_joint = np.empty(len(configurations))
    for index, z in enumerate(configurations):
        counts = np.bincount(z, minlength=K)
        log_prior = gammaln(K * concentration) - gammaln(K * concentration + n) + (gammaln(concentration + counts) - gammaln(concentration)).sum()
        block = z[rows] * K + z[cols]
        ones = np.bincount(block, weights=edge, minlength=K * K).reshape(K, K)
        totals = np.bincount(block, minlength=K * K).reshape(K, K)
        log_likelihood = (betaln(a + ones, b + totals - ones) - betaln(a, b)).sum()
        log_joint[index] = log_prior + log_likelihood
    log_evidence = logsumexp(log_joint)
    posterior = np.exp(log_joint - log_evidence)
    same = (configurations[:, :, None] == configurations[:, None, :]).astype(float)
    co_membership = np.einsum("c,cij->ij", posterior, same)
    return log_evidence, co_membership, configurations[np.argmax(log_joint)]


def test_small_sbm_against_exhaustive_enumeration():
    """Eight nodes, two communities: the ELBO is below log p(A) (exact, by summing all 2^8
    memberships) and within the label-switching gap log 2 plus a little; the mean-field
    co-membership probabilities match the exact ones; the partitions agree."""
    graph, truth = planted_partition(8, 2, 0.9, 0.1, seed=3)
    adjacency = to_adjacency(graph)
    priors = dict(concentration=1.0, a_in=2.0, b_in=1.0, a_out=1.0, b_out=2.0)
    log_evidence, co_membership, best = _exact_sbm(adjacency, 2, **priors)
    result = ppgen.infer(stochastic_block_model, adjacency, K=2, engine="cavi", init={"z": spectral_init}, tol=1e-12, num_samples=10, **priors)
    elbo = result.log_evidence.value
    assert elbo <= log_evidence
    assert elbo >= log_evidence - np.log(2) - 1.0
    q = result.marginals["z"]
    np.testing.assert_allclose(q @ q.T - np.diag(np.diag(q @ q.T)), co_membership - np.eye(8), atol=0.1)
    assert normalized_mutual_information(q.argmax(-1), best) == pytest.approx(1.0)
    trace = result.traces["elbo"]
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))


def test_planted_partition_recovered():
    graph, truth = planted_partition(600, 3, 0.1, 0.01, seed=0)
    labelled, result = fit_blocks(graph, K=3, init={"z": spectral_init})
    labels = np.array([labelled.nodes[node]["block"] for node in graph.nodes])
    assert normalized_mutual_information(labels, truth) >= 0.95
    trace = result.traces["elbo"]
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:]))
    edge_probability = result.params["B.concentration1"] / (result.params["B.concentration1"] + result.params["B.concentration0"])
    assert np.sort(np.diag(edge_probability)) == pytest.approx([0.1, 0.1, 0.1], abs=0.01)


def test_karate_club_two_factions():
    """The club's two factions, from the spectral start. (With K = 2 the plain SBM's best
    ELBO on this graph is a hub/periphery split, as Karrer & Newman 2011 found for the maximum
    likelihood; the faction split is the nearby local optimum that CAVI refines to.)"""
    graph = nx.karate_club_graph()
    factions = np.array([graph.nodes[node]["club"] != "Mr. Hi" for node in graph.nodes], dtype=int)
    labelled, _ = fit_blocks(graph, K=2, init={"z": spectral_init}, a_in=2.0, b_out=2.0)
    blocks = np.array([labelled.nodes[node]["block"] for node in graph.nodes])
    misassigned = min((blocks != factions).sum(), (blocks == factions).sum())
    assert misassigned <= 2
    assert all(len(labelled.nodes[node]["block_probs"]) == 2 for node in graph.nodes)


def test_a_graph_without_pairs_is_refused():
    with pytest.raises(ValueError, match=r"stochastic_block_model: the graph needs at least 2 nodes \(one pair\), got 1"):
        ppgen.infer(stochastic_block_model, np.zeros((1, 1)), K=2, engine="cavi")
