"""Gradient steps on a Pyro ELBO with one torch optimiser: the inner loop of ``svi`` and ``advi``.

Each step estimates the loss −ELBO(φ, θ) and its gradient with the ELBO's ``loss_and_grads``
and moves the parameters the step touched,

    (φ, θ) ← (φ, θ) − Adam(∇_{φ,θ} [−ELBO]),

exactly as :class:`pyro.infer.SVI` does, with less bookkeeping per step. Pyro's ``SVI`` records
a param-only trace of every step, keeps one torch optimiser per parameter tensor (12 optimiser
calls per step for a VAE with three layers per network) and zeroes gradients by allocating new
zero tensors after every step. Here a light handler collects the touched parameters, a single
optimiser holds every parameter seen so far (new ones join as they appear, e.g. the guide's on
the first step), and the gradient buffers are zeroed in place just before each backward pass
and reused: no per-step allocation of parameter-sized buffers, which the C allocator may serve
with fresh pages from the OS (on the digits VAE, about a thousand fewer page faults per step).
Parameters a step does not touch get no update (their gradient is set aside for the step).
Adam acts element by element, so the updates are the same as ``SVI``'s, bit for bit.

Pyro's validation (distribution arguments and values in their support, site shapes, model and
guide agreeing) runs on the first step only, as the caller has it set: it checks the program,
which is the same at every step (the data were checked by ``inspect``). On later steps a
parameter leaving its support shows as a non-finite ELBO. A step whose ELBO or gradient is not
finite is not applied: it raises :class:`~ppgen.driver.NonFiniteStep` naming the sites to blame
(:mod:`ppgen.inference._nonfinite`), which the driver reports as an
:class:`~ppgen.errors.EngineFailure` keeping the parameters from before the step.
"""

from __future__ import annotations

import copy
import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Optional

import pyro
import torch
from pyro.optim.clipped_adam import ClippedAdam
from pyro.poutine.messenger import Messenger

from ._distributed import GlobalBatchNoise, World
from ._nonfinite import elbo_fault, nonfinite_gradients

OPTIMIZERS = ("adam", "clipped_adam")


class TouchedParameters(Messenger):
    """Collects the unconstrained tensors behind the ``param`` sites a run touches, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tensors: dict[int, torch.Tensor] = {}

    def _pyro_post_param(self, msg: dict) -> None:
        unconstrained = msg["value"].unconstrained()
        self.tensors.setdefault(id(unconstrained), unconstrained)


def copy_modules(value: Any, copies: dict[int, torch.nn.Module]) -> Any:
    """``value`` with every torch module replaced by a (shared per original) deep copy;
    ``copies`` maps id(original) -> copy and is filled in (dicts, lists, tuples are walked)."""
    if isinstance(value, torch.nn.Module):
        if id(value) not in copies:
            copies[id(value)] = copy.deepcopy(value)
        return copies[id(value)]
    if isinstance(value, dict):
        return {k: copy_modules(v, copies) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(copy_modules(v, copies) for v in value)
    return value


def named_modules(guide: Optional[Callable], copies: dict, args: tuple, kwargs: dict, store: Any) -> dict[str, torch.nn.Module]:
    """Trained modules by their ``ppgen.module`` names: the encoder (and flow) of an amortised guide,
    and every module among the arguments (or their ``copies``), matched to its parameters in
    the param ``store``."""
    out = {}
    amortized = getattr(guide, "amortized", None)
    if amortized is not None:
        out[amortized.name] = amortized.encoder
        if amortized.flow is not None:
            out[amortized.flow_name] = amortized.flow
    candidates = list(copies.values()) or [v for v in list(args) + list(kwargs.values()) if isinstance(v, torch.nn.Module)]
    pointers = {store._params[key].data_ptr(): key.split("$$$")[0] for key in store.keys() if "$$$" in key}
    for module in candidates:
        for parameter in module.parameters():
            name = pointers.get(parameter.data_ptr())
            if name is not None:
                out.setdefault(name, module)
                break
    return out


def sliced(value: Any, index: torch.Tensor, size: int) -> Any:
    """``value[index]`` for a tensor whose leading dimension is the data plate's ``size`` (a
    minibatch of it); any other value unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == size:
        return value[index]
    return value


