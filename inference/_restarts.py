"""Several starts for the optimising engines (cavi, em, svi), and the symmetric fixed points
they guard against.

A mixture or a block model is unchanged when its components are relabelled, so its bound has
a *symmetric* stationary point where every component is the same and every datum's q(z_n) is
the same vector: the first updates from an uninformative start average the components
together and the run stops there, reporting convergence. Two defences, shared by the engines:

* **Starts.** ``num_restarts`` runs from different starts; the best final bound is kept and
  every start's final bound is recorded (``Result.diagnostics["restarts"]``, with the kind of
  each start in ``diagnostics["starts"]``). The vocabulary of ``init`` is shared (:data:`INITS`);
  each engine accepts the kinds that apply to it. Starts that read the data come from the
  program's structure, not from a model name: k-means++ on the data rows of a latent with one
  value per datum (a mixture), spectral clustering of the pairs a latent indexes two at a
  time (a block model: ``x_ij ~ p(· | θ[z_i, z_j])``).
* **Detection.** A categorical latent whose q (or posterior) rows are all the same spread-out
  vector sits at a symmetric point: they carry almost no information about which element they
  belong to, I(n; z) < ``0.01 · log K`` under q(n, z) = q_n(z) / N, while the common row is not
  concentrated on one category (H(q̄) ≥ ``0.1 · log K``; every element confidently in the same
  category, as the few sequences of one time step of a chain can be, is not a symmetric
  point). The engine warns (:class:`~ppgen.errors.ConvergenceWarning` naming the site), lists
  it in ``diagnostics["symmetric"]`` and reports ``converged=False``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Union

import numpy as np

from ppgen.errors import ConvergenceWarning, user_stacklevel

INITS = ("auto", "program", "random", "kmeans++", "spectral")
"""Start kinds: ``"auto"`` (derived from the structure: spectral for pair latents, k-means++
for mixture latents, the program's own start otherwise), ``"program"`` (the program's initial
values), ``"random"`` (random hard assignments / prior draws), ``"kmeans++"``, ``"spectral"``."""

NUM_RESTARTS_AUTO = 4
"""Starts under ``num_restarts="auto"`` when the program has a categorical latent (at most:
the starts stop once two of them reach the best bound)."""

SYMMETRY_THRESHOLD = 0.01
"""A site is symmetric when I(n; z) < SYMMETRY_THRESHOLD · log K ..."""

SPREAD_THRESHOLD = 0.1
"""... and H(q̄) ≥ SPREAD_THRESHOLD · log K."""

Restarts = Union[int, str]


def check_restart_options(owner: str, num_restarts: Any, init: Any, allowed: tuple[str, ...], mapping: bool = False) -> None:
    """scikit-learn-style validation of ``num_restarts`` and ``init`` for engine ``owner``."""
    if not (num_restarts == "auto" or (isinstance(num_restarts, Integral) and not isinstance(num_restarts, bool) and num_restarts >= 1)):
        raise ValueError(f"{owner}: num_restarts must be a positive integer or 'auto', got {num_restarts!r}")
    if mapping and isinstance(init, dict):
        return
    if not isinstance(init, str) or init not in allowed:
        extra = " or a dict {site: start}" if mapping else ""
        raise ValueError(f"{owner}: init must be one of {allowed}{extra}, got {init!r}")


def resolve_restarts(num_restarts: Restarts, categorical: bool, maximum: int = NUM_RESTARTS_AUTO) -> tuple[int, bool]:
    """(number of starts, stop once they agree): ``"auto"`` gives ``maximum`` starts that stop
    at agreement (:meth:`StartRecord.agree`) when the program has a categorical latent, one
    otherwise; an integer runs exactly that many."""
    if num_restarts == "auto":
        return (maximum, True) if categorical else (1, False)
    return int(num_restarts), False


def start_kinds(first: str, count: int, derived: str = "auto") -> list[str]:
    """The kind of each start: ``first`` (the asked ``init``), then the structure's own starts
    (``derived``) and random ones in turn, so that a structure whose derived start is poor
    meets a different start early (half of the remaining starts derived, rounded up)."""
    return [first] + [derived if index % 2 == 0 else "random" for index in range(count - 1)]


@dataclass
class StartRecord:
    """The final bound of every start, its kind, and the best run so far."""

    bounds: list[float] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    best: Any = None
    best_index: int = -1

    def add(self, kind: str, bound: float, run: Any) -> None:
        self.bounds.append(float(bound))
        self.kinds.append(kind)
        if self.best is None or bound > self.bounds[self.best_index]:
            self.best, self.best_index = run, len(self.bounds) - 1

    def agree(self, tolerance: float, min_starts: int = 2) -> bool:
        """At least ``min_starts`` starts ran and two of them reached the best bound, within
        ``tolerance`` (absolute). Two starts that agree can share a local optimum whose basin
        is large; requiring more starts (of both kinds, :func:`start_kinds`) before believing
        the agreement makes missing a better optimum whose basin holds a fraction q of the
        starts at most (1 − q)^min_starts likely."""
        if len(self.bounds) < min_starts:
            return False
        best = self.bounds[self.best_index]
        return sum(1 for b in self.bounds if best - b <= tolerance) >= 2

    def diagnostics(self) -> dict[str, Any]:
        return {"restarts": list(self.bounds), "starts": list(self.kinds), "best_start": self.best_index}


# --------------------------------------------------------------------------------------------
# symmetric points


def _entropies(probs: Any) -> tuple[float, float, int]:
    """(H(q̄), mean_n H(q_n), K) of rows ``probs`` of shape (*elements, K)."""
    p = np.asarray(probs, dtype=np.float64)
    K = p.shape[-1]
    p = p.reshape(-1, K)
    mean = p.mean(0)
    entropy_of_mean = -np.sum(mean * np.log(np.clip(mean, 1e-300, None)))
    mean_entropy = -np.sum(p * np.log(np.clip(p, 1e-300, None))) / p.shape[0]
    return float(entropy_of_mean), float(mean_entropy), K


def information(probs: Any) -> float:
    """Mutual information between element and category, I(n; z) = H(q̄) − mean_n H(q_n), in
    units of log K (0: every row the same vector; 1: every row one-hot, categories used equally).

    ``probs`` has shape (*elements, K); rows are normalised probabilities."""
    entropy_of_mean, mean_entropy, K = _entropies(probs)
    return max(entropy_of_mean - mean_entropy, 0.0) / math.log(K)


def symmetric_sites(marginals: dict[str, Any]) -> list[str]:
    """Sites with two or more elements and categories whose rows of ``marginals[site]`` (shape
    (*site_shape, K)) are all (nearly) the same spread-out vector, as at the symmetric point of
    a mixture (thresholds :data:`SYMMETRY_THRESHOLD`, :data:`SPREAD_THRESHOLD`)."""
    out = []
    for site, probs in marginals.items():
        shape = np.shape(probs)
        if len(shape) < 2 or shape[-1] < 2 or math.prod(shape[:-1]) < 2:
            continue
        entropy_of_mean, mean_entropy, K = _entropies(probs)
        spread = entropy_of_mean >= SPREAD_THRESHOLD * math.log(K)
        if spread and entropy_of_mean - mean_entropy < SYMMETRY_THRESHOLD * math.log(K):
            out.append(site)
    return out


def warn_symmetric(engine: str, sites: list[str]) -> None:
    """The :class:`ConvergenceWarning` for a run that ended at a symmetric point, raised at
    the user's stack level."""
    listed = ", ".join(repr(s) for s in sites[:5]) + (f" and {len(sites) - 5} more sites" if len(sites) > 5 else "")
    warnings.warn(
        f"{engine}: the run ended at a symmetric point: every element of {listed} has nearly the same "
        "posterior over its categories (the components are not told apart); raise num_restarts, or pass "
        "init='kmeans++' / 'spectral' / your own start",
        ConvergenceWarning,
        stacklevel=user_stacklevel(),
    )


