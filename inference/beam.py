"""Greedy and beam search (``engine="beam"``): approximate MAP over finite latent sites.

The program's latent sites are decided one at a time, in the order the program reaches them.
After d decisions the search keeps the B partial runs ("beams") with the largest

    log p(x_reached, z_1 … z_d) = Σ log p(site | its parents) over the sites reached so far

(observed sites included: a prompt is observed data), extends each beam by every value of the
next latent site, and keeps the B best of the B·K extensions. ``num_beams=1`` is greedy
decoding. When every beam is complete the runs are ranked by their full log joint
log p(x, z). With B at least the number of joint configurations the search is exhaustive and
returns the exact MAP (what ``enumerate`` computes); with smaller B it may miss it.

Two paths compute this same search (``Result.diagnostics["path"]``):

- ``"carried"``, for a program that declares its state with :func:`ppgen.carry`: the program
  runs once, its beams a batch dimension left of its plates. At each latent site the handler
  scores the B·K extensions, keeps the B best (beam, value) pairs, returns their values, and
  from then on every ``carry`` reorders the carried tensor to the surviving beams' parents.
  O(L) site visits for L latent sites, the cost of a plain beam loop over a recurrent network.
  A check follows: the program runs again with the beams' first 8 decisions fixed (all of
  them, for a shorter program), up to its next latent site, and each beam's log density there
  must equal the search's running score. If it does not, or if a carried tensor's beams do not
  match the search's, the program used a tensor across a decision without carrying it (or
  carried it at the wrong place, or with the wrong ``event_dim``): the search warns
  (:class:`~ppgen.ReliabilityWarning`) and takes the other path. The check costs a run over
  the first 8 decisions, and finds a misplaced ``carry`` in a loop, which misplaces it at every
  step; a mistake only in a long program's later steps it cannot see. With one beam
  (greedy decoding) nothing is reordered and nothing is checked.
  The search itself runs without Pyro's handler stack (:class:`_SearchInterpreter`,
  ``diagnostics["search"] == "interpreted"``) for a call signature whose search it once ran with
  the same decisions, parents and scores as the search under Pyro (compared after Pyro's run, on
  the signature's first call); the check above then runs by the same interpreter.
- ``"rerun"``, for every other program (which does not expose state to reorder): each decision
  runs the program for all beams at once up to the first undecided site, so the search costs
  O(L²) site visits, exact for any program.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Optional, Union

import numpy as np
import pyro
import pyro.distributions as pdist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK

from ppgen.backend import to_backend, to_numpy, torch_precision, use_backend
from ppgen.engine import Engine, missing_data, register
from ppgen.errors import ReliabilityWarning, user_stacklevel
from ppgen.primitives import interpreted_by
from ppgen.results import Result
from ppgen.structure import ModelStructure, inspect
from ppgen.structure_cache import call_key

from ._draw_interpreter import AncestralInterpreter, remember_same, shown_same
from ._interpreter import Unsupported, _PyroGuard

_BEAMS = "_beams"
_NOT_SITES = ("_Subsample",)  # subsampling plates' index sites
#: The carried path's check re-runs the program with this many first decisions fixed (or all).
_CHECKED_DECISIONS = 8


class _Reached(Exception):
    """Raised at the first latent site without a decided value: its name and distribution."""

    def __init__(self, name: str, fn: Any) -> None:
        super().__init__(name)
        self.name, self.fn = name, fn


class _NotCarried(Exception):
    """The carried path cannot go on: a tensor's beams disagree with the search's."""


class _Decide(Messenger):
    """Sets the decided latent sites to their values (one per beam) and stops the run at the
    first undecided one."""

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
    fn = _base(fn)
    if isinstance(fn, pdist.Bernoulli):
        return 2
    if isinstance(fn, pdist.Categorical):
        return int(fn.logits.shape[-1])
    return None


def _candidate_log_probs(fn: Any) -> torch.Tensor:
    """log p(value) for every value of the site, shape (1 or num_beams, K)."""
    fn = _base(fn)
    if isinstance(fn, pdist.Bernoulli):
        logits = fn.logits.reshape(-1, 1)
        return torch.cat([torch.nn.functional.logsigmoid(-logits), torch.nn.functional.logsigmoid(logits)], -1)
    return fn.logits.reshape(-1, fn.logits.shape[-1])  # torch's Categorical normalises its logits


def _per_beam(log_prob: torch.Tensor, nesting: int) -> torch.Tensor:
    """A site's log density summed over the program's plates (its rightmost ``nesting`` dims):
    shape () for a site that does not depend on the beams, else (num_beams,)."""
    plates = tuple(range(max(log_prob.dim() - nesting, 0), log_prob.dim()))
    log_prob = log_prob.sum(plates) if plates else log_prob
    return log_prob.reshape(-1) if log_prob.dim() else log_prob


def _decide(scores: torch.Tensor, fn: Any, name: str, num_beams: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``num_beams`` best extensions of the beams (running ``scores``, shape (B,)) by a value
    of the site: their parents (indices into the beams), values and scores."""
    size = _support_size(fn)
    if size is None:
        raise ValueError(f"beam: latent site {name!r} is not a finite discrete scalar site ({type(fn).__name__})")
    candidates = _candidate_log_probs(fn)
    if candidates.shape[0] not in (1, len(scores)):
        raise _NotCarried(f"site {name!r} has {candidates.shape[0]} rows of logits for {len(scores)} beams")
    totals = (scores[:, None] + candidates).reshape(-1)
    best, index = torch.topk(totals, min(num_beams, totals.numel()))
    parents = index.div(size, rounding_mode="floor")
    values = index - parents * size
    if size == 2 and isinstance(_base(fn), pdist.Bernoulli):  # Bernoulli sites hold floats
        values = values.to(fn.logits.dtype)
    return parents, values, best