def optimizer_factory(name: str, learning_rate: float, clip_norm: float = 10.0) -> Callable[[list[torch.Tensor]], torch.optim.Optimizer]:
    """A constructor of torch's Adam or Pyro's ClippedAdam (each gradient element clipped to
    ±``clip_norm``) over a list of tensors."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    if name == "clipped_adam":
        return lambda tensors: ClippedAdam(tensors, lr=learning_rate, clip_norm=clip_norm)
    return lambda tensors: torch.optim.Adam(tensors, lr=learning_rate)


class GradientSteps:
    """Stochastic gradient ascent on ``loss`` (a Pyro ELBO) for ``model`` and ``guide``.

    ``step(*args, **kwargs)`` takes one step with the given model arguments (a minibatch, say)
    and returns that step's ELBO estimate. Under torch.distributed (``world``, each rank with its
    shard of the step's data) the gradients and the ELBO are averaged over the ranks before the
    update, and the ranks' random states are re-synchronised when ``noise`` (the guide's
    :class:`~ppgen.inference._distributed.GlobalBatchNoise`) had to draw a site locally.
    """

    def __init__(
        self, model: Callable, guide: Callable, loss: Any, make_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
        world: Optional[World] = None, noise: Optional[GlobalBatchNoise] = None,
    ) -> None:
        self.model = model
        self.guide = guide
        self.loss = loss
        self.world = world
        self.noise = noise
        self._make_optimizer = make_optimizer
        self._optimizer: Optional[torch.optim.Optimizer] = None
        self._known: set[int] = set()
        self._validated = False

    def step(self, *args: Any, **kwargs: Any) -> float:
        if self._optimizer is not None:
            self._optimizer.zero_grad(set_to_none=False)
        touched = TouchedParameters()
        rng_state = torch.get_rng_state()  # to draw again what this step drew, should it fail
        with touched, self._validation():
            loss = float(self.loss.loss_and_grads(self.model, self.guide, *args, **kwargs))
        self._validated = True
        if self.world is not None:
            loss = self._average_over_ranks(loss, touched)
        self._check_finite(loss, touched, args, kwargs, rng_state)
        self._include(touched.tensors)
        if self._optimizer is not None:
            if len(touched.tensors) < len(self._known):
                self._set_aside_untouched(touched.tensors)
            self._optimizer.step()
        return -loss

    def _average_over_ranks(self, loss: float, touched: TouchedParameters) -> float:
        """The loss and the touched parameters' gradients averaged over the ranks (each rank
        touches the same parameters: the program is the same)."""
        self.world.average([tensor.grad for tensor in touched.tensors.values() if tensor.grad is not None])
        if self.noise is not None and self.noise.inexact:
            self.world.synchronise_rng()
            self.noise.inexact = False
        return self.world.mean(loss)

    def _check_finite(self, loss: float, touched: TouchedParameters, args: tuple, kwargs: dict, rng_state: torch.Tensor) -> None:
        """Raises :class:`~ppgen.driver.NonFiniteStep`, naming the sites to blame, when the loss
        or a touched parameter's gradient is not finite: the update is not applied, so the
        parameters stay where this step evaluated them."""
        if math.isfinite(loss) and not nonfinite_gradients(touched.tensors):
            return
        names = {id(tensor): name for name, tensor in pyro.get_param_store()._params.items()}
        parameters = {names.get(key, f"<unnamed {index}>"): tensor for index, (key, tensor) in enumerate(touched.tensors.items())}
        raise elbo_fault(self.model, self.guide, args, kwargs, loss, parameters, rng_state)

    def state_dict(self, names: dict[int, str]) -> dict[str, Any]:
        """The optimiser's state (Adam's moments and step counts), its parameter groups as
        lists of parameter-store names (``names``: id of an unconstrained tensor -> its name).
        Tensors no longer in the store are left out: a guide that sets itself up on the first
        step (``AutoNormal`` without a prior run) replaces the tensors that step touched, and
        they are never stepped again."""
        if self._optimizer is None:
            return {"groups": [], "optimizer": None}
        full = self._optimizer.state_dict()
        groups, kept_groups, kept_state = [], [], {}
        for group, saved in zip(self._optimizer.param_groups, full["param_groups"]):
            kept = [(names[id(tensor)], index) for tensor, index in zip(group["params"], saved["params"]) if id(tensor) in names]
            if not kept:
                continue
            groups.append([name for name, _ in kept])
            renumbered = list(range(len(kept_state), len(kept_state) + len(kept)))
            kept_state.update({new: full["state"][old] for new, (_, old) in zip(renumbered, kept) if old in full["state"]})
            kept_groups.append({**saved, "params": renumbered})
        return {"groups": groups, "optimizer": {"state": kept_state, "param_groups": kept_groups}}

    def load_state_dict(self, saved: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Rebuilds the optimiser over ``tensors`` (name -> unconstrained tensor) as
        :meth:`state_dict` recorded it, group by group, and loads its state."""
        if saved["optimizer"] is None:
            return
        for group in saved["groups"]:
            self._include({id(tensors[name]): tensors[name] for name in group})
        self._optimizer.load_state_dict(saved["optimizer"])
        self._validated = True

    def _validation(self) -> AbstractContextManager:
        """Pyro's checks as set for the first step, off for the later ones."""
        return pyro.validation_enabled(False) if self._validated else nullcontext()

    def release_gradients(self) -> None:
        """Drops the gradient buffers (after the last step), leaving the parameters as Pyro's
        ``SVI`` leaves them: without a pending gradient."""
        if self._optimizer is not None:
            self._optimizer.zero_grad(set_to_none=True)

    def _set_aside_untouched(self, touched: dict[int, torch.Tensor]) -> None:
        """Removes the gradient of every known parameter this step did not touch, so the
        optimiser skips it (as ``SVI``, which steps only the parameters of the step's trace)."""
        for group in self._optimizer.param_groups:
            for tensor in group["params"]:
                if id(tensor) not in touched:
                    tensor.grad = None

    def _include(self, tensors: dict[int, torch.Tensor]) -> None:
        """Adds tensors not seen before to the optimiser (created on the first touched ones)."""
        new = [tensor for key, tensor in tensors.items() if key not in self._known]
        if not new:
            return
        self._known.update(id(tensor) for tensor in new)
        if self._optimizer is None:
            self._optimizer = self._make_optimizer(new)
        else:
            self._optimizer.add_param_group({"params": new})
