"""Running a ppgen program under parallel enumeration without Pyro's handler stack.

Exact enumeration runs a program once with every finite latent's support laid along a tensor
dimension of its own. Pyro does this with a stack of handlers (trace, enum, markov, plate,
broadcast) that process a message per site, which costs more than the sums on a long chain.
:class:`EnumerationInterpreter` gives the ppgen primitives (``sample``, ``plate``, ``param``,
``markov``, ``deterministic``, ``factor``) the same semantics directly:

* a latent z with finite support {s_1, ..., s_K} gets the value (s_1, ..., s_K) laid along its
  enumeration dim d (shape (K, 1, ..., 1), -d - 1 ones), the dim chosen exactly as Pyro's
  ``EnumMessenger`` chooses it: a new global dim left of the plates outside ``markov``; inside,
  the rightmost free dim not used by a latent still visible (one within ``history`` steps);
* ``plate`` dims are allocated as Pyro's plates allocate them, and each site's batch shape is
  checked against its plates as Pyro's broadcasting checks it;
* ``ppgen.dist`` builds no distribution: the common families return a
  :class:`~ppgen.inference._deferred.Deferred` record of their arguments;
* ``param`` returns the given value, or the initial value mapped through its constraint's
  bijection and back, as ``pyro.param`` does in a fresh parameter store.

Each site is recorded as a dict with the keys of a Pyro trace node that the enumeration engines
read ("name", "type", "fn", "value", "is_observed", "infer", "scale", "mask"), plus its plates and
the enumeration dims visible to it. The distribution is recorded as the program built it (not
expanded to its plates): densities are then computed from compact arguments.

Whatever the interpreter does not model raises :class:`Unsupported` and the caller runs the
program under Pyro instead: a ``pyro.*`` primitive called directly (a guard handler on Pyro's
stack catches it), a Pyro handler active around a ppgen primitive, subsampled or sequential
plates, torch modules, continuous or vector-valued latents, non-default ``infer`` options.
"""

from __future__ import annotations

import numbers
from collections import Counter
from contextlib import ExitStack
from typing import Any, Callable, Iterable, Iterator, Optional

import pyro
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.distributions.torch import Categorical
from pyro.distributions.unit import Unit
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK
from pyroapi.dispatch import GenericModule
from torch.distributions import constraints, transform_to

from ppgen.inference._deferred import Deferred
from ppgen.primitives import DATA_SITE, interpreted_by

_DEFERRED_DISTRIBUTIONS = "ppgen.inference._deferred"  # ppgen.dist while the interpreter runs


class Unsupported(Exception):
    """The program does something the interpreter does not model: run it under Pyro."""


class DeeperPlates(Exception):
    """A plate sits at a dim deeper than the enumeration dims were placed: rerun with
    ``nesting`` plate dims."""

    def __init__(self, nesting: int) -> None:
        super().__init__(nesting)
        self.nesting = nesting


class _PyroGuard(Messenger):
    """On Pyro's stack during an interpreted run: any ``pyro.*`` primitive reaching it was
    called around the ppgen primitives, which the interpreter cannot see."""

    def _process_message(self, msg: Any) -> None:
        raise Unsupported(f"the program calls pyro directly (site {msg.get('name')!r})")


class _Plate:
    def __init__(self, interpreter: "EnumerationInterpreter", name: str, size: int, dim: Optional[int]) -> None:
        self.interpreter, self.name, self.size, self.requested_dim = interpreter, name, size, dim

    def __enter__(self) -> torch.Tensor:
        self.interpreter._enter_plate(self)
        return torch.arange(self.size)

    def __exit__(self, *exc: Any) -> None:
        self.interpreter._exit_plate(self)

    def __iter__(self) -> Iterator[Any]:
        raise Unsupported(f"plate {self.name!r} is iterated (a sequential plate)")

    def __call__(self, fn: Callable) -> Callable:
        raise Unsupported(f"plate {self.name!r} is used as a decorator")


class _Markov:
    """``pyro.markov``'s bookkeeping: the site names of each step, and which steps are visible
    (the current one and ``history`` before it). Re-entrant: iterating enters once per step."""

    def __init__(self, interpreter: "EnumerationInterpreter", history: int, keep: bool, iterable: Optional[Iterable]) -> None:
        self.interpreter, self.history, self.keep, self.iterable = interpreter, history, keep, iterable
        self.steps: list[set[str]] = []
        self.position = -1
        self.entered = 0

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise Unsupported("markov() without an iterable is iterated")
        with ExitStack() as stack:
            for value in self.iterable:
                stack.enter_context(self)
                yield value

    def __enter__(self) -> "_Markov":
        self.position += 1
        if len(self.steps) <= self.position:
            self.steps.append(set())
        self.entered += 1
        if self.entered == 1:
            self.interpreter.markovs.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.keep:
            self.steps.pop()
        self.position -= 1
        self.entered -= 1
        if self.entered == 0:
            self.interpreter.markovs.remove(self)

    def visible(self) -> Iterator[set[str]]:
        return iter(self.steps[max(0, self.position - self.history) : self.position + 1])