def _site_log_density(msg: dict, nesting: int, num_beams: int) -> torch.Tensor:
    """A site's log density per beam, shape () or (num_beams,)."""
    log_prob = _per_beam(scale_and_mask(msg["fn"].log_prob(msg["value"]), msg["scale"], msg["mask"]), nesting)
    if log_prob.dim() and len(log_prob) not in (1, num_beams):
        raise _NotCarried(f"site {msg['name']!r} has a log density for {len(log_prob)} beams, not {num_beams}")
    return log_prob


class _Search(Messenger):
    """The carried path: decides each latent site as the program reaches it and reorders every
    tensor passed to :func:`ppgen.carry` to the beams that survived the decisions since.
    Before deciding site ``num_checked + 1`` it keeps the beams' assignments and scores
    (``checkpoint``), for :class:`_Score` to check."""

    def __init__(self, num_beams: int, nesting: int, num_checked: int) -> None:
        super().__init__()
        self.num_beams, self.nesting, self.num_checked = num_beams, nesting, num_checked
        self.scores = torch.zeros(1, dtype=torch.get_default_dtype())  # running log density per beam
        self.parents: list[torch.Tensor] = []  # decision d: the beam each new beam extends
        self.choices: list[tuple[str, torch.Tensor]] = []  # decision d: site name, values per beam
        self.carried_at: dict[str, int] = {}  # carried name -> decisions made when last carried
        self.made_at: dict[int, tuple[int, torch.Tensor]] = {}  # id of a tensor handed out -> (decisions made, it)
        self.num_carried = 0
        self.checkpoint: Optional[tuple[str, dict[str, torch.Tensor], torch.Tensor]] = None

    def _pyro_sample(self, msg: dict) -> None:
        fn = msg["fn"]
        if type(fn).__name__ in _NOT_SITES:
            return
        if msg["is_observed"]:
            self.scores = self.scores + _site_log_density(msg, self.nesting, len(self.scores))
            return
        if len(self.parents) == self.num_checked:
            self.checkpoint = (msg["name"], self.assignments(), self.scores)
        parents, values, self.scores = _decide(self.scores, fn, msg["name"], self.num_beams)
        self.parents.append(parents)
        self.choices.append((msg["name"], values))
        msg["value"] = values.reshape((len(values),) + (1,) * self.nesting)
        msg["is_observed"] = True  # decided, not sampled
        self.made_at[id(msg["value"])] = (len(self.parents), msg["value"])

    def reorder_carried(self, name: str, value: Any, event_dim: int) -> Any:
        """``value`` reordered along its beams' dimension to the beams that extend it now. Its
        beams are those of the decision that made it, for a site's value or a tensor ``carry``
        returned; for a tensor the program computed, those of the last ``carry`` of ``name``
        (it was computed from that), or of the decision before the last for a first ``carry``."""
        self.num_carried += 1
        if not isinstance(value, torch.Tensor):
            return value
        now = len(self.parents)
        made = self.made_at.get(id(value))
        since = made[0] if made is not None and made[1] is value else self.carried_at.get(name, max(now - 1, 0))
        self.carried_at[name] = now
        if since == now:
            return value
        dim = value.dim() - (self.nesting + 1 + event_dim)
        if dim < 0 or value.shape[dim] == 1:  # the same for every beam
            return value
        if dim > 0:
            raise _NotCarried(
                f"carry({name!r}): a tensor of shape {tuple(value.shape)} has {value.dim()} dimensions, more than "
                f"the beams' one + the program's {self.nesting} plate dimensions + event_dim={event_dim}; pass its event_dim"
            )
        beams_then = len(self.parents[since - 1]) if since else 1
        if value.shape[0] != beams_then:
            raise _NotCarried(f"carry({name!r}): {value.shape[0]} beams in a tensor computed when there were {beams_then}")
        index = self.parents[now - 1]
        for parents in reversed(self.parents[since:now - 1]):
            index = parents[index]
        carried = value.index_select(0, index)
        self.made_at[id(carried)] = (now, carried)
        return carried

    def assignments(self) -> dict[str, torch.Tensor]:
        """Each decided site's value in each current beam, shape (B,), following the parents back."""
        beams = torch.arange(len(self.scores))
        decided = {}
        for (name, values), parents in zip(reversed(self.choices), reversed(self.parents)):
            decided[name] = values[beams]
            beams = parents[beams]
        return {name: decided[name] for name, _ in self.choices}


