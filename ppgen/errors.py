"""Error and warning classes, so users can catch ppgen's complaints specifically."""

from __future__ import annotations


class DataError(ValueError):
    """Observed data that the program cannot score: NaN, outside a distribution's support, or a
    shape that disagrees with a plate. The message names the site."""


class ParameterError(ValueError):
    """A distribution built with an argument outside its constraint (a negative scale, probabilities
    that do not sum to one). The message names the site, the parameter and the model arguments it
    was computed from."""


class EngineNotApplicable(ValueError):
    """The chosen engine does not apply to this program. The message names the blocking site
    and lists the engines that do apply."""


class ConvergenceWarning(UserWarning):
    """An iterative engine stopped at ``num_steps`` before reaching ``tol``."""


class ReliabilityWarning(UserWarning):
    """A diagnostic says an estimate should not be trusted (Pareto k > 0.7, R-hat > 1.01, divergences)."""


class EngineFailure(RuntimeError):
    """A run failed numerically. ``partial`` holds what it had reached (a
    :class:`ppgen.driver.Progress` for iterative engines), so a long run is not lost; for the
    gradient engines (svi, advi, map, mle) ``partial.state`` is the parameters before the failing
    iteration, named as in ``Result.params``."""

    def __init__(self, message: str, partial: object = None) -> None:
        super().__init__(message)
        self.partial = partial


def user_stacklevel() -> int:
    """``stacklevel`` for a warning raised by the caller of this function that points at the
    first frame outside ppgen (the user's call of a verb or engine), however deep inside ppgen
    the warning is raised."""
    import sys

    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "ppgen":
        level, frame = level + 1, frame.f_back
    return level
