"""Site log-densities evaluated a group at a time.

A long chain has thousands of sites whose densities differ only in their arguments: every
emission y_t ~ Normal(μ[z_t], σ[z_t]) of an HMM has arguments of the same shape, and so does
every transition z_t ~ Categorical(A[z_{t-1}]) at even t (the enumeration dims alternate with t,
so odd t form a second group). Sites whose distribution family, argument shapes, value shape
and plates agree are *stacked* along a new leading dim and evaluated with one ``log_prob``
call, (G, *site shape) for G sites, instead of G calls. The distribution is rebuilt from its
compact (un-expanded) arguments, as :func:`ppgen.inference._discrete.site_log_prob` does for a
single site, so the numbers are those of the per-site evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributions.utils import lazy_property

from ppgen.inference._deferred import Deferred, broadcast_shapes

#: Families whose constructor arguments are all tensors named in ``arg_constraints``: rebuilt
#: from stacked arguments (others are evaluated site by site).
REBUILDABLE = frozenset({"Categorical", "Bernoulli", "Normal", "MultivariateNormal", "Poisson", "Binomial", "Beta", "Gamma", "Dirichlet", "LogNormal", "Exponential", "StudentT", "Laplace", "Cauchy"})

_ARGUMENT_KEYS: dict[type, list[tuple[str, bool]]] = {}


def unwrap(fn: Any) -> tuple[Any, int]:
    """The base distribution and the number of dims ``to_event`` reinterpreted."""
    reinterpreted = 0
    while True:
        name = type(fn).__name__
        if name == "Independent":
            reinterpreted += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        elif name == "ExpandedDistribution":
            fn = fn.base_dist
        else:
            return fn, reinterpreted


def _argument_keys(family: type) -> list[tuple[str, bool]]:
    """The family's argument names, each with whether it is a lazily derived property (the
    ``logits`` of a Categorical built from ``probs``: present only once computed)."""
    keys = _ARGUMENT_KEYS.get(family)
    if keys is None:
        keys = []
        for key in getattr(family, "arg_constraints", {}):
            descriptor = next((klass.__dict__[key] for klass in family.__mro__ if key in klass.__dict__), None)
            keys.append((key, isinstance(descriptor, lazy_property)))
        _ARGUMENT_KEYS[family] = keys
    return keys


def given_arguments(base: Any) -> dict[str, torch.Tensor]:
    """The arguments a distribution was constructed with (lazily derived ones left out)."""
    out = {}
    state = base.__dict__
    for key, lazy in _argument_keys(type(base)):
        if lazy:
            value = state.get(key)
        else:
            try:
                value = getattr(base, key)
            except (AttributeError, NotImplementedError):
                continue
        if isinstance(value, torch.Tensor):
            out[key] = value
    return out


def compact(x: torch.Tensor) -> torch.Tensor:
    """Undo ``expand``: slice every stride-0 dim down to size 1 (no copy)."""
    if x.is_contiguous():
        return x
    for dim in range(x.dim()):
        if x.shape[dim] > 1 and x.stride(dim) == 0:
            x = x.narrow(dim, 0, 1)
    return x


@dataclass
class SiteGroup:
    """Sites evaluated together: ``sites`` (names, program order), their distributions and
    values; ``arguments`` per site when the family is rebuilt from stacked arguments."""

    sites: list[str]
    fns: list[Any]
    values: list[torch.Tensor]
    arguments: list[dict[str, torch.Tensor]]
    family: Any = None
    reinterpreted: int = 0

    @property
    def work(self) -> int:
        """Elements of the stacked log-density, about (for choosing a thread count)."""
        shapes = [self.values[0].shape] + [a.shape for a in (self.arguments[0].values() if self.arguments else ())]
        try:
            size = math.prod(broadcast_shapes(*shapes))
        except ValueError:
            size = max(math.prod(s) for s in shapes)
        return len(self.sites) * size

    def shape(self) -> tuple[int, ...]:
        """The shape of :meth:`log_prob`, without computing it."""
        fn, value = self.fns[0], self.values[0]
        if self.family is None:
            batch = value.shape[: value.dim() - len(fn.event_shape)]
            return (len(self.sites),) + broadcast_shapes(batch, fn.batch_shape)
        event_dims = {key: self.family.arg_constraints[key].event_dim for key in self.arguments[0]}
        value_event_dim = len(fn.event_shape) - self.reinterpreted
        batches = [value.shape[: value.dim() - value_event_dim]]
        batches += [x.shape[: x.dim() - event_dims[key]] for key, x in self.arguments[0].items()]
        shape = broadcast_shapes(*batches)
        return (len(self.sites),) + shape[: len(shape) - self.reinterpreted]

    def log_prob(self) -> torch.Tensor:
        """The sites' log-densities stacked, (G, *site shape)."""
        if self.family is not None:
            try:
                return self._stacked_log_prob()
            except (TypeError, ValueError, RuntimeError):
                pass  # e.g. both probs and logits present: evaluate as built
        parts = [fn.log_prob(value) for fn, value in zip(self.fns, self.values)]
        parts = [p if isinstance(p, torch.Tensor) else torch.as_tensor(p) for p in parts]
        return torch.stack(parts) if len(parts) > 1 else parts[0].unsqueeze(0)

    def _stacked_log_prob(self) -> torch.Tensor:
        G = len(self.sites)
        family = self.family
        event_dims = {key: family.arg_constraints[key].event_dim for key in self.arguments[0]}
        value_event_dim = len(self.fns[0].event_shape) - self.reinterpreted
        ranks = [self.values[0].dim() - value_event_dim]
        ranks += [x.dim() - event_dims[key] for key, x in self.arguments[0].items()]
        rank = max(ranks)

        def stacked(tensors: list[torch.Tensor], event_dim: int) -> torch.Tensor:
            first = tensors[0]
            x = first.unsqueeze(0) if all(t is first for t in tensors) else torch.stack(tensors)
            pad = rank - (first.dim() - event_dim)
            return x.reshape((x.shape[0],) + (1,) * pad + tuple(first.shape)) if pad else x

        arguments = {key: stacked([a[key] for a in self.arguments], event_dims[key]) for key in self.arguments[0]}
        value = stacked(self.values, value_event_dim)
        log_prob = family(**arguments, validate_args=False).log_prob(value)
        if self.reinterpreted:
            log_prob = log_prob.sum(tuple(range(-self.reinterpreted, 0)))
        if log_prob.shape[0] != G:
            log_prob = log_prob.expand((G,) + tuple(log_prob.shape[1:]))
        return log_prob


