"""Checking the two sample sets a metric compares, and mapping images to features."""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

FeatureMap = Callable[[Any], Any]


def as_samples(value: Any, name: str, owner: str, features: Optional[FeatureMap] = None, min_samples: int = 2) -> np.ndarray:
    """``value`` as a float64 array of shape (num_samples, num_features), after ``features``.

    Raises ``TypeError`` for non-numeric input and ``ValueError`` naming ``owner`` and ``name``
    for a wrong number of dimensions, fewer than ``min_samples`` rows, or non-finite entries.
    """
    if features is not None:
        if not callable(features):
            raise TypeError(f"{owner}: features must be a callable mapping samples to (num_samples, num_features), got {type(features).__name__}")
        value = features(value)
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{owner}: {name} must be a numeric array of shape (num_samples, num_features), got dtype {array.dtype}")
    if array.ndim != 2:
        hint = "; pass features= to map images to feature vectors" if array.ndim > 2 and features is None else ""
        raise ValueError(f"{owner}: {name} must have shape (num_samples, num_features), got shape {array.shape}{hint}")
    if array.shape[0] < min_samples:
        raise ValueError(f"{owner}: {name} needs at least {min_samples} samples, got {array.shape[0]}")
    if array.shape[1] < 1:
        raise ValueError(f"{owner}: {name} has no features (shape {array.shape})")
    array = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        rows = np.flatnonzero(~np.all(np.isfinite(array), axis=1))
        raise ValueError(f"{owner}: {name} has non-finite values (NaN or inf) in {rows.size} rows, first at row {rows[0]}")
    return array


def as_sample_pair(
    a: Any, b: Any, names: tuple[str, str], owner: str, features: Optional[FeatureMap] = None, min_samples: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Both sample sets checked by :func:`as_samples`, with the same number of features."""
    first = as_samples(a, names[0], owner, features, min_samples)
    second = as_samples(b, names[1], owner, features, min_samples)
    if first.shape[1] != second.shape[1]:
        raise ValueError(
            f"{owner}: {names[0]} and {names[1]} must have the same number of features, got {first.shape[1]} and {second.shape[1]}"
        )
    return first, second


def check_count(value: Any, name: str, owner: str, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum`` (bools and floats are slips, never coerced)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{owner}: {name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value}")
    return int(value)
