"""Conversions of a log-likelihood (nats) into the units generative-model papers report."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _total_log_density(log_p: Any) -> float:
    """A total log-density from a float, an :class:`~ppgen.Estimate` or pointwise values."""
    if hasattr(log_p, "kind") and hasattr(log_p, "value"):
        return float(log_p.value)
    array = np.asarray(log_p, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError("log_p has non-finite values (NaN or inf)")
    return float(array.sum())


def _positive_count(value: Any, name: str, owner: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


def nats(log_p: Any, num_data: int = 1) -> float:
    """Negative log-likelihood per datum in nats: −log p(x) / num_data.

    ``log_p`` is a total log-density (a float or an :class:`~ppgen.Estimate`) or pointwise
    values (summed), e.g. ``ppgen.score(fit, x_test, pointwise=True)``.
    """
    return -_total_log_density(log_p) / _positive_count(num_data, "num_data", "nats")


def bits_per_dim(log_p: Any, num_dims: int) -> float:
    """Negative log-likelihood in bits per dimension: −log p(x) / (num_dims · ln 2), where
    ``num_dims`` counts every scalar of the data scored (num_data × dimensions per datum).

    For discrete data (pixels as integers or bits) this is the lossless code length per
    dimension; for continuous data it depends on the data's scale.
    """
    return -_total_log_density(log_p) / (_positive_count(num_dims, "num_dims", "bits_per_dim") * math.log(2.0))


def perplexity(log_p: Any, num_tokens: int) -> float:
    """exp(−log p(x) / num_tokens): the effective number of equally likely choices per token."""
    return math.exp(-_total_log_density(log_p) / _positive_count(num_tokens, "num_tokens", "perplexity"))
