"""Checkpoints of iterative runs: the file format, the refusal of a foreign checkpoint, and
SIGINT/SIGTERM handling.

An engine given ``checkpoint=PATH`` saves its loop's state every ``checkpoint_every`` steps,
when the run is interrupted and when it ends; the same call again resumes from the file (a
finished run returns its finished result). The state a loop needs is an engine's ``state``
(a dataclass, NamedTuple, dict, list or tuple of tensors, NumPy / JAX arrays and numbers), the
objective trace, the torch and NumPy random states and whatever the engine keeps beside the
state (optimiser moments, the Pyro parameter store, the draws so far), given by the engine's
``capture`` / ``restore`` pair.

Format: ``torch.save`` of a dict holding only tensors, numbers, strings, ``None``, lists,
tuples and dicts, so that ``torch.load(path, weights_only=True)`` reads it (no pickled
objects). A NumPy or JAX array is stored as its raw bytes (a uint8 tensor) with its dtype and
shape, so it comes back bit for bit, whatever its dtype; a dataclass or NamedTuple is stored
as a dict of its fields and rebuilt on the *template* the resumed run builds itself (its own
initial state), so no class is ever named by the file. Writes are atomic (a temporary file in
the same directory, then ``os.replace``): an interruption during a save leaves the previous
checkpoint whole.

The header records the engine, its options and a fingerprint of the program (its code) and
of the data (shapes, dtypes and a SHA-256 of the values): a checkpoint written by another
call is refused with a ``ValueError`` saying which of the three differs.

Signals: while a loop runs with a checkpoint, SIGINT and SIGTERM only set a flag; the loop
finishes its step, saves, and returns the state reached marked ``interrupted``. The previous
handlers are restored when the loop ends. Without a checkpoint nothing is installed: Ctrl-C
is Python's ``KeyboardInterrupt`` (which the driver also turns into an interrupted result),
and SIGTERM keeps its default meaning (end the process), since there would be nothing to save.
Handlers can only be installed in the main thread; elsewhere the loop still saves every
``checkpoint_every`` steps.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import signal
import tempfile
import threading
from numbers import Number
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

FORMAT_VERSION = 1
_KIND = "__kind__"
_NOT_SAVED = ["checkpoint", "checkpoint_every", "progress"]
"""Engine options that do not change the run (left out of the header)."""


# --------------------------------------------------------------------------------------------
# encoding state as weights-only data


def _is_jax_array(value: Any) -> bool:
    return type(value).__module__.startswith("jax") and hasattr(value, "dtype") and hasattr(value, "shape")


def encode(value: Any) -> Any:
    """``value`` as tensors, numbers, strings, None, lists, tuples and dicts (see the module
    docstring); raises ``TypeError`` naming the type it cannot store."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray) or _is_jax_array(value):
        array = np.asarray(value, order="C")
        return {
            _KIND: "jax" if _is_jax_array(value) else "numpy",
            "dtype": str(array.dtype),
            "shape": list(array.shape),
            "bytes": torch.frombuffer(bytearray(array.tobytes()), dtype=torch.uint8) if array.nbytes else torch.zeros(0, dtype=torch.uint8),
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_KIND: "fields", "fields": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {_KIND: "fields", "fields": {name: encode(getattr(value, name)) for name in value._fields}}
    if isinstance(value, dict):
        if not all(isinstance(key, (str, int)) for key in value):
            raise TypeError(f"checkpoint: cannot store a dict with keys of type {sorted({type(k).__name__ for k in value})}")
        return {_KIND: "dict", "items": [[key, encode(item)] for key, item in value.items()]}
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, tuple):
        return tuple(encode(item) for item in value)
    raise TypeError(f"checkpoint: cannot store a value of type {type(value).__name__}")


def decode(stored: Any, template: Any = None) -> Any:
    """The inverse of :func:`encode`; dataclasses and NamedTuples are rebuilt on ``template``
    (a value of the same structure built by the resumed run)."""
    if isinstance(stored, dict) and _KIND in stored:
        kind = stored[_KIND]
        if kind in ("numpy", "jax"):
            array = np.frombuffer(stored["bytes"].numpy().tobytes(), dtype=np.dtype(stored["dtype"])).reshape(stored["shape"]).copy()
            if kind == "jax":
                import jax.numpy as jnp

                return jnp.asarray(array)
            return array
        if kind == "dict":
            template = template if isinstance(template, dict) else {}
            return {key: decode(item, template.get(key)) for key, item in stored["items"]}
        if kind == "fields":
            if template is None:
                raise ValueError("checkpoint: a stored record has no template to be rebuilt on")
            values = {name: decode(item, getattr(template, name)) for name, item in stored["fields"].items()}
            if isinstance(template, tuple):
                return template._replace(**values)
            rebuilt = copy.copy(template)
            for name, item in values.items():
                object.__setattr__(rebuilt, name, item)
            return rebuilt
    if isinstance(stored, list):
        templates = template if isinstance(template, list) and len(template) == len(stored) else [None] * len(stored)
        return [decode(item, t) for item, t in zip(stored, templates)]
    if isinstance(stored, tuple):
        templates = template if isinstance(template, tuple) and len(template) == len(stored) else (None,) * len(stored)
        return tuple(decode(item, t) for item, t in zip(stored, templates))
    return stored


