"""``ppgen.dist`` during an interpreted enumeration run: distributions recorded, not built.

Building a torch distribution costs tens of microseconds (argument broadcasting, a Categorical
normalising its probabilities), which on a chain of thousands of sites costs more than the
sums. The enumeration interpreter evaluates densities a stacked group at a time from the
constructor arguments anyway, so while it runs a program ``ppgen.dist.Normal(loc, scale)``
(and the other families below) returns a :class:`Deferred`: the family and its tensor
arguments, with the batch and event shapes the distribution would have. Anything else asked of
it (``log_prob``, ``mean``, ``expand``, ...) builds the real distribution and delegates to it,
so a program sees the same behaviour. Calls with non-tensor arguments build the distribution
at once.
"""

from __future__ import annotations

from functools import lru_cache as _lru_cache
from inspect import signature as _signature
from typing import TYPE_CHECKING

import ppgen._pyro_distributions as _pyro_distributions  # ppgen.dist on Pyro (with its ported families)
from torch import Tensor as _Tensor

if TYPE_CHECKING:  # this module stands in for ``pyro.distributions``: no other public names
    from typing import Any, Callable, Optional

    import torch

#: Families deferred, by name: every constructor argument a tensor in ``arg_constraints``.
#: Categorical-like families ("probs"/"logits" with a trailing category dim) are marked.
_DEFERRED = {
    "Normal": False, "LogNormal": False, "Laplace": False, "Cauchy": False, "Gamma": False, "Beta": False,
    "Exponential": False, "Poisson": False, "Bernoulli": False, "Categorical": True,
}


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcasting of shapes, in plain Python (``torch.broadcast_shapes`` goes through
    symbolic-shape checks that cost ~50 µs a call, per site of a long chain). Raises ValueError
    when they do not broadcast."""
    if shapes and all(shape == shapes[0] for shape in shapes):
        return tuple(shapes[0])
    rank = max((len(shape) for shape in shapes), default=0)
    out = [1] * rank
    for shape in shapes:
        for i, size in enumerate(shape, rank - len(shape)):
            if size != 1:
                if out[i] not in (1, size):
                    raise ValueError(f"shapes {shapes} do not broadcast")
                out[i] = size
    return tuple(out)


class Deferred:
    """A distribution of ``family`` with constructor ``arguments``, built on first use.

    ``reinterpreted`` batch dims are event dims (``to_event``); ``batch_shape`` and
    ``event_shape`` are those of the built distribution."""

    __slots__ = ("family", "arguments", "reinterpreted", "batch_shape", "event_shape", "_built")

    def __init__(self, family: type, arguments: dict[str, torch.Tensor], batch_shape: tuple[int, ...], reinterpreted: int = 0) -> None:
        self.family, self.arguments, self.reinterpreted = family, arguments, reinterpreted
        cut = len(batch_shape) - reinterpreted
        self.batch_shape, self.event_shape = batch_shape[:cut], batch_shape[cut:]
        self._built: Optional[Any] = None

    @property
    def has_enumerate_support(self) -> bool:
        return bool(self.family.has_enumerate_support) and not self.reinterpreted

    @property
    def num_categories(self) -> Optional[int]:
        """K for a Categorical (its support {0, ..., K-1}), else None."""
        if not _DEFERRED[self.family.__name__]:
            return None
        return int(next(iter(self.arguments.values())).shape[-1])

    def build(self) -> Any:
        """The Pyro distribution itself."""
        if self._built is None:
            built = self.family(**self.arguments)
            self._built = built.to_event(self.reinterpreted) if self.reinterpreted else built
        return self._built

    def to_event(self, reinterpreted_batch_ndims: Optional[int] = None) -> "Deferred":
        n = len(self.batch_shape) if reinterpreted_batch_ndims is None else reinterpreted_batch_ndims
        if n == 0:
            return self
        if n > len(self.batch_shape):
            self.build().to_event(n)  # raises as Pyro does
        return Deferred(self.family, self.arguments, self.batch_shape + self.event_shape, self.reinterpreted + n)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.build(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.build()(*args, **kwargs)


@_lru_cache(maxsize=None)
def _deferring(family: type) -> Callable[..., Any]:
    categorical = _DEFERRED[family.__name__]
    names = [n for n in _signature(family.__init__).parameters if n not in ("self", "validate_args")]
    kwargs_allowed = frozenset(names)

    def construct(*args: Any, **kwargs: Any) -> Any:
        if len(args) <= len(names) and all(k in kwargs_allowed for k in kwargs):
            given = {}
            for key, value in zip(names, args):
                if value is not None:
                    given[key] = value
            for key, value in kwargs.items():
                if key in given:
                    return family(*args, **kwargs)  # raises as Pyro does
                if value is not None:
                    given[key] = value
            shapes = []
            for value in given.values():
                if not isinstance(value, _Tensor):
                    return family(*args, **kwargs)
                shapes.append(value.shape[:-1] if categorical else value.shape)
            if shapes:
                try:
                    return Deferred(family, given, broadcast_shapes(*shapes))
                except ValueError:
                    pass
        return family(*args, **kwargs)

    construct.__name__ = family.__name__
    return construct


def __getattr__(name: str) -> Any:
    attribute = getattr(_pyro_distributions, name)
    if name in _DEFERRED:
        attribute = _deferring(attribute)
    globals()[name] = attribute  # found directly from now on: ``dist.X`` is looked up per site
    return attribute
