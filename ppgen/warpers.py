"""Sampling warpers: processors on the logits of a finite discrete site, applied in ``generate``.

Each warper is a small function object ``logits (..., K) -> logits (..., K)`` that never samples;
a removed value gets logit −∞, so the site then draws from the renormalised truncated
distribution. :func:`warpers` composes them in one documented order, Hugging Face
transformers' (``generation/logits_process.py``; Holtzman et al. 2020 for top-p, Nguyen et al.
2024 for min-p):

1. temperature T:  ℓ ← ℓ / T;
2. top-k:          keep the k largest logits (all values tied with the k-th stay);
3. top-p (nucleus): keep the smallest set of largest-probability values whose mass reaches p
   (ascending sort; a value is removed when the mass of it and everything below is ≤ 1 − p);
4. min-p:          keep values with probability ≥ m · max_j p_j.

At least one value (the most probable) always survives. :class:`Warp` is the effect handler
that applies a list of warpers to every sampled finite discrete site of a program (Categorical,
OneHotCategorical, Bernoulli as a two-value site); observed and continuous sites are left alone.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Optional, Sequence

import pyro.distributions as pdist
import torch
from pyro.poutine.messenger import Messenger

__all__ = ["MinP", "Temperature", "TopK", "TopP", "Warp", "warpers"]

Warper = Callable[[torch.Tensor], torch.Tensor]


class Temperature:
    """ℓ / T, T > 0: T < 1 sharpens, T > 1 flattens."""

    def __init__(self, temperature: float) -> None:
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature


class TopK:
    """Keep the ``top_k`` largest logits (and any tied with the k-th); k ≥ 1."""

    def __init__(self, top_k: int) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        self.top_k = int(top_k)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        k = min(self.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, -float("inf"))


class TopP:
    """Nucleus: keep the most probable values until their mass reaches ``top_p`` ∈ (0, 1]."""

    def __init__(self, top_p: float) -> None:
        if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
        self.top_p = float(top_p)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        ascending, order = torch.sort(logits, dim=-1, descending=False)
        mass_up_to = ascending.softmax(-1).cumsum(-1)
        remove = mass_up_to <= 1 - self.top_p
        remove[..., -1] = False  # the most probable value always stays
        return logits.masked_fill(remove.scatter(-1, order, remove), -float("inf"))


class MinP:
    """Keep values whose probability is at least ``min_p`` ∈ [0, 1) times the largest one's."""

    def __init__(self, min_p: float) -> None:
        if isinstance(min_p, bool) or not isinstance(min_p, numbers.Real) or not 0 <= min_p < 1:
            raise ValueError(f"min_p must be a number in [0, 1), got {min_p!r}")
        self.min_p = float(min_p)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        # in log space: log p_i < log m + max_j log p_j  <=>  p_i < m · max_j p_j
        log_probs = logits.log_softmax(-1)
        threshold = log_probs.amax(-1, keepdim=True) + torch.log(torch.tensor(self.min_p, dtype=logits.dtype))
        return logits.masked_fill(log_probs < threshold, -float("inf"))


def warpers(
    temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None, min_p: Optional[float] = None
) -> list[Warper]:
    """The warpers asked for, in the order temperature, top-k, top-p, min-p (no-op ones left out:
    T = 1, top_p = 1, min_p = 0). Bad values raise ``ValueError`` naming the option."""
    chain: list[Warper] = []
    for option, make, neutral in ((temperature, Temperature, 1.0), (top_k, TopK, None), (top_p, TopP, 1.0), (min_p, MinP, 0.0)):
        if option is None:
            continue
        warper = make(option)
        if option != neutral:
            chain.append(warper)
    return chain


def _apply(chain: Sequence[Warper], logits: torch.Tensor) -> torch.Tensor:
    for warper in chain:
        logits = warper(logits)
    return logits


def warp_distribution(fn: Any, chain: Sequence[Warper]) -> Optional[Any]:
    """``fn`` with its logits warped, for a finite discrete distribution; None for any other."""
    if isinstance(fn, pdist.Independent):
        inner = warp_distribution(fn.base_dist, chain)
        return None if inner is None else inner.to_event(fn.reinterpreted_batch_ndims)
    if isinstance(fn, (pdist.Categorical, pdist.OneHotCategorical)):
        return type(fn)(logits=_apply(chain, fn.logits))
    if isinstance(fn, pdist.Bernoulli):
        two = torch.stack([torch.zeros_like(fn.logits), fn.logits], -1)
        return pdist.Bernoulli(probs=_apply(chain, two).softmax(-1)[..., 1])
    return None


class Warp(Messenger):
    """Applies ``chain`` to the logits of every sampled finite discrete site of the program."""

    def __init__(self, chain: Sequence[Warper]) -> None:
        super().__init__()
        self.chain = list(chain)

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or not self.chain:
            return
        warped = warp_distribution(msg["fn"], self.chain)
        if warped is not None:
            msg["fn"] = warped