# --------------------------------------------------------------------------------------------
# the header: which call wrote the file


def _digest(value: Any) -> str:
    """A short description of an argument: shape, dtype and a hash of the values for arrays,
    the parameters for torch modules, ``repr`` for plain values, the type otherwise."""
    if isinstance(value, torch.nn.Module):
        return f"{type(value).__name__}(" + ", ".join(f"{k}: {_digest(v)}" for k, v in value.state_dict().items()) + ")"
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (np.ndarray, np.generic)) or _is_jax_array(value):
        array = np.asarray(value, order="C")
        return f"array{list(array.shape)}:{array.dtype}:{hashlib.sha256(array.tobytes()).hexdigest()[:16]}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_digest(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_digest(v) for v in value) + "]"
    if value is None or isinstance(value, (bool, Number, str)):
        return repr(value)
    if callable(value):
        return _program_digest(value)
    return type(value).__name__


def _program_digest(function: Callable) -> str:
    """The program's name and a hash of its code (bytecode and constants)."""
    name = getattr(function, "__qualname__", type(function).__name__)
    code = getattr(function, "__code__", None) or getattr(getattr(function, "__call__", None), "__code__", None)
    if code is None:
        return name
    return f"{name}:{hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:16]}"


def header_for(engine: Any, model: Callable, args: tuple, kwargs: dict) -> dict[str, str]:
    """What identifies a call: the engine's name, its options (without the checkpoint's own
    and the progress bar), the program and the data."""
    options = {k: v for k, v in sorted(vars(engine).items()) if k not in _NOT_SAVED and not k.startswith("_")}
    return {
        "engine": str(engine.name),
        "options": _digest(options),
        "program": _program_digest(model),
        "data": _digest([list(args), dict(sorted(kwargs.items()))]),
    }


# --------------------------------------------------------------------------------------------
# signals


class _StopFlag:
    """Set by SIGINT / SIGTERM while a checkpointed loop runs."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None

    def __bool__(self) -> bool:
        return self.signal is not None

    def __call__(self, signum: int, frame: Any) -> None:
        self.signal = signum


def defer_signals(flag: _StopFlag) -> Callable[[], None]:
    """Make SIGINT and SIGTERM set ``flag`` instead of interrupting; returns the function that
    restores the previous handlers. Only the main thread can install handlers: elsewhere this
    does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {number: signal.signal(number, flag) for number in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    return restore


# --------------------------------------------------------------------------------------------
# the file


def check_options(owner: str, checkpoint: Any, checkpoint_every: Any) -> None:
    """scikit-learn-style validation of the two checkpoint options of engine ``owner``."""
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"{owner}: checkpoint must be a path (str or os.PathLike) or None, got {type(checkpoint).__name__}")
    if not isinstance(checkpoint_every, (int, np.integer)) or isinstance(checkpoint_every, bool) or checkpoint_every < 1:
        raise ValueError(f"{owner}: checkpoint_every must be a positive integer, got {checkpoint_every!r}")


