"""``ppgen.dist`` as the structure tracer sees it: Pyro's distributions, each recording the
provenance of every constructor argument, so a diagram can label ``x ~ Normal(μ, σ)`` per
argument even after the distribution has broadcast its parameters together."""

from __future__ import annotations

import inspect as pyinspect
from functools import lru_cache
from typing import Any

import ppgen._pyro_distributions as _pyro_distributions  # ppgen.dist on Pyro (with its ported families)
import torch


def _remember(instance: Any, arguments: dict) -> Any:
    """Attach ``arguments`` to ``instance`` and to whatever its ``expand`` returns."""
    instance._ppgen_arguments = arguments
    expand = instance.expand

    def expand_remembering(*args: Any, **kwargs: Any) -> Any:
        return _remember(expand(*args, **kwargs), arguments)

    instance.expand = expand_remembering
    return instance


@lru_cache(maxsize=None)
def _recording(cls: type) -> Any:
    signature = pyinspect.signature(cls.__init__)

    def construct(*args: Any, **kwargs: Any) -> Any:
        instance = cls(*args, **kwargs)
        try:
            bound = signature.bind(None, *args, **kwargs)
        except TypeError:
            return instance
        arguments = {
            name: value
            for name, value in list(bound.arguments.items())[1:]
            if name != "validate_args" and value is not None
        }
        return _remember(instance, arguments)

    construct.__name__ = cls.__name__
    return construct


def __getattr__(name: str) -> Any:
    attribute = getattr(_pyro_distributions, name)
    if isinstance(attribute, type) and issubclass(attribute, torch.distributions.Distribution):
        return _recording(attribute)
    return attribute
