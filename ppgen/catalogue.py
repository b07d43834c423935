"""How catalogue models present themselves to the CLI, the tour and the tests.

Each family module in ``ppgen.models`` lists ``EXAMPLES``: a program, a seeded ``simulate``
function returning data and the true values, and the engine options the tour uses.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


def families() -> list[str]:
    """Catalogue family modules (every ``ppgen.models`` module with ``EXAMPLES``), in the order
    of ``ORDER`` first and then alphabetically."""
    import pkgutil

    import ppgen.models

    names = [m.name for m in pkgutil.iter_modules(ppgen.models.__path__) if not m.name.startswith("_")]
    order = {name: index for index, name in enumerate(ORDER)}
    names.sort(key=lambda name: (order.get(name, len(order)), name))
    return [name for name in names if hasattr(importlib.import_module(f"ppgen.models.{name}"), "EXAMPLES")]


ORDER: tuple[str, ...] = ("basics", "mixtures", "factor", "sequences", "graphs", "vae", "diffusion", "posteriordb")


@dataclass(frozen=True)
class Simulated:
    """Synthetic data for a program: ``data`` are its keyword arguments (observed values and
    sizes); ``truth`` the values of latents and parameters that generated them."""

    data: dict[str, Any]
    truth: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Example:
    """A catalogue model as the tour runs it."""

    name: str
    model: Callable
    simulate: Callable[..., Simulated]
    description: str = ""
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    skip: tuple[str, ...] = ()
    report: Optional[Callable[..., Any]] = None
    #: the program's arguments for reading its structure without fitting anything (untrained
    #: networks of the right shapes), where ``simulate`` trains (default: ``simulate().data``)
    structure_data: Optional[Callable[[], dict[str, Any]]] = None

    @property
    def family(self) -> str:
        return self.model.__module__.rsplit(".", 1)[-1]


def catalogue(names: Optional[list[str]] = None) -> list[Example]:
    """Every example of the given catalogue families (default: all), in catalogue order."""
    examples: list[Example] = []
    for family in names or families():
        module = importlib.import_module(f"ppgen.models.{family}")
        examples.extend(module.EXAMPLES)
    return examples
