"""Starting probabilities q(z) for the categorical nodes of a compiled conjugate graph.

What a start clusters is read from the factors the node takes part in, never from a site name:

* a node that fills both roles of a factor over pairs of its elements (``x_ij ~ p(· | θ[z_i, z_j])``,
  a block model) starts from spectral clustering of the graph whose edge (i, j) weighs how far
  the pair's data statistics are from those of the most common pair (for a 0/1 adjacency
  matrix: the edges; for counts: the nonzero counts);
* a node whose elements each index their own data (``x_n ~ p(· | θ[z_n])``, a mixture) starts
  from k-means++ on those data, as the factor's coefficient rows (the data's sufficient
  statistics), standardised;
* otherwise from random hard assignments.

A start is hard labels smoothed to probability 0.9 on the label.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ._conjugate import ConjugateGraph
from ._restarts import cluster_rows, kmeans_plus_plus, random_labels, soft, spectral_embedding, standardised

_MODE_SAMPLE = 4096


class CategoricalStarts:
    """The start kinds each categorical node of ``graph`` supports, and its starts by kind.
    The spectral embedding and the data rows are computed once and shared by every start."""

    def __init__(self, graph: ConjugateGraph) -> None:
        self.graph = graph
        self._affinity: dict[str, Optional[object]] = {}
        self._rows: dict[str, Optional[np.ndarray]] = {}
        self._embedding: dict[str, np.ndarray] = {}

    def kinds(self, name: str) -> list[str]:
        """Data-reading kinds that apply to node ``name``, best first."""
        out = []
        if self.affinity(name) is not None:
            out.append("spectral")
        if self.rows(name) is not None:
            out.append("kmeans++")
        return out

    def derived(self, name: str) -> str:
        kinds = self.kinds(name)
        return kinds[0] if kinds else "random"

    def probabilities(self, name: str, kind: str, seed: int) -> np.ndarray:
        """Start of kind ``kind`` (``"spectral"``, ``"kmeans++"``, ``"random"``; one it does not
        support falls back to the node's derived kind), shape (num_elements, K)."""
        node = self.graph.nodes[name]
        K, n = node.cardinality, node.num_elements
        if kind not in ("random", *self.kinds(name)):
            kind = self.derived(name)
        rng = np.random.default_rng(seed)
        if kind == "spectral":
            if name not in self._embedding:
                self._embedding[name] = spectral_embedding(self.affinity(name), K)
            labels = cluster_rows(self._embedding[name], K, seed)
        elif kind == "kmeans++":
            labels = kmeans_plus_plus(self.rows(name), K, rng)
        else:
            labels = random_labels(n, K, rng)
        return soft(labels, K)

    # ---- what the factors say -------------------------------------------------------------
    def affinity(self, name: str):
        """Symmetric sparse (n, n) weights of the pairs of elements of ``name`` that share a
        factor, by the distance of the pair's coefficient row from the most common row; None
        when no factor is over pairs of ``name``."""
        if name in self._affinity:
            return self._affinity[name]
        from scipy.sparse import coo_matrix

        n = self.graph.nodes[name].num_elements
        rows, cols, weights = [], [], []
        for factor in self.graph.factors:
            if len(factor.roles) != 2 or not all(role.node == name for role in factor.roles):
                continue
            flat = factor.coef.reshape(factor.num_elements, -1)
            sample = flat[torch.linspace(0, factor.num_elements - 1, min(_MODE_SAMPLE, factor.num_elements)).long()]
            values, counts = torch.unique(sample, dim=0, return_counts=True)
            mode = values[counts.argmax()]
            distance = (flat - mode).norm(dim=-1)
            chosen = distance > 0
            rows.append(factor.roles[0].index[chosen].numpy())
            cols.append(factor.roles[1].index[chosen].numpy())
            weights.append(distance[chosen].numpy())
        result = None
        if rows and sum(len(w) for w in weights):
            r, c, w = (np.concatenate(part) for part in (rows, cols, weights))
            matrix = coo_matrix((w, (r, c)), shape=(n, n)).tocsr()
            result = matrix + matrix.T
        self._affinity[name] = result
        return result

    def rows(self, name: str) -> Optional[np.ndarray]:
        """(n, d) standardised data statistics of each element of ``name``, from the factors in
        which it fills exactly one role; None when they are all constant."""
        if name in self._rows:
            return self._rows[name]
        n = self.graph.nodes[name].num_elements
        columns = []
        for factor in self.graph.factors:
            mine = [role for role in factor.roles if role.node == name]
            if len(mine) != 1:
                continue
            index = mine[0].index
            flat = factor.coef.reshape(factor.num_elements, -1).numpy()
            counts = np.bincount(index.numpy(), minlength=n)
            if counts.min() == counts.max() and counts[0] > 0:  # m factor elements per element: keep them apart
                order = torch.argsort(index, stable=True).numpy()
                columns.append(flat[order].reshape(n, -1))
            else:
                summed = np.zeros((n, flat.shape[1]))
                np.add.at(summed, index.numpy(), flat)
                columns.append(summed / np.maximum(counts, 1)[:, None])
        result = None
        if columns:
            table = standardised(np.concatenate(columns, axis=1))
            if table.any():
                result = table
        self._rows[name] = result
        return result
