"""The engine interface and registry.

An engine is a class with a ``name``, the tasks it serves, ``check(structure)`` returning why
it does not apply (or ``None``), and ``run(model, *args, **kwargs) -> Result``. Options are
constructor arguments with defaults; common ones are named the same everywhere (``seed``,
``progress``, ``num_samples``, ``num_warmup``, ``num_steps``, ``tol``). Engines register with
:func:`register`; the registry imports ``ppgen.inference`` on first use, which is the only way
the core reaches the engines.
"""

from __future__ import annotations

import functools
import importlib
import inspect as pyinspect
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Optional, Union

import numpy as np

from ppgen.errors import EngineNotApplicable
from ppgen.results import Result
from ppgen.sliced_structure import minibatch_structure
from ppgen.structure import ModelStructure, bind_arguments, check_model, inspect, with_array_data

Task = str  # "infer", "learn", "score", "generate"

#: Seeds are integers in [0, MAX_SEED). torch and NumPy take any such seed; JAX's ``PRNGKey``
#: takes an int64; engines derive further seeds as ``seed + offset`` (restarts, chains,
#: simulations) with offsets far below 2**32, so 2**32 keeps every derived seed valid.
MAX_SEED = 2**32


def check_seed(seed: Any, owner: str = "seed") -> int:
    """``seed`` as a Python int, after checking it is an integer in [0, ``MAX_SEED``).

    Python ints and NumPy integers are accepted (bools are not: ``seed=True`` is a slip);
    anything else is a ``TypeError``, an integer out of range a ``ValueError``, both naming
    ``owner`` (the engine or function the seed was given to).
    """
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{owner}: seed must be an integer in [0, 2**32), got {type(seed).__name__} {seed!r}")
    if not 0 <= int(seed) < MAX_SEED:
        raise ValueError(f"{owner}: seed must be an integer in [0, 2**32), got {int(seed)}")
    return int(seed)


class Engine:
    """Base class of all engines.

    ``seed`` is a checked property: every engine stores its seed with ``self.seed = seed``, so
    every engine, however it is built (by name, by the user, or copied and re-seeded by
    :func:`ppgen.calibration.simulation_based_calibration`), holds a valid Python int.
    """

    name: ClassVar[str] = ""
    tasks: ClassVar[frozenset[str]] = frozenset({"infer", "learn"})
    summary: ClassVar[str] = ""

    @property
    def seed(self) -> int:
        try:
            return self.__dict__["_seed"]
        except KeyError:
            raise AttributeError(f"engine {self.name!r} takes no seed") from None

    @seed.setter
    def seed(self, value: Any) -> None:
        self.__dict__["_seed"] = check_seed(value, type(self).__name__)

    def check(self, structure: ModelStructure) -> Optional[str]:
        """Why this engine does not apply to ``structure`` (naming the site), or ``None``."""
        return None

    def run(self, model: Callable, *args: Any, **kwargs: Any) -> Result:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def missing_data(structure: ModelStructure) -> Optional[str]:
    """Why an engine that evaluates the program's density cannot run: an observed site was
    given no data, or has no density (:func:`no_density`)."""
    return data_not_given(structure) or no_density(structure)


def data_not_given(structure: ModelStructure) -> Optional[str]:
    """Why inference cannot run: an observed site of the program was given no data."""
    for site in structure.observed.values():
        if not site.has_data:
            argument = site.data_argument or site.name
            return f"observed site {site.name!r} has no data (pass {argument}=...)"
    return None


def no_density(structure: ModelStructure) -> Optional[str]:
    """Why log p(x) cannot be evaluated: an observed site is a ``Delta`` (an implicit model
    x = G(z), whose data have probability zero under every parameter value)."""
    for site in structure.observed.values():
        if site.distribution == "Delta":
            return (
                f"observed site {site.name!r} is a Delta observation (an implicit model x = f(z)) with no density to "
                "evaluate; learn it with engine='adversarial'"
            )
    return None


_REGISTRY: dict[str, type[Engine]] = {}


def register(cls: type[Engine]) -> type[Engine]:
    """Class decorator: make ``cls`` available as ``engine=cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    _REGISTRY[cls.name] = cls
    return cls


def registered_engines() -> dict[str, type[Engine]]:
    """Every registered engine class by name (imports ``ppgen.inference`` on first use)."""
    importlib.import_module("ppgen.inference")
    return dict(_REGISTRY)


@dataclass(frozen=True)
class EngineCheck:
    """Whether engine ``name`` applies to a program, and if not, why."""

    name: str
    applies: bool
    reason: Optional[str] = None
    tasks: frozenset[str] = frozenset()


def check_all(structure: ModelStructure) -> list[EngineCheck]:
    """Run every registered engine's ``check`` against ``structure``."""
    out = []
    for name, cls in registered_engines().items():
        reason = cls().check(structure)
        out.append(EngineCheck(name, reason is None, reason, cls.tasks))
    return out


def engines_for(model: Callable, *args: Any, **kwargs: Any) -> list[EngineCheck]:
    """Each registered engine with whether it applies to ``model(*args, **kwargs)`` and why not."""
    return check_all(inspect(model, *args, **kwargs))


def engine_options(cls: type[Engine]) -> set[str]:
    """The option names an engine's constructor accepts."""
    parameters = pyinspect.signature(cls.__init__).parameters
    return {name for name in parameters if name != "self"}


@functools.lru_cache(maxsize=None)
def _option_hints(cls: type[Engine]) -> Optional[dict[str, Any]]:
    """``cls.__init__``'s resolved annotations (None when one does not resolve), read once per
    engine class: resolving them costs about 0.7 ms, which a short ``generate`` would pay per call."""
    import typing

    try:
        return typing.get_type_hints(cls.__init__)
    except (NameError, TypeError):
        return None