class Checkpoint:
    """One checkpoint file for one engine call, holding a section per loop the call runs
    (one per start, or per group of chains).

    Parameters
    ----------
    path : where the file lives; read now if it exists (and refused with a ``ValueError`` when
        another call wrote it).
    every : save every ``every`` steps (and on interruption and at the end).
    header : :func:`header_for` of the call.
    """

    def __init__(self, path: Union[str, os.PathLike], every: int, header: dict[str, str]) -> None:
        self.path = Path(path)
        self.every = int(every)
        self.header = dict(header)
        self.stop = _StopFlag()
        self.sections: dict[str, Any] = {}
        if self.path.exists():
            try:
                stored = load(self.path)
            except Exception as error:  # not a torch file, or one holding pickled objects
                raise ValueError(f"checkpoint {str(self.path)!r} is not a ppgen checkpoint ({type(error).__name__}); delete it or pass another path") from None
            if not isinstance(stored, dict):
                raise ValueError(f"checkpoint {str(self.path)!r} is not a ppgen checkpoint; delete it or pass another path")
            self._check_header(stored.get("header", {}))
            self.sections = dict(stored.get("sections", {}))

    @classmethod
    def for_engine(cls, engine: Any, model: Callable, args: tuple, kwargs: dict) -> Optional["Checkpoint"]:
        """The checkpoint of ``engine``'s call (None when it has no ``checkpoint`` option set)."""
        path = getattr(engine, "checkpoint", None)
        if path is None:
            return None
        return cls(path, engine.checkpoint_every, header_for(engine, model, args, kwargs))

    def _check_header(self, stored: dict) -> None:
        if stored.get("version") != FORMAT_VERSION:
            raise ValueError(f"checkpoint {str(self.path)!r} has format version {stored.get('version')!r}, expected {FORMAT_VERSION}")
        for key, what in (("engine", "engine"), ("program", "program"), ("data", "data"), ("options", "engine options")):
            if stored.get(key) != self.header[key]:
                raise ValueError(
                    f"checkpoint {str(self.path)!r} was written by another call (different {what}: "
                    f"{stored.get(key)} there, {self.header[key]} here); delete the file or pass another checkpoint path"
                )

    def section(
        self, key: str, capture: Optional[Callable[[], Any]] = None, restore: Optional[Callable[[Any], None]] = None, jax_state: bool = False
    ) -> "Section":
        """The part of the file for loop ``key``; ``capture()`` returns what the engine keeps
        outside the loop's state, ``restore(saved)`` puts it back on resume. A ``jax_state`` is
        stored as its pytree leaves (JAX optimiser states hold tree definitions, which are
        not data) and rebuilt on the template's tree structure."""
        return Section(self, key, capture, restore, jax_state)

    def write(self) -> None:
        """Atomically replace the file with the current sections. Under torch.distributed only
        rank 0 writes (every rank holds the same state; they all read the file to resume)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        contents = {"header": {**self.header, "version": FORMAT_VERSION}, "sections": self.sections}
        handle, temporary = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(contents, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise


def load(path: Union[str, os.PathLike]) -> dict:
    """A checkpoint file's contents, read with ``torch.load(weights_only=True)``."""
    return torch.load(path, weights_only=True)


def _leaves(state: Any) -> list:
    import jax

    return jax.tree_util.tree_leaves(state)


def _like(template: Any, value: Any) -> Any:
    """``value`` as weakly typed as the ``template`` leaf it replaces: a weakly typed scalar
    (a step counter made from a Python int) that came back strongly typed would make JAX trace
    and compile the step again, with different rounding."""
    if getattr(template, "weak_type", False) and np.ndim(value) == 0:
        import jax

        return jax.lax.full_like(template, np.asarray(value).item())
    return value


def _rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [kind, encode(keys), int(position), int(has_gauss), float(gauss)]}


def _set_rng_state(saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["torch"])
    kind, keys, position, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, decode(keys), position, has_gauss, gauss))


class Section:
    """One loop's part of a :class:`Checkpoint`: what :func:`ppgen.driver.iterate` saves and
    resumes from."""

    def __init__(
        self, owner: Checkpoint, key: str, capture: Optional[Callable[[], Any]], restore: Optional[Callable[[Any], None]], jax_state: bool
    ) -> None:
        self.owner = owner
        self.key = key
        self.capture = capture
        self.restore = restore
        self.jax_state = jax_state

    @property
    def every(self) -> int:
        return self.owner.every

    @property
    def stop(self) -> _StopFlag:
        return self.owner.stop

    def defer_signals(self) -> Callable[[], None]:
        """SIGINT / SIGTERM set :attr:`stop` until the returned function is called."""
        return defer_signals(self.owner.stop)

    def stop_after(self, state: Any, objectives: list[float], num_steps: int) -> bool:
        """After a step: save when due (every :attr:`every` steps before the last), and whether
        a signal asks the loop to stop (the loop then saves once more as it ends)."""
        if not self.stop and len(objectives) % self.every == 0 and len(objectives) < num_steps:
            self.save(state, objectives, converged=False, finished=False)
        return bool(self.stop)

    def save(self, state: Any, objectives: list[float], converged: bool, finished: bool) -> None:
        """Record the loop's state after ``len(objectives)`` steps, with the random states and
        the engine's own (``capture``), and write the file."""
        self.owner.sections[self.key] = {
            "state": encode(_leaves(state) if self.jax_state else state),
            "objectives": [float(v) for v in objectives],
            "converged": bool(converged),
            "finished": bool(finished),
            "rng": _rng_state(),
            "engine": encode(self.capture()) if self.capture is not None else None,
        }
        self.owner.write()

    def resume(self, template: Any) -> Optional[tuple[Any, list[float], bool, bool]]:
        """(state, objectives, converged, finished) saved for this loop, with the random states
        and the engine's own restored; None when the file has no such loop yet."""
        saved = self.owner.sections.get(self.key)
        if saved is None:
            return None
        if self.jax_state:
            import jax

            leaves = [_like(t, v) for t, v in zip(jax.tree_util.tree_leaves(template), decode(saved["state"]))]
            state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)
        else:
            state = decode(saved["state"], template)
        if self.restore is not None:
            self.restore(decode(saved["engine"]))
        _set_rng_state(saved["rng"])
        return state, list(saved["objectives"]), bool(saved["converged"]), bool(saved["finished"])
