"""k-nearest-neighbour manifold metrics: precision/recall (Kynkäänniemi et al. 2019) and
density/coverage (Naeem et al. 2020).

Each sample set's manifold is the union of balls around its points, each ball's radius the
distance to the point's k-th nearest neighbour in its own set (itself excluded). Ball
membership is strict (distance < radius), as in the reference implementation ``prdc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ppgen.evaluate._samples import FeatureMap, as_sample_pair, check_count

#: Distance entries held in memory at once.
_BLOCK_ENTRIES = 2**23


@dataclass(frozen=True)
class PrecisionRecall:
    """Precision: fraction of fake samples inside the real manifold (fidelity); recall: fraction
    of real samples inside the fake manifold (diversity)."""

    precision: float
    recall: float


@dataclass(frozen=True)
class DensityCoverage:
    """Density: mean number of real balls holding a fake sample, divided by k (1 in expectation
    when fake and real come from one distribution); coverage: fraction of real samples whose
    ball holds at least one fake sample."""

    density: float
    coverage: float


def knn_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour among the other points."""
    from sklearn.neighbors import NearestNeighbors

    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    return distances[:, k]  # column 0 is the point itself


def _ball_counts(centres: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query: how many balls (centre, radius) hold it; for each centre: the distance
    to its nearest query."""
    counts = np.zeros(len(queries), dtype=np.int64)
    nearest = np.full(len(centres), np.inf)
    centre_norms = (centres * centres).sum(1)
    rows = max(1, _BLOCK_ENTRIES // len(centres))
    for start in range(0, len(queries), rows):
        block = queries[start : start + rows]
        squared = (block * block).sum(1)[:, None] + centre_norms[None, :] - 2.0 * (block @ centres.T)
        distances = np.sqrt(np.maximum(squared, 0.0))
        counts[start : start + rows] = (distances < radii[None, :]).sum(axis=1)
        nearest = np.minimum(nearest, distances.min(axis=0))
    return counts, nearest


def _checked(real: Any, fake: Any, k: Any, owner: str, features: Optional[FeatureMap]) -> tuple[np.ndarray, np.ndarray, int]:
    k = check_count(k, "k", owner)
    real, fake = as_sample_pair(real, fake, ("real", "fake"), owner, features)
    for name, points in (("real", real), ("fake", fake)):
        if len(points) <= k:
            raise ValueError(f"{owner}: {name} needs more than k = {k} samples for k-nearest-neighbour radii, got {len(points)}")
    return real, fake, k


def precision_recall(real: Any, fake: Any, k: int = 3, features: Optional[FeatureMap] = None) -> PrecisionRecall:
    r"""Improved precision and recall of a generative model (Kynkäänniemi et al. 2019).

    .. math::
        \text{precision} = \frac{1}{M}\sum_j 1\big[\exists i: \lVert f_j - r_i\rVert < \mathrm{NND}_k(r_i)\big],
        \quad
        \text{recall} = \frac{1}{N}\sum_i 1\big[\exists j: \lVert r_i - f_j\rVert < \mathrm{NND}_k(f_j)\big]

    The metric is asymmetric: ``real`` are the data, ``fake`` the model's samples; swapping them
    swaps precision and recall.

    Parameters
    ----------
    real : array (N, num_features); fake : array (M, num_features); both with more than k rows.
    k : neighbourhood size (the paper uses 3).
    features : callable, optional, applied to both sets first.

    References
    ----------
    Kynkäänniemi, Karras, Laine, Lehtinen & Aila (2019), Improved precision and recall metric
    for assessing generative models. NeurIPS.
    """
    real, fake, k = _checked(real, fake, k, "precision_recall", features)
    fake_in_real, _ = _ball_counts(real, knn_radii(real, k), fake)
    real_in_fake, _ = _ball_counts(fake, knn_radii(fake, k), real)
    return PrecisionRecall(precision=float(np.mean(fake_in_real > 0)), recall=float(np.mean(real_in_fake > 0)))


def density_coverage(real: Any, fake: Any, k: int = 5, features: Optional[FeatureMap] = None) -> DensityCoverage:
    r"""Density and coverage of a generative model (Naeem et al. 2020).

    .. math::
        \text{density} = \frac{1}{kM}\sum_j \sum_i 1\big[\lVert f_j - r_i\rVert < \mathrm{NND}_k(r_i)\big],
        \quad
        \text{coverage} = \frac{1}{N}\sum_i 1\big[\min_j \lVert r_i - f_j\rVert < \mathrm{NND}_k(r_i)\big]

    Both use only the real manifold, so they are robust to outlying fake samples. When ``fake``
    and ``real`` come from one distribution, E[density] = 1 and
    E[coverage] = 1 − ∏_{i=1}^{k} (N − i) / (N + M − i) (0.969 at k = 5 for N = M large).

    Parameters
    ----------
    real : array (N, num_features); fake : array (M, num_features); both with more than k rows.
    k : neighbourhood size (the paper uses 5).
    features : callable, optional, applied to both sets first.

    References
    ----------
    Naeem, Oh, Uh, Choi & Yoo (2020), Reliable fidelity and diversity metrics for generative
    models. ICML.
    """
    real, fake, k = _checked(real, fake, k, "density_coverage", features)
    radii = knn_radii(real, k)
    counts, nearest_fake = _ball_counts(real, radii, fake)
    return DensityCoverage(density=float(counts.mean() / k), coverage=float(np.mean(nearest_fake < radii)))