class _SearchInterpreter(AncestralInterpreter):
    """Runs :class:`_Search` (or the check's :class:`_Score`) without Pyro's handler stack: each
    site's distribution expanded to its plates as Pyro's ``BroadcastMessenger`` expands it, then
    handed to the handler as Pyro's message would be (observed sites scored, latent ones decided
    or fixed, factors scored as ``Unit`` sites), and ``carry`` answered by the search (the
    identity for the check). Parameters and modules as in
    :class:`~ppgen.inference._draw_interpreter.AncestralInterpreter` (a fresh parameter store)."""

    def __init__(self, search: Union["_Search", "_Score"]) -> None:
        super().__init__(frozenset())
        self.search = search

    def run(self, program: Callable, args: tuple, kwargs: dict) -> None:
        if _PYRO_STACK:
            raise Unsupported("called inside a Pyro handler, which would see every site")
        self.values, self._params = {}, {}
        with _PyroGuard(), interpreted_by(self):
            self._depth = len(_PYRO_STACK)
            program(*args, **kwargs)

    def sample(self, name: str, fn: Any, obs: Any, infer: dict) -> Any:
        self._check_stack(name)
        if name in self.values:
            raise Unsupported(f"site {name!r} is sampled twice")
        if not hasattr(fn, "log_prob") or not hasattr(fn, "batch_shape"):
            raise Unsupported(f"site {name!r}: {type(fn).__name__} is not a distribution")
        msg = {"name": name, "fn": self._broadcast(name, fn), "value": obs, "is_observed": obs is not None, "scale": 1.0, "mask": None}
        self.search._pyro_sample(msg)
        self.values[name] = msg["value"]
        return msg["value"]

    def factor(self, name: str, log_factor: Any) -> None:
        unit = pdist.Unit(log_factor)
        self.sample(name, unit, unit.sample(), {})

    def deterministic(self, name: str, value: Any) -> Any:
        self._check_stack(name)
        return value

    def reorder_carried(self, name: str, value: Any, event_dim: int) -> Any:
        reorder = getattr(self.search, "reorder_carried", None)
        return value if reorder is None else reorder(name, value, event_dim)


