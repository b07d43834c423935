"""Minibatch orders without an array of size N (:mod:`ppgen.inference._epoch_order`).

Truth: a uniformly random permutation of N items puts each item at each position with
probability 1 / N, and a given pair of items in either order with probability 1 / 2; counts
over E epochs are binomial, and must lie within 5 binomial standard deviations (over the
100 cells of a 10 × 10 table the chance a correct sampler fails is below 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppgen.inference._epoch_order import EpochOrder


@pytest.mark.parametrize("size", [1, 2, 3, 10, 64, 1000, 1025, 65537])
def test_each_epoch_is_a_permutation_of_the_data(size):
    torch.manual_seed(size)
    order = EpochOrder(size)
    for _ in range(3):
        batch = max(3, size // 9)  # batches that do not divide N: the last one is short
        batches = [order.batch(position, batch) for position in range(-(-size // batch))]
        assert sorted(torch.cat(batches).tolist()) == list(range(size))
        order.new_epoch()


def test_positions_are_uniform_and_pairs_in_either_order_equally_often():
    torch.manual_seed(3)
    size, epochs = 10, 2000
    order = EpochOrder(size)
    counts = np.zeros((size, size))
    before = np.zeros((size, size))
    for _ in range(epochs):
        permutation = order.at(torch.arange(size)).numpy()
        counts[permutation, np.arange(size)] += 1  # item -> position
        position = np.empty(size, dtype=int)
        position[permutation] = np.arange(size)
        before += position[:, None] < position[None, :]
        order.new_epoch()
    p = 1 / size
    assert np.all(np.abs(counts - epochs * p) < 5 * np.sqrt(epochs * p * (1 - p)))
    off_diagonal = ~np.eye(size, dtype=bool)
    assert np.all(np.abs(before[off_diagonal] - epochs / 2) < 5 * np.sqrt(epochs / 4))


def test_orders_follow_the_seed_and_the_memory_is_that_of_a_batch():
    torch.manual_seed(11)
    first = EpochOrder(10**9).batch(5, 100)
    torch.manual_seed(11)
    again = EpochOrder(10**9).batch(5, 100)
    assert torch.equal(first, again) and first.shape == (100,)
    assert int(first.min()) >= 0 and int(first.max()) < 10**9 and len(set(first.tolist())) == 100


def test_a_size_below_one_is_refused():
    with pytest.raises(ValueError, match="EpochOrder: size must be positive, got 0"):
        EpochOrder(0)
