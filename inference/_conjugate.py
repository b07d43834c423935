"""Compile a program into a conjugate-exponential factor graph, by probing it.

CAVI needs, for every factor of the log joint (each sample site's log density, element by
element), its dependence on the latents in closed form. The program does not state that form:
``Normal(mu[z], tau[z] ** -0.5)`` only says, through the traced structure, that ``x`` depends on
``mu``, ``tau`` and ``z``. This module reads the form off the program numerically, and checks it:

1. **Nodes.** Each continuous latent gets the exponential family of its prior
   (:mod:`._expfam`); a Normal latent whose scale depends on a Gamma latent of the same shape is
   joined with it into one Normal–Gamma node. Each finite discrete latent (categorical,
   Bernoulli) is a categorical node with one factor ``q(z_n)`` per element.
2. **Gather maps.** Factor element ``e`` must depend on exactly one element ``m(e)`` of each
   continuous parent. With every element of the parent at the same value, forward-mode AD with
   tangent ``(b + 1)`` on element ``b`` and then with tangent 1 gives ``m(e) + 1`` as the ratio
   of the two tangents of ``log p_e``.
3. **Categorical roles.** A categorical parent in the factor's plates is *aligned* (element
   ``e`` depends on the element at the same plate position): it is probed by setting all its
   elements to each value ``k`` in turn. Otherwise it is *gathered* (``B[z[i], z[j]]`` over a
   plate of pairs): each element ``n`` takes the value ``K + n``, with the parents widened to
   match (``B`` becomes (K + n) × (K + n)), so the gather maps name the elements of ``z`` each
   factor element uses, in which role (an index below ``K`` came from elsewhere). When the
   program does not run that way, the elements are set to the base-``K`` digits of their own
   indices and the digits are read back instead.
4. **Coefficients.** With every element of each continuous parent set to each of its
   family's ``d + 1`` probe points, ``log p_e`` is affine in each ``T(u)``, so its
   coefficients solve a small linear system per parent (multilinear interpolation). For
   gathered roles one of these runs also carries the tangent of step 2, whose "tangent along
   1" the coefficients predict: ``d + 1`` runs in all (three for ``Bernoulli(B[z[i], z[j]])``).
5. **Verification.** The compiled graph predicts every factor's log density at random
   values of all latents; any disagreement with the program (a non-conjugate dependence, a
   gather that is not one) makes the model not applicable, naming the site.

The graph then evaluates the expected log joint under a mean-field ``q`` exactly, as a
differentiable function of the expected statistics ``E_q[T(u)]`` and of ``q(z)``; its gradients
are the CAVI messages (see :mod:`ppgen.inference.cavi`).
"""

from __future__ import annotations

import itertools
import math
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import pyro
import torch
import torch.autograd.forward_ad as forward_ad
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ppgen.structure import ModelStructure

from ._discrete import threads_for
from ._expfam import FAMILY_OF_DISTRIBUTION, Family, NormalGammaFamily, design_matrix

_WRAPPERS = ("Independent", "MaskedDistribution", "ExpandedDistribution")
_CHUNK = 1 << 18


class NotConjugate(Exception):
    """The program is outside what coordinate-ascent VI handles; the message names the site."""


# --------------------------------------------------------------------------------------------
# nodes and factors


