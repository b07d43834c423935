"""Drawing a ppgen program forward without Pyro's handler stack: the adversarial engine's draws.

An adversarial step runs the program forward on every critic and generator update to draw its
observed sites, x̃ = g_θ(ε). Under Pyro each primitive sends a message through the handler
stack (``module`` re-registers every network parameter in the store, ``plate`` builds a
subsample messenger, ``sample`` broadcasts and records), which costs more than a small
generator's forward pass. The program's structure does not change between steps, so
:class:`DrawInterpreter` gives the ppgen primitives their forward-sampling semantics directly:

* ``plate`` allocates dims as Pyro's plates do (the rightmost free dim, or the one asked for);
* ``sample`` expands the distribution to its plates' sizes as Pyro's ``BroadcastMessenger``
  does and draws it with ``rsample`` (so gradients reach the parameters), or returns ``obs``
  for an observed site that is not being drawn; the drawn values of ``names`` are kept;
* ``param`` and ``module`` return the parameter store's values (the tensors the optimiser
  moves), which the caller's first run under Pyro has created;
* ``deterministic``, ``factor`` and ``markov`` do not change a forward draw.

Whatever it does not model (a ``pyro.*`` primitive or a Pyro handler in the program, a
subsampled or sequential plate, a parameter not yet in the store) raises
:class:`~ppgen.inference._interpreter.Unsupported`, and :func:`same_draws` lets the caller check
once, from one random state, that the interpreter draws exactly what Pyro draws before using it.

:class:`AncestralInterpreter` is ``generate``'s variant (``engine="prior"``): every site drawn
except the kept data (a prompt), temperature and sampling warpers applied where Pyro's handlers
apply them, an outer plate of draws. A single ``generate`` call has no later steps to amortise a
comparison over, so the comparison is remembered per call signature (:func:`shown_same`,
:func:`remember_same`): the first call of a signature draws with Pyro and with the interpreter
from the same seed, and later calls use the interpreter if the draws were equal bit for bit.
Beam search's carried path uses the same memory (:mod:`ppgen.inference.beam`).
"""

from __future__ import annotations

import contextlib
import numbers
import weakref
from collections import OrderedDict
from typing import Any, Callable, Hashable, Iterator, Optional, Sequence

import pyro
import torch
from pyro.poutine.runtime import _PYRO_STACK

from ppgen.primitives import interpreted_by
from ppgen.warpers import warp_distribution

from ._interpreter import Unsupported, _PyroGuard


class _Plate:
    def __init__(self, interpreter: "DrawInterpreter", name: str, size: int, dim: Optional[int]) -> None:
        self.interpreter, self.name, self.size, self.requested_dim = interpreter, name, size, dim
        self.dim: Optional[int] = None

    def __enter__(self) -> torch.Tensor:
        self.interpreter._enter_plate(self)
        return self.interpreter._indices(self.size)

    def __exit__(self, *exc: Any) -> None:
        self.interpreter.active_plates.remove(self)

    def __iter__(self) -> Iterator[Any]:
        raise Unsupported(f"plate {self.name!r} is iterated (a sequential plate)")

    def __call__(self, fn: Callable) -> Callable:
        raise Unsupported(f"plate {self.name!r} is used as a decorator")


