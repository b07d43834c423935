"""Provenance tracking for the structure tracer, at a fraction of Pyro's per-operation cost.

:class:`TrackedTensor` is a :class:`pyro.ops.provenance.ProvenanceTensor` (so Pyro's
``get_provenance`` / ``detach_provenance`` read it) whose ``__torch_function__`` walks the
operation's arguments once by hand instead of flattening them twice with ``torch.utils._pytree``:
tracing a 2,000-site hidden Markov model runs ~35,000 tensor operations, and the pytree walk
cost ~100 µs each. Provenance semantics are Pyro's: the provenance of an operation's outputs is
the union of its inputs' provenances.

Within :func:`recording_value_reads`, a tracked tensor also notes every time the program reads
its *values* in Python (``bool``, ``int``, ``.item()``, NumPy conversion, iteration, ...) or
computes a tensor whose *shape* depends on them (``y[y > 0]``, ``torch.unique``,
``torch.zeros(n)``): a structure traced from such a program depends on the data, not only on
its shapes, and must not be reused for other data (``ppgen.structure.inspect``).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Optional

import torch
from pyro.ops.provenance import ProvenanceTensor

from ppgen.backend import numpy_function


def _strip(value: Any, sources: list[frozenset]) -> Any:
    """``value`` with every tracked tensor replaced by its plain tensor; their provenances are
    appended to ``sources``."""
    if isinstance(value, ProvenanceTensor):
        sources.append(value._provenance)
        return value._t
    if isinstance(value, (list, tuple)):
        if not any(isinstance(item, (ProvenanceTensor, list, tuple, dict)) for item in value):
            return value
        items = [_strip(item, sources) for item in value]
        if isinstance(value, list):
            return items
        if hasattr(value, "_fields"):  # namedtuple
            return type(value)(*items)
        return type(value)(items)
    if isinstance(value, dict):
        return {key: _strip(item, sources) for key, item in value.items()}
    return value


def _attach(value: Any, provenance: frozenset) -> Any:
    """``value`` with every tensor in it tracked with ``provenance``."""
    if isinstance(value, torch.Tensor):
        return TrackedTensor(value, provenance)
    if isinstance(value, (list, tuple)):
        items = [_attach(item, provenance) for item in value]
        if isinstance(value, list):
            return items
        if hasattr(value, "_fields"):
            return type(value)(*items)
        return type(value)(items)  # tuples and torch.return_types structseqs
    if isinstance(value, dict):
        return {key: _attach(item, provenance) for key, item in value.items()}
    return value


_T = torch.Tensor
# Python reads of a tensor's values
_VALUE_READS = frozenset({
    _T.__bool__, _T.__int__, _T.__float__, _T.__index__, _T.__complex__, _T.__format__, _T.__repr__,
    _T.item, _T.tolist, _T.numpy, _T.__array__,
})  # fmt: skip
# operations whose result's shape depends on the values of their tensor arguments: the number of
# distinct or nonzero elements, or a size given as a tensor to a factory
_VALUE_SHAPED = frozenset({
    torch.nonzero, _T.nonzero, torch.argwhere, _T.argwhere, torch.masked_select, _T.masked_select,
    torch.unique, _T.unique, torch.unique_consecutive, _T.unique_consecutive, torch.bincount, _T.bincount,
    torch.repeat_interleave, _T.repeat_interleave, torch.zeros, torch.ones, torch.empty, torch.full,
    torch.arange, torch.linspace, torch.logspace, torch.eye, torch.rand, torch.randn, torch.randint,
    torch.randperm,
})  # fmt: skip
# methods whose result's shape is given by their later arguments (``x.expand(n)``, ``one_hot(z, k)``)
_SIZED_BY_LATER_ARGUMENTS = frozenset({
    _T.new_zeros, _T.new_ones, _T.new_empty, _T.new_full, _T.expand, _T.reshape, _T.view, _T.repeat,
    _T.tile, torch.tile, _T.narrow, torch.narrow, torch.broadcast_to, _T.broadcast_to, _T.split,
    torch.split, _T.topk, torch.topk, torch.nn.functional.one_hot, torch.multinomial, _T.multinomial,
    torch.histc, _T.histc,
})  # fmt: skip
_value_reads: ContextVar[Optional[list[str]]] = ContextVar("value_reads", default=None)


@contextmanager
def recording_value_reads() -> Iterator[list[str]]:
    """Within this block, the names of the operations that read a tracked tensor's values in
    Python, or shaped a result by them, are appended to the list yielded."""
    reads: list[str] = []
    token = _value_reads.set(reads)
    saved = {name: getattr(torch, name) for name in _SCALAR_FACTORIES}
    for name, factory in saved.items():
        setattr(torch, name, _watched(factory))
    try:
        yield reads
    finally:
        for name, factory in saved.items():
            setattr(torch, name, factory)
        _value_reads.reset(token)


# factories that take a 0-d tensor as a number without dispatching to ``__torch_function__``
# (``torch.arange(n)``): watched by a wrapper while reads are recorded
_SCALAR_FACTORIES = ("arange", "randperm", "linspace", "logspace", "full")


def _watched(factory: Any) -> Any:
    @functools.wraps(factory)
    def watched(*args: Any, **kwargs: Any) -> Any:
        sources: list[frozenset] = []
        _strip(args, sources)
        _strip(kwargs, sources)
        if sources:
            _note_read(factory)
        return factory(*args, **kwargs)

    return watched


def _note_read(func: Any) -> None:
    reads = _value_reads.get()
    if reads is not None:
        reads.append(getattr(func, "__name__", repr(func)))


def _reads_values(func: Any, args: tuple, kwargs: Optional[dict]) -> bool:
    """Whether ``func(*args, **kwargs)``, with some tracked argument, reads values in Python or
    shapes its result by them: the lists above, ``torch.where(condition)`` and indexing by a
    boolean mask (``y[y > 0]``)."""
    if func in _VALUE_READS:
        return True
    if func in _VALUE_SHAPED:
        return True
    if func in _SIZED_BY_LATER_ARGUMENTS:
        return _tracked_beyond_first(args, kwargs)
    if func is torch.where:
        return len(args) + len(kwargs or {}) == 1
    if func is _T.__getitem__ and len(args) == 2:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in index)
    return False


def _tracked_beyond_first(args: tuple, kwargs: Optional[dict]) -> bool:
    """Whether a tracked tensor is passed other than as the first argument (a size, a count)."""
    rest: list[frozenset] = []
    _strip(args[1:], rest)
    if kwargs:
        _strip(kwargs, rest)
    return bool(rest)


class TrackedTensor(ProvenanceTensor):
    """A tensor carrying a frozenset of the names it was computed from."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        sources: list[frozenset] = []
        plain_args = _strip(args, sources)
        plain_kwargs = _strip(kwargs, sources) if kwargs else {}
        if sources and _value_reads.get() is not None and _reads_values(func, args, kwargs):
            _note_read(func)
        result = func(*plain_args, **plain_kwargs)
        if not sources:
            return result
        provenance = sources[0].union(*sources[1:]) if len(sources) > 1 else sources[0]
        return _attach(result, provenance)

    def __array_function__(self, func, types, args, kwargs):
        # NumPy functions of data arguments (int(np.max(x)) + 1) compute on the values; their
        # results are NumPy, untracked, as they are for plain tensors through ``__array__``
        _note_read(func)
        return numpy_function(func, args, kwargs)

    def __iter__(self) -> Iterator[torch.Tensor]:
        # torch skips __torch_function__ for iteration; the loop's length is the shape, but a
        # loop body usually reads the elements (``for v in y: if v > 0``), so count it as a read
        _note_read(_T.__iter__)
        return super().__iter__()


def track(value: torch.Tensor, provenance: frozenset) -> torch.Tensor:
    """``value`` (plain or tracked) tracked with exactly ``provenance``."""
    if isinstance(value, ProvenanceTensor):
        value = value._t
    return TrackedTensor(value, provenance)