def warn_unconverged(engine: str, tol: float, num_steps: int) -> None:
    """The :class:`ConvergenceWarning` for a kept run that stopped at ``num_steps``."""
    warnings.warn(
        f"{engine}: the objective did not converge to tol={tol} within num_steps={num_steps}; raise num_steps or loosen tol",
        ConvergenceWarning,
        stacklevel=user_stacklevel(),
    )


# --------------------------------------------------------------------------------------------
# starts that read the data


def random_labels(num_elements: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Random hard assignment of ``num_elements`` elements to ``k`` categories (every category
    used when there are at least ``k`` elements)."""
    labels = rng.integers(k, size=num_elements)
    if num_elements >= k:
        labels[rng.choice(num_elements, size=k, replace=False)] = np.arange(k)
    return labels


def kmeans_plus_plus_centres(rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` centres (k, d) chosen among ``rows`` (n, d) by k-means++ seeding (Arthur &
    Vassilvitskii 2007): each next centre is a row drawn with probability ∝ its squared
    distance to the nearest centre so far, so the centres spread over the data."""
    n = rows.shape[0]
    centres = [rows[rng.integers(n)]]
    nearest = ((rows - centres[0]) ** 2).sum(-1)
    for _ in range(1, k):
        total = nearest.sum()
        choice = rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n)
        centres.append(rows[choice])
        nearest = np.minimum(nearest, ((rows - centres[-1]) ** 2).sum(-1))
    return np.stack(centres)