def _same_search(expected: _Search, found: _Search) -> bool:
    """Whether two searches decided the same values for the same beams with the same scores."""
    if len(expected.choices) != len(found.choices) or expected.num_carried != found.num_carried:
        return False
    pairs = [(expected.scores, found.scores)] + [(a, b) for a, b in zip(expected.parents, found.parents)]
    pairs += [(a[1], b[1]) for a, b in zip(expected.choices, found.choices)]
    return all(a.dtype == b.dtype and torch.equal(a, b) for a, b in pairs) and [c[0] for c in expected.choices] == [c[0] for c in found.choices]


class _Score(Messenger):
    """Runs the beams with their latent sites fixed (``fixed``: site -> values, shape (B,)),
    summing each beam's log density, up to the first latent site not fixed (raises _Reached)."""

    def __init__(self, fixed: dict[str, torch.Tensor], num_beams: int, nesting: int) -> None:
        super().__init__()
        self.fixed = {name: value.reshape((num_beams,) + (1,) * nesting) for name, value in fixed.items()}
        self.nesting = nesting
        self.scores = torch.zeros(num_beams, dtype=torch.get_default_dtype())

    def _pyro_sample(self, msg: dict) -> None:
        if type(msg["fn"]).__name__ in _NOT_SITES:
            return
        if not msg["is_observed"]:
            value = self.fixed.get(msg["name"])
            if value is None:
                raise _Reached(msg["name"], msg["fn"])
            msg["value"], msg["is_observed"] = value, True
        self.scores = self.scores + _site_log_density(msg, self.nesting, len(self.scores))


