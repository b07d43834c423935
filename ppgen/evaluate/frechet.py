"""The Fréchet distance between Gaussians fitted to two sample sets (FID in a feature space)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ppgen.evaluate._samples import FeatureMap, as_sample_pair


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The positive semi-definite square root of a symmetric matrix (negative eigenvalues from
    round-off clipped to zero)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance_gaussian(mean_a: Any, cov_a: Any, mean_b: Any, cov_b: Any) -> float:
    r"""The squared 2-Wasserstein (Fréchet) distance between N(μ_a, Σ_a) and N(μ_b, Σ_b).

    .. math::
        d^2 = \lVert μ_a - μ_b \rVert^2 + \operatorname{tr} Σ_a + \operatorname{tr} Σ_b
              - 2 \operatorname{tr} \big(Σ_a^{1/2} Σ_b Σ_a^{1/2}\big)^{1/2}

    The trace term is computed from the eigenvalues of the symmetric positive semi-definite
    matrix Σ_a^{1/2} Σ_b Σ_a^{1/2}, which has the same eigenvalues as Σ_a Σ_b; unlike
    ``scipy.linalg.sqrtm(Σ_a Σ_b)`` on the non-symmetric product, this never returns complex
    values or fails on singular covariances (eigenvalues below zero from round-off are clipped).
    Everything is in float64.

    Parameters
    ----------
    mean_a, mean_b : arrays of shape (num_features,)
    cov_a, cov_b : symmetric positive semi-definite arrays of shape (num_features, num_features)

    References
    ----------
    Dowson & Landau (1982), The Fréchet distance between multivariate normal distributions.
    """
    mean_a, mean_b = np.atleast_1d(np.asarray(mean_a, np.float64)), np.atleast_1d(np.asarray(mean_b, np.float64))
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    size = mean_a.shape[0]
    for name, value, shape in (("mean_b", mean_b, (size,)), ("cov_a", cov_a, (size, size)), ("cov_b", cov_b, (size, size))):
        if value.shape != shape:
            raise ValueError(f"frechet_distance_gaussian: {name} must have shape {shape} to match mean_a, got {value.shape}")
    root_a = _symmetric_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    difference = mean_a - mean_b
    value = difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root
    return float(max(value, 0.0))


def frechet_distance(a: Any, b: Any, features: Optional[FeatureMap] = None) -> float:
    r"""Fréchet distance between Gaussians fitted to samples ``a`` and ``b`` (FID when the
    features are a classifier's activations).

    Each set is summarised by its mean and unbiased covariance (divisor ``n - 1``, as in
    Heusel et al. and torchmetrics) and :func:`frechet_distance_gaussian` is applied. The
    estimate is biased upwards by O(num_features / n): compare values at equal sample sizes.

    Parameters
    ----------
    a, b : arrays of shape (num_samples, num_features), or anything ``features`` maps to one
        (e.g. images with ``features=ppgen.evaluate.digit_features``).
    features : callable, optional
        Feature map applied to both sets.

    Returns
    -------
    float : the squared distance d² ≥ 0 (FID reports this squared value).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> d2 = frechet_distance(rng.normal(size=(4000, 2)), rng.normal(2.0, 1.0, size=(4000, 2)))
    >>> bool(abs(d2 - 8.0) < 0.3)  # ‖μ_a − μ_b‖² = 8, equal covariances
    True

    References
    ----------
    Heusel et al. (2017), GANs trained by a two time-scale update rule converge to a local Nash
    equilibrium (FID).
    """
    a, b = as_sample_pair(a, b, ("a", "b"), "frechet_distance", features)
    return frechet_distance_gaussian(a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False))
