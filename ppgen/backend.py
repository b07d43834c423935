"""Backend choice and array conversion.

A classical ppgen program is written against ``ppgen.dist`` and ``ppgen.ops``, which
``pyroapi`` routes to Pyro (PyTorch) or NumPyro (JAX) at call time. This module owns that
switch and the conversion of user data between torch, JAX and NumPy, so no engine or user
converts arrays by hand.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch
from pyro.ops.provenance import ProvenanceTensor
from pyroapi.dispatch import GenericModule, _ALIASES

Backend = Literal["pyro", "numpyro"]
BACKENDS: tuple[str, ...] = ("pyro", "numpyro")

#: The pyroapi modules of each backend. ``ppgen.dist`` is ppgen's own namespace on both, so
#: that a family one backend lacks is ported (GaussianRandomWalk on Pyro) or refused by name.
_MODULES = {
    "pyro": {**_ALIASES["pyro"], "distributions": "ppgen._pyro_distributions"},
    "numpyro": {**_ALIASES["numpy"], "distributions": "ppgen._numpyro_distributions"},
}
# pyroapi's default, outside any ``use_backend`` block (a program called directly), is Pyro.
if GenericModule.current_backend["distributions"] == _ALIASES["pyro"]["distributions"]:
    GenericModule.current_backend["distributions"] = _MODULES["pyro"]["distributions"]


def current_backend() -> Backend:
    """The backend that ``ppgen.sample`` and friends dispatch to right now."""
    return "numpyro" if GenericModule.current_backend["pyro"].startswith("numpyro") else "pyro"


_NUMPYRO_ZEROS_CHECKED = False


def _fix_numpyro_zeros() -> None:
    """``numpyro.compat.ops.zeros`` (what ``ppgen.ops.zeros`` is on NumPyro) returns ones in
    NumPyro <= 0.22; replace it with the intended function once."""
    global _NUMPYRO_ZEROS_CHECKED
    if _NUMPYRO_ZEROS_CHECKED:
        return
    _NUMPYRO_ZEROS_CHECKED = True
    import jax
    import jax.numpy as jnp
    from numpyro.compat import ops as numpyro_ops

    with jax.ensure_compile_time_eval():  # the first NumPyro run may be inside a jit trace
        if float(jnp.sum(numpyro_ops.zeros(1))) == 0.0:
            return

    def zeros(*sizes: Any, **kwargs: Any) -> Any:
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = tuple(sizes[0])
        return jnp.zeros(sizes, **kwargs)

    numpyro_ops.zeros = zeros


@contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Run the enclosed program code on ``backend`` ("pyro" or "numpyro")."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numpyro":
        _fix_numpyro_zeros()
    saved = dict(GenericModule.current_backend)
    GenericModule.current_backend.update(_MODULES[backend])
    try:
        yield
    finally:
        GenericModule.current_backend.clear()
        GenericModule.current_backend.update(saved)


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor)) or type(value).__module__.startswith("jax")


def to_numpy(value: Any) -> Any:
    """Convert a torch tensor or JAX array (or a dict/tuple/list of them) to NumPy."""
    if isinstance(value, dict):
        return {key: to_numpy(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_numpy(item) for item in value)
    if isinstance(value, ProvenanceTensor):
        value = value._t
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if _is_array(value):
        return np.asarray(value)
    return value


def numpy_function(func: Callable, args: tuple, kwargs: dict) -> Any:
    """NumPy's ``func`` applied to plain NumPy copies of the tensors in ``args`` and ``kwargs``:
    the ``__array_function__`` of tensors that stand for NumPy data (``np.max(x)`` on a tensor
    otherwise calls ``x.max(axis=None)``, which torch refuses)."""
    return func(*to_numpy(args), **to_numpy(kwargs))


class NumpyDataTensor(torch.Tensor):
    """The torch tensor a NumPy or JAX array argument becomes on Pyro: NumPy's functions work
    on it as on the array the user passed (``int(np.max(items)) + 1``, ``np.unique(dept)``), so
    a program written against NumPy data runs unchanged. Everything else is a plain tensor:
    torch operations on it return plain tensors, at no extra cost."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __array_function__(self, func: Callable, types: Any, args: tuple, kwargs: dict) -> Any:
        return numpy_function(func, args, kwargs)


def to_backend(value: Any, backend: str) -> Any:
    """Convert arrays inside ``value`` to the array type of ``backend``.

    Floats, ints, strings, None, modules and other objects pass through unchanged; dtypes
    are kept (a float64 NumPy array becomes a float64 tensor).
    """
    if isinstance(value, dict):
        return {key: to_backend(item, backend) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_backend(item, backend) for item in value)
    if not _is_array(value):
        return value
    if backend == "pyro":
        if isinstance(value, torch.Tensor):
            return value
        array = np.asarray(value)
        return torch.as_tensor(array if array.flags.writeable else array.copy()).as_subclass(NumpyDataTensor)
    import jax.numpy as jnp

    return jnp.asarray(to_numpy(value))


@contextmanager
def torch_precision(dtype: torch.dtype = torch.float64, enabled: bool = True) -> Iterator[None]:
    """Run the enclosed Pyro code with ``dtype`` as torch's default floating type.

    Engines on Pyro compute in float64 by default, so that constants written as Python floats
    in a program (``dist.Normal(0., 1.)``) match float64 data and exact answers agree to 1e-6.
    Programs with torch modules keep the modules' precision (``enabled=False``).
    """
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype if enabled else saved)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


Precision = Literal["float64", "float32"]
PRECISIONS: tuple[str, ...] = ("float64", "float32")


def check_precision(owner: str, precision: Any) -> Precision:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ``ValueError`` naming ``owner``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{owner}: precision must be 'float64' or 'float32', got {precision!r}")
    return precision


@contextmanager
def jax_precision(precision: Precision = "float64") -> Iterator[None]:
    """Run the enclosed JAX code in ``precision``, whatever the process-wide setting.

    JAX computes in float32 unless ``jax_enable_x64`` is set, and that flag is process-global.
    Engines on NumPyro trace, compile and run inside this scope (``jax.enable_x64`` as a
    context manager, which is thread-local and restored on exit), so a user's own float32 JAX
    code keeps its precision, and a user who turned x64 on globally can still ask an engine
    for float32. Functions compiled here must be called here again: JAX's jit caches, and
    ppgen's compiled-sampler keys, include the precision.
    """
    import jax

    with jax.enable_x64(precision == "float64"):
        yield


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off: running a long program (tracing it, or
    interpreting it for enumeration) allocates tens of thousands of short-lived, acyclic objects
    (sites, factors, tensor views), freed by reference counting, and every collection of the
    older generations their allocation triggers traverses the whole heap (a quarter of the run
    in a large process). Cycles created meanwhile are collected after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