@register
class Beam(Engine):
    """Beam search for the MAP assignment of a program's finite latent sites.

    Parameters
    ----------
    num_beams : B, the number of partial runs kept (1 is greedy decoding).

    Returns a :class:`~ppgen.Result` with the best run in ``map_estimate`` (site -> value), the
    B best complete runs in ``samples`` (site -> array (B, *site_shape)), best first, their
    log joint log p(x, z) in ``sample_stats["log_joint"]`` (shape (B,)), and the path taken in
    ``diagnostics["path"]`` (``"carried"`` for a program that declares its state with
    :func:`ppgen.carry`, else ``"rerun"``; see the module docstring).

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
        key = call_key(model, args, kwargs)
        signature = None if key is None else (key, self.num_beams)
        args, kwargs = to_backend(args, "pyro"), to_backend(kwargs, "pyro")
        nesting = structure.max_plate_nesting
        with use_backend("pyro"), torch_precision(enabled=structure.float64), pyro.get_param_store().scope(), torch.no_grad(), pyro.validation_enabled(False):
            program = _Program(model, args, kwargs, nesting)
            path = "carried"
            self.how = "pyro"
            found = self._carried(program, signature)
            if found is None:
                path = "rerun"
                found = self._rerun(program)
            decided, log_joint = found
            order = torch.argsort(log_joint, descending=True, stable=True)
        values = to_numpy(torch.stack([value.to(log_joint.dtype) for value in decided.values()])[:, order])  # one copy
        samples = {name: row.astype(decided[name].numpy().dtype) for name, row in zip(decided, values)}
        return Result(
            engine=self.name,
            map_estimate={name: value[0] for name, value in samples.items()},
            samples=samples,
            sample_stats={"log_joint": to_numpy(log_joint[order])},
            diagnostics={"num_beams": self.num_beams, "path": path, "search": self.how if path == "carried" else "pyro"},
            seconds=time.perf_counter() - start,
        )

    def _interpreted_search(self, program: "_Program", signature: Optional[tuple]) -> Optional[_Search]:
        """The carried path's run by :class:`_SearchInterpreter`; None when it cannot run the
        program (Pyro's run then says what is wrong, if anything)."""
        search = _Search(self.num_beams, program.nesting, _CHECKED_DECISIONS)
        try:
            _SearchInterpreter(search).run(program.model, program.args, program.kwargs)
        except (Unsupported, _NotCarried, RuntimeError, ValueError, IndexError, TypeError):
            return None
        return search

    def _carried(self, program: "_Program", signature: Optional[tuple] = None) -> Optional[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """One run deciding each site as it is reached; None when the program declares no state,
        or when its carried state does not reproduce the first decisions' scores. A call
        ``signature`` whose search the handler-free interpreter once ran exactly as Pyro's
        handlers did (same decisions, parents and scores, compared after Pyro's run) is run by
        the interpreter (``self.how``)."""
        search = self._interpreted_search(program, signature) if shown_same(program.model, signature) else None
        self.how = "interpreted" if search is not None else "pyro"
        if search is None:
            search = _Search(self.num_beams, program.nesting, _CHECKED_DECISIONS)
            try:
                with search:
                    program.model(*program.args, **program.kwargs)
            except (_NotCarried, RuntimeError, ValueError, IndexError) as error:
                if search.num_carried:
                    _warn_rerun(f"the run with carried state failed ({type(error).__name__}: {error})")
                return None
            if search.num_carried and signature is not None:
                twin = self._interpreted_search(program, signature)
                if twin is not None and _same_search(search, twin):
                    remember_same(program.model, signature)
        if not search.num_carried:
            return None
        if self.num_beams > 1:  # one beam is never reordered
            if search.checkpoint is None:  # every decision checked: the complete runs
                next_site, fixed, expected = None, search.assignments(), search.scores
            else:
                next_site, fixed, expected = search.checkpoint
            check, reached = _Score(fixed, len(expected), program.nesting), None
            try:
                if self.how == "interpreted":  # this signature's searches ran alike both ways
                    try:
                        _SearchInterpreter(check).run(program.model, program.args, program.kwargs)
                    except Unsupported:
                        check = _Score(fixed, len(expected), program.nesting)
                        with check:
                            program.model(*program.args, **program.kwargs)
                else:
                    with check:
                        program.model(*program.args, **program.kwargs)
            except _Reached as stop:
                reached = stop.name
            tolerance = math.sqrt(torch.finfo(expected.dtype).eps)
            if reached != next_site or not torch.allclose(expected, check.scores, rtol=tolerance, atol=tolerance):
                worst = float((expected - check.scores).abs().max())
                _warn_rerun(f"the search's running log densities differ from the runs' own by up to {worst:.3g}")
                return None
        return search.assignments(), search.scores

    def _rerun(self, program: "_Program") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every decision re-runs the program, for all beams at once, up to its next undecided site."""
        decided: dict[str, torch.Tensor] = {}
        num_beams = 1
        while True:
            reached, log_density = program.scores(decided, num_beams)
            if reached is None:
                return decided, log_density
            parents, values, _ = _decide(log_density, reached.fn, reached.name, self.num_beams)
            decided = {name: value[parents] for name, value in decided.items()}
            decided[reached.name] = values
            num_beams = len(values)


class _Program:
    """A program with its arguments, run for ``num_beams`` beams with some latent sites fixed."""

    def __init__(self, model: Callable, args: tuple, kwargs: dict, nesting: int) -> None:
        self.model, self.args, self.kwargs, self.nesting = model, args, kwargs, nesting

    def scores(self, decided: dict[str, torch.Tensor], num_beams: int) -> tuple[Optional[_Reached], torch.Tensor]:
        """Run every beam (``decided``: site -> values, shape (num_beams,)) up to its first
        undecided site: that site (None when the runs are complete) and each beam's log density
        of the sites reached, shape (num_beams,)."""
        fixed = {name: value.reshape((num_beams,) + (1,) * self.nesting) for name, value in decided.items()}
        tracer = poutine.trace(_Decide(fixed)(self.model))
        reached = None
        with pyro.plate(_BEAMS, num_beams, dim=-(self.nesting + 1)):
            try:
                tracer(*self.args, **self.kwargs)
            except _Reached as stop:
                reached = stop
        log_density = torch.zeros(num_beams, dtype=torch.get_default_dtype())
        for node in tracer.msngr.trace.nodes.values():
            if node["type"] == "sample" and type(node["fn"]).__name__ not in _NOT_SITES:
                log_prob = scale_and_mask(node["fn"].log_prob(node["value"]), node["scale"], node["mask"])
                log_density = log_density + _per_beam(log_prob, self.nesting)
        return reached, log_density


def _warn_rerun(reason: str) -> None:
    warnings.warn(
        f"beam: {reason}: a tensor computed before a decided site was used after it without "
        "ppgen.carry (or with the wrong event_dim); searching again by re-running the program "
        "up to each decision (exact, O(L²))",
        ReliabilityWarning,
        stacklevel=user_stacklevel(),
    )
