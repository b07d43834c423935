"""Which enumerated latents form Markov chains: read off a program's structure.

NumPyro's MCMC sums enumerated latents out of the potential with funsor, one term per site:
on a hidden Markov model of length T that is slow to compile and to run, and funsor's
``infer_discrete`` fails beyond a few dozen steps (it tabulates the K^T joint states). ``nuts``
and ``hmc`` therefore sum chains with a compiled forward pass instead
(:mod:`ppgen.inference._chain_numpyro`, :mod:`ppgen.inference._chain_jax`); this module
decides which latents that applies to, from the :class:`~ppgen.structure.ModelStructure`
alone (no JAX):

* The enumerated latents fall into *groups*: two latents are in one group when some site's
  density depends on both (its *scope*: the enumerated latents its distribution's arguments
  are computed from, through deterministic sites).
* A group is a **chain** when it has two or more latents z_0, ..., z_{T-1} (program order,
  same cardinality, same plates, one value per plate element) and every site of its scope
  depends on one latent z_t or on one consecutive pair (z_{t-1}, z_t), and no continuous latent
  depends on it. A hidden Markov model written with ``ppgen.markov`` is one (any number of
  sequences in a plate, any emission family); so is one written as a plain loop. Dependencies
  come from the structure's provenance, not from ``markov``'s promise, so a loop whose sites
  reach further back (a second-order chain) is not a chain.
* Other groups (a mixture's one latent per datum, a latent shared by several sites) stay with
  funsor, as long as their joint state space is small (:data:`MAX_JOINT_STATES`); beyond that
  funsor cannot draw them and :func:`blocking_group` says why, naming the site.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from ppgen.structure import ModelStructure, site_plates_size

#: The largest joint state space (product of the cardinalities of a group's latents) that is
#: left to funsor: its ``infer_discrete`` tabulates it (2^14 took a minute, 2^30 ran out of
#: memory on a second-order chain).
MAX_JOINT_STATES = 2**16


@dataclass(frozen=True)
class MarkovChain:
    """A chain of enumerated latents (see the module docstring).

    ``latents`` are z_0..z_{T-1} in program order, each with ``cardinality`` K states, in
    ``plates``, of shape ``shape`` in a plain run. ``factors`` lists every site whose density
    depends on the chain as (site, t, pairwise): it touches z_t alone, or (z_{t-1}, z_t).
    ``hidden`` are deterministic sites computed from the chain's latents.
    """

    latents: tuple[str, ...]
    cardinality: int
    plates: tuple[str, ...]
    shape: tuple[int, ...]
    factors: tuple[tuple[str, int, bool], ...]
    hidden: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The chain's name: its first and last latents, ``"z_0..z_99"``."""
        return f"{self.latents[0]}..{self.latents[-1]}"


@dataclass(frozen=True)
class Group:
    """Enumerated latents coupled by the sites that depend on them (program order), the scope
    of each such site, and why the group is not a chain (None if it is one)."""

    latents: tuple[str, ...]
    scopes: dict[str, frozenset[str]]
    not_a_chain: Optional[str]


def _discrete_scopes(structure: ModelStructure, enumerated: set[str]) -> dict[str, frozenset[str]]:
    """For every site, the enumerated latents its distribution's arguments (a deterministic
    site: its value) are computed from, following deterministic sites back."""
    scopes: dict[str, frozenset[str]] = {}
    for name, site in structure.sites.items():
        found: set[str] = set()
        for parent in site.parents:
            if parent in enumerated:
                found.add(parent)
            elif parent in structure.sites and structure.sites[parent].kind == "deterministic":
                found |= scopes.get(parent, frozenset())
        scopes[name] = frozenset(found)
    return scopes


def _connected(latents: list[str], scopes: list[frozenset[str]]) -> list[list[str]]:
    """``latents`` split into connected groups (order kept), two being connected when a scope
    holds both (union–find)."""
    parent = {name: name for name in latents}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for scope in scopes:
        members = sorted(scope)
        for other in members[1:]:
            parent[root(other)] = root(members[0])
    groups: dict[str, list[str]] = {}
    for name in latents:
        groups.setdefault(root(name), []).append(name)
    return list(groups.values())