def group_sites(sites: list[dict]) -> list[SiteGroup]:
    """Partition recorded sites into groups evaluable by one ``log_prob`` call each: same
    family, argument shapes and dtypes, value shape and dtype, and plates."""
    groups: dict[Any, SiteGroup] = {}
    out = []
    for site in sites:
        fn, value = site["fn"], site["value"]
        if isinstance(fn, Deferred):
            family, reinterpreted, arguments = fn.family, fn.reinterpreted, fn.arguments
        else:
            base, reinterpreted = unwrap(fn)
            family = type(base)
            arguments = given_arguments(base) if family.__name__ in REBUILDABLE else None
        if arguments is not None:
            arguments = {k: compact(v) for k, v in arguments.items()}
            tensors = list(arguments.values())
            key = (
                family, reinterpreted, value.shape, value.dtype, site["plates"], tuple(arguments),
                tuple([v.shape for v in tensors]), tuple([v.dtype for v in tensors]),
            )
            group = groups.get(key)
            if group is None:
                group = groups[key] = SiteGroup([], [], [], [], family, reinterpreted)
                out.append(group)
            group.sites.append(site["name"])
            group.fns.append(fn)
            group.values.append(value)
            group.arguments.append(arguments)
        else:
            out.append(SiteGroup([site["name"]], [fn], [value], []))
    return out