def _nearest(rows: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return ((rows[:, None, :] - centres[None]) ** 2).sum(-1).argmin(-1)


def kmeans_plus_plus(rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Labels of the nearest of ``k`` centres seeded by k-means++ on ``rows`` of shape (n, d)."""
    return _nearest(rows, kmeans_plus_plus_centres(rows, k, rng))


def _lloyd(rows: np.ndarray, centres: np.ndarray, max_iterations: int) -> tuple[np.ndarray, float]:
    """Lloyd's iterations from ``centres``: (labels, within-cluster sum of squares)."""
    centres = np.array(centres, dtype=np.float64)
    labels = _nearest(rows, centres)
    for _ in range(max_iterations):
        for j in range(centres.shape[0]):
            members = rows[labels == j]
            if len(members):  # an emptied component keeps its centre
                centres[j] = members.mean(0)
        new = _nearest(rows, centres)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels, float(((rows - centres[labels]) ** 2).sum())


def kmeans(rows: np.ndarray, k: int, rng: np.random.Generator, num_seedings: int = 10, max_iterations: int = 100) -> np.ndarray:
    """Labels of k-means on ``rows`` (n, d): Lloyd's iterations (assign every row to its
    nearest centre, move each centre to its rows' mean) from ``num_seedings`` k-means++
    seedings, the partition of least within-cluster sum of squares kept (scikit-learn's
    ``KMeans(n_init=10)``). A single seeding often puts two centres in one cluster and the
    mixture's EM then converges to the local optimum that split it."""
    rows = np.asarray(rows, dtype=np.float64).reshape(rows.shape[0], -1)
    best, best_inertia = None, math.inf
    for _ in range(num_seedings):
        labels, inertia = _lloyd(rows, kmeans_plus_plus_centres(rows, k, rng), max_iterations)
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def standardised(rows: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit variance; constant columns dropped."""
    rows = np.asarray(rows, dtype=np.float64).reshape(rows.shape[0], -1)
    spread = rows.std(0)
    keep = spread > 1e-12 * np.maximum(1.0, np.abs(rows).max(0))
    return (rows[:, keep] - rows[:, keep].mean(0)) / spread[keep] if keep.any() else np.zeros((rows.shape[0], 1))


def spectral_embedding(affinity: Any, k: int) -> np.ndarray:
    """Rows of the top-``k`` eigenvectors, by |eigenvalue|, of the normalised affinity
    D^(−1/2) W D^(−1/2), each row scaled to unit length (Ng, Jordan & Weiss 2001). Taking the
    largest |λ| rather than the largest λ keeps disassortative structure (blocks that link
    to each other more than within), whose eigenvalues are negative (Rohe, Chatterjee & Yu 2011).

    ``affinity`` is a symmetric, non-negative scipy sparse matrix of shape (n, n)."""
    from scipy.sparse import diags
    from scipy.sparse.linalg import eigsh

    n = affinity.shape[0]
    degree = np.asarray(affinity.sum(1)).ravel()
    scale = diags(1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)))
    normalised = (scale @ affinity @ scale).tocsr()
    if k < n - 1:
        start = np.random.default_rng(0).random(n)  # a fixed Lanczos start: the same vectors every run
        _, vectors = eigsh(normalised, k=k, which="LM", v0=start)
    else:  # too small for Lanczos
        values, vectors = np.linalg.eigh(normalised.toarray())
        vectors = vectors[:, np.argsort(-np.abs(values))[:k]]
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def cluster_rows(rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means labels of ``rows`` (scikit-learn, k-means++ seeding, four inits)."""
    from sklearn.cluster import KMeans

    if rows.shape[0] <= k:
        return np.arange(rows.shape[0]) % k
    return KMeans(k, n_init=4, random_state=seed).fit(rows).labels_


def soft(labels: np.ndarray, k: int, confidence: float = 0.9) -> np.ndarray:
    """Hard labels as probabilities with ``confidence`` on the label (the rest shared), shape (n, k)."""
    other = (1.0 - confidence) / (k - 1) if k > 1 else 0.0
    return np.eye(k)[labels] * (confidence - other) + other