def groups_of(structure: ModelStructure, enumerated: Sequence[str]) -> list[Group]:
    """The groups of the ``enumerated`` latents of ``structure``, each said to be a chain or not."""
    chosen = set(enumerated)
    carried = _discrete_scopes(structure, chosen)
    scopes: dict[str, frozenset[str]] = {}  # site -> the latents its density depends on
    for name, site in structure.sites.items():
        if name in chosen:
            scopes[name] = carried[name] | {name}
        elif site.kind in ("observed", "factor", "latent") and carried[name]:
            scopes[name] = carried[name]
    groups = []
    for latents in _connected([n for n in structure.sites if n in chosen], list(scopes.values())):
        members = set(latents)
        own = {name: scope for name, scope in scopes.items() if scope & members}
        groups.append(Group(tuple(latents), own, _why_not_a_chain(structure, latents, own)))
    return groups


def _why_not_a_chain(structure: ModelStructure, latents: list[str], scopes: dict[str, frozenset[str]]) -> Optional[str]:
    if len(latents) < 2:
        return f"{latents[0]!r} is a single latent"
    sites = [structure.latent[name] for name in latents]
    first = sites[0]
    for site in sites:
        if site.support.cardinality != first.support.cardinality:
            return f"latents {first.name!r} and {site.name!r} have different numbers of states"
        if set(site.plates) != set(first.plates):
            return f"latents {first.name!r} and {site.name!r} sit in different plates"
        if math.prod(site.batch_shape) != site_plates_size(structure, site):
            return f"latent {site.name!r} has batch dimensions outside its plates"
    position = {name: t for t, name in enumerate(latents)}
    for name, scope in scopes.items():
        site = structure.sites[name]
        if site.kind == "latent" and name not in position:
            return f"the continuous latent {name!r} depends on {sorted(scope)[0]!r}"
        steps = sorted(position[n] for n in scope)
        if len(steps) > 2 or (len(steps) == 2 and steps[1] - steps[0] != 1):
            shown = ", ".join(repr(latents[t]) for t in steps)
            return f"site {name!r} depends on {shown}, not on one latent or two consecutive ones"
    return None


def find_chains(structure: ModelStructure, enumerated: Sequence[str]) -> list[MarkovChain]:
    """The chains among the ``enumerated`` latents of ``structure``."""
    chains = []
    carried = _discrete_scopes(structure, set(enumerated))
    for group in groups_of(structure, enumerated):
        if group.not_a_chain is not None:
            continue
        position = {name: t for t, name in enumerate(group.latents)}
        factors = []
        for name, scope in group.scopes.items():
            steps = sorted(position[n] for n in scope)
            factors.append((name, steps[-1], len(steps) == 2))
        members = set(group.latents)
        hidden = tuple(n for n, s in structure.sites.items() if s.kind == "deterministic" and carried[n] & members)
        first = structure.latent[group.latents[0]]
        chains.append(
            MarkovChain(group.latents, int(first.support.cardinality), first.plates, tuple(first.batch_shape), tuple(factors), hidden)
        )
    return chains


def blocking_group(structure: ModelStructure, enumerated: Sequence[str], engine: str) -> Optional[str]:
    """Why ``engine`` (``nuts``, ``hmc``) cannot sum out the ``enumerated`` latents, or None:
    a group that is not a chain and whose joint state space exceeds :data:`MAX_JOINT_STATES`."""
    for group in groups_of(structure, enumerated):
        if group.not_a_chain is None:
            continue
        states = math.prod(structure.latent[name].support.cardinality for name in group.latents)
        if states > MAX_JOINT_STATES:
            return (
                f"the discrete latents {group.latents[0]!r}, ..., {group.latents[-1]!r} ({len(group.latents)} sites) "
                f"are coupled but not as a first-order Markov chain ({group.not_a_chain}); {engine} would have to "
                f"sum their {states:.3g} joint states. It sums out chains in which every site depends on one "
                "latent or two consecutive ones (write a higher-order chain over tuples of states), or use gibbs"
            )
    return None
