"""The one loop every iterative engine (EM, CAVI, SVI, MAP/MLE) runs through.

An engine supplies ``step(state) -> (state, objective)``, blackjax-style; :func:`iterate` owns
the iteration count, the convergence test on the objective, the progress bar, and what happens
when a run is interrupted (Ctrl-C keeps the state reached so far) or fails (the error carries
the last good state), and, given a checkpoint section (:mod:`ppgen.checkpoint`), saving and
resuming the loop.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, TypeVar

from tqdm.auto import tqdm

from ppgen.checkpoint import Section
from ppgen.errors import ConvergenceWarning, EngineFailure

State = TypeVar("State")


class NonFiniteStep(ArithmeticError):
    """Raised by a ``step`` that found a non-finite loss or gradient before applying its update:
    ``what`` became non-finite, ``detail`` names the sites to blame. :func:`iterate` turns it into
    an :class:`EngineFailure` naming the iteration and keeping the state from before it."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}; {detail}")
        self.what, self.detail = what, detail


@dataclass
class Progress(Generic[State]):
    """What :func:`iterate` returns: the final state and the objective trace."""

    state: State
    objectives: list[float] = field(default_factory=list)
    converged: bool = False
    interrupted: bool = False

    @property
    def num_iterations(self) -> int:
        return len(self.objectives)


def iterate(
    step: Callable[[State], tuple[State, float]],
    state: State,
    *,
    num_steps: int,
    tol: float,
    progress: bool,
    name: str,
    objective: str = "objective",
    warn: bool = True,
    checkpoint: Optional[Section] = None,
) -> Progress[State]:
    """Run ``step`` up to ``num_steps`` times.

    Stops early when the objective changes by at most ``tol * max(1, |objective|)`` between two
    steps (``tol=0`` runs exactly ``num_steps``). A non-finite objective, or a step raising
    :class:`NonFiniteStep`, raises :class:`EngineFailure` holding the last finite state; Ctrl-C
    stops the loop and returns what was reached, marked ``interrupted``.

    With a ``checkpoint`` section the loop first resumes from it (a finished loop returns at
    once), saves every ``checkpoint.every`` steps and at the end, and SIGINT / SIGTERM stop it
    after the current step, saved and marked ``interrupted``.
    """
    result: Progress[State] = Progress(state)
    if checkpoint is not None:
        resumed = checkpoint.resume(state)
        if resumed is not None:
            result.state, result.objectives, result.converged, finished = resumed
            if finished:
                return result
    bar = tqdm(total=num_steps, initial=result.num_iterations, desc=name, disable=not progress, leave=False, dynamic_ncols=True)
    restore_signals = checkpoint.defer_signals() if checkpoint is not None else None
    try:
        for _ in range(num_steps - result.num_iterations):
            new_state, value = step(result.state)
            value = float(value)
            if not math.isfinite(value):
                raise EngineFailure(
                    f"{name}: {objective} became {value} at iteration {result.num_iterations + 1}; "
                    "rescale the data or regularise (see the engine's options)",
                    partial=result,
                )
            previous = result.objectives[-1] if result.objectives else None
            result.state = new_state
            result.objectives.append(value)
            bar.update(1)
            bar.set_postfix({objective: f"{value:.6g}"})
            if tol > 0 and previous is not None and abs(value - previous) <= tol * max(1.0, abs(value)):
                result.converged = True
                break
            if checkpoint is not None and checkpoint.stop_after(result.state, result.objectives, num_steps):
                result.interrupted = True
                warnings.warn(f"{name}: stopped by signal {checkpoint.stop.signal} after {result.num_iterations} iterations; saved, returning the state reached", stacklevel=3)
                break
    except NonFiniteStep as fault:
        failing = result.num_iterations + 1
        raise EngineFailure(
            f"{name}: {fault.what} at iteration {failing}; {fault.detail}. The state before iteration {failing} "
            "is kept in EngineFailure.partial",
            partial=result,
        ) from None
    except KeyboardInterrupt:
        result.interrupted = True
        warnings.warn(f"{name}: interrupted after {result.num_iterations} iterations; returning the state reached", stacklevel=3)
    finally:
        bar.close()
        if restore_signals is not None:
            restore_signals()
    if checkpoint is not None:
        checkpoint.save(result.state, result.objectives, result.converged, finished=not result.interrupted)
    if warn and tol > 0 and not result.converged and not result.interrupted:
        warnings.warn(
            f"{name}: {objective} did not converge to tol={tol} within num_steps={num_steps}; "
            "raise num_steps or loosen tol",
            ConvergenceWarning,
            stacklevel=3,
        )
    return result


def as_partial(error: Exception) -> Any:
    """The state a failed run reached, if the error carries one."""
    return getattr(error, "partial", None)
