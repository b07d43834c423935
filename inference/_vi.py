"""Helpers shared by the variational engines (cavi, advi, svi, meanfield): argument conversion,
the stochastic-gradient loop over the shared driver, the final ELBO estimate, draws from q."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from numbers import Number
from typing import Any, Callable, Optional

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppgen.backend import to_backend, to_numpy
from ppgen.checkpoint import Checkpoint
from ppgen.driver import Progress, iterate
from ppgen.errors import EngineFailure
from ppgen.results import Estimate

from ._gradient_steps import OPTIMIZERS, GradientSteps


class Info(Mapping):
    """A read-only mapping for non-numeric entries of ``Result.diagnostics`` (node families,
    trained modules, the meanfield choice): reads like a dict, prints as ``key: value, ...``."""

    def __init__(self, entries: dict[str, Any]) -> None:
        self._entries = dict(entries)

    def __getitem__(self, key: str) -> Any:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return ", ".join(f"{key}: {value}" for key, value in self._entries.items())


def _as_array(value: Any) -> Any:
    """A list or tuple of numbers becomes a float64 array (data written as ``[1, 0, 1]``)."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Number) and not isinstance(v, bool) for v in value):
        return np.asarray(value, dtype=np.float64)
    return value


def pyro_arguments(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The model's arguments as torch tensors (float64 stays float64)."""
    args = tuple(_as_array(a) for a in args)
    kwargs = {k: _as_array(v) for k, v in kwargs.items()}
    return to_backend(args, "pyro"), to_backend(kwargs, "pyro")


def check_common_options(owner: str, num_steps: int, learning_rate: float, num_particles: int, optimizer: str, num_samples: int) -> None:
    """scikit-learn-style validation of the options every SVI engine shares."""
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"{owner}: num_steps must be a positive integer, got {num_steps!r}")
    if not (isinstance(learning_rate, Number) and learning_rate > 0):
        raise ValueError(f"{owner}: learning_rate must be a positive number, got {learning_rate!r}")
    if not isinstance(num_particles, (int, np.integer)) or num_particles < 1:
        raise ValueError(f"{owner}: num_particles must be a positive integer, got {num_particles!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"{owner}: optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"{owner}: num_samples must be a positive integer, got {num_samples!r}")


def run_svi(
    steps: GradientSteps,
    step_args: Callable[[int], tuple[tuple, dict]],
    num_steps: int,
    tol: float,
    progress: bool,
    name: str,
    checkpoint: Optional[Checkpoint] = None,
    key: str = "start 0",
) -> Progress:
    """``num_steps`` gradient steps through :func:`ppgen.driver.iterate`; the objective is each
    step's ELBO estimate (``step_args(i)`` gives the step's model arguments, so the caller can
    pass minibatches; a ``step_args.order`` dict, if any, is its state to checkpoint). A failed
    step leaves the parameters where it found them; the :class:`~ppgen.errors.EngineFailure`'s
    ``partial.state`` holds them, named as in ``Result.params``.

    With a ``checkpoint``, section ``key`` holds the parameter store (unconstrained values),
    the optimiser's state and the minibatch order beside the step count."""
    counter = {"step": 0}
    store = pyro.get_param_store()
    order = getattr(step_args, "order", {})

    def capture() -> dict[str, Any]:
        names = {id(tensor): name for name, tensor in store._params.items()}
        return {
            "params": {name: tensor.detach() for name, tensor in store._params.items()},
            "optimizer": steps.state_dict(names),
            "order": dict(order),
        }

    def restore(saved: dict[str, Any]) -> None:
        args, kwargs = step_args(0)
        with torch.no_grad(), poutine.block():  # creates every param site (values overwritten)
            guide_trace = poutine.trace(steps.guide).get_trace(*args, **kwargs)
            poutine.replay(steps.model, trace=guide_trace)(*args, **kwargs)
        missing = set(saved["params"]) - set(store._params)
        if missing:
            raise ValueError(f"{name}: the checkpoint holds param sites {sorted(missing)} this program does not create")
        with torch.no_grad():
            for param, value in saved["params"].items():
                store._params[param].copy_(value)
        steps.load_state_dict(saved["optimizer"], dict(store._params))
        order.update(saved["order"])
        counter["step"] = len(section.owner.sections[key]["objectives"])

    def step(state: None) -> tuple[None, float]:
        args, kwargs = step_args(counter["step"])
        counter["step"] += 1
        return state, steps.step(*args, **kwargs)

    section = checkpoint.section(key, capture, restore) if checkpoint is not None else None
    try:
        return iterate(
            step, None, num_steps=num_steps, tol=tol, progress=progress, name=name, objective="elbo", warn=tol > 0, checkpoint=section
        )
    except EngineFailure as failure:
        failure.partial.state = param_values(pyro.get_param_store())
        raise
    finally:
        steps.release_gradients()


