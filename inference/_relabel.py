"""Label switching in MCMC draws: relabel exchangeable mixture components before R-hat and ESS.

A mixture whose components are exchangeable (their priors are the same for every component)
has a posterior invariant under permuting the component labels: K! symmetric modes. Chains
that settle in different labellings disagree although each is right, so R-hat explodes
(1e15 on a three-component Gaussian mixture) and a chain that switches labelling mid-run
averages the components together. Summaries of component parameters are meaningful only
after the draws are put in one labelling.

Which sites carry component labels is read from the structure, never from names
(:func:`exchangeable_groups`): for a finite discrete latent z of cardinality K (the
assignment), the component sites found by :func:`ppgen.agreement.component_axes` (the sites
with a plate of size K, the mixture weights among z's parents), kept when they are tied to z
(a parent of z, or sharing a child with z: ``x ~ Normal(mu[z], ...)``), and the group is
relabelled only when every prior in it is exchangeable: each distribution parameter is a
constant equal across its elements, a model argument or another site with no axis of size K,
or a site of the group itself. A plate of K regression coefficients that has nothing to do
with z is left alone.

Relabelling (:func:`relabel_draws`) is pivotal reordering by the Hungarian assignment
(Stephens 2000, *J. R. Stat. Soc. B* 62:795, with squared-error loss; Papastamoulis 2016,
``label.switching``): every draw d's components are permuted by the ρ_d minimising

    Σ_j ‖f̄_j − f_{d, ρ_d(j)}‖²,

f_{d,k} the standardised component parameters of draw d and f̄ the reference, starting from
the first chain's mean and set to the mean of the relabelled draws until no permutation
changes. The assignments z of each draw are renamed by ρ_d⁻¹ with them, so every quantity
of the joint draw stays the same draw of the same posterior.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ppgen.agreement import component_axes
from ppgen.structure import ModelStructure

#: Up to this many components, all K! permutations are scored at once (vectorised over
#: draws); above it, the Hungarian algorithm runs draw by draw.
BRUTE_FORCE_COMPONENTS = 6
#: At most this many passes of (assign every draw, recompute the reference).
MAX_PASSES = 20


@dataclass(frozen=True)
class ComponentGroup:
    """Assignment sites ``labels`` (values in 0..size−1) and the component sites they index,
    each with the axes (of one value, no draw axis) that run over the ``size`` components."""

    labels: tuple[str, ...]
    axes: dict[str, tuple[int, ...]]
    size: int


def _names(description: str) -> list[str] | None:
    """The names a :attr:`Site.distribution_args` entry comes from; [] for a constant equal
    across its elements, None for a constant that varies (``·``)."""
    if description == "·":
        return None
    try:
        float(description)
        return []
    except ValueError:
        pass
    if description.startswith("f(") and description.endswith(")"):
        return description[2:-1].split(", ")
    return [description]


def _shape(structure: ModelStructure, name: str) -> tuple[int, ...]:
    if name in structure.sites:
        site = structure.sites[name]
        return site.batch_shape + site.event_shape
    if name in structure.arguments:
        return structure.arguments[name].shape
    return ()


def _exchangeable_prior(structure: ModelStructure, name: str, group: set[str], size: int) -> bool:
    """Whether every parameter of ``name``'s distribution treats the ``size`` components alike."""
    for _, description in structure.sites[name].distribution_args:
        sources = _names(description)
        if sources is None:
            return False
        for source in sources:
            if source not in group and size in _shape(structure, source):
                return False
    return True


def exchangeable_groups(structure: ModelStructure) -> list[ComponentGroup]:
    """The structure's exchangeable mixture components (see the module docstring); latents
    that share their component sites (the states of a hidden Markov chain) form one group."""
    grouped: dict[frozenset, list[str]] = {}
    for z, axes in component_axes(structure).items():
        grouped.setdefault(frozenset((n, tuple(a)) for n, a in axes.items() if a), []).append(z)
    out = []
    for signature, labels in grouped.items():
        size = structure.sites[labels[0]].support.cardinality
        axes = dict(signature)
        label_children = {c for z in labels for c in structure.children(z)}
        tied = {
            name
            for name in axes
            if any(name in structure.sites[z].parents for z in labels) or set(structure.children(name)) & label_children
        }
        grown = True
        while grown:  # a component hyper-parameter: τ_k of μ_k | τ_k
            extra = {name for name in axes if name not in tied and set(structure.children(name)) & tied}
            grown = bool(extra)
            tied |= extra
        members = tied | set(labels)
        if not tied or not all(_exchangeable_prior(structure, name, members, size) for name in members):
            continue
        in_program_order = {name: axes[name] for name in structure.sites if name in tied}
        out.append(ComponentGroup(tuple(labels), in_program_order, size))
    return out


