"""Unit conversions of log-likelihoods."""

import math

import numpy as np
import pytest

from ppgen import Estimate
from ppgen.evaluate import bits_per_dim, nats, perplexity


def test_uniform_bits_cost_one_bit_per_dimension():
    # 10 images of 12 fair-coin pixels: log p = 120 log(1/2)
    log_p = 120 * math.log(0.5)
    assert bits_per_dim(log_p, num_dims=120) == pytest.approx(1.0)
    assert nats(Estimate(log_p), num_data=10) == pytest.approx(12 * math.log(2))
    assert perplexity(np.full(30, math.log(1 / 7)), num_tokens=30) == pytest.approx(7.0)


def test_bad_counts():
    with pytest.raises(ValueError, match="bits_per_dim: num_dims must be a positive integer, got 0"):
        bits_per_dim(-1.0, 0)
    with pytest.raises(ValueError, match="non-finite"):
        nats([np.nan, 1.0])