class DrawInterpreter:
    """Runs a ppgen program forward once, drawing every site from its distribution (observed
    sites in ``names`` too), and keeps the draws of ``names`` in ``values``."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.values: dict[str, torch.Tensor] = {}
        self.active_plates: list[_Plate] = []
        self._store = pyro.get_param_store()
        self._modules: dict[int, Any] = {}  # id -> module whose parameters are the store's tensors
        self._aranges: dict[int, torch.Tensor] = {}

    def run(self, program: Callable, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        if _PYRO_STACK:
            raise Unsupported("called inside a Pyro handler, which would see every site")
        self.values = {}
        with _PyroGuard(), interpreted_by(self):
            self._depth = len(_PYRO_STACK)
            program(*args, **kwargs)
        missing = [name for name in self.names if name not in self.values]
        if missing:
            raise Unsupported(f"the program did not draw {missing}")
        return self.values

    def _check_stack(self, name: str) -> None:
        if len(_PYRO_STACK) != self._depth:
            raise Unsupported(f"site {name!r} runs inside a Pyro handler")

    # ---- primitives ----------------------------------------------------------------------------
    def sample(self, name: str, fn: Any, obs: Any, infer: dict) -> Any:
        self._check_stack(name)
        if obs is not None and name not in self.names:
            return obs
        if not hasattr(fn, "expand") or not hasattr(fn, "batch_shape"):
            raise Unsupported(f"site {name!r}: {type(fn).__name__} is not a distribution")
        fn = self._broadcast(name, fn)
        value = fn.rsample() if fn.has_rsample else fn.sample()
        if name in self.names:
            self.values[name] = value
        return value

    def _broadcast(self, name: str, fn: Any, plates: Optional[list[_Plate]] = None) -> Any:
        """``fn`` expanded to the active plates (or to ``plates``), as Pyro's ``BroadcastMessenger``
        expands it."""
        plates = self.active_plates if plates is None else plates
        if not plates:
            return fn
        actual = tuple(fn.batch_shape)
        target: list[Optional[int]] = [None if size == 1 else size for size in actual]
        for plate in plates:
            if -plate.dim > len(target):
                target = [None] * (-plate.dim - len(target)) + target
            if target[plate.dim] is not None and target[plate.dim] != plate.size:
                raise Unsupported(f"site {name!r}: batch shape {actual} does not fit plate {plate.name!r} of size {plate.size}")
            target[plate.dim] = plate.size
        for i in range(-len(target), 0):
            if target[i] is None:
                target[i] = actual[i] if len(actual) >= -i else 1
        return fn if tuple(target) == actual else fn.expand(torch.Size(target))

    def plate(self, name: str, size: Any, subsample_size: Optional[int], dim: Optional[int]) -> _Plate:
        if not isinstance(size, numbers.Integral) or (subsample_size is not None and subsample_size != size):
            raise Unsupported(f"plate {name!r} is subsampled or has a non-integer size")
        return _Plate(self, name, int(size), dim)

    def _enter_plate(self, plate: _Plate) -> None:
        self._check_stack(plate.name)
        used = {p.dim for p in self.active_plates}
        dim = plate.requested_dim
        if dim is None:
            dim = -1
            while dim in used:
                dim -= 1
        elif dim >= 0 or dim in used:
            raise Unsupported(f"plate {plate.name!r}: dim {dim} is invalid or taken")
        plate.dim = dim
        self.active_plates.append(plate)

    def param(self, name: str, init_value: Any, constraint: Any, event_dim: Optional[int]) -> torch.Tensor:
        self._check_stack(name)
        if name not in self._store:
            raise Unsupported(f"param {name!r} is not in the parameter store yet")
        return self._store[name]

    def module(self, name: str, nn_module: Any) -> Any:
        self._check_stack(name)
        if self._modules.get(id(nn_module)) is not nn_module:
            for parameter_name, parameter in nn_module.named_parameters():
                stored = self._store._params.get(f"{name}$$${parameter_name}")
                if stored is None or stored is not parameter:
                    raise Unsupported(f"module {name!r}: parameter {parameter_name!r} is not the store's tensor")
            self._modules[id(nn_module)] = nn_module  # the tensors are trained in place: checked once
        return nn_module

    def _indices(self, size: int) -> torch.Tensor:
        """A plate's indices 0, ..., size − 1 (what ``with plate(...) as i`` binds)."""
        if size not in self._aranges:
            self._aranges[size] = torch.arange(size)
        return self._aranges[size]

    def deterministic(self, name: str, value: Any) -> Any:
        self._check_stack(name)
        return value

    def factor(self, name: str, log_factor: Any) -> None:
        self._check_stack(name)

    def markov(self, fn: Any, history: int, keep: bool) -> Any:
        if fn is None:
            return contextlib.nullcontext()
        if callable(fn):
            raise Unsupported("markov used as a decorator")
        return fn


def same_draws(pyro_draw: Callable[[], torch.Tensor], interpreted_draw: Callable[[], torch.Tensor]) -> bool:
    """Whether the two draws are equal, bit for bit, from the same random state (the global
    torch generator is restored afterwards, so the caller's random stream does not move)."""
    with torch.random.fork_rng():
        state = torch.get_rng_state()
        expected = pyro_draw()
        torch.set_rng_state(state)
        try:
            found = interpreted_draw()
        except Unsupported:
            return False
    return found.shape == expected.shape and found.dtype == expected.dtype and bool(torch.equal(found, expected))


