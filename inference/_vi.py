"""Helpers shared by the variational engines (cavi, advi, svi, meanfield)."""

from __future__ import annotations

from numbers import Number
from typing import Any

import numpy as np

from ppgen.backend import to_backend


def _as_array(value: Any) -> Any:
    """A list or tuple of numbers becomes a float64 array (data written as ``[1, 0, 1]``)."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Number) and not isinstance(v, bool) for v in value):
        return np.asarray(value, dtype=np.float64)
    return value


def pyro_arguments(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The model's arguments as torch tensors (float64 stays float64)."""
    args = tuple(_as_array(a) for a in args)
    kwargs = {k: _as_array(v) for k, v in kwargs.items()}
    return to_backend(args, "pyro"), to_backend(kwargs, "pyro")
