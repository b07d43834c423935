"""Greedy and beam search (``engine="beam"``): approximate MAP over finite latent sites.

The program's latent sites are decided one at a time, in the order the program reaches them.
After d decisions the search keeps the B partial runs ("beams") with the largest

    log p(x_reached, z_1 … z_d) = Σ log p(site | its parents) over the sites reached so far

(observed sites included: a prompt is observed data), extends each beam by every value of the
next latent site, and keeps the B best of the B·K extensions. ``num_beams=1`` is greedy
decoding. When every beam is complete the runs are ranked by their full log joint
log p(x, z). With B at least the number of joint configurations the search is exhaustive and
returns the exact MAP (what ``enumerate`` computes); with smaller B it may miss it.

Each step runs the program once for all beams at once (the beams are a vectorised batch
dimension left of the program's plates), stopping at the first undecided latent site, so the
search costs O(L²) site visits for L latent sites; a program whose state could be reordered
between beams would allow O(L), which a program in this language does not expose.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import numpy as np
import pyro
import pyro.distributions as pdist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from ppgen.backend import to_backend, to_numpy, torch_precision, use_backend
from ppgen.engine import Engine, missing_data, register
from ppgen.results import Result
from ppgen.structure import ModelStructure, inspect

_BEAMS = "_beams"
_NOT_SITES = ("Unit", "_Subsample")  # plates' index sites and empty factors


class _Reached(Exception):
    """Raised at the first latent site without a decided value: its name and distribution."""

    def __init__(self, name: str, fn: Any) -> None:
        super().__init__(name)
        self.name, self.fn = name, fn


class _Decide(Messenger):
    """Sets the decided latent sites to their values (one per beam) and stops the run at the
    first undecided one (or, with ``complete=True``, requires every one decided)."""

    def __init__(self, decided: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.decided = decided

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or type(msg["fn"]).__name__ in _NOT_SITES:
            return
        value = self.decided.get(msg["name"])
        if value is None:
            raise _Reached(msg["name"], msg["fn"])
        msg["value"] = value
        msg["is_observed"] = True  # scored, not sampled


def _base(fn: Any) -> Any:
    while isinstance(fn, pdist.Independent):
        fn = fn.base_dist
    return fn


def _support_size(fn: Any) -> Optional[int]:
    """Number of values of a finite discrete scalar site, or None."""
    while isinstance(fn, pdist.Independent):
        fn = fn.base_dist
    if isinstance(fn, pdist.Bernoulli):
        return 2
    if isinstance(fn, pdist.Categorical):
        return int(fn.logits.shape[-1])
    return None


def _candidate_log_probs(fn: Any, num_beams: int) -> torch.Tensor:
    """log p(value) for every value of the site, shape (num_beams, K)."""
    while isinstance(fn, pdist.Independent):
        fn = fn.base_dist
    if isinstance(fn, pdist.Bernoulli):
        logits = fn.logits.reshape(-1, 1) if fn.logits.numel() > 1 else fn.logits.reshape(1, 1)
        log_probs = torch.cat([torch.nn.functional.logsigmoid(-logits), torch.nn.functional.logsigmoid(logits)], -1)
    else:
        log_probs = fn.logits.log_softmax(-1).reshape(-1, fn.logits.shape[-1])
    return log_probs.expand(num_beams, -1)


@register
class Beam(Engine):
    """Beam search for the MAP assignment of a program's finite latent sites.

    Parameters
    ----------
    num_beams : B, the number of partial runs kept (1 is greedy decoding).

    Returns a :class:`~ppgen.Result` with the best run in ``map_estimate`` (site -> value), the
    B best complete runs in ``samples`` (site -> array (B, *site_shape)), best first, and their
    log joint log p(x, z) in ``sample_stats["log_joint"]`` (shape (B,)).

    Examples
    --------
    >>> import ppgen
    >>> def coins(flip=None):
    ...     a = ppgen.sample("a", ppgen.dist.Bernoulli(0.6))
    ...     ppgen.sample("flip", ppgen.dist.Bernoulli(0.9 * a + 0.05), obs=flip)
    >>> result = ppgen.infer(coins, 0.0, engine="beam", num_beams=2)
    >>> float(result.map_estimate["a"])
    0.0
    """

    name = "beam"
    tasks = frozenset({"infer"})
    summary = "greedy (num_beams=1) and beam search for the MAP of finite latent sites"

    def __init__(self, num_beams: int = 5) -> None:
        if isinstance(num_beams, bool) or not isinstance(num_beams, (int, np.integer)) or num_beams < 1:
            raise ValueError(f"beam: num_beams must be an integer >= 1, got {num_beams!r}")
        self.num_beams = int(num_beams)

    def check(self, structure: ModelStructure) -> Optional[str]:
        reason = missing_data(structure)
        if reason:
            return reason
        if not structure.latent:
            return "the program has no latent sites to decide"
        for site in structure.latent.values():
            if not site.is_enumerable:
                return f"latent site {site.name!r} is not finite discrete ({site.support}); beam search decides finite sites"
            if math.prod(site.batch_shape) * math.prod(site.event_shape) != 1:
                return (
                    f"latent site {site.name!r} holds {math.prod(site.batch_shape) * math.prod(site.event_shape)} values "
                    f"(shape {tuple(site.batch_shape) + tuple(site.event_shape)}); beam search decides one scalar value per site"
                )
        return None

    def run(self, model: Callable, *args: Any, **kwargs: Any) -> Result:
        start = time.perf_counter()
        structure = inspect(model, *args, **kwargs)
        args, kwargs = to_backend(args, "pyro"), to_backend(kwargs, "pyro")
        nesting = structure.max_plate_nesting
        with use_backend("pyro"), torch_precision(enabled=structure.float64), pyro.get_param_store().scope(), torch.no_grad(), pyro.validation_enabled(False):

            def extend(decided: dict[str, torch.Tensor], num_beams: int) -> tuple[Optional[_Reached], torch.Tensor]:
                """Run every beam up to its first undecided site: that site (None when the runs
                are complete) and each beam's log density of the sites reached, shape (B,)."""
                tracer = poutine.trace(_Decide(decided)(model))
                reached = None
                with pyro.plate(_BEAMS, num_beams, dim=-(nesting + 1)):
                    try:
                        tracer(*args, **kwargs)
                    except _Reached as stop:
                        reached = stop
                trace = tracer.msngr.trace
                log_density = torch.zeros(num_beams, dtype=torch.get_default_dtype())
                for node in trace.nodes.values():
                    if node["type"] == "sample" and type(node["fn"]).__name__ not in _NOT_SITES:
                        log_prob = node["fn"].log_prob(node["value"]) * node["scale"]
                        plates = tuple(range(max(log_prob.dim() - nesting, 0), log_prob.dim()))
                        log_prob = log_prob.sum(plates) if plates else log_prob  # left: the beams' dim, if any
                        log_density = log_density + (log_prob.reshape(num_beams) if log_prob.numel() == num_beams else log_prob.sum())
                return reached, log_density

            decided: dict[str, torch.Tensor] = {}
            num_beams = 1
            while True:
                reached, log_density = extend(decided, num_beams)
                if reached is None:
                    break
                size = _support_size(reached.fn)
                if size is None:
                    raise ValueError(f"beam: latent site {reached.name!r} is not a finite discrete scalar site ({type(reached.fn).__name__})")
                scores = log_density[:, None] + _candidate_log_probs(reached.fn, num_beams)  # (B, K)
                keep = min(self.num_beams, scores.numel())
                best = torch.topk(scores.reshape(-1), keep).indices
                parents, values = best // size, best % size
                decided = {name: value[parents] for name, value in decided.items()}
                bernoulli = _support_size(reached.fn) == 2 and not isinstance(_base(reached.fn), pdist.Categorical)
                decided[reached.name] = values.to(torch.get_default_dtype()) if bernoulli else values
                decided = {name: value.reshape((keep,) + (1,) * nesting) for name, value in decided.items()}
                num_beams = keep
            order = torch.argsort(log_density, descending=True, stable=True)
        samples = {name: to_numpy(value.reshape(-1)[order]) for name, value in decided.items()}
        return Result(
            engine=self.name,
            map_estimate={name: value[0] for name, value in samples.items()},
            samples=samples,
            sample_stats={"log_joint": to_numpy(log_density[order])},
            diagnostics={"num_beams": self.num_beams},
            seconds=time.perf_counter() - start,
        )
