"""Minibatches in a fresh random order every epoch, without an array of size N.

``torch.randperm(N)`` holds 8 N bytes (76 MB at N = 1e7) for a loop that only ever needs B
indices at a time. :class:`EpochOrder` computes the k-th minibatch of the epoch's permutation
directly: a keyed Feistel network permutes [0, 4^h) (4^h ≥ N, the smallest), and *cycle
walking* maps it onto [0, N) (apply the permutation again while the image is ≥ N; the orbit of
i < N comes back below N, so this is a bijection of [0, N); at most 4^h / N < 4 applications
on average). Black & Rogaway (2002), "Ciphers with arbitrary finite domains"; Luby & Rackoff
(1988): a Feistel network of ≥ 4 rounds with independent pseudo-random round functions is a
pseudo-random permutation. Each epoch draws new round keys from torch's generator, so the
orders follow the engine's seed.

Memory and time per minibatch: O(B), whatever N.
"""

from __future__ import annotations

import numpy as np
import torch

_ROUNDS = 6
_MULTIPLIER = 0x45D9F3B  # a well-tested 32-bit integer hash's; (< 2^27) · (< 2^32) fits int64


class EpochOrder:
    """Minibatch ``position`` of the current epoch's random permutation of range(``size``):
    ``order.batch(position, batch)`` = permutation[position · batch : (position + 1) · batch]
    (clipped at ``size``); :meth:`new_epoch` draws the next permutation."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"EpochOrder: size must be positive, got {size}")
        self.size = int(size)
        self.half_bits = max(1, ((self.size - 1).bit_length() + 1) // 2)
        self.new_epoch()

    def new_epoch(self) -> None:
        self.keys = [int(k) for k in torch.randint(0, 2**31 - 1, (_ROUNDS,), dtype=torch.int64)]

    def batch(self, position: int, batch: int) -> torch.Tensor:
        lo = position * batch
        return self.at(torch.arange(lo, min(lo + batch, self.size), dtype=torch.int64))

    def at(self, index: torch.Tensor) -> torch.Tensor:
        """permutation[index] for int64 ``index`` in [0, size)."""
        # in NumPy: a few dozen small integer operations, each cheaper there than in torch
        out = self._feistel(np.asarray(index, dtype=np.int64))
        outside = np.flatnonzero(out >= self.size)
        while outside.size:
            out[outside] = self._feistel(out[outside])
            outside = outside[out[outside] >= self.size]
        return torch.from_numpy(out)

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        mask = (1 << self.half_bits) - 1
        left, right = x >> self.half_bits, x & mask
        for key in self.keys:
            # a 32-bit integer hash of (right, key): every output bit depends on every input bit
            mixed = (right ^ key) & 0xFFFFFFFF
            mixed = ((mixed ^ (mixed >> 16)) * _MULTIPLIER) & 0xFFFFFFFF
            mixed = ((mixed ^ (mixed >> 16)) * _MULTIPLIER) & 0xFFFFFFFF
            left, right = right, left ^ ((mixed ^ (mixed >> 16)) & mask)
        return (left << self.half_bits) | right
