"""Forgetting the forward/inverse pair a transform cached in an earlier run of a program.

A ``torch.distributions.Transform`` built with ``cache_size=1`` (every Pyro ``TransformModule``:
``spline_coupling``, ``affine_autoregressive``, ...; zuko's transforms when asked) remembers its
last pair (x, y = f(x)) and answers ``f⁻¹(y)`` from that memory when it is called again with *the
same tensor object* y. An observed site passes the same data tensor at every step of a gradient
engine, so from the second step on

    log p(y) = log p₀(f⁻¹(y)) + log |det ∂f⁻¹/∂y|

would be computed from the x of the first step: a tensor of a graph already freed by
``backward`` ("Trying to backward through the graph a second time"), or, under ``no_grad`` (a
``score`` after ``learn``), a silently stale density from parameters that have since moved.

The cache is worth having *within* one run (an IAF guide draws x and scores the same x without
inverting), never *across* runs, because the parameters may change between runs. So every
``ppgen.sample`` forgets the caches of the transforms inside its distribution before the site is
drawn or scored (:func:`forget_cached_pairs`); what the site computes after that is cached anew.
"""

from __future__ import annotations

import functools
import sys
import weakref
from typing import Any, Iterator

__all__ = ["forget_cached_pairs", "flow_modules"]

#: Attributes through which a distribution or transform holds further distributions/transforms:
#: torch's and Pyro's wrappers (``Independent``, ``ExpandedDistribution``, ``MaskedDistribution``,
#: ``TransformedDistribution``, ``ComposeTransform``, inverses, ``IndependentTransform``) and
#: zuko's (``ComposedTransform.transforms``, ``NormalizingFlow.transform``), and the network of a
#: conditioned Pyro layer (``ConditionalAffineAutoregressive.condition(h)`` holds its network as
#: ``arn = partial(network, context=h)``).
_CHILDREN = ("base_dist", "transforms", "transform", "parts", "_inv", "base_transform", "flow", "arn", "nn")


def _reachable(fn: Any, kinds: tuple[type, ...]) -> Iterator[Any]:
    """Every object of ``kinds`` reachable from ``fn`` through :data:`_CHILDREN` (lists and
    tuples of them included), each once, ``fn`` first."""
    stack, seen = [fn], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, (list, tuple)):
            stack.extend(child for child in node if isinstance(child, kinds))
            continue
        yield node
        for attribute in _CHILDREN:
            child = getattr(node, attribute, None)
            if isinstance(child, weakref.ref):  # torch holds a transform's own inverse weakly
                child = child()
            if isinstance(child, functools.partial):
                child = child.func
            if isinstance(child, (list, tuple)) or isinstance(child, kinds):
                stack.append(child)


_CHILD_NAMES = frozenset(_CHILDREN) | {"_cached_x_y"}


@functools.lru_cache(maxsize=None)
def _class_may_hold_children(cls: type) -> bool:
    """Whether ``cls`` (or a base) defines an attribute named like a child or a cache (a
    property, a slot): its instances then take the full walk."""
    return any(hasattr(cls, name) for name in _CHILD_NAMES) or not hasattr(cls, "__dict__")


def _is_leaf(fn: Any) -> bool:
    """Whether ``fn`` holds no transform or distribution to walk to and no cached pair of its
    own: neither its class nor its instance dict has an attribute of those names."""
    instance = getattr(fn, "__dict__", None)
    return instance is not None and not _class_may_hold_children(type(fn)) and _CHILD_NAMES.isdisjoint(instance)


def forget_cached_pairs(fn: Any) -> None:
    """Reset the ``(x, y)`` cache of every transform reachable from distribution ``fn``.

    A transform without a cache (``cache_size=0``) is left alone, and so is anything that is not
    a torch distribution (NumPyro's distributions, whose transforms keep no cache).
    """
    if "torch" not in sys.modules:
        return
    import torch

    kinds = (torch.distributions.Distribution, torch.distributions.Transform)
    if not isinstance(fn, kinds):
        return
    if _is_leaf(fn):  # (most sites: a Bernoulli, a Normal; the walk would cost more than their log density)
        return
    for node in _reachable(fn, kinds):
        if getattr(node, "_cached_x_y", None) is not None:
            node._cached_x_y = (None, None)


def flow_modules(fn: Any, modules: dict[str, Any]) -> set[str]:
    """The names in ``modules`` (name -> ``torch.nn.Module``) whose module holds a transform or
    flow reachable from distribution ``fn``: a flow's θ, which the structure tracer cannot see
    through a forward call because the transform runs only when the site is scored."""
    import torch

    owners = {id(sub): name for name, module in modules.items() for sub in module.modules()}
    kinds = (torch.distributions.Distribution, torch.distributions.Transform, torch.nn.Module)
    return {owners[id(node)] for node in _reachable(fn, kinds) if id(node) in owners}
