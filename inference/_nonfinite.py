"""Which site made a gradient step non-finite: one diagnostic pass, shared by svi, advi, map, mle.

A gradient engine checks, before it applies an update, that the loss and the gradient of every
parameter are finite. When one is not, it keeps the parameters it had and raises
:class:`ppgen.driver.NonFiniteStep` with a description made here: the program (model, and
guide for the ELBO) is traced once more at those parameters and every sample site is scored,

    log p(x_s | parents) (model),   log q(z_s | ...) (guide),

scaled and masked as the objective counts it. A site whose value or log-density is NaN or ±∞
is named; for a non-finite gradient the parameters whose gradient is not finite are named, with
the sites whose log-density has a non-finite gradient with respect to them (one backward pass
per site, run only when a step has failed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

from ppgen.driver import NonFiniteStep

ADVICE = "lower the learning rate, give the parameter a constraint (param(..., constraint=...)), or rescale the data"


@dataclass(frozen=True)
class SiteScore:
    """One sample site of a traced program at the failing parameters: its summed log-density
    (a tensor in the autograd graph, so gradients can be taken), and what is not finite."""

    site: str
    program: str  # "model" or "guide"
    log_prob: Optional[torch.Tensor]
    problem: Optional[str]  # e.g. "log-density nan", "value inf"; None when finite


def _worst(tensor: torch.Tensor) -> str:
    """The non-finite value a tensor holds, as printed: nan before ±inf."""
    tensor = tensor.detach()
    if torch.isnan(tensor).any():
        return "nan"
    return "inf" if (tensor == math.inf).any() else "-inf"


def score_sites(trace: Any, program: str, counted: Optional[Callable[[str], bool]] = None) -> list[SiteScore]:
    """Every sample site of ``trace`` (those ``counted`` accepts), scored as the objective scores
    it. Pyro's validation should be off, so a NaN argument shows here rather than raising."""
    out = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or (counted is not None and not counted(name)):
            continue
        value = site["value"]
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            out.append(SiteScore(name, program, None, f"value {_worst(value)}"))
            continue
        try:
            log_prob = scale_and_mask(site["fn"].log_prob(value), site["scale"], site["mask"]).sum()
        except (ValueError, RuntimeError) as error:  # e.g. a covariance that is not positive definite
            out.append(SiteScore(name, program, None, f"log-density not computable ({error})"))
            continue
        problem = None if torch.isfinite(log_prob) else f"log-density {_worst(log_prob)}"
        out.append(SiteScore(name, program, log_prob, problem))
    return out


def nonfinite_gradients(parameters: dict[Any, torch.Tensor]) -> list[Any]:
    """Keys (names) of the parameters whose ``.grad`` holds a NaN or ±∞.

    Screened by the sums of the gradients (one synchronisation; a NaN or ±∞ element makes its
    sum non-finite, and a sum of finite elements is finite unless it overflows), then, only
    when a sum is not finite, confirmed element by element. The screen is ~8× cheaper than
    testing every element (0.8 vs 7 ms per step for the digits VAE's 0.6 M parameters).
    """
    named = [(name, tensor.grad) for name, tensor in parameters.items() if tensor.grad is not None]
    if not named or bool(torch.isfinite(torch.stack([grad.sum().double() for _, grad in named])).all()):
        return []
    return [name for name, grad in named if not bool(torch.isfinite(grad).all())]


def sites_behind(scores: Iterable[SiteScore], parameters: list[torch.Tensor]) -> list[str]:
    """Sites with a finite log-density whose gradient with respect to ``parameters`` is not finite."""
    out = []
    for score in scores:
        if score.log_prob is None or score.problem is not None or not score.log_prob.requires_grad:
            continue
        grads = torch.autograd.grad(score.log_prob, parameters, allow_unused=True, retain_graph=True)
        if any(g is not None and not torch.isfinite(g).all() for g in grads):
            out.append(f"{score.site!r} ({score.program})")
    return out


def describe(scores: list[SiteScore], bad_gradients: list[str], parameters: dict[str, torch.Tensor]) -> str:
    """The sites (and parameters) to blame, in words."""
    faults = [f"site {s.site!r} ({s.program}): {s.problem}" for s in scores if s.problem is not None]
    parts = []
    if faults:
        parts.append("not finite at the parameters of that step: " + "; ".join(faults))
    if bad_gradients:
        behind = sites_behind(scores, [parameters[name] for name in bad_gradients])
        through = f" through the log-density of site(s) {', '.join(behind)}" if behind else ""
        parts.append(f"non-finite gradient of parameter(s) {', '.join(repr(n) for n in bad_gradients)}{through}")
    if not parts:
        parts.append("every site's log-density was finite when the program was traced again at the parameters of that step")
    return "; ".join(parts) + f"; {ADVICE}"


def elbo_fault(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, loss: float, parameters: dict[str, torch.Tensor],
    rng_state: torch.Tensor,
) -> NonFiniteStep:
    """The :class:`NonFiniteStep` for an ELBO step whose ``loss`` (−ELBO) or gradient is not
    finite: the guide is traced with the random state the step started from (so it draws what
    the step drew) and the model replayed against it."""
    bad_gradients = nonfinite_gradients(parameters) if math.isfinite(loss) else []
    torch.set_rng_state(rng_state)
    with pyro.validation_enabled(False), poutine.block(), torch.enable_grad():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        scores = score_sites(model_trace, "model") + score_sites(guide_trace, "guide")
        detail = describe(scores, bad_gradients, parameters)
    what = f"elbo became {-loss}" if not math.isfinite(loss) else f"gradient became non-finite (elbo {-loss:.6g})"
    return NonFiniteStep(what, detail)


def point_fault(
    objective: str, value: float, trace: Any, counted: set[str], parameters: dict[str, torch.Tensor], bad_gradients: list[str]
) -> NonFiniteStep:
    """The :class:`NonFiniteStep` for an optimiser step (map, mle) that ended where the
    ``objective`` (its ``value``) or the gradient of the ``bad_gradients`` is not finite;
    ``trace`` is the program run there, of which the ``counted`` sites make the objective."""
    with torch.enable_grad():
        scores = score_sites(trace, "model", counted=lambda name: name in counted)
        detail = describe(scores, bad_gradients, parameters)
    what = f"{objective} became {value}" if not math.isfinite(value) else f"gradient became non-finite ({objective} {value:.6g})"
    return NonFiniteStep(what, detail)
