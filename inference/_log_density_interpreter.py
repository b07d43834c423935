"""The log-likelihood of a latent-free program without Pyro's handler stack: ``mle``'s objective.

Maximum likelihood on a program without latent sites (an autoregressive network's chain of
observed sites, a regression with ``param`` sites) evaluates, at every gradient step,

    log p(x; θ) = Σ_sites s_site · Σ log p(x_site | parents; θ),

with s_site = N / B for a site inside the minibatched data plate and 1 otherwise. Under Pyro each
site sends a message through the handler stack (trace, scale, plate, broadcast), which costs
more than a small network's conditional (NADE: 64 sites per minibatch).
:class:`LogDensityInterpreter` gives the ppgen primitives their scoring semantics directly:

* ``sample`` with ``obs`` adds ``fn.log_prob(obs)``, ``fn`` expanded to its plates as Pyro's
  ``BroadcastMessenger`` expands it, times the scale of the plate it sits in;
* ``factor`` adds its log factor (a ``Unit`` site, broadcast and scaled as Pyro does);
* ``plate``, ``param``, ``module``, ``deterministic`` and ``markov`` behave as in
  :class:`~ppgen.inference._draw_interpreter.DrawInterpreter` (the parameter store's tensors,
  which the optimiser moves).

A latent site (no ``obs``), a ``sample`` with infer options, a ``pyro.*`` primitive or handler
in the program, a subsampled or sequential plate raise
:class:`~ppgen.inference._interpreter.Unsupported`. :func:`same_log_density` is the check the
caller makes once, on its first minibatch, that the interpreter gives Pyro's value (to float
tolerance) before using it; otherwise it keeps Pyro.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import pyro.distributions as pdist
import torch
from pyro.distributions.unit import Unit
from pyro.poutine.runtime import _PYRO_STACK
from pyroapi.dispatch import GenericModule

from ppgen.primitives import DATA_SITE, interpreted_by

from ._draw_interpreter import DrawInterpreter
from ._deferred import Deferred
from ._interpreter import _DEFERRED_DISTRIBUTIONS, Unsupported, _PyroGuard


class LogDensityInterpreter(DrawInterpreter):
    """Runs a latent-free ppgen program once and sums the log densities of its observed and
    factor sites, those inside plate ``scaled_plate`` multiplied by ``scale``."""

    def __init__(self, scaled_plate: Optional[str] = None, scale: float = 1.0) -> None:
        super().__init__(())
        self.scaled_plate, self.scale = scaled_plate, scale
        self._terms: list[torch.Tensor] = []
        self._scaled_terms: list[torch.Tensor] = []
        self._seen: set[str] = set()

    def log_density(self, program: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        """Σ over the sites of (scale ×) log p(site value | its parents)."""
        if _PYRO_STACK:
            raise Unsupported("called inside a Pyro handler, which would see every site")
        self._terms, self._scaled_terms, self._seen = [], [], set()
        saved = GenericModule.current_backend["distributions"]
        GenericModule.current_backend["distributions"] = _DEFERRED_DISTRIBUTIONS  # records, not built
        try:
            with _PyroGuard(), interpreted_by(self):
                self._depth = len(_PYRO_STACK)
                program(*args, **kwargs)
        finally:
            GenericModule.current_backend["distributions"] = saved
        if not self._terms and not self._scaled_terms:
            raise Unsupported("the program has no observed or factor sites")
        # the scale multiplies the sum of its plate's terms once (one node for backward, not one per site)
        total = _sum(self._scaled_terms) * self.scale if self._scaled_terms else None
        if self._terms:
            total = _sum(self._terms) if total is None else total + _sum(self._terms)
        return total

    # ---- primitives ----------------------------------------------------------------------------
    def sample(self, name: str, fn: Any, obs: Any, infer: dict) -> Any:
        self._check_stack(name)
        if obs is None:
            raise Unsupported(f"site {name!r} is latent (not observed)")
        if any(key != DATA_SITE for key in infer):
            raise Unsupported(f"site {name!r} has infer options {sorted(infer)}")
        if not isinstance(obs, torch.Tensor):
            raise Unsupported(f"site {name!r}: observed value of type {type(obs).__name__}")
        self._add(name, fn, obs)
        return obs

    def factor(self, name: str, log_factor: Any) -> None:
        self._check_stack(name)
        unit = Unit(log_factor)
        self._add(name, unit, unit.sample())

    def _add(self, name: str, fn: Any, value: torch.Tensor) -> None:
        if name in self._seen:
            raise Unsupported(f"site {name!r} is sampled twice")
        self._seen.add(name)
        if not hasattr(fn, "log_prob") or not hasattr(fn, "batch_shape"):
            raise Unsupported(f"site {name!r}: {type(fn).__name__} is not a distribution")
        fn = self._broadcast(name, fn)
        log_p = _log_prob_sum(fn, value)
        if self.scaled_plate is not None and any(plate.name == self.scaled_plate for plate in self.active_plates):
            self._scaled_terms.append(log_p)
        else:
            self._terms.append(log_p)


def _sum(terms: list[torch.Tensor]) -> torch.Tensor:
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _log_prob_sum(fn: Any, value: torch.Tensor) -> torch.Tensor:
    """Σ fn.log_prob(value). A Bernoulli or Categorical given by logits of the value's shape (its
    plates') is summed from its logits in one fused call, without building the distribution:
    Σ −BCE(logits, x), or Σ (logits at x − logsumexp(logits))."""
    if type(fn) is Deferred and not fn.reinterpreted and "logits" in fn.arguments and len(fn.arguments) == 1:
        logits, family = fn.arguments["logits"], fn.family
        if family is pdist.Bernoulli and logits.shape == value.shape:
            return -torch.nn.functional.binary_cross_entropy_with_logits(logits, value.to(logits.dtype), reduction="sum")
        if family is pdist.Categorical and logits.shape[:-1] == value.shape:
            return (logits.gather(-1, value.long().unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)).sum()
    if type(fn) is Deferred:
        fn = fn.build()
    return fn.log_prob(value).sum()


def same_log_density(expected: torch.Tensor, found: torch.Tensor) -> tuple[bool, str]:
    """Whether the interpreter's log density ``found`` equals Pyro's ``expected`` to float
    tolerance, |Δ| ≤ 1000 ε max(1, |expected|) with ε of the value's dtype (the same terms
    summed in another order). Returns (same, why not)."""
    if found.shape != expected.shape or found.dtype != expected.dtype:
        return False, f"the interpreter's value has shape {tuple(found.shape)} / {found.dtype}, Pyro's {tuple(expected.shape)} / {expected.dtype}"
    tolerance = 1000 * torch.finfo(expected.dtype).eps * max(1.0, abs(float(expected.detach())))
    difference = abs(float(found.detach()) - float(expected.detach()))
    if not difference <= tolerance:
        return False, f"the interpreter's log density differs from Pyro's by {difference:.3g} (> {tolerance:.3g})"
    return True, ""


class VerifiedLogDensity:
    """A program's log density by Pyro until the interpreter is shown, once, to give the same.

    Call it with Pyro's evaluation (a thunk) and the arguments of this evaluation: the first
    call computes both from the same random state and keeps the interpreter if they agree
    (:func:`same_log_density`); every later call then runs the interpreter only, or Pyro only.
    ``how`` says which, and why Pyro was kept (for ``Result.diagnostics``)."""

    def __init__(self, program: Callable, scaled_plate: Optional[str] = None, scale: float = 1.0, reason: Optional[str] = None) -> None:
        self.program = program
        self.interpreter: Optional[LogDensityInterpreter] = None
        self.checked = reason is not None
        self.how = f"pyro ({reason})" if reason is not None else "pyro (not compared yet)"
        self._scaled_plate, self._scale = scaled_plate, scale

    def __call__(self, by_pyro: Callable[[], torch.Tensor], args: tuple, kwargs: dict) -> torch.Tensor:
        if self.interpreter is not None:
            return self.interpreter.log_density(self.program, args, kwargs)
        if self.checked:
            return by_pyro()
        self.checked = True
        interpreter = LogDensityInterpreter(self._scaled_plate, self._scale)
        state = torch.get_rng_state()
        expected = by_pyro()  # first: it creates the parameters the interpreter then reads from the store
        with torch.random.fork_rng():  # from the random state Pyro's run started from (a program may draw: dropout)
            torch.set_rng_state(state)
            try:
                found: Optional[torch.Tensor] = interpreter.log_density(self.program, args, kwargs)
            except Unsupported as reason:
                found, why = None, str(reason)
        if found is not None:
            same, why = same_log_density(expected, found)
        else:
            same = False
        if same:
            self.interpreter, self.how = interpreter, "interpreted (equal to Pyro's on the first evaluation)"
        else:
            self.how = f"pyro ({why})"
        return expected