@dataclass
class Node:
    """A latent node: one site, or a (μ, τ) pair for a Normal–Gamma block."""

    name: str
    sites: tuple[str, ...]
    value_shapes: tuple[tuple[int, ...], ...]
    num_elements: int
    family: Optional[Family] = None  # continuous nodes
    support: Optional[torch.Tensor] = None  # categorical nodes: value of each index

    @property
    def is_categorical(self) -> bool:
        return self.family is None

    @property
    def cardinality(self) -> int:
        return 0 if self.support is None else int(self.support.shape[0])

    @property
    def event_dims(self) -> int:
        return 1 if self.family is not None and self.family.name == "Dirichlet" else 0

    @property
    def element_shape(self) -> tuple[int, ...]:
        shape = self.value_shapes[0]
        return shape[: len(shape) - self.event_dims]

    def values(self, elements: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """Site values from per-element values of shape (..., num_elements, *event)."""
        out = {}
        for site, shape, value in zip(self.sites, self.value_shapes, elements):
            lead = tuple(value.shape[: value.dim() - 1 - self.event_dims])
            out[site] = value.reshape(lead + shape)
        return out

    def categorical_values(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.sites[0]: self.support[indices].reshape(indices.shape[:-1] + self.value_shapes[0])}


@dataclass
class Role:
    """Factor element ``e`` depends on element ``index[e]`` of categorical node ``node``."""

    node: str
    index: torch.Tensor
    aligned: bool


@dataclass
class Parent:
    """Factor element ``e`` reads element ``base[e, a] + Σ κ_r stride_r`` of continuous node
    ``node``, where ``a`` is the configuration of the aligned roles and ``κ_r`` the value of
    gathered role ``r``."""

    node: str
    base: torch.Tensor  # (E, num_aligned_configs), long
    strides: tuple[tuple[int, int], ...] = ()
    constant_base: bool = field(init=False)

    def __post_init__(self) -> None:
        self.constant_base = bool((self.base == self.base[:1]).all())


@dataclass
class Factor:
    """One site's elementwise log density as a multilinear form.

    ``coef`` has shape (E, num_aligned_configs, d₁ + 1, ..., d_m + 1): the coefficients of
    Π_j T̃_j(u_j) where T̃ = (T, 1), for the parents in ``parents`` order. ``pair_groups``
    (factors over pairs of elements of one categorical node) lists (coefficient row,
    incidence matrix) per distinct row.
    """

    site: str
    num_elements: int
    roles: list[Role]
    parents: list[Parent]
    coef: torch.Tensor
    aligned_roles: list[int] = field(default_factory=list)
    pair_groups: Optional[list[tuple[torch.Tensor, Any]]] = None


# --------------------------------------------------------------------------------------------
# running the program


def _innermost(fn: Any) -> Any:
    while type(fn).__name__ in _WRAPPERS:
        fn = fn.base_dist
    return fn


def elementwise_log_prob(site: dict, flat: bool = True) -> torch.Tensor:
    """A site's log density per element (event dimensions of ``.to_event`` not summed),
    with ``mask`` and ``scale`` applied; flattened to shape (E,) unless ``flat=False``."""
    fn, value = site["fn"], site["value"]
    masks = []
    while type(fn).__name__ in _WRAPPERS:
        if type(fn).__name__ == "MaskedDistribution":
            masks.append((fn._mask, len(fn.event_shape)))
        fn = fn.base_dist
    log_prob = fn.log_prob(value)
    shape = torch.broadcast_shapes(log_prob.shape, fn.batch_shape)
    log_prob = log_prob.expand(shape)
    for mask, event_dims in masks:
        if not isinstance(mask, bool):
            mask = mask.reshape(mask.shape + (1,) * event_dims)
            log_prob = torch.where(mask, log_prob, torch.zeros(()))
        elif not mask:
            log_prob = torch.zeros_like(log_prob)
    extra = len(shape) - len(site["fn"].batch_shape)
    if site.get("mask") is not None:
        mask = site["mask"]
        if isinstance(mask, torch.Tensor):
            log_prob = torch.where(mask.reshape(mask.shape + (1,) * extra), log_prob, torch.zeros(()))
        elif not mask:
            log_prob = torch.zeros_like(log_prob)
    scale = site.get("scale", 1.0)
    if isinstance(scale, torch.Tensor):
        log_prob = log_prob * scale.reshape(scale.shape + (1,) * extra)
    elif scale != 1.0:
        log_prob = log_prob * scale
    return log_prob.reshape(-1) if flat else log_prob


def _element_shape(site: dict) -> tuple[int, ...]:
    """The shape of ``elementwise_log_prob(site, flat=False)``, without evaluating the density:
    the value's batch shape broadcast with the distribution's and with its masks and scale."""
    fn, value = site["fn"], site["value"]
    masks = []
    while type(fn).__name__ in _WRAPPERS:
        if type(fn).__name__ == "MaskedDistribution" and isinstance(fn._mask, torch.Tensor):
            masks.append(tuple(fn._mask.shape) + (1,) * len(fn.event_shape))
        fn = fn.base_dist
    value_batch = tuple(value.shape[: value.dim() - len(fn.event_shape)])
    shape = torch.broadcast_shapes(value_batch, fn.batch_shape, *masks)
    extra = len(torch.broadcast_shapes(value_batch, fn.batch_shape)) - len(site["fn"].batch_shape)
    for outer in (site.get("mask"), site.get("scale")):
        if isinstance(outer, torch.Tensor):
            shape = torch.broadcast_shapes(shape, tuple(outer.shape) + (1,) * extra)
    return tuple(shape)


class _Stop(Exception):
    pass


class _Recorder(Messenger):
    """Computes the elementwise log densities of the requested sites, and of the sites in
    ``also`` it passes on the way, as the program reaches them; stops the program once it has
    the requested ones (later sites are not computed)."""

    def __init__(self, sites: list[str], also: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.pending = set(sites)
        self.recorded = self.pending | also
        self.log_probs: dict[str, torch.Tensor] = {}

    def _pyro_post_sample(self, msg: dict) -> None:
        if msg["name"] in self.recorded:
            self.log_probs[msg["name"]] = elementwise_log_prob(msg)
            self.pending.discard(msg["name"])
            if not self.pending:
                raise _Stop


class Program:
    """The model with its arguments; runs it with chosen latent values."""

    def __init__(self, model: Callable, args: tuple, kwargs: dict) -> None:
        self.model, self.args, self.kwargs = model, args, kwargs
        self.runs = 0

    def trace(self, values: dict[str, torch.Tensor]):
        self.runs += 1
        conditioned = poutine.condition(self.model, data=values)
        return poutine.trace(conditioned).get_trace(*self.args, **self.kwargs)

    def log_probs(self, values: dict[str, torch.Tensor], sites: list[str], also: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
        """Elementwise log densities of ``sites``, and of the sites in ``also`` that come before
        the last of them, with the latents at ``values``."""
        self.runs += 1
        recorder = _Recorder(sites, also)
        try:
            # values are chosen inside each support; skipping validation halves a run's cost
            with pyro.validation_enabled(False), recorder:
                poutine.condition(self.model, data=values)(*self.args, **self.kwargs)
        except _Stop:
            pass
        if recorder.pending:
            raise NotConjugate(f"site(s) {sorted(recorder.pending)} did not appear when the program ran with other latent values")
        return recorder.log_probs


def _is_factor_site(site: dict) -> bool:
    return site["type"] == "sample" and not site_is_subsample(site) and not site["infer"].get("_deterministic")


def _is_latent(site: dict) -> bool:
    return _is_factor_site(site) and not site["is_observed"] and type(_innermost(site["fn"])).__name__ != "Unit"


# --------------------------------------------------------------------------------------------
# pair incidences


class _AllPairs:
    """The incidence matrix of all pairs i < j (``upper``) or i > j (``lower``) of n elements."""

    def __init__(self, size: int, triangle: str) -> None:
        self.size, self.triangle = size, triangle


class _PairList:
    """The incidence matrix of a few pairs, kept as their (row, column) indices (2, E)."""

    def __init__(self, index: torch.Tensor, size: int) -> None:
        self.index, self.size = index, size


def _incidence(index: torch.Tensor, size: int) -> Any:
    """Counts of the pairs ``index`` (2, E) as an n × n matrix: dense when dense enough, else
    the pair list itself (a sparse product is a scatter-add over the pairs)."""
    if index.shape[1] > size * size // 8 and size * size <= 1 << 24:
        return torch.zeros(size, size).index_put_((index[0], index[1]), torch.ones(index.shape[1]), accumulate=True)
    return _PairList(index, size)


def _times(incidence: Any, matrix: torch.Tensor) -> torch.Tensor:
    """``incidence @ matrix`` for a dense, listed or all-pairs incidence."""
    if isinstance(incidence, _AllPairs):
        # row i sums the rows j > i (upper) or j < i (lower) of ``matrix``
        if incidence.triangle == "upper":
            inclusive = torch.cumsum(matrix.flip(0), 0).flip(0)
        else:
            inclusive = torch.cumsum(matrix, 0)
        return inclusive - matrix
    if isinstance(incidence, _PairList):
        rows, cols = incidence.index
        return torch.zeros((incidence.size,) + matrix.shape[1:]).index_add(0, rows, matrix[cols])
    return incidence @ matrix


# --------------------------------------------------------------------------------------------
# the compiled graph


class ConjugateGraph:
    """A program compiled to nodes and multilinear factors (see the module docstring)."""

    def __init__(self, nodes: dict[str, Node], factors: list[Factor], runs: int) -> None:
        self.nodes = nodes
        self.factors = factors
        self.program_runs = runs

    def expected_log_joint(
        self,
        stats: dict[str, torch.Tensor],
        probs: dict[str, torch.Tensor],
        factors: Optional[list[Factor]] = None,
    ) -> torch.Tensor:
        """Σ_f Σ_e E_q[log p_f,e] for expected augmented statistics ``stats[node]`` of shape
        (num_elements, d + 1) and categorical probabilities ``probs[node]`` (num_elements, K).
        Exact, multilinear in each argument, differentiable."""
        total = torch.zeros(())
        for factor in self.factors if factors is None else factors:
            total = total + self.expected_factor(factor, stats, probs).sum()
        return total

    def expected_factor(self, factor: Factor, stats: dict, probs: dict) -> torch.Tensor:
        """E_q[log p_e] per element (or, for pair factors, the factor's total as shape (1,))."""
        if factor.parents and all(p.constant_base for p in factor.parents):
            return self._expected_factor_shared(factor, stats, probs)
        chunks = [
            self._expected_factor_general(factor, stats, probs, start, min(start + _CHUNK, factor.num_elements))
            for start in range(0, factor.num_elements, _CHUNK)
        ]
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def _role_weights(self, factor: Factor, probs: dict, start: int, stop: int) -> list[torch.Tensor]:
        return [probs[role.node][role.index[start:stop]] for role in factor.roles]

    def _cardinalities(self, factor: Factor) -> list[int]:
        return [self.nodes[role.node].cardinality for role in factor.roles]

    def _config_index(self, factor: Factor, parent: Parent, base: torch.Tensor) -> torch.Tensor:
        """Element of ``parent`` per (element, κ₁, ..., κ_R): shape (E', K₁, ..., K_R)."""
        sizes = self._cardinalities(factor)
        num_roles = len(sizes)
        aligned = factor.aligned_roles
        shape = [base.shape[0]] + [sizes[r] if r in aligned else 1 for r in range(num_roles)]
        index = base.reshape(shape)
        for role, stride in parent.strides:
            values = torch.arange(sizes[role]) * stride
            index = index + values.reshape([1] + [sizes[role] if r == role else 1 for r in range(num_roles)])
        return index.expand([base.shape[0]] + sizes)

    def _coef_view(self, factor: Factor, coef: torch.Tensor) -> torch.Tensor:
        sizes = self._cardinalities(factor)
        shape = [coef.shape[0]] + [sizes[r] if r in factor.aligned_roles else 1 for r in range(len(sizes))]
        return coef.reshape(shape + list(coef.shape[2:]))

    def _expected_factor_general(self, factor: Factor, stats: dict, probs: dict, start: int, stop: int) -> torch.Tensor:
        letters = iter(string.ascii_letters[1:])
        role_letters = [next(letters) for _ in factor.roles]
        stat_letters = [next(letters) for _ in factor.parents]
        terms = ["z" + "".join(role_letters) + "".join(stat_letters)]
        operands = [self._coef_view(factor, factor.coef[start:stop])]
        for letter, parent in zip(stat_letters, factor.parents):
            index = self._config_index(factor, parent, parent.base[start:stop])
            operands.append(stats[parent.node][index])
            terms.append("z" + "".join(role_letters) + letter)
        for letter, weight in zip(role_letters, self._role_weights(factor, probs, start, stop)):
            operands.append(weight)
            terms.append("z" + letter)
        return torch.einsum(",".join(terms) + "->z", *operands)

    def _expected_factor_shared(self, factor: Factor, stats: dict, probs: dict) -> torch.Tensor:
        """Every element reads the same parent entries for a given κ: contract the weights with
        the coefficients first (the factor's expected sufficient statistics), then with the
        parents' statistics H[κ, a] = Π_j T̃_j[m_j(κ), a_j]."""
        letters = iter(string.ascii_letters[1:])
        role_letters = "".join(next(letters) for _ in factor.roles)
        stat_letters = "".join(next(letters) for _ in factor.parents)
        h_terms, h_operands = [], []
        for letter, parent in zip(stat_letters, factor.parents):
            index = self._config_index(factor, parent, parent.base[:1])[0]
            h_operands.append(stats[parent.node][index])
            h_terms.append(role_letters + letter)
        h = torch.einsum(",".join(h_terms) + "->" + role_letters + stat_letters, *h_operands)
        if factor.pair_groups is not None:
            # pairs (i, j) of elements of one node: for each distinct coefficient row c_g and its
            # incidence matrix M_g, Σ_{e in g} q(z_i = k) q(z_j = l) = (Qᵀ M_g Q)[k, l]
            node_probs = probs[factor.roles[0].node]
            total = torch.zeros(())
            flat_h = h.flatten(0, 1).flatten(1)  # (K², Π_j (d_j + 1))
            for row, incidence in factor.pair_groups:
                counts = node_probs.T @ _times(incidence, node_probs)
                total = total + counts.reshape(-1) @ flat_h @ row.reshape(-1)
            return total.reshape(1)
        coef = self._coef_view(factor, factor.coef)
        operands = [coef] + self._role_weights(factor, probs, 0, factor.num_elements)
        terms = ["z" + role_letters + stat_letters] + ["z" + letter for letter in role_letters]
        sufficient = torch.einsum(",".join(terms) + "->z" + role_letters + stat_letters, *operands)
        return (sufficient * h.unsqueeze(0)).flatten(1).sum(-1)


def _role_slot(roles: list[torch.Tensor], index: torch.Tensor) -> int:
    """Position of the role whose element index map equals ``index``, appended if new."""
    for slot, existing in enumerate(roles):
        if torch.equal(existing, index):
            return slot
    roles.append(index)
    return len(roles) - 1


def _unravel(flat: torch.Tensor, shape: tuple[int, ...]) -> list[torch.Tensor]:
    """Indices per dimension of flat (row-major) indices into ``shape`` (``torch.unravel_index``
    allocates an (E, ndim) intermediate and takes several times as long on large E)."""
    out, rest = [], flat
    for extent in reversed(shape[1:]):
        out.append(rest % extent)
        rest = rest // extent
    return [rest] + out[::-1]


def _solve_coefficients(table: torch.Tensor, families: list[Family]) -> torch.Tensor:
    """Coefficients ``coef`` (E, A, d₁ + 1, ..., d_m + 1) of Π_j T̃_j(u_j) from ``table``, the log
    densities with parent j at its family's probe points p_j: table[.., p, ..] = Σ_b coef[.., b, ..] M_j[p, b]
    with M_j the family's design matrix."""
    coef = table
    for axis, family in enumerate(families):
        inverse = torch.linalg.inv(design_matrix(family))
        coef = torch.movedim(torch.tensordot(torch.movedim(coef, 2 + axis, -1), inverse.T, dims=1), -1, 2 + axis)
    return coef


def _stats_derivative(family: Family, point: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """d/dt T(p + t 1) at t = 0 for a single-element point ``p`` (every entry of every site moved
    together, as a tangent along the element's code moves them): shape (d,)."""
    with forward_ad.dual_level():
        duals = tuple(forward_ad.make_dual(value, torch.ones_like(value)) for value in point)
        return forward_ad.unpack_dual(family.stats(duals)).tangent[0]


def _derivative_along_parent(coef: torch.Tensor, families: list[Family], points: list[tuple], parent: int) -> torch.Tensor:
    """∂_t log p_e when parent ``parent`` moves along 1 from ``points[parent]`` and the other
    parents j stay at ``points[j]``: <coef_e, ⊗_j v_j> with v_j = T̃_j(p_j), and
    v_parent = (dT/dt, 0). Shape (E,); the coefficients' first aligned configuration."""
    out = coef[:, 0]
    for axis in reversed(range(len(families))):
        point = points[axis]
        if axis == parent:
            vector = torch.cat([_stats_derivative(families[axis], point), torch.zeros(1)])
        else:
            vector = torch.cat([families[axis].stats(point)[0], torch.ones(1)])
        out = out @ vector
    return out


# --------------------------------------------------------------------------------------------
# the compiler


def _resolve_latent_ancestors(structure: ModelStructure, name: str, latent_sites: set[str]) -> set[str]:
    """Latent sites a site's distribution depends on, looking through deterministic sites."""
    out: set[str] = set()
    stack = list(structure.sites[name].parents) if name in structure.sites else []
    seen: set[str] = set()
    while stack:
        parent = stack.pop()
        if parent in seen:
            continue
        seen.add(parent)
        if parent in latent_sites:
            out.add(parent)
        elif parent in structure.sites and structure.sites[parent].kind == "deterministic":
            stack.extend(structure.sites[parent].parents)
    return out


def structural_reason(structure: ModelStructure) -> Optional[str]:
    """Why cavi cannot apply, from the structure alone (or None)."""
    for plate in structure.plates.values():
        if plate.subsample_size:
            return f"plate {plate.name!r} is subsampled; cavi updates use every datum (use 'svi')"
    for site in structure.params.values():
        return (
            f"site {site.name!r} is a param; cavi needs a prior on every global "
            "(use 'svi', 'em' or 'map' for learned parameters)"
        )
    for site in structure.latent.values():
        if site.is_discrete:
            if not site.is_enumerable:
                return f"latent site {site.name!r} is discrete with {site.support} support; cavi needs finite support"
        elif site.distribution not in FAMILY_OF_DISTRIBUTION:
            return (
                f"latent site {site.name!r} has a {site.distribution} prior; cavi handles "
                f"{', '.join(sorted(FAMILY_OF_DISTRIBUTION))} and finite discrete latents"
            )
    if not structure.latent:
        return "the program has no latent sites"
    return None


class Compiler:
    """Builds a :class:`ConjugateGraph` from a program (run inside the Pyro backend)."""

    def __init__(self, model: Callable, args: tuple, kwargs: dict, structure: ModelStructure, blocks: bool = True, seed: int = 0) -> None:
        self.program = Program(model, args, kwargs)
        self.structure = structure
        self.blocks = blocks
        self.generator = torch.Generator().manual_seed(seed)
        with pyro.validation_enabled(False):
            self.base_trace = self.program.trace({})
        self.latent_sites = [n for n, s in self.base_trace.nodes.items() if _is_latent(s)]
        self.factor_sites = [n for n, s in self.base_trace.nodes.items() if _is_factor_site(s)]
        # Probe settings are built once per node and reused, so that runs at the same settings
        # can be recognised by the identity of their tensors (see ``_factor_log_prob``).
        self._runs: dict[tuple, tuple[dict[str, torch.Tensor], tuple]] = {}
        self._settings: dict[tuple, Any] = {}

    # ---- step 1: nodes -----------------------------------------------------------------
    def build_nodes(self) -> dict[str, Node]:
        nodes: dict[str, Node] = {}
        latent = set(self.latent_sites)
        families = {}
        for name in self.latent_sites:
            site = self.base_trace.nodes[name]
            if site["fn"].support.is_discrete:
                support = site["fn"].enumerate_support(expand=False).reshape(-1)
                nodes[name] = Node(name, (name,), (tuple(site["value"].shape),), site["value"].numel(), support=support)
            else:
                families[name] = type(_innermost(site["fn"])).__name__
        paired: dict[str, str] = {}
        if self.blocks:
            for name, family in families.items():
                if family != "Normal":
                    continue
                for parent in sorted(_resolve_latent_ancestors(self.structure, name, latent)):
                    same_shape = self.base_trace.nodes[parent]["value"].shape == self.base_trace.nodes[name]["value"].shape
                    if families.get(parent) in ("Gamma", "Exponential") and parent not in paired.values() and same_shape:
                        paired[name] = parent
                        break
        for name, family_name in families.items():
            if name in paired.values():
                continue
            value = self.base_trace.nodes[name]["value"]
            if name in paired:
                tau = paired[name]
                shapes = (tuple(value.shape), tuple(self.base_trace.nodes[tau]["value"].shape))
                nodes[name] = Node(f"{name},{tau}", (name, tau), shapes, value.numel(), family=NormalGammaFamily((name, tau)))
                continue
            event = int(value.shape[-1]) if family_name == "Dirichlet" else 1
            family = FAMILY_OF_DISTRIBUTION[family_name]((name,), event)
            nodes[name] = Node(name, (name,), (tuple(value.shape),), value.numel() // event, family=family)
        return {node.name: node for node in nodes.values()}

    # ---- helpers ------------------------------------------------------------------------
    def _defaults(self, nodes: dict[str, Node]) -> dict[str, tuple]:
        out = {}
        for node in nodes.values():
            if node.is_categorical:
                out[node.name] = (torch.randint(node.cardinality, (node.num_elements,), generator=self.generator),)
            else:
                out[node.name] = node.family.random(node.num_elements, self.generator)
        return out

    @staticmethod
    def _assign(node: Node, setting: tuple) -> dict[str, torch.Tensor]:
        if node.is_categorical:
            return node.categorical_values(setting[0])
        return node.values(setting)

    def _assignment(self, nodes: dict[str, Node], settings: dict[str, tuple]) -> dict[str, torch.Tensor]:
        values = {}
        for name, node in nodes.items():
            values.update(self._assign(node, settings[name]))
        return values

    def _shared(self, key: tuple, make: Callable[[], Any]) -> Any:
        """The probe setting ``key``, made once per compilation."""
        if key not in self._settings:
            self._settings[key] = make()
        return self._settings[key]

    def _factor_log_prob(
        self, factor: str, settings: dict[str, tuple], nodes: dict[str, Node],
        along: Optional[tuple[Node, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """``factor``'s elementwise log density with the latents at ``settings``, or, given
        ``along = (node, direction)``, its derivative along ``direction`` (one entry per element
        of ``node``) by forward-mode AD.

        A run records every factor site it passes, keyed by the identity of the settings'
        tensors (which the entry keeps alive): factors probed at the same settings share it,
        such as the steps of a chain that all read one transition matrix. Factors are built last
        to first, so the first run at a setting passes them all."""
        key = tuple((name, tuple(map(id, settings[name]))) for name in nodes)
        key += (None,) if along is None else ((along[0].name, id(along[1])),)
        entry = self._runs.get(key)
        if entry is None or factor not in entry[0]:
            also = frozenset(self.factor_sites)
            if along is None:
                recorded = self.program.log_probs(self._assignment(nodes, settings), [factor], also)
            else:
                node, direction = along
                with forward_ad.dual_level():
                    duals = []
                    for value in settings[node.name]:
                        tangent = direction.reshape((-1,) + (1,) * (value.dim() - 1)).expand_as(value)
                        duals.append(forward_ad.make_dual(value.contiguous(), tangent.contiguous()))
                    values = self._assignment(nodes, settings)
                    values.update(node.values(tuple(duals)))
                    recorded = {}
                    for site, log_prob in self.program.log_probs(values, [factor], also).items():
                        dual = forward_ad.unpack_dual(log_prob)
                        recorded[site] = torch.zeros_like(dual.primal) if dual.tangent is None else dual.tangent.detach().clone()
            self._runs[key] = entry = (recorded, (settings, along))
        return entry[0][factor]

    @staticmethod
    def _read_map(coded: torch.Tensor, ones: torch.Tensor, factor: str, node: Node) -> torch.Tensor:
        """Element index from the tangents along (b + 1) and along 1 (−1: no dependence)."""
        depends = ones.abs() > coded.abs().div_(node.num_elements).add_(1.0).mul_(1e-9)
        ratio = coded / ones  # not finite where ``ones`` is 0: those elements do not depend
        index = ratio.round()
        off = ratio.sub_(index).abs_() > index.abs().clamp_min_(1).mul_(1e-5)
        if bool(off.logical_and_(depends).any()):
            raise NotConjugate(
                f"site {factor!r}: each element must depend on a single element of {node.sites[0]!r} "
                "(through indexing/broadcasting), not on a combination of its elements"
            )
        return torch.where(depends, index.sub_(1).long(), -1)

    @staticmethod
    def _digits(node: Node) -> list[torch.Tensor]:
        """Digit probes of a categorical node: element n at digit d of n in base K, for every
        digit, then at digit 0 plus one (mod K)."""
        size, count = node.cardinality, node.num_elements
        num_digits = max(1, math.ceil(math.log(max(count, 2)) / math.log(size)))
        positions = torch.arange(count)
        digits = [(positions // size**d) % size for d in range(num_digits)]
        return digits + [(digits[0] + 1) % size]

    @staticmethod
    def _everywhere(node: Node, point: tuple) -> tuple:
        """Every element of ``node`` at the single-element ``point``."""
        return tuple(v.expand((node.num_elements,) + v.shape[1:]) for v in point)

    def _constant(self, node: Node, probe: int = 0) -> tuple:
        """Every element of ``node`` at its family's probe point ``probe``."""
        return self._shared((node.name, "probe", probe), lambda: self._everywhere(node, node.family.probes()[probe]))

    # ---- steps 2-4: one factor ---------------------------------------------------------
    def build_factor(self, name: str, nodes: dict[str, Node], node_of_site: dict[str, str], defaults: dict) -> Factor:
        site = self.base_trace.nodes[name]
        element_shape = _element_shape(site)
        num_elements = math.prod(element_shape)
        variables = _resolve_latent_ancestors(self.structure, name, set(self.latent_sites))
        if name in node_of_site:
            variables.add(name)
        order = list(nodes)
        variable_nodes = sorted({node_of_site[v] for v in variables}, key=order.index)
        continuous = [n for n in variable_nodes if not nodes[n].is_categorical]
        categorical = [n for n in variable_nodes if nodes[n].is_categorical]
        event_dims = len(element_shape) - len(tuple(site["fn"].batch_shape))
        own_plates = set(self.structure.sites[name].plates) if name in self.structure.sites else set()

        roles: list[Role] = []
        gathered: list[str] = []
        for node_name in categorical:
            node = nodes[node_name]
            node_plates = set(self.structure.sites[node.sites[0]].plates)
            positions = torch.arange(node.num_elements).reshape(node.element_shape)
            try:
                index = positions.reshape(node.element_shape + (1,) * event_dims).expand(element_shape).reshape(-1)
                aligned = node_plates <= own_plates
            except RuntimeError:
                aligned = False
            if aligned:
                roles.append(Role(node_name, index, True))
            else:
                gathered.append(node_name)
        if len(gathered) > 1:
            raise NotConjugate(
                f"site {name!r} depends on elements of several categorical latents outside its plates "
                f"({', '.join(gathered)}); cavi handles one"
            )
        aligned_roles = list(range(len(roles)))
        aligned_configs = list(itertools.product(*[range(nodes[r.node].cardinality) for r in roles]))

        def with_config(config: tuple, extra: Optional[dict] = None) -> dict[str, tuple]:
            settings = dict(defaults)
            for role, value in zip(roles, config):
                size = nodes[role.node].num_elements
                settings[role.node] = self._shared((role.node, "all", value), lambda: (torch.full((size,), value, dtype=torch.long),))
            settings.update(extra or {})
            return settings

        # The common value is drawn at random so that no datum sits exactly at a stationary
        # point of its log density (x = μ would hide the dependence of x on μ).
        equal = {
            n: self._shared((n, "common"), lambda n=n: self._everywhere(nodes[n], nodes[n].family.random(1, self.generator)))
            for n in continuous
        }

        parents: list[Parent] = []
        gathered_roles: list[torch.Tensor] = []
        identified = None
        if gathered and not roles:
            identified = self._identity_probe(name, nodes, continuous, nodes[gathered[0]], defaults)
        coef = None
        if identified is not None:
            parents, gathered_roles, coef = identified
        else:
            maps = self._probed_maps(name, nodes, continuous, gathered, roles, aligned_configs, equal, with_config, num_elements)
            if gathered:
                for node_name in continuous:
                    parents.append(
                        self._decode_gathered(name, nodes, node_name, maps[node_name], nodes[gathered[0]], gathered_roles, len(roles))
                    )
            else:
                for node_name in continuous:
                    parents.append(Parent(node_name, maps[node_name][0].clamp_min(0)))
        if gathered:
            if not gathered_roles:
                raise NotConjugate(
                    f"site {name!r} depends on {gathered[0]!r} outside its plates in a way cavi cannot "
                    "read (it must index a continuous latent)"
                )
            for i in range(len(gathered_roles)):
                for j in range(i + 1, len(gathered_roles)):
                    if bool((gathered_roles[i] == gathered_roles[j]).any()):
                        raise NotConjugate(f"site {name!r} uses the same element of {gathered[0]!r} twice in one term")
            for index in gathered_roles:
                roles.append(Role(gathered[0], index, False))

        if coef is None:
            # log p_e with every element of each continuous parent at each probe point
            probe_lists = [nodes[n].family.probes() for n in continuous]
            table = torch.empty((num_elements, len(aligned_configs)) + tuple(len(p) for p in probe_lists))
            for a, config in enumerate(aligned_configs):
                for combination in itertools.product(*[range(len(p)) for p in probe_lists]):
                    extra = {n: self._constant(nodes[n], p) for n, p in zip(continuous, combination)}
                    table[(slice(None), a) + combination] = self._factor_log_prob(name, with_config(config, extra), nodes)
            coef = _solve_coefficients(table, [nodes[n].family for n in continuous])
        factor = Factor(name, num_elements, roles, parents, coef, aligned_roles)
        factor.pair_groups = self._pair_groups(factor, nodes)
        return factor

    def _identity_probe(
        self, name: str, nodes: dict, continuous: list[str], categorical: Node, defaults: dict
    ) -> Optional[tuple[list[Parent], list[torch.Tensor], torch.Tensor]]:
        """Gather maps, roles and coefficients of a factor over elements of a categorical node,
        in Π_j (d_j + 1) runs (three for one Beta parent).

        Element n of the categorical node takes the value K + n (outside its support, on
        purpose) and every dimension of size K of a continuous parent is widened to K + N, so
        the entry gathered for factor element e names the categorical elements it used:
        B[z[i], z[j]] reads B[K + i, K + j], and an index below K did not come from the
        categorical (B[z[i], 0] reads B[K + i, 0]). The runs set every element of the parents
        to each combination of their probe points, which gives the coefficient table; run j
        also carries a forward-mode tangent c_b = b + 1 on the elements b of parent j. As
        log p_e = <coef_e, T̃(u_m(e))>, the tangent of log p_e is c_m(e) ∂_t <coef_e, T̃(p + t)>,
        and the coefficients give the second factor, so the ratio names m(e). Returns None (the
        caller falls back to digit probes) when the program does not run that way or the
        widened parent would be too large.
        """
        size, count = categorical.cardinality, categorical.num_elements
        support = categorical.support
        if not torch.equal(support.to(torch.float64), torch.arange(size, dtype=torch.float64)):
            return None
        shifted = (torch.arange(count) + size).to(support.dtype).reshape(categorical.value_shapes[0])
        widths = []
        for node_name in continuous:
            shape = nodes[node_name].element_shape
            wide_dims = [d for d, extent in enumerate(shape) if extent == size]
            wide = tuple(size + count if d in wide_dims else extent for d, extent in enumerate(shape))
            if not wide_dims or math.prod(wide) > 1 << 23:
                return None
            widths.append((wide_dims, wide))
        families = [nodes[n].family for n in continuous]
        probe_lists = [family.probes() for family in families]
        combinations = list(itertools.product(*[range(len(p)) for p in probe_lists]))

        def run(points: list[tuple], coded: Optional[int]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
            """log p_e with parent j at ``points[j]`` in every element, and its tangent along the
            codes of parent ``coded``."""
            values = self._assignment(nodes, defaults)
            values[categorical.sites[0]] = shifted
            with forward_ad.dual_level():
                for j, (node_name, (_, wide)) in enumerate(zip(continuous, widths)):
                    for site, point in zip(nodes[node_name].sites, points[j]):
                        primal = point[0].expand(wide + point.shape[1:])
                        if j == coded:
                            codes = torch.arange(1, math.prod(wide) + 1, dtype=torch.get_default_dtype())
                            tangent = codes.reshape(wide + (1,) * (point.dim() - 1)).expand_as(primal)
                            primal = forward_ad.make_dual(primal.contiguous(), tangent.contiguous())
                        values[site] = primal
                dual = forward_ad.unpack_dual(self.program.log_probs(values, [name])[name])
                tangent = None if coded is None else (torch.zeros_like(dual.primal) if dual.tangent is None else dual.tangent)
                return dual.primal, tangent

        def read(coef: torch.Tensor, j: int, points: list[tuple], tangent: torch.Tensor) -> torch.Tensor:
            return self._read_map(tangent, _derivative_along_parent(coef, families, points, j), name, nodes[continuous[j]])

        table, coded_runs = None, {}
        try:
            for index, combination in enumerate(combinations):
                points = [probes[k] for probes, k in zip(probe_lists, combination)]
                coded = index if index < len(continuous) else None  # run j carries parent j's codes
                value, tangent = run(points, coded)
                if table is None:
                    table = torch.empty(value.shape + (len(combinations),))
                table[:, index] = value
                if coded is not None:
                    coded_runs[coded] = (points, tangent)
        except (RuntimeError, IndexError, ValueError, NotConjugate):
            return None
        coef = _solve_coefficients(table.reshape((-1, 1) + tuple(len(p) for p in probe_lists)), families)

        parents, roles = [], []
        for j, (node_name, (wide_dims, wide)) in enumerate(zip(continuous, widths)):
            shape = nodes[node_name].element_shape
            try:
                flat = read(coef, j, *coded_runs[j])
                if bool((flat < 0).any()):
                    # a datum at a stationary point of its density (x = μ at a probe point):
                    # read again with every parent at a random point
                    points = [family.random(1, self.generator) for family in families]
                    flat = read(coef, j, points, run(points, j)[1])
            except (RuntimeError, IndexError, ValueError, NotConjugate):
                return None
            if bool((flat < 0).any() | (flat >= math.prod(wide)).any()):
                return None
            base = torch.zeros_like(flat)
            strides = []
            for d, index in enumerate(_unravel(flat, wide)):
                stride = math.prod(shape[d + 1:])
                if d in wide_dims and bool((index >= size).all()):
                    strides.append((_role_slot(roles, index - size), stride))
                elif bool((index < shape[d]).all()):
                    base += index * stride
                else:  # a widened dimension indexed partly by the categorical, partly otherwise
                    return None
            parents.append(Parent(node_name, base[:, None], tuple(sorted(strides))))
        return parents, roles, coef

    def _probed_maps(
        self, name: str, nodes: dict, continuous: list[str], gathered: list[str], roles: list[Role],
        aligned_configs: list[tuple], equal: dict, with_config: Callable, num_elements: int,
    ) -> dict[str, torch.Tensor]:
        """Gather maps of every continuous parent, per aligned configuration and, for a gathered
        categorical node, per digit probe: node -> (num_probes, E, num_aligned_configs)."""
        digit_probes: list[Optional[torch.Tensor]] = [None]
        if gathered:
            digit_probes = self._shared((gathered[0], "digits"), lambda: self._digits(nodes[gathered[0]]))

        # Gather maps. Every continuous parent holds one value in all its elements, so the
        # tangent along 1 does not depend on which element a categorical value selects (for
        # gathered roles): one "ones" pass per aligned configuration serves every digit probe.
        maps: dict[str, torch.Tensor] = {}  # node -> (num_probes, E, num_aligned_configs)
        for node_name in continuous:
            node = nodes[node_name]
            if name in node.sites and node.num_elements == num_elements:
                # a site's own prior: element e is element e of the site (no probing needed)
                identity = torch.arange(num_elements)[:, None].expand(num_elements, len(aligned_configs))
                maps[node_name] = identity[None].expand((len(digit_probes),) + identity.shape)
                continue
            codes = self._shared((node_name, "codes"), lambda: torch.arange(1, node.num_elements + 1, dtype=torch.get_default_dtype()))
            ones = self._shared((node_name, "ones"), lambda: torch.ones(node.num_elements))
            columns = []
            for config in aligned_configs:
                along_ones = self._factor_log_prob(name, with_config(config, equal), nodes, (node, ones))
                per_probe = []
                for probe in digit_probes:
                    extra = dict(equal)
                    if probe is not None:
                        extra[gathered[0]] = (probe,)
                    coded = self._factor_log_prob(name, with_config(config, extra), nodes, (node, codes))
                    per_probe.append(self._read_map(coded, along_ones, name, node))
                columns.append(torch.stack(per_probe))
            maps[node_name] = torch.stack(columns, -1)
        return maps

    def _decode_gathered(
        self, name: str, nodes: dict, node_name: str, maps: torch.Tensor, categorical: Node, roles: list[torch.Tensor], offset: int
    ) -> Parent:
        """Split a gather map read under digit probes into a fixed part and role strides.

        ``maps`` has shape (num_digits + 1, E, num_aligned_configs); under probe ``d < num_digits``
        element ``n`` of the categorical node holds digit ``d`` of ``n`` in base K, under the
        last probe it holds digit 0 plus one (mod K), which tells a dimension indexed by element
        0 from one not indexed by the categorical at all. Decoded roles are appended to
        ``roles``; their indices in the factor's role list start at ``offset``.
        """
        node = nodes[node_name]
        shape = node.element_shape
        size = categorical.cardinality
        num_digits = maps.shape[0] - 1
        missing = maps < 0
        if not bool((missing.all(0) == missing.any(0)).all()):
            raise NotConjugate(f"site {name!r}: could not read how it indexes {node.sites[0]!r}")
        maps = maps.clamp_min(0)
        if not shape:
            return Parent(node_name, maps[0])
        # per dimension of the continuous node: its index under each probe
        sequences: list[list[torch.Tensor]] = [[] for _ in shape]
        for probe in maps:
            rest = probe
            for dim in reversed(range(len(shape))):
                sequences[dim].append(rest % shape[dim])
                rest = rest // shape[dim]
        base = torch.zeros(maps.shape[1:], dtype=torch.long)
        strides = []
        for dim in range(len(shape)):
            stride = math.prod(shape[dim + 1:])
            sequence = sequences[dim]
            if all(torch.equal(s, sequence[0]) for s in sequence[1:]):
                base += sequence[0] * stride
                continue
            decoded = torch.zeros_like(sequence[0])
            for d in range(num_digits):
                decoded += sequence[d] * size**d
            consistent = (
                torch.equal(sequence[-1], (sequence[0] + 1) % size)
                and bool((decoded == decoded[..., :1]).all())
                and bool((decoded < categorical.num_elements).all())
            )
            if not consistent:
                raise NotConjugate(
                    f"site {name!r}: dimension {dim} of {node.sites[0]!r} is indexed by something other "
                    f"than the values of {categorical.sites[0]!r}"
                )
            decoded = decoded[..., 0]
            strides.append((offset + _role_slot(roles, decoded), stride))
        return Parent(node_name, base, tuple(strides))

    def _pair_groups(self, factor: Factor, nodes: dict[str, Node]) -> Optional[list]:
        """For a factor over pairs of elements of one categorical node (with every parent
        entry selected by the pair's values alone): its elements grouped by coefficient row,
        each group as an incidence matrix, so expectations cost O(E K) or less, not O(E K²)."""
        roles = factor.roles
        if factor.aligned_roles or len(roles) != 2 or roles[0].node != roles[1].node:
            return None
        if not factor.parents or not all(p.constant_base for p in factor.parents):
            return None
        flat = factor.coef[:, 0].reshape(factor.num_elements, -1)
        size = nodes[roles[0].node].num_elements
        first, second = roles[0].index, roles[1].index
        # group elements by coefficient row (few distinct rows: edge / no edge), O(E) per group
        rows_of_group = []
        unassigned = torch.ones(factor.num_elements, dtype=torch.bool)
        while bool(unassigned.any()):
            if len(rows_of_group) == 16:
                return None
            row = flat[int(unassigned.to(torch.uint8).argmax())]  # of the first unassigned element
            members = unassigned.clone()
            for column, value in zip(flat.unbind(-1), row.tolist()):
                members &= column == value
            unassigned &= ~members
            rows_of_group.append((row.reshape(factor.coef.shape[2:]), members))
        # Every pair i < j (or i > j) exactly once, as in a graph's n(n−1)/2 dyads: the
        # largest group is "all pairs minus the others", and the all-pairs product is a cumsum.
        complete = None
        if factor.num_elements == size * (size - 1) // 2:
            if bool((first < second).all()):
                complete = "upper"
            elif bool((first > second).all()):
                complete = "lower"
            if complete is not None:  # E pairs on one side of the diagonal: complete if all distinct
                seen = torch.zeros(size * size, dtype=torch.bool)
                seen[first * size + second] = True
                if int(seen.sum()) != factor.num_elements:
                    complete = None
        largest = max(range(len(rows_of_group)), key=lambda g: int(rows_of_group[g][1].sum()))
        groups = []
        for group, (row, members) in enumerate(rows_of_group):
            if complete is not None and group == largest:
                continue
            index = torch.stack([first[members], second[members]])
            groups.append((row, _incidence(index, size)))
        if complete is not None:  # c_big M_big = c_big (M_all − Σ M_other)
            big = rows_of_group[largest][0]
            others = [incidence for _, incidence in groups]
            groups.append((big, _AllPairs(size, complete)))
            groups.extend((-big, incidence) for incidence in others)
        return groups

    # ---- step 5 --------------------------------------------------------------------------
    def verify(self, graph: ConjugateGraph) -> None:
        """Compare every factor with the program at random values of all latents."""
        settings = self._defaults(graph.nodes)
        stats, probs = {}, {}
        for name, node in graph.nodes.items():
            if node.is_categorical:
                probs[name] = torch.nn.functional.one_hot(settings[name][0], node.cardinality).to(torch.get_default_dtype())
            else:
                value = node.family.stats(settings[name])
                stats[name] = torch.cat([value, torch.ones(value.shape[0], 1)], -1)
        actual = self.program.log_probs(self._assignment(graph.nodes, settings), [f.site for f in graph.factors])
        for factor in graph.factors:
            predicted = graph.expected_factor(factor, stats, probs)
            truth = actual[factor.site]
            if predicted.shape != truth.shape:
                predicted, truth = predicted.sum(), truth.sum()
            if not torch.allclose(predicted, truth, rtol=1e-6, atol=1e-6):
                names = sorted({p.node for p in factor.parents} | {r.node for r in factor.roles})
                raise NotConjugate(
                    f"site {factor.site!r}: its log density is not conjugate-exponential in "
                    f"{', '.join(repr(n) for n in names) or 'its latents'} "
                    "(each latent's complete conditional must be Normal, Gamma, Beta, Dirichlet or categorical)"
                )

    def compile(self) -> ConjugateGraph:
        nodes = self.build_nodes()
        node_of_site = {site: node.name for node in nodes.values() for site in node.sites}
        defaults = self._defaults(nodes)
        # last to first: the first run at a setting then passes every factor probed there
        factors = [self.build_factor(name, nodes, node_of_site, defaults) for name in reversed(self.factor_sites)][::-1]
        graph = ConjugateGraph(nodes, factors, 0)
        self.verify(graph)
        graph.program_runs = self.program.runs
        return graph


def compile_program(model: Callable, args: tuple, kwargs: dict, structure: ModelStructure, blocks: bool = True, seed: int = 0) -> ConjugateGraph:
    """Compile ``model(*args, **kwargs)`` (Pyro backend, float64) or raise :class:`NotConjugate`."""
    reason = structural_reason(structure)
    if reason:
        raise NotConjugate(reason)
    # the probe runs are passes over whole sites: all threads when a site is large
    largest = max(math.prod(site.batch_shape + site.event_shape) for site in structure.sites.values())
    with torch.no_grad(), threads_for(largest):
        return Compiler(model, args, kwargs, structure, blocks, seed).compile()