def check_option_types(cls: type[Engine], engine_kwargs: dict[str, Any]) -> None:
    """Each option against its annotation in ``cls.__init__``: an ``int`` option takes an integer
    (not a bool, a float or a string: ``num_samples="10"`` or ``10.5`` is a slip, never coerced),
    a ``float`` option a real number, a ``bool`` option a bool; ``Optional[...]`` also takes None.
    Options annotated otherwise (unions, strings, callables) are checked by the engine itself,
    and ``seed`` by :func:`check_seed`."""
    import typing
    from numbers import Integral, Real

    hints = _option_hints(cls)
    if hints is None:  # an annotation that does not resolve: leave it to the engine
        return
    kinds: dict[Any, tuple[str, Callable[[Any], bool]]] = {
        int: ("an integer", lambda v: isinstance(v, Integral) and not isinstance(v, (bool, np.bool_))),
        float: ("a real number", lambda v: isinstance(v, Real) and not isinstance(v, (bool, np.bool_))),
        bool: ("True or False", lambda v: isinstance(v, (bool, np.bool_))),
    }
    for key, value in engine_kwargs.items():
        hint, optional = hints.get(key), False
        if typing.get_origin(hint) is Union and type(None) in typing.get_args(hint):
            rest = [a for a in typing.get_args(hint) if a is not type(None)]
            hint, optional = (rest[0] if len(rest) == 1 else None), True
        if key == "seed" or hint not in kinds or (optional and value is None):
            continue
        expected, accepts = kinds[hint]
        if not accepts(value):
            raise TypeError(f"engine {cls.name!r}: option {key!r} must be {expected}, got {type(value).__name__} {value!r}")


def split_options(
    model: Callable, cls: type[Engine], options: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``options`` into engine options and model keyword arguments.

    A name the engine accepts goes to the engine; a name the model accepts goes to the model;
    a name both accept, or neither, is an error that says so.
    """
    check_model(model)
    accepted = engine_options(cls)
    model_parameters = pyinspect.signature(model).parameters
    takes_var_kwargs = any(p.kind == p.VAR_KEYWORD for p in model_parameters.values())
    engine_kwargs, model_kwargs = {}, {}
    for key, value in options.items():
        in_engine, in_model = key in accepted, key in model_parameters
        if in_engine and in_model:
            raise TypeError(
                f"option {key!r} is both an option of engine {cls.name!r} and an argument of "
                f"{getattr(model, '__name__', 'the model')}; pass the model's value positionally"
            )
        if in_engine:
            engine_kwargs[key] = value
        elif in_model or takes_var_kwargs:
            model_kwargs[key] = value
        else:
            raise TypeError(
                f"unknown option {key!r}: engine {cls.name!r} accepts {sorted(accepted)}, and "
                f"{getattr(model, '__name__', 'the model')} has no argument of that name"
            )
    return engine_kwargs, model_kwargs


def resolve(
    engine: Union[str, Engine],
    model: Callable,
    args: tuple,
    options: dict[str, Any],
    task: Task,
) -> tuple[Engine, tuple, dict[str, Any], ModelStructure]:
    """Instantiate (or accept) ``engine``, split options, and check it applies.

    Returns the engine instance, the model's positional and keyword arguments (data given as
    lists converted to arrays, see :func:`ppgen.structure.with_array_data`) and the program's
    structure. The program and its data are checked before the engine: bad data raise
    :class:`DataError` whichever engine was asked for. Raises :class:`EngineNotApplicable`
    naming the blocking site and the engines that apply.
    """
    check_model(model)
    engines = registered_engines()
    if isinstance(engine, Engine):
        instance, model_kwargs = engine, dict(options)
    elif isinstance(engine, str):
        if engine not in engines:
            raise EngineNotApplicable(
                f"unknown engine {engine!r}; registered engines: {', '.join(sorted(engines))}"
            )
        cls = engines[engine]
        engine_kwargs, model_kwargs = split_options(model, cls, options)
        check_option_types(cls, engine_kwargs)
        instance = cls(**engine_kwargs)
    else:
        raise TypeError(f"engine must be a name or an Engine instance, got {type(engine).__name__}")
    bind_arguments(model, args, model_kwargs)
    batch = getattr(instance, "subsample_size", None)  # a minibatch engine: the structure from slices
    structure = (batch is not None and minibatch_structure(model, args, model_kwargs, batch)) or inspect(model, *args, **model_kwargs)
    args, model_kwargs, converted = with_array_data(model, args, model_kwargs, structure)
    if converted:  # trace again on the arrays the engine will run on
        structure = inspect(model, *args, **model_kwargs)
    if task not in instance.tasks:
        raise EngineNotApplicable(
            f"engine {instance.name!r} does not do {task!r} (it does: {', '.join(sorted(instance.tasks))})"
        )
    reason = instance.check(structure)
    if reason is not None:
        applicable = [c.name for c in check_all(structure) if c.applies and task in c.tasks]
        raise EngineNotApplicable(
            f"engine {instance.name!r} does not apply to {structure.name}: {reason}. "
            f"Engines that apply: {', '.join(applicable) or 'none'}"
        )
    return instance, args, model_kwargs, structure


_current_task: ContextVar[Optional[str]] = ContextVar("current_task", default=None)


@contextmanager
def running_task(task: Task) -> Iterator[None]:
    """Within this block, :func:`current_task` is ``task``: a verb tells the engine it runs
    which task it serves, so an engine that can learn (svi) scores a program as it is."""
    token = _current_task.set(task)
    try:
        yield
    finally:
        _current_task.reset(token)


def current_task() -> Optional[str]:
    """The task of the verb running now (``"score"``, ``"learn"``, ...), None outside a verb."""
    return _current_task.get()