class EnumerationInterpreter:
    """Runs a ppgen program once with its finite latents enumerated in parallel.

    ``first_available_dim`` is the rightmost dim for enumeration (-1 - max_plate_nesting);
    ``params`` maps param-site names to values that override the program's initial values.
    After :meth:`run`: ``sites`` (name -> recorded site, program order; a latent's
    "enumerate_dim" is its enumeration dim, "visible_dims" maps the enumeration dims visible to
    a site to their latents), ``params`` and ``plates`` (name -> (dim, size)).
    """

    def __init__(self, first_available_dim: int, params: Optional[dict[str, torch.Tensor]] = None, fixed_nesting: bool = False) -> None:
        self.first_available_dim = first_available_dim
        self.fixed_nesting = fixed_nesting
        self.given_params = params or {}
        self.sites: dict[str, dict] = {}
        self.params: dict[str, torch.Tensor] = {}
        self.plates: dict[str, tuple[int, int]] = {}
        self.active_plates: list[_Plate] = []
        self._plate_names: tuple[str, ...] = ()  # the active plates' names in dim order
        self.markovs: list[_Markov] = []
        self._next_dim = first_available_dim
        self._global_dims: dict[int, str] = {}  # enumeration dim -> latent, never recycled
        self._markov_depths: dict[str, int] = {}
        self._value_dims: dict[str, dict[int, str]] = {}
        self._supports: dict[tuple[int, int], torch.Tensor] = {}
        self._stack_depth = 0

    def run(self, program: Callable, args: tuple, kwargs: dict) -> None:
        if _PYRO_STACK:
            raise Unsupported("called inside a Pyro handler, which would see every site")
        saved = GenericModule.current_backend["distributions"]
        GenericModule.current_backend["distributions"] = _DEFERRED_DISTRIBUTIONS
        try:
            with _PyroGuard(), interpreted_by(self):
                self._stack_depth = len(_PYRO_STACK)
                program(*args, **kwargs)
        finally:
            GenericModule.current_backend["distributions"] = saved

    # ----------------------------------------------------------------------------------------
    # primitives

    def _check_stack(self, name: str) -> None:
        if len(_PYRO_STACK) != self._stack_depth:
            raise Unsupported(f"site {name!r} runs inside a Pyro handler")

    def sample(self, name: str, fn: Any, obs: Any, infer: dict) -> Any:
        self._check_stack(name)
        if name in self.sites:
            raise Unsupported(f"site {name!r} is sampled twice")
        if type(fn) is not Deferred and not isinstance(fn, TorchDistributionMixin):
            raise Unsupported(f"site {name!r}: {type(fn).__name__} is not a Pyro distribution")
        if (len(infer) > 1 or DATA_SITE not in infer) and any(
            key != DATA_SITE and not (key == "enumerate" and value == "parallel") for key, value in infer.items()
        ):
            raise Unsupported(f"site {name!r} has infer options {sorted(infer)}")
        return self._record(name, fn, obs, infer)

    def _record(self, name: str, fn: Any, obs: Any, infer: dict) -> Any:
        plates = self._plates_of(name, fn)
        visible = dict(self._global_dims)
        in_markov = bool(self.markovs)
        if in_markov:
            self._add_visible(visible)
            for markov in self.markovs:
                markov.steps[markov.position].add(name)
            self._markov_depths[name] = len(self.markovs)
        if obs is not None:
            if not isinstance(obs, torch.Tensor):
                raise Unsupported(f"site {name!r}: observed value of type {type(obs).__name__}")
            value, enumerate_dim = obs, None
            shape = value.shape[: value.dim() - len(fn.event_shape)]
            self._value_dims[name] = {d: n for d, n in visible.items() if len(shape) >= -d and shape[d] > 1} if visible else {}
        else:
            value, enumerate_dim = self._enumerate(name, fn, not in_markov, visible)
        self.sites[name] = {
            "name": name, "type": "sample", "fn": fn, "value": value, "is_observed": obs is not None, "infer": infer,
            "scale": 1.0, "mask": None, "plates": plates, "visible_dims": visible, "enumerate_dim": enumerate_dim,
        }
        return value

    def _add_visible(self, visible: dict[int, str]) -> None:
        """Add the enumeration dims of the latents visible from the current markov steps: a
        site is visible if every markov context it was sampled in still shows its step."""
        if len(self.markovs) == 1:
            depths, value_dims = self._markov_depths, self._value_dims
            for step in self.markovs[0].visible():
                for other in step:
                    dims = value_dims[other]
                    if dims and depths[other] == 1:
                        visible.update(dims)
            return
        scope: Counter = Counter()
        for markov in self.markovs:
            for step in markov.visible():
                scope.update(step)
        for other, count in scope.items():
            if self._markov_depths[other] == count:
                visible.update(self._value_dims[other])

    def _enumerate(self, name: str, fn: Any, is_global: bool, visible: dict[int, str]) -> tuple[torch.Tensor, int]:
        if not fn.has_enumerate_support or fn.event_shape:
            raise Unsupported(f"latent {name!r} cannot be enumerated ({type(fn).__name__})")
        dim = self._next_dim
        if is_global:
            self._next_dim -= 1
            self._global_dims[dim] = name
        else:
            while dim in visible:
                dim -= 1
        K = fn.num_categories if isinstance(fn, Deferred) else int(fn._num_events) if type(fn) is Categorical else None
        if K is not None:
            value = self._supports.get((K, dim))
            if value is None:
                value = torch.arange(K).reshape((K,) + (1,) * (-1 - dim))
                self._supports[(K, dim)] = value
        else:
            support = fn.enumerate_support(expand=False)
            if support.numel() != support.shape[0]:
                raise Unsupported(f"latent {name!r}: its support varies across its batch")
            value = support.reshape((support.shape[0],) + (1,) * (-1 - dim))
        visible[dim] = name
        self._value_dims[name] = {dim: name} if value.shape[0] > 1 else {}
        return value, dim

    def _plates_of(self, name: str, fn: Any) -> tuple[str, ...]:
        """The site's plates (in dim order), after Pyro's broadcasting check: the distribution's
        batch shape must be 1 or the plate's size along each plate dim."""
        batch = fn.batch_shape
        for plate in self.active_plates:
            dim = plate.dim
            if len(batch) >= -dim and batch[dim] != 1 and batch[dim] != plate.size:
                raise Unsupported(f"site {name!r}: batch shape {tuple(batch)} does not fit plate {plate.name!r}")
        return self._plate_names

    def plate(self, name: str, size: Any, subsample_size: Optional[int], dim: Optional[int]) -> _Plate:
        if not isinstance(size, numbers.Integral) or (subsample_size is not None and subsample_size != size):
            raise Unsupported(f"plate {name!r} is subsampled or has a non-integer size")
        return _Plate(self, name, int(size), dim)

    def _enter_plate(self, plate: _Plate) -> None:
        self._check_stack(plate.name)
        used = {p.dim for p in self.active_plates}
        if any(p.name == plate.name for p in self.active_plates):
            raise Unsupported(f"plate {plate.name!r} is nested in itself")
        dim = plate.requested_dim
        if dim is None:
            dim = -1
            while dim in used:
                dim -= 1
        elif dim >= 0 or dim in used:
            raise Unsupported(f"plate {plate.name!r}: dim {dim} is invalid or taken")
        if dim <= self.first_available_dim:
            if self.fixed_nesting:
                raise Unsupported(f"plate {plate.name!r} at dim {dim} is deeper than max_plate_nesting")
            raise DeeperPlates(-dim)
        if self.plates.setdefault(plate.name, (dim, plate.size)) != (dim, plate.size):
            raise Unsupported(f"plate {plate.name!r} is used with two dims or sizes")
        plate.dim = dim
        self.active_plates.append(plate)
        self._plate_names = tuple(p.name for p in sorted(self.active_plates, key=lambda p: p.dim))

    def _exit_plate(self, plate: _Plate) -> None:
        self.active_plates.remove(plate)
        self._plate_names = tuple(p.name for p in sorted(self.active_plates, key=lambda p: p.dim))

    def param(self, name: str, init_value: Any, constraint: Any, event_dim: Optional[int]) -> torch.Tensor:
        self._check_stack(name)
        store = pyro.get_param_store()
        if name in self.given_params:
            value = self.given_params[name]
        elif name in self.params:
            return self.params[name]
        elif name in store:
            value = store[name]
        elif init_value is None:
            raise Unsupported(f"param {name!r} has no initial value")
        else:
            transform = transform_to(constraints.real if constraint is None else constraint)
            value = transform(transform.inv(torch.as_tensor(init_value)))
        self.params[name] = value
        return value

    def deterministic(self, name: str, value: Any) -> Any:
        self._check_stack(name)
        return value

    def factor(self, name: str, log_factor: Any) -> None:
        self._check_stack(name)
        if name in self.sites:
            raise Unsupported(f"site {name!r} is sampled twice")
        unit = Unit(log_factor)
        self._record(name, unit, unit.sample(), {"is_auxiliary": True})

    def module(self, name: str, nn_module: Any) -> Any:
        raise Unsupported(f"module {name!r}: torch modules run under Pyro")

    def markov(self, fn: Any, history: int, keep: bool) -> _Markov:
        if fn is not None and callable(fn):
            raise Unsupported("markov used as a decorator")
        return _Markov(self, history, keep, fn)
