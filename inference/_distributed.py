"""Data-parallel gradient steps under ``torchrun``: each rank takes its shard of the global batch.

When ``torch.distributed`` is initialised with more than one process (or ``torchrun`` has set
``WORLD_SIZE``, ``RANK`` and ``MASTER_ADDR``, in which case :func:`world` initialises the gloo
backend itself), the gradient engines (svi, mle, map, adversarial) split every step's global
batch of B data of the data plate into P contiguous shards of B / P, one per rank, and average
the gradients over the ranks (DistributedDataParallel's semantics). With the objective

    L = (N / B) Σ_{i ∈ batch} ℓ_i + g        (g: the terms outside the data plate)

rank r evaluates L_r = (N P / B) Σ_{i ∈ shard r} ℓ_i + g, so that

    (1 / P) Σ_r L_r = L   and   (1 / P) Σ_r ∇L_r = ∇L:

the averaged loss and gradient are the single-process ones at the same global batch. A loss
that is a mean over the batch (the adversarial engine's critic and generator losses, the WGAN-GP
penalty included) needs no weight: the mean of the P shard means is the batch mean.

Randomness: every rank holds the same seed, so whatever is drawn once per step (the epoch's
permutation of the data, the guide's draws of global latents) is the same on all ranks. A
per-datum draw of the guide is made for the whole global batch and sliced to the rank's shard
(:class:`GlobalBatchNoise`), so rank r uses exactly the noise the single process uses for its
data, and every rank's random stream advances as the single process's does; the program's own
draws of its observed sites (a GAN's x̃ = g_θ(ε) with its observation noise) are made the same
way, and per-datum numbers an engine draws itself (the WGAN-GP interpolation weights) go through
:func:`draw_for_batch`, as do the diffusion chain ELBO's per-datum steps t and x_t noise.
This is exact for distributions whose sampler consumes random numbers independently of their
parameters (all location-scale families: Normal, Laplace, Cauchy, Gumbel, Uniform, their
transforms; the multivariate normal; a Delta draws none); for the
others (Gamma, Beta, Dirichlet: rejection samplers) the draws are still exact draws of each
datum's q, but not the single process's, and the ranks' random states are re-synchronised from
rank 0 after such a step so that global draws stay shared; likewise after a step in which code
run on the rank's rows drew random numbers of its own (a network's noise layers,
:func:`flag_local_draws`).

Only rank 0 shows a progress bar and writes checkpoints. Nothing here runs in a single process:
:func:`world` is None there, after two cheap checks.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

import pyro
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

Drawn = TypeVar("Drawn", torch.Tensor, tuple)


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

    def broadcast(self, tensors: Iterable[torch.Tensor]) -> None:
        """Every rank takes rank 0's values of ``tensors`` (in place), as DistributedDataParallel
        does when it wraps a module: ranks that built their networks differently start equal."""
        with torch.no_grad():
            for tensor in tensors:
                torch.distributed.broadcast(tensor.data, src=0)


@dataclass(frozen=True)
class Shard:
    """The rank's rows [lo, hi) of a step's global batch of ``batch`` data."""

    batch: int
    lo: int
    hi: int

    def draw(self, sample: Callable[[int], Drawn]) -> Drawn:
        """The rank's rows of ``sample(batch)``: a draw made for the global batch from the random
        stream every rank shares (so rank r keeps exactly what one process draws for its data).
        ``sample`` returns a tensor, or a tuple of tensors, with the batch as leading dimension."""
        drawn = sample(self.batch)
        if isinstance(drawn, tuple):
            return tuple(value[self.lo:self.hi] for value in drawn)
        return drawn[self.lo:self.hi]


def draw_for_batch(sample: Callable[[int], Drawn], num_data: int, shard: Optional[Shard]) -> Drawn:
    """``sample(num_data)`` in a single process; under torch.distributed (``shard``) the rank's
    rows of the draw for the global batch (:meth:`Shard.draw`). The hook for random numbers an
    engine draws per datum outside the program's sample sites (a time step, a mixing weight)."""
    if shard is None:
        return sample(num_data)
    if shard.hi - shard.lo != num_data:
        raise ValueError(f"a shard of {shard.hi - shard.lo} data was given {num_data} data to draw for")
    return shard.draw(sample)


