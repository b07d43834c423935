"""Data-parallel gradient steps under ``torchrun``: each rank takes its shard of the global batch.

When ``torch.distributed`` is initialised with more than one process (or ``torchrun`` has set
``WORLD_SIZE``, ``RANK`` and ``MASTER_ADDR``, in which case :func:`world` initialises the gloo
backend itself), the gradient engines (svi, mle, map) split every step's global batch of B data
of the data plate into P contiguous shards of B / P, one per rank, and average the gradients
over the ranks (DistributedDataParallel's semantics). With the objective

    L = (N / B) Σ_{i ∈ batch} ℓ_i + g        (g: the terms outside the data plate)

rank r evaluates L_r = (N P / B) Σ_{i ∈ shard r} ℓ_i + g, so that

    (1 / P) Σ_r L_r = L   and   (1 / P) Σ_r ∇L_r = ∇L:

the averaged loss and gradient are the single-process ones at the same global batch.

Randomness: every rank holds the same seed, so whatever is drawn once per step (the epoch's
permutation of the data, the guide's draws of global latents) is the same on all ranks. A
per-datum draw of the guide is made for the whole global batch and sliced to the rank's shard
(:class:`GlobalBatchNoise`), so rank r uses exactly the noise the single process uses for its
data, and every rank's random stream advances as the single process's does. This is exact for
distributions whose sampler consumes random numbers independently of their parameters (all
location-scale families: Normal, Laplace, Cauchy, Gumbel, Uniform, their transforms); for the
others (Gamma, Beta, Dirichlet: rejection samplers) the draws are still exact draws of each
datum's q, but not the single process's, and the ranks' random states are re-synchronised from
rank 0 after such a step so that global draws stay shared.

Only rank 0 shows a progress bar and writes checkpoints. Nothing here runs in a single process:
:func:`world` is None there, after two cheap checks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from pyro.poutine.messenger import Messenger


@dataclass(frozen=True)
class World:
    """This process's rank and the number of processes."""

    rank: int
    size: int

    def shard(self, batch: int, owner: str) -> tuple[int, int]:
        """The rank's slice [lo, hi) of a global batch of ``batch`` data (B / P each)."""
        if batch % self.size:
            raise ValueError(
                f"{owner}: the global batch of {batch} data does not split evenly over {self.size} processes "
                f"(torch.distributed); choose subsample_size (or the data size) divisible by {self.size}"
            )
        local = batch // self.size
        return self.rank * local, (self.rank + 1) * local

    def average(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor (in place) by its mean over the ranks: one all-reduce."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        flat /= self.size
        offset = 0
        for tensor in tensors:
            tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()

    def mean(self, value: float) -> float:
        """The mean of a number over the ranks (float64, whatever the default dtype)."""
        total = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(total)
        return float(total) / self.size

    def synchronise_rng(self) -> None:
        """Every rank takes rank 0's torch random state."""
        state = torch.get_rng_state()
        torch.distributed.broadcast(state, src=0)
        torch.set_rng_state(state)


def world() -> Optional[World]:
    """This process's place among several data-parallel processes, or None in a single process.

    Initialises the gloo process group from ``torchrun``'s environment (``WORLD_SIZE`` > 1,
    ``MASTER_ADDR``) when the user has not initialised one."""
    if not torch.distributed.is_available():
        return None
    if not torch.distributed.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
            return None
        torch.distributed.init_process_group("gloo")
    size = torch.distributed.get_world_size()
    return World(torch.distributed.get_rank(), size) if size > 1 else None


def is_writer() -> bool:
    """True in a single process and on rank 0 (the one that prints and writes files)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return True
    return torch.distributed.get_rank() == 0


class GlobalBatchNoise(Messenger):
    """Draws each unobserved site inside plate ``plate`` for the global batch and keeps the
    rank's slice [lo, hi) of it (see the module docstring).

    A site's distribution has the shard's b = hi − lo data along the plate's dimension; its
    parameters are laid into a global-batch-sized copy (positions outside the shard repeat the
    shard's first datum), sampled once, and sliced. Sites whose distribution cannot be widened
    this way (multivariate leaves, unknown wrappers) are drawn locally, and
    ``self.inexact`` is set so the caller re-synchronises the ranks' random states.
    """

    def __init__(self, plate: str, batch: int, lo: int, hi: int) -> None:
        super().__init__()
        self.plate, self.batch, self.lo, self.hi = plate, batch, lo, hi
        self.inexact = False

    def around(self, program: Callable) -> Callable:
        """``program`` run under this handler."""

        def drawn_globally(*args: Any, **kwargs: Any) -> Any:
            with self:
                return program(*args, **kwargs)

        return drawn_globally

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None or msg["infer"].get("enumerate"):
            return
        frame = next((f for f in msg["cond_indep_stack"] if f.name == self.plate and f.vectorized), None)
        if frame is None:
            return
        fn = msg["fn"]
        axis = frame.dim - len(fn.event_shape)  # the plate's axis of a value, counted from the right
        value = self._draw(fn, axis, bool(fn.has_rsample))
        if value is None:
            self.inexact = True
            return
        msg["value"] = value

    def _draw(self, fn: Any, axis: int, reparameterized: bool) -> Optional[torch.Tensor]:
        if isinstance(fn, torch.distributions.Independent):
            return self._draw(fn.base_dist, axis, reparameterized)
        if isinstance(fn, torch.distributions.TransformedDistribution):
            if fn.base_dist.event_shape != fn.event_shape:
                return None
            base = self._draw(fn.base_dist, axis, reparameterized)
            if base is None:
                return None
            for transform in fn.transforms:
                base = transform(base)
            return base
        if fn.event_shape != torch.Size() or -axis > len(fn.batch_shape) or fn.batch_shape[axis] != self.hi - self.lo:
            return None
        names = [name for name in fn.arg_constraints if isinstance(fn.__dict__.get(name), torch.Tensor)]
        widened = {name: self._widen(fn.__dict__[name], axis) for name in names}
        try:
            wide = type(fn)(**widened, validate_args=False)
        except (TypeError, ValueError, NotImplementedError):
            return None
        if wide.batch_shape[axis] != self.batch:
            return None
        draw = wide.rsample() if reparameterized else wide.sample()
        return draw.narrow(draw.dim() + axis, self.lo, self.hi - self.lo)

    def _widen(self, parameter: torch.Tensor, axis: int) -> torch.Tensor:
        """``parameter`` along ``axis`` (from the right) grown from the shard's b to B entries,
        its own values at [lo, hi) (so gradients reach them) and the first one elsewhere."""
        if parameter.dim() < -axis or parameter.shape[axis] == 1:
            return parameter
        local = self.hi - self.lo
        positions = (torch.arange(self.batch) - self.lo).clamp(0, local - 1)
        positions[: self.lo] = 0
        return parameter.index_select(parameter.dim() + axis, positions)
