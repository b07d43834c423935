"""Keys for reusing a program's traced structure across calls (:func:`ppgen.structure.inspect`).

A structure is reused when the program and the *signature* of its call are unchanged. The
signature keeps of each argument what can change the structure without the program reading
a value in Python (reads are caught by :func:`ppgen.provenance.recording_value_reads`):

* arrays and tensors passed as arguments (traced with provenance): type, shape, dtype;
* plain Python values (ints, floats, strings, None, tuples, lists, dicts): the value itself,
  since they may set plate sizes and control flow; arrays *inside* them are not traced, so
  they enter by their content (:func:`content_digest`);
* torch modules: the module itself, its training flag and the version counter of each of its
  tensors (an optimiser step changes them in place). A learning engine that trains the modules
  with one traced structure moves that structure to the trained modules' key
  (:meth:`StructureCache.rekey`): a ``score`` or ``learn`` after ``learn`` does not trace again;
  weights changed any other way do;
* functions and classes: themselves;
* anything else: no signature, and the structure is not reused.

The program enters by identity (weakly: the cache does not keep a program alive), together
with its code, the contents of its closure, its defaults and the global variables its code
names (numbers, strings, arrays by content, containers; functions and classes by identity;
modules and other objects are left out), so a redefined or rebound function, or a global
``K = 5`` changed between calls, is traced afresh. Globals read only by other functions the
program calls are not part of the key. Positional and keyword arguments are kept apart as given.
"""

from __future__ import annotations

import functools
import hashlib
import types
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar

import numpy as np
import torch

from ppgen.backend import to_numpy

Entry = TypeVar("Entry")
_PLAIN = (type(None), bool, int, float, complex, str, bytes)
_SCALARS = frozenset(_PLAIN)


class Unkeyable(Exception):
    """An argument whose signature cannot be told: the call's structure is not reused."""


def _is_array(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray)) or type(value).__module__.startswith("jax")


def content_digest(value: Any) -> tuple:
    """Shape, dtype and a hash of the bytes of an array or tensor: equal iff the contents are."""
    array = np.ascontiguousarray(to_numpy(value))
    return (tuple(array.shape), str(array.dtype), hashlib.blake2b(array.view(np.uint8).reshape(-1), digest_size=16).digest())


def _module_signature(module: torch.nn.Module) -> tuple:
    tensors = list(module.parameters()) + list(module.buffers())
    return (module, module.training, tuple(t._version for t in tensors))


def signature(value: Any, traced: bool = True) -> Any:
    """A hashable stand-in for ``value`` (see the module's docstring). ``traced`` arrays (the
    arguments themselves) enter by shape and dtype, others (inside containers, closures) by
    content."""
    if isinstance(value, _PLAIN):
        return (type(value), value)
    if isinstance(value, np.generic):
        return (type(value), value.item())
    if _is_array(value):
        if not traced:
            return ("content",) + content_digest(value)
        device = str(value.device) if isinstance(value, torch.Tensor) else None
        return (type(value), tuple(value.shape), str(value.dtype), device)
    if isinstance(value, (tuple, list)):
        kinds = tuple(map(type, value))
        if set(kinds) <= _SCALARS:  # a list of numbers (data given as a list): at C speed
            return (type(value), kinds, tuple(value))
        return (type(value), tuple(signature(item, traced=False) for item in value))
    if isinstance(value, dict):
        return (type(value), tuple((signature(k, False), signature(v, False)) for k, v in value.items()))
    if isinstance(value, torch.nn.Module):
        return _module_signature(value)
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        return value
    raise Unkeyable(type(value).__name__)


def program_signature(model: Callable) -> tuple:
    """What of the program itself can change its structure: its code, closure and defaults
    (a ``functools.partial``: also its bound arguments). Other callables (objects whose
    attributes the program may read) raise :class:`Unkeyable`."""
    if isinstance(model, functools.partial):
        bound = (tuple(signature(a, traced=False) for a in model.args), signature(model.keywords, traced=False))
        return (program_signature(model.func), bound)
    if not isinstance(model, types.FunctionType):
        raise Unkeyable(type(model).__name__)
    function = model
    closure = []
    for cell in function.__closure__ or ():
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell
            contents = None
        closure.append(contents if isinstance(contents, types.FunctionType) else signature(contents, traced=False))
    defaults = signature(function.__defaults__, traced=False)
    keyword_defaults = signature(function.__kwdefaults__, traced=False)
    return (function.__code__, tuple(closure), defaults, keyword_defaults, _globals_signature(function))


def _globals_signature(function: types.FunctionType) -> tuple:
    """The global variables ``function``'s code names, each by its signature (those that have
    one: modules and arbitrary objects are left out)."""
    out = []
    for name in function.__code__.co_names:
        if name not in function.__globals__:
            continue
        value = function.__globals__[name]
        if isinstance(value, types.ModuleType):
            continue
        try:
            out.append((name, signature(value, traced=False)))
        except Unkeyable:
            continue
    return tuple(out)


def call_key(model: Callable, args: tuple, kwargs: dict) -> Optional[tuple]:
    """The key of ``model(*args, **kwargs)``'s structure, or None when it cannot be told."""
    try:
        return (
            program_signature(model),
            tuple(signature(a) for a in args),
            tuple((name, signature(kwargs[name])) for name in sorted(kwargs)),
            torch.get_default_dtype(),
        )
    except Unkeyable:
        return None


@dataclass
class CacheStatistics:
    """How often :func:`ppgen.structure.inspect` traced a program and reused a structure."""

    traces: int = 0
    reuses: int = 0


class StructureCache(Generic[Entry]):
    """Entries per program (held weakly), the ``size`` most recently used keys of each kept."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._programs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.statistics = CacheStatistics()

    def get(self, model: Callable, key: tuple) -> Optional[Entry]:
        entries = self._entries(model, create=False)
        if entries is None or key not in entries:
            return None
        entries.move_to_end(key)
        return entries[key]

    def put(self, model: Callable, key: tuple, entry: Entry) -> None:
        entries = self._entries(model, create=True)
        if entries is None:
            return
        entries[key] = entry
        entries.move_to_end(key)
        while len(entries) > self.size:
            entries.popitem(last=False)

    def rekey(self, model: Callable, old: Optional[tuple], new: Optional[tuple]) -> None:
        """Keep the entry of ``old`` under ``new`` instead: a learning engine that trained a
        program's modules in place (their version counters moved, so ``old`` cannot match again)
        trained it with the structure traced before, which the next call then reuses."""
        entries = self._entries(model, create=False)
        if entries is None or old is None or new is None or old not in entries:
            return
        entries[new] = entries.pop(old)
        entries.move_to_end(new)

    def discard(self, model: Callable, key: tuple) -> None:
        entries = self._entries(model, create=False)
        if entries is not None:
            entries.pop(key, None)

    def clear(self) -> None:
        self._programs.clear()
        self.statistics = CacheStatistics()

    def _entries(self, model: Callable, create: bool) -> Optional[OrderedDict]:
        try:
            entries = self._programs.get(model)
            if entries is None and create:
                entries = self._programs[model] = OrderedDict()
        except TypeError:  # not weakly referenceable: never cached
            return None
        return entries