@contextmanager
def flag_local_draws(noise: Optional["GlobalBatchNoise"]) -> Iterator[None]:
    """Around code run on the rank's data that may draw random numbers of its own (a network's
    dropout or noise layers): if it drew any, ``noise.inexact`` is set, so that the ranks re-synchronise their
    random streams after the step (those draws are valid, but not the single process's). Does
    nothing in a single process (``noise`` None)."""
    if noise is None:
        yield
        return
    state = torch.get_rng_state()
    yield
    if not torch.equal(state, torch.get_rng_state()):
        noise.inexact = True


class ShardedBatch:
    """What a data-parallel engine needs on one rank: its rows of every step's global batch of
    ``batch`` data of plate ``plate``, the program's per-datum draws made for the global batch
    (:class:`GlobalBatchNoise`), and the gradient average that closes each step.

    The engine's loss on the shard must be the mean over the shard's data of a per-datum loss
    (as a GAN's losses are), or a sum weighted N P / B (as the ELBO under ``_scaled``): then the
    mean over the ranks of the shards' losses and gradients is the single-process one.
    """

    def __init__(self, world: World, plate: str, batch: int, owner: str) -> None:
        self.world = world
        self.noise = GlobalBatchNoise(plate, batch, *world.shard(batch, owner))
        self.shard = self.noise.shard

    def rows(self, index: Optional[torch.Tensor]) -> torch.Tensor:
        """The rank's data indices of the global batch ``index`` (None: the data 0, …, B − 1)."""
        if index is None:
            index = torch.arange(self.shard.batch)
        return index[self.shard.lo:self.shard.hi]

    def average(self, loss: float, tensors: Iterable[torch.Tensor]) -> float:
        """The mean over the ranks of ``loss``; the gradients of ``tensors`` replaced (in place)
        by their means, in one all-reduce. The ranks' random states are re-synchronised if the
        step had to draw a site locally (``noise.inexact``)."""
        self.world.average([tensor.grad for tensor in tensors if tensor.grad is not None])
        if self.noise.inexact:
            self.world.synchronise_rng()
            self.noise.inexact = False
        return self.world.mean(loss)


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

    @property
    def shard(self) -> Shard:
        """The rank's rows of the global batch."""
        return Shard(self.batch, self.lo, self.hi)

    def around(self, program: Callable) -> Callable:
        """``program`` run under this handler."""

        def drawn_globally(*args: Any, **kwargs: Any) -> Any:
            with self:
                return program(*args, **kwargs)

        return drawn_globally

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None or msg["infer"].get("enumerate") or site_is_subsample(msg):
            return  # (an inner plate's subsample site sits inside the data plate too: no draw to share)
        frame = next((f for f in msg["cond_indep_stack"] if f.name == self.plate and f.vectorized), None)
        if frame is None:
            return
        fn = msg["fn"]
        if _is_delta(fn):
            return  # a Delta's draw is its value: no random numbers to share
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
        if isinstance(fn, torch.distributions.MultivariateNormal):
            return self._draw_multivariate_normal(fn, axis, reparameterized)
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

    def _draw_multivariate_normal(self, fn: torch.distributions.MultivariateNormal, axis: int, reparameterized: bool) -> Optional[torch.Tensor]:
        """μ + L ε as ``MultivariateNormal.rsample`` draws it, with ε ~ N(0, I) drawn for the
        global batch and the shard's rows of it kept (``axis``: the plate's axis of a value)."""
        shape = list(fn.batch_shape + fn.event_shape)
        if -axis > len(shape) or shape[axis] != self.hi - self.lo:
            return None
        shape[axis] = self.batch
        epsilon = torch.randn(shape, dtype=fn.loc.dtype, device=fn.loc.device).narrow(len(shape) + axis, self.lo, self.hi - self.lo)
        draw = fn.loc + (fn.scale_tril @ epsilon.unsqueeze(-1)).squeeze(-1)
        return draw if reparameterized else draw.detach()

    def _widen(self, parameter: torch.Tensor, axis: int) -> torch.Tensor:
        """``parameter`` along ``axis`` (from the right) grown from the shard's b to B entries,
        its own values at [lo, hi) (so gradients reach them) and the first one elsewhere."""
        if parameter.dim() < -axis or parameter.shape[axis] == 1:
            return parameter
        local = self.hi - self.lo
        positions = (torch.arange(self.batch) - self.lo).clamp(0, local - 1)
        positions[: self.lo] = 0
        return parameter.index_select(parameter.dim() + axis, positions)


def _is_delta(fn: Any) -> bool:
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return isinstance(fn, pyro.distributions.Delta)
