"""Random graphs: Erdős–Rényi G(n, p) and the stochastic block model.

A graph on n nodes enters a program as its adjacency matrix (symmetric, 0/1, zero diagonal);
the program scores the n(n−1)/2 node pairs i < j, each an edge or not. :func:`to_adjacency`
and :func:`to_graph` convert from and to ``networkx`` graphs, :func:`fit_blocks` takes a
``networkx`` graph and returns it with each node's inferred block as a node attribute.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional

import networkx as nx
import numpy as np

from ppgen import current_backend, dist, ops, plate, sample
from ppgen.catalogue import Example, Simulated


@lru_cache(maxsize=8)
def _pairs(num_nodes: int, backend: str = "numpy") -> tuple[Any, Any]:
    """Row and column of every pair i < j, as index arrays of ``backend`` (cached: engines
    run a program many times, and indexing with native index arrays is fast)."""
    rows, cols = np.triu_indices(num_nodes, 1)
    if backend == "pyro":
        import torch

        return torch.as_tensor(rows), torch.as_tensor(cols)
    if backend == "numpyro":
        import jax.numpy as jnp

        return jnp.asarray(rows), jnp.asarray(cols)
    return rows, cols


def erdos_renyi(adjacency: Optional[Any] = None, num_nodes: int = 20, a: float = 1.0, b: float = 1.0) -> None:
    """Erdős–Rényi graph G(n, p) with a Beta prior on the edge probability.

    p ~ Beta(a, b);  a_ij ~ Bernoulli(p) for every pair i < j.

    Parameters
    ----------
    adjacency : array of shape (n, n), symmetric 0/1, or None to simulate ``num_nodes`` nodes.
    a, b : Beta prior pseudo-counts.

    The posterior is Beta(a + m, b + n(n−1)/2 − m) with m the number of edges.
    """
    n = num_nodes if adjacency is None else adjacency.shape[0]
    rows, cols = _pairs(n, current_backend())
    p = sample("p", dist.Beta(a, b))
    with plate("pairs", len(rows)):
        sample("edge", dist.Bernoulli(p), obs=None if adjacency is None else adjacency[rows, cols])


def stochastic_block_model(
    adjacency: Optional[Any] = None,
    num_nodes: int = 30,
    K: int = 2,
    concentration: float = 1.0,
    a_in: float = 1.0,
    b_in: float = 1.0,
    a_out: float = 1.0,
    b_out: float = 1.0,
) -> None:
    """The stochastic block model (Holland, Laskey & Leinhardt 1983; Nowicki & Snijders 2001).

    π ~ Dirichlet(γ 1_K);  B_kl ~ Beta(a_in, b_in) if k = l else Beta(a_out, b_out);
    z_i ~ Categorical(π), i = 1..n;  a_ij ~ Bernoulli(B[z_i, z_j]) for every pair i < j.

    Parameters
    ----------
    adjacency : array of shape (n, n), symmetric 0/1 with zero diagonal, or None to simulate.
    K : number of blocks.
    concentration : γ, the Dirichlet prior on block proportions.
    a_in, b_in, a_out, b_out : Beta priors on within- and between-block edge probabilities
        (``a_in > b_in``-style values express an assortative prior).
    """
    n = num_nodes if adjacency is None else adjacency.shape[0]
    if n < 2:
        raise ValueError(f"stochastic_block_model: the graph needs at least 2 nodes (one pair), got {n}")
    rows, cols = _pairs(n, current_backend())
    eye = ops.eye(K)
    pi = sample("pi", dist.Dirichlet(concentration * ops.ones(K)))
    with plate("block_from", K, dim=-2), plate("block_to", K, dim=-1):
        edge_probability = sample(
            "B", dist.Beta(a_in * eye + a_out * (1.0 - eye), b_in * eye + b_out * (1.0 - eye))
        )
    with plate("nodes", n):
        z = sample("z", dist.Categorical(pi))
    with plate("pairs", len(rows)):
        sample(
            "edge",
            dist.Bernoulli(edge_probability[z[rows], z[cols]]),
            obs=None if adjacency is None else adjacency[rows, cols],
        )


# --------------------------------------------------------------------------------------------
# networkx in and out


def to_adjacency(graph: nx.Graph) -> np.ndarray:
    """The 0/1 adjacency matrix of an undirected graph (nodes in ``graph.nodes`` order)."""
    if graph.is_directed():
        raise ValueError("to_adjacency: expected an undirected graph, got a directed one")
    adjacency = nx.to_numpy_array(graph, dtype=np.float64, weight=None)
    np.fill_diagonal(adjacency, 0.0)
    return (adjacency > 0).astype(np.float64)


def to_graph(adjacency: Any, blocks: Optional[Any] = None) -> nx.Graph:
    """A ``networkx`` graph from an adjacency matrix, or from a vector of the pairs i < j (as
    ``generate`` returns them); ``blocks`` become the node attribute ``"block"``."""
    adjacency = np.asarray(adjacency)
    if adjacency.ndim == 1:
        num_nodes = int(round((1 + np.sqrt(1 + 8 * adjacency.shape[0])) / 2))
        rows, cols = _pairs(num_nodes)
        full = np.zeros((num_nodes, num_nodes))
        full[rows, cols] = adjacency
        adjacency = full + full.T
    graph = nx.from_numpy_array((adjacency > 0).astype(int))
    if blocks is not None:
        nx.set_node_attributes(graph, {node: int(block) for node, block in enumerate(np.asarray(blocks))}, "block")
    return graph


def fit_blocks(graph: nx.Graph, K: int = 2, engine: str = "cavi", **options: Any) -> tuple[nx.Graph, Any]:
    """Infer block memberships of ``graph``'s nodes with ``stochastic_block_model``.

    Returns a copy of the graph with node attributes ``"block"`` (most probable block) and
    ``"block_probs"``, and the engine's :class:`~ppgen.Result`.

    Examples
    --------
    >>> import networkx as nx
    >>> labelled, result = fit_blocks(nx.karate_club_graph(), K=2, a_in=2.0, b_out=2.0)
    >>> sorted(set(nx.get_node_attributes(labelled, "block").values()))
    [0, 1]
    """
    from ppgen.verbs import infer

    result = infer(stochastic_block_model, to_adjacency(graph), K=K, engine=engine, **options)
    probs = result.marginals.get("z")
    if probs is None:
        probs = np.stack([(result.samples["z"] == k).mean(0) for k in range(K)], -1)
    labelled = graph.copy()
    for node, p in zip(graph.nodes, probs):
        labelled.nodes[node]["block"] = int(np.argmax(p))
        labelled.nodes[node]["block_probs"] = np.asarray(p)
    return labelled, result


def spectral_init(adjacency: Any, K: int = 2, confidence: float = 0.9, seed: int = 0) -> np.ndarray:
    """Initial block probabilities from the spectrum of the normalised adjacency
    D^(−1/2) A D^(−1/2): k-means on the row-normalised top-K eigenvectors (Ng, Jordan & Weiss
    2001), smoothed to ``confidence`` on the chosen block. Shape (n, K).

    Mean-field updates started from uninformative memberships stay near the symmetric
    fixed point of the stochastic block model, where all blocks look alike; this start breaks
    the symmetry along the graph's community structure (as in Daudin, Picard & Robin 2008).
    """
    from scipy.sparse import csr_matrix, diags
    from scipy.sparse.linalg import eigsh
    from sklearn.cluster import KMeans

    adjacency = csr_matrix(np.asarray(adjacency, dtype=np.float64))
    degree = np.asarray(adjacency.sum(1)).ravel()
    scale = diags(1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)))
    normalised = scale @ adjacency @ scale
    start = np.random.default_rng(seed).random(adjacency.shape[0])
    _, vectors = eigsh(normalised, k=K, which="LA", v0=start)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    labels = KMeans(K, n_init=4, random_state=seed).fit(vectors).labels_
    return np.eye(K)[labels] * (confidence - (1 - confidence) / (K - 1)) + (1 - confidence) / (K - 1)


# --------------------------------------------------------------------------------------------
# simulation


def planted_partition(
    num_nodes: int, K: int, p_in: float, p_out: float, seed: int = 0
) -> tuple[nx.Graph, np.ndarray]:
    """A planted-partition graph: K equal blocks, edge probability p_in within a block and
    p_out between blocks. Returns the ``networkx`` graph and the true blocks."""
    rng = np.random.default_rng(seed)
    blocks = np.repeat(np.arange(K), int(np.ceil(num_nodes / K)))[:num_nodes]
    rng.shuffle(blocks)
    probability = np.where(blocks[:, None] == blocks[None, :], p_in, p_out)
    upper = np.triu(rng.random((num_nodes, num_nodes)) < probability, 1)
    adjacency = (upper | upper.T).astype(np.float64)
    return to_graph(adjacency, blocks), blocks


def simulate_sbm(num_nodes: int = 150, K: int = 3, p_in: float = 0.15, p_out: float = 0.02, seed: int = 0) -> Simulated:
    graph, blocks = planted_partition(num_nodes, K, p_in, p_out, seed)
    truth = {"z": blocks, "B": np.where(np.eye(K) > 0, p_in, p_out), "graph": graph}
    return Simulated({"adjacency": to_adjacency(graph), "K": K}, truth)


def simulate_erdos_renyi(num_nodes: int = 60, p: float = 0.1, seed: int = 0) -> Simulated:
    graph = nx.gnp_random_graph(num_nodes, p, seed=seed)
    return Simulated({"adjacency": to_adjacency(graph)}, {"p": p, "graph": graph})


def normalized_mutual_information(labels: Any, truth: Any) -> float:
    """NMI between two partitions (arithmetic normalisation, as scikit-learn's default)."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(np.asarray(truth), np.asarray(labels)))


EXAMPLES = [
    Example("erdos_renyi", erdos_renyi, simulate_erdos_renyi, "Erdős–Rényi G(n, p) with a Beta prior on p"),
    Example(
        "stochastic_block_model",
        stochastic_block_model,
        simulate_sbm,
        "stochastic block model: Dirichlet block proportions, Beta edge probabilities, memberships per node",
        options={"cavi": {"init": {"z": spectral_init}}, "meanfield": {"init": {"z": spectral_init}}},
        # memberships index each other's blocks (B[z_i, z_j]): parallel enumeration cannot sum them out
        skip=("advi", "svi"),
    ),
]