class AncestralInterpreter(DrawInterpreter):
    """``generate``'s run of a program (``engine="prior"``) without Pyro's handler stack: every
    site drawn forwards from its conditional except the ``kept`` data (a prompt, returned as
    given), each drawn site's distribution first expanded to the program's plates, then
    tempered (``temper(fn, name)``) and warped (the ``chain`` of :mod:`ppgen.warpers`), then
    expanded to the outer plate of draws, in the order Pyro's handlers apply them; the values
    of every sample and deterministic site are kept. Parameters come from the (fresh) store or
    are created from their initial values as ``pyro.param`` creates them, and modules keep
    their own tensors (what a first ``pyro.module`` in a fresh store does)."""

    def __init__(self, kept: frozenset[str], temper: Optional[Callable[[Any, str], Any]] = None, chain: Sequence[Any] = ()) -> None:
        super().__init__(())
        self.kept, self.temper, self.chain = kept, temper, list(chain)
        self._params: dict[str, torch.Tensor] = {}
        self._outer: Optional[_Plate] = None

    def draw(self, program: Callable, args: tuple, kwargs: dict, plate_name: str, size: int, dim: int) -> dict[str, torch.Tensor]:
        """Run ``program`` once under a plate of ``size`` draws at ``dim``; site -> value."""
        if _PYRO_STACK:
            raise Unsupported("called inside a Pyro handler, which would see every site")
        self.values, self._params = {}, {}
        self._outer = _Plate(self, plate_name, size, dim)
        with _PyroGuard(), interpreted_by(self):
            self._depth = len(_PYRO_STACK)
            with self._outer:
                program(*args, **kwargs)
        return self.values

    def sample(self, name: str, fn: Any, obs: Any, infer: dict) -> Any:
        self._check_stack(name)
        if name in self.values:
            raise Unsupported(f"site {name!r} is sampled twice")
        if obs is not None and name in self.kept:
            self.values[name] = obs
            return obs
        if not hasattr(fn, "expand") or not hasattr(fn, "batch_shape"):
            raise Unsupported(f"site {name!r}: {type(fn).__name__} is not a distribution")
        fn = self._broadcast(name, fn, [plate for plate in self.active_plates if plate is not self._outer])
        if self.temper is not None:
            fn = self.temper(fn, name)
        if self.chain:
            fn = warp_distribution(fn, self.chain) or fn
        fn = self._broadcast(name, fn)
        value = fn.rsample() if fn.has_rsample else fn.sample()
        self.values[name] = value
        return value

    def deterministic(self, name: str, value: Any) -> Any:
        self._check_stack(name)
        self.values[name] = value
        return value

    def param(self, name: str, init_value: Any, constraint: Any, event_dim: Optional[int]) -> torch.Tensor:
        self._check_stack(name)
        if name in self._store:
            return self._store[name]
        if name not in self._params:
            if init_value is None or callable(init_value):
                raise Unsupported(f"param {name!r} has no initial value in the program")
            transform = torch.distributions.transform_to(torch.distributions.constraints.real if constraint is None else constraint)
            self._params[name] = transform(transform.inv(torch.as_tensor(init_value)))
        return self._params[name]

    def module(self, name: str, nn_module: Any) -> Any:
        self._check_stack(name)
        for parameter_name, parameter in nn_module.named_parameters():
            stored = self._store._params.get(f"{name}$$${parameter_name}")
            if stored is not None and stored is not parameter:  # pyro.module would load the store's values
                raise Unsupported(f"module {name!r}: the parameter store holds other tensors for {parameter_name!r}")
        return nn_module


#: Call signatures (per program, held weakly; the 8 latest) whose ancestral draws the
#: interpreter has been shown to give bit for bit as Pyro's handlers give them.
_SAME_AS_PYRO: "weakref.WeakKeyDictionary[Callable, OrderedDict[Hashable, None]]" = weakref.WeakKeyDictionary()
_REMEMBERED = 8


def shown_same(program: Callable, signature: Optional[Hashable]) -> bool:
    """Whether a comparison showed the interpreter draws ``program``'s call ``signature`` as Pyro does."""
    try:
        return signature is not None and signature in _SAME_AS_PYRO.get(program, ())
    except TypeError:  # a program that cannot be weakly referenced
        return False


def remember_same(program: Callable, signature: Optional[Hashable]) -> None:
    if signature is None:
        return
    try:
        signatures = _SAME_AS_PYRO.setdefault(program, OrderedDict())
    except TypeError:
        return
    signatures[signature] = None
    signatures.move_to_end(signature)
    while len(signatures) > _REMEMBERED:
        signatures.popitem(last=False)