def estimate_elbo(loss: Any, model: Callable, guide: Callable, args: tuple, kwargs: dict, num_evaluations: int) -> Estimate:
    """The ELBO as a mean of ``num_evaluations`` independent estimates, with its standard error.
    A stochastic lower bound of log p(x)."""
    with torch.no_grad():
        values = np.array([-float(loss.loss(model, guide, *args, **kwargs)) for _ in range(num_evaluations)])
    stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    return Estimate(float(values.mean()), stderr, "lower-bound")


def guide_sites(guide: Callable, args: tuple, kwargs: dict) -> tuple[dict[str, tuple], int]:
    """One run of the guide: the value shape of every site it samples, and its batch rank (the
    most batch dimensions of any of its sites, plates included), left of which draws stack."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
    shapes, rank = {}, 0
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site):
            shapes[name] = tuple(site["value"].shape)
            plates = [-frame.dim for frame in site["cond_indep_stack"] if frame.vectorized]
            rank = max([rank, len(site["fn"].batch_shape), *plates])
    return shapes, rank


def draw_from_guide(guide: Callable, args: tuple, kwargs: dict, num_samples: int, shapes: dict[str, tuple], batch_rank: int) -> dict[str, np.ndarray]:
    """``num_samples`` joint draws from q of the sites in ``shapes`` (site -> value shape), each
    array of shape (num_samples, *shape): one run of the guide under a plate of ``num_samples``
    left of its ``batch_rank`` batch dimensions, or one run per draw when the guide does not
    vectorise. Only the guide runs (the model is not needed to draw its own sites)."""
    with torch.no_grad(), poutine.block():
        try:
            with pyro.plate("_guide_draws", num_samples, dim=-batch_rank - 1):
                trace = poutine.trace(guide).get_trace(*args, **kwargs)
            return {name: to_numpy(trace.nodes[name]["value"]).reshape((num_samples,) + shape) for name, shape in shapes.items()}
        except (RuntimeError, ValueError, IndexError):
            traces = [poutine.trace(guide).get_trace(*args, **kwargs) for _ in range(num_samples)]
    return {name: np.stack([to_numpy(trace.nodes[name]["value"]).reshape(shape) for trace in traces]) for name, shape in shapes.items()}


def site_shapes(model: Callable, args: tuple, kwargs: dict) -> dict[str, tuple]:
    """Value shape of every sample site in one run of the model."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    return {name: tuple(site["value"].shape) for name, site in trace.nodes.items() if site["type"] == "sample"}


def param_values(store: Any) -> dict[str, np.ndarray]:
    """The parameter store's (constrained) values as NumPy arrays, with Pyro's AutoNormal
    parameters renamed ``"<site>.loc"`` / ``"<site>.scale"`` (unconstrained space)."""
    params = {}
    for name in store.keys():
        value = to_numpy(store[name])
        if name.startswith("AutoNormal.locs."):
            params[name[len("AutoNormal.locs."):] + ".loc"] = value
        elif name.startswith("AutoNormal.scales."):
            params[name[len("AutoNormal.scales."):] + ".scale"] = value
        else:
            params[name] = value
    return params