def _features(samples: dict[str, np.ndarray], group: ComponentGroup) -> np.ndarray | None:
    """(draws, K, F) component parameters, each column standardised over draws and components;
    a site indexed by components along two axes (a transition matrix) contributes its diagonal."""
    columns = []
    for name, axes in group.axes.items():
        if name not in samples:
            continue
        value = np.asarray(samples[name], dtype=float)
        if any(value.ndim <= axis + 1 or value.shape[axis + 1] != group.size for axis in axes):
            return None  # draws not shaped as the structure says: leave the labels alone
        if len(axes) == 1:
            feature = np.moveaxis(value, axes[0] + 1, 1)
        elif len(axes) == 2:
            feature = np.moveaxis(np.diagonal(value, axis1=axes[0] + 1, axis2=axes[1] + 1), -1, 1)
        else:
            continue
        feature = feature.reshape(value.shape[0], group.size, -1)
        scale = feature.std(axis=(0, 1))
        columns.append(feature / np.where(scale > 0, scale, 1.0))
    return np.concatenate(columns, axis=-1) if columns else None


def _assign(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per draw, ``order`` (draws, K) with component ``order[d, j]`` of draw d matched to
    reference component j, minimising the summed squared distance."""
    cost = ((reference[None, :, None, :] - features[:, None, :, :]) ** 2).sum(-1)  # (draws, j, k)
    size = reference.shape[0]
    if size <= BRUTE_FORCE_COMPONENTS:
        permutations = np.array(list(itertools.permutations(range(size))))  # (K!, K)
        totals = cost[:, np.arange(size)[None, :], permutations].sum(-1)  # (draws, K!)
        return permutations[np.argmin(totals, axis=1)]
    from scipy.optimize import linear_sum_assignment

    return np.stack([linear_sum_assignment(c)[1] for c in cost])


def _permute_axis(value: np.ndarray, axis: int, order: np.ndarray) -> np.ndarray:
    """``value`` (draws, ...) with ``axis`` (counted with the draw axis) taken in ``order[d]``."""
    shape = [1] * value.ndim
    shape[0], shape[axis] = order.shape
    return np.take_along_axis(value, order.reshape(shape), axis=axis)


def relabel_draws(samples: dict[str, np.ndarray], group: ComponentGroup, num_chains: int) -> tuple[dict[str, np.ndarray], int]:
    """``samples`` (draws of all chains concatenated, chain-major) with every draw put in one
    labelling of ``group``'s components, and how many draws were permuted."""
    features = _features(samples, group)
    if features is None or features.shape[0] == 0:
        return samples, 0
    per_chain = max(features.shape[0] // max(num_chains, 1), 1)
    reference = features[:per_chain].mean(axis=0)
    order = np.tile(np.arange(group.size), (features.shape[0], 1))
    for _ in range(MAX_PASSES):
        new = _assign(features, reference)
        settled = np.array_equal(new, order)
        order = new
        reference = np.take_along_axis(features, order[:, :, None], axis=1).mean(axis=0)
        if settled:
            break
    changed = int(np.any(order != np.arange(group.size), axis=1).sum())
    if not changed:
        return samples, 0
    out = dict(samples)
    for name, axes in group.axes.items():
        if name in out:
            value = np.asarray(out[name])
            for axis in axes:
                value = _permute_axis(value, axis + 1, order)
            out[name] = value
    rename = np.argsort(order, axis=1)  # old label order[d, j] becomes j
    for name in group.labels:
        if name in out:
            labels = np.asarray(out[name])
            flat = labels.reshape(labels.shape[0], -1).astype(int)
            out[name] = np.take_along_axis(rename, flat, axis=1).reshape(labels.shape).astype(labels.dtype)
    return out, changed


def relabel_components(structure: ModelStructure, samples: dict[str, np.ndarray], num_chains: int) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """``samples`` relabelled for every exchangeable component group of ``structure``, and one
    record per group (``labels``, ``components``, ``draws_relabelled``) for the diagnostics."""
    records = []
    for group in exchangeable_groups(structure):
        if not any(name in samples for name in group.axes):
            continue
        samples, changed = relabel_draws(samples, group, num_chains)
        records.append({"labels": list(group.labels), "components": list(group.axes), "draws_relabelled": changed})
    return samples, records


__all__ = ["ComponentGroup", "exchangeable_groups", "relabel_components", "relabel_draws"]
