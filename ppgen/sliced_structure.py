"""The structure of a minibatch run, read from traces of slices of its data (issue 16).

An engine that takes B of the N data per step (``subsample_size=B``) never needs all N data
at once, except in a final streamed pass. Tracing the program on all N data to read its
structure would: every site inside the data plate, its draws and its data checks would be
built at size N once (hundreds of MB at N = 1e7). The structure does not depend on N, only
the data plate's size does, so it is read from two small traces instead.

Let N be the largest leading dimension of the array arguments (NumPy arrays, memory-mapped
or not, and tensors). The program is traced on the first k₁ = max(B, 2) rows and on the first
k₂ = k₁ + 1 rows of every array argument with N rows (views: no other row is read). The
two structures must agree in everything except sizes that are k₁ in the first and k₂ in
the second (plate sizes, positions of site shapes): those are the sliced dimension, and
take N. The result is the structure a trace on all N data gives, with the arguments'
shapes and roles read from the full arguments.

When that cannot be told, the full trace is used (return None): the data are small
(k₂ ≥ N), the program fails on a slice (a plate sized by another argument, say; the full
trace then gives the error that concerns the user), the two traces differ otherwise (sites
created per datum), or the structure depends on the values of the data (the program read
them in Python, e.g. ``K = int(y.max()) + 1``: known from the structure cache declining to
keep the trace, :mod:`ppgen.structure_cache`).

Data checks (NaN, support, shapes) then see the slice here; the engine's per-step traces
check each minibatch as it is drawn.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Optional

import numpy as np
import torch

from ppgen.structure import ModelStructure, Plate, Site, bind_arguments, inspect, structure_cache
from ppgen.structure_cache import call_key


def minibatch_structure(model: Callable, args: tuple, kwargs: dict, batch: int) -> Optional[ModelStructure]:
    """The structure of ``model(*args, **kwargs)`` traced on slices of its data (see the
    module's docstring), or None when the full trace is needed. ``batch``: the engine's
    ``subsample_size`` B."""
    rows = _data_rows(args, kwargs)
    small, large = max(int(batch), 2), max(int(batch), 2) + 1
    if rows is None or large >= rows:
        return None
    try:
        first = _traced_on_slice(model, args, kwargs, rows, small)
        second = _traced_on_slice(model, args, kwargs, rows, large)
    except Exception:  # noqa: BLE001 - the full trace raises what concerns the user
        return None
    if first is None or second is None:
        return None
    return _rescaled(first, second, (small, large), rows, bind_arguments(model, args, kwargs))


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim >= 1


def _data_rows(args: tuple, kwargs: dict) -> Optional[int]:
    sizes = [int(v.shape[0]) for v in list(args) + list(kwargs.values()) if _is_array(v)]
    return max(sizes) if sizes else None


def _traced_on_slice(model: Callable, args: tuple, kwargs: dict, rows: int, size: int) -> Optional[ModelStructure]:
    """The structure traced on the first ``size`` of ``rows`` rows; None when it depends on
    the data's values (the cache keeps no trace that read them)."""
    cut = lambda v: v[:size] if _is_array(v) and v.shape[0] == rows else v  # noqa: E731
    sliced_args, sliced_kwargs = tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}
    structure = inspect(model, *sliced_args, **sliced_kwargs)
    key = call_key(model, sliced_args, sliced_kwargs)
    if key is None or structure_cache().get(model, key) is None:
        return None
    return structure


def _rescaled(
    first: ModelStructure, second: ModelStructure, sizes: tuple[int, int], rows: int, bound: dict[str, Any]
) -> Optional[ModelStructure]:
    """``first`` with its sliced dimensions (``sizes[0]`` there, ``sizes[1]`` in ``second``)
    set to ``rows``; None if the two differ in anything else."""

    def shape(a: tuple[int, ...], b: tuple[int, ...]) -> Optional[tuple[int, ...]]:
        if len(a) != len(b):
            return None
        out = []
        for x, y in zip(a, b):
            if (x, y) == sizes:
                out.append(rows)
            elif x == y:
                out.append(x)
            else:
                return None
        return tuple(out)

    if first.name != second.name or first.precision != second.precision or list(first.sites) != list(second.sites) or list(first.plates) != list(second.plates):
        return None
    plates: dict[str, Plate] = {}
    for name, a in first.plates.items():
        size = shape((a.size,), (second.plates[name].size,))
        if size is None or replace(a, size=0) != replace(second.plates[name], size=0):
            return None
        plates[name] = replace(a, size=size[0])
    sites: dict[str, Site] = {}
    for name, a in first.sites.items():
        b = second.sites[name]
        batch_shape, event_shape = shape(a.batch_shape, b.batch_shape), shape(a.event_shape, b.event_shape)
        if batch_shape is None or event_shape is None or replace(a, batch_shape=(), event_shape=()) != replace(b, batch_shape=(), event_shape=()):
            return None
        sites[name] = replace(a, batch_shape=batch_shape, event_shape=event_shape)
    arguments = {}
    for name, a in first.arguments.items():
        b = second.arguments.get(name)
        full_shape = tuple(np.shape(bound[name])) if name in bound else None
        if b is None or full_shape is None or replace(a, shape=()) != replace(b, shape=()):
            return None
        arguments[name] = replace(a, shape=full_shape)
    if list(arguments) != list(second.arguments):
        return None
    return ModelStructure(first.name, sites, plates, arguments, first.precision)
