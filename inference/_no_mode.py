"""Telling an optimum from a run to the boundary: does a mode exist at all?

MAP and MLE climb log p in unconstrained coordinates u, with each constrained value
θ = T(u), T = ``biject_to(support)``. When the density is unbounded at the edge of a support
(the centred eight schools: log p(θ, μ, τ | y) ~ −J log τ as τ → 0 with every θ_j → μ) or
has its supremum there, no mode exists inside the support: the optimiser runs u_i towards
±∞, and where it stops (a stalled line search at τ = 1e-17, or an overflow to NaN) depends on
floating-point details of the machine. What does not depend on them is the *condition*: the
objective still rising as u_i moves out. Two ways to see it, for every element of a site whose
support has a boundary (not the real line) and that moved at least ``MOVED`` units from its
start:

* **far out** (moved ``FAR`` units or more: a scale 3·10⁶-fold from its start, an interval
  value within 3·10⁻⁷ of an end), the objective gained more than ``GAIN`` over the path's last
  ``BACK`` units of u_i. Evaluations that far out are numerically unreliable, so the path the
  optimiser took is the evidence; a supremum on the boundary that the objective approaches
  (the all-heads coin's log-likelihood, ~ −n e^{−u}) gains far less than ``GAIN`` there.
* **nearer**, the profile max_{others} log p with u_i pushed ``STEP`` units further out is
  higher than with u_i where it ended (both re-optimised from the end point): the objective is
  still rising there; at a mode it falls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch.distributions import constraints

MOVED = 3.0
FAR = 15.0
BACK = 5.0
STEP = 2.0
GAIN = 1e-3
PROFILE_ITERATIONS = 50


@dataclass(frozen=True)
class Variable:
    """An unconstrained optimisation variable: the site it belongs to, the tensor the optimiser
    moves, and the site's support (None for a support without a boundary, the real line)."""

    site: str
    tensor: torch.Tensor
    support: Optional[constraints.Constraint]


@dataclass(frozen=True)
class Runaway:
    """An element of a site that ran towards the boundary of its support with the objective
    still rising: ``gain`` over the last stretch of u, which moved in ``direction`` (±1)."""

    site: str
    index: tuple[int, ...]
    direction: float
    gain: float


def has_boundary(support: constraints.Constraint) -> bool:
    """Whether a support has an edge a variable can run to (anything but the real line)."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return not isinstance(support, type(constraints.real))


def find_runaway(
    variables: list[Variable],
    path: list[tuple[list[torch.Tensor], float]],
    log_objective: Callable[[], torch.Tensor],
) -> Optional[Runaway]:
    """The first element running to its boundary with the objective rising, or None.

    ``path`` holds (values of every variable, objective) at the start and after each
    iteration, finite objectives only; the variables hold the last point of ``path`` on entry
    and are restored to it on exit.
    """
    if len(path) < 2:
        return None
    start, end = path[0][0], path[-1][0]
    objective_end = path[-1][1]
    threshold = GAIN + 1e-9 * abs(objective_end)
    try:
        for position, variable in enumerate(variables):
            if variable.support is None or not has_boundary(variable.support):
                continue
            moved = end[position] - start[position]
            for flat in torch.nonzero(moved.abs().reshape(-1) >= MOVED).reshape(-1).tolist():
                index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), moved.shape)) if moved.dim() else ()
                direction = math.copysign(1.0, float(moved.reshape(-1)[flat]))
                if abs(float(moved.reshape(-1)[flat])) >= FAR:
                    gain = objective_end - _objective_back(path, position, flat, direction)
                else:
                    gain = _profile_gain(variables, end, position, flat, direction, log_objective)
                if gain > threshold:
                    return Runaway(variable.site, index, direction, gain)
    finally:
        _restore(variables, end)
    return None


def _objective_back(path: list[tuple[list[torch.Tensor], float]], position: int, flat: int, direction: float) -> float:
    """The objective at the last point of the path at least ``BACK`` units behind the end
    along element ``flat`` of variable ``position`` (the start if there is none)."""
    final = float(path[-1][0][position].reshape(-1)[flat])
    for values, objective in reversed(path):
        if direction * (final - float(values[position].reshape(-1)[flat])) >= BACK:
            return objective
    return path[0][1]


def _profile_gain(
    variables: list[Variable],
    end: list[torch.Tensor],
    position: int,
    flat: int,
    direction: float,
    log_objective: Callable[[], torch.Tensor],
) -> float:
    """max log p with the element pushed ``STEP`` further out, minus the same with it at the
    end point; both maximise over the other coordinates from the end point. NaN if either
    maximisation leaves the finite region (no evidence either way)."""
    at_end = _profile(variables, end, position, flat, 0.0, log_objective)
    further = _profile(variables, end, position, flat, direction * STEP, log_objective)
    return further - at_end if math.isfinite(at_end) and math.isfinite(further) else float("nan")


def _profile(
    variables: list[Variable],
    end: list[torch.Tensor],
    position: int,
    flat: int,
    shift: float,
    log_objective: Callable[[], torch.Tensor],
) -> float:
    _restore(variables, end)
    held = variables[position].tensor
    with torch.no_grad():
        held.view(-1)[flat] += shift
    tensors = [v.tensor for v in variables]
    optimizer = torch.optim.LBFGS(
        tensors, lr=1.0, max_iter=PROFILE_ITERATIONS, line_search_fn="strong_wolfe",
        tolerance_grad=1e-12, tolerance_change=1e-14, history_size=20,
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = -log_objective()
        loss.backward()
        if held.grad is not None:
            held.grad.view(-1)[flat] = 0.0  # the element stays where it was put
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return float(log_objective())


def _restore(variables: list[Variable], values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for variable, value in zip(variables, values):
            variable.tensor.copy_(value)
            variable.tensor.grad = None
