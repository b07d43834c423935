"""Mean-field VI, choosing the algorithm from the program: ``engine="meanfield"``.

When every latent's complete conditional is conjugate-exponential, coordinate ascent
(:mod:`~ppgen.inference.cavi`) gives exact updates, an exact ELBO and no step size to tune;
otherwise the mean-field Gaussian of :mod:`~ppgen.inference.advi` is fitted by stochastic
gradients. The Result's ``engine`` names the one that ran and ``diagnostics["meanfield"]`` says
why (the site that ruled coordinate ascent out, when it was).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Optional, Union

from ppgen.engine import Engine, register
from ppgen.errors import EngineNotApplicable
from ppgen.results import Result
from ppgen.structure import ModelStructure, inspect

from ._vi import Info
from .advi import ADVI, advi_reason
from .cavi import CAVI


@register
class MeanField(Engine):
    """Coordinate-ascent VI when the program is conjugate-exponential, ADVI otherwise.

    Parameters
    ----------
    num_steps : sweeps (cavi) or gradient steps (advi); None for each engine's default.
    tol : convergence tolerance (cavi; advi runs all its steps unless given).
    num_restarts, init : starts of cavi's categorical latents (see :class:`~ppgen.inference.cavi.CAVI`).
    learning_rate : advi's step size.
    num_samples, seed, progress : as for both engines.

    Examples
    --------
    >>> import ppgen
    >>> from ppgen.models.basics import coin
    >>> result = ppgen.infer(coin, [1, 0, 1, 1], engine="meanfield")
    >>> result.engine, result.diagnostics["meanfield"]["chose"]
    ('cavi', 'cavi')
    """

    name = "meanfield"
    tasks = frozenset({"infer", "learn", "score"})
    summary = "mean-field VI: coordinate ascent when conjugate-exponential, else ADVI"

    def __init__(
        self,
        num_steps: Optional[int] = None,
        tol: Optional[float] = None,
        num_restarts: Union[int, str] = "auto",
        init: Union[str, dict[str, Any]] = "auto",
        learning_rate: float = 0.02,
        num_samples: int = 1000,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        common = {"num_samples": num_samples, "seed": seed, "progress": progress}
        cavi_options = dict(common, init=init, num_restarts=num_restarts)
        advi_options = dict(common, learning_rate=learning_rate)
        if num_steps is not None:
            cavi_options["num_steps"] = advi_options["num_steps"] = num_steps
        if tol is not None:
            cavi_options["tol"] = advi_options["tol"] = tol
        self.cavi = CAVI(**cavi_options)
        self.advi = ADVI(**advi_options)

    def check(self, structure: ModelStructure) -> Optional[str]:
        if self.cavi.check(structure) is None:
            return None
        return advi_reason(structure)

    def run(self, model: Callable, *args: Any, **kwargs: Any) -> Result:
        structure = inspect(model, *args, **kwargs)
        reason = self.cavi.check(structure)
        if reason is None:
            try:
                result = self.cavi.run(model, *args, **kwargs)
            except EngineNotApplicable as error:
                reason = str(error).split(": ", 1)[-1]
            else:
                why = "every latent's complete conditional is conjugate-exponential"
                return replace(result, diagnostics={**result.diagnostics, "meanfield": Info({"chose": "cavi", "reason": why})})
        result = self.advi.run(model, *args, **kwargs)
        choice = Info({"chose": "advi", "reason": f"coordinate ascent does not apply: {reason}"})
        return replace(result, diagnostics={**result.diagnostics, "meanfield": choice})
