"""Plate diagrams, derived from a program's structure.

Three pure stages, as in NumPyro's ``render_model``: the :class:`~ppgen.ModelStructure`
(relations from one trace), a plain graph specification (:func:`diagram_spec`: plates,
nodes, edges as dicts), and graphviz rendering (:func:`to_graphviz`). Tests read the
specification and the DOT text.

Conventions: latent nodes are circles, observed ones shaded; deterministic nodes are
diamonds; ``param`` sites small squares; hyperparameters small filled dots labelled with their
names; covariates shaded squares. Plates are boxes labelled ``N = 100``; a site in several
plates sits in the nested box of all of them. A guide's dependencies are dashed arrows in a
second colour.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Optional

import graphviz

from ppgen.structure import ModelStructure, Site, inspect

GUIDE_COLOUR = "#c0392b"

GREEK = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "eps": "ε", "zeta": "ζ",
    "eta": "η", "theta": "θ", "iota": "ι", "kappa": "κ", "lambda": "λ", "lam": "λ", "mu": "μ",
    "nu": "ν", "xi": "ξ", "pi": "π", "rho": "ρ", "sigma": "σ", "tau": "τ", "upsilon": "υ",
    "phi": "φ", "chi": "χ", "psi": "ψ", "omega": "ω", "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ",
    "Lambda": "Λ", "Xi": "Ξ", "Pi": "Π", "Sigma": "Σ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω",
}


def symbol(name: str) -> str:
    """``theta`` -> ``θ``; ``mu_loc`` -> ``μ_loc``; other names unchanged."""
    head, sep, tail = name.partition("_")
    return GREEK.get(head, head) + sep + tail


def _html(name: str) -> str:
    """Graphviz HTML label: Greek head, the rest as a subscript (``μ<SUB>loc</SUB>``)."""
    head, _, tail = name.partition("_")
    head = _escape(GREEK.get(head, head))
    return f"{head}<SUB>{_escape(tail)}</SUB>" if tail else head


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _source_label(source: str) -> str:
    if source.startswith("f(") and source.endswith(")"):
        return "f(" + ", ".join(symbol(s) for s in source[2:-1].split(", ")) + ")"
    return symbol(source)


#: Distributions of an observed site that is a flow x = f_θ(z₀) of a base latent z₀ (drawn as such).
FLOW_DISTRIBUTIONS = frozenset({"TransformedDistribution", "_ContinuousFlowDistribution"})


def distribution_label(site: Site) -> str:
    """``θ ~ Beta(α, β)`` for a site, with constants written out (``Normal(0, 1)``)."""
    if site.kind == "deterministic":
        sources = dict(site.distribution_args).get("value", "")
        return f"{symbol(site.name)} = {_source_label(sources)}" if sources else symbol(site.name)
    arguments = ", ".join(_source_label(source) for _, source in site.distribution_args)
    return f"{symbol(site.name)} ~ {site.distribution}({arguments})"


def _plate_label(structure: ModelStructure, name: str) -> str:
    plate = structure.plates[name]
    label = f"{name} = {plate.size}"
    if plate.subsample_size:
        label += f" (batch {plate.subsample_size})"
    return label


def diagram_spec(
    structure: ModelStructure,
    guide: Optional[ModelStructure] = None,
    distributions: bool = False,
) -> dict[str, Any]:
    """The plate diagram as plain data.

    Returns ``{"plates": {path: label}, "nodes": {name: {...}}, "edges": [{...}]}`` where a
    plate ``path`` is the tuple of nested plate names (outermost first) and each node has
    ``kind``, ``label`` and ``path``; each edge has ``source``, ``target`` and ``role``
    (``model`` or ``guide``).
    """
    plates: dict[tuple[str, ...], str] = {}
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[dict[str, str]] = []

    def add_path(path: tuple[str, ...], owner: ModelStructure) -> None:
        for depth in range(1, len(path) + 1):
            plates.setdefault(path[:depth], _plate_label(owner, path[depth - 1]))

    for site in structure.sites.values():
        add_path(site.plates, structure)
        label = distribution_label(site) if distributions and site.kind in ("latent", "observed", "deterministic") else symbol(site.name)
        nodes[site.name] = {"kind": site.kind, "label": label, "path": site.plates, "role": "model"}
        for parent in site.parents:
            edges.append({"source": parent, "target": site.name, "role": "model"})
        if site.distribution in FLOW_DISTRIBUTIONS:  # x = f_θ(z₀): draw the base latent and f
            base = "z_0" if "z_0" not in structure.sites else f"z_0_{site.name}"
            nodes[base] = {"kind": "latent", "label": symbol(base), "path": site.plates, "role": "model"}
            edges.append({"source": base, "target": site.name, "role": "model", "label": "f"})
    for argument in structure.arguments.values():
        if argument.role == "data":
            continue
        path: tuple[str, ...] = ()
        if argument.role == "covariate":  # drawn in the plates shared by every site it feeds
            paths = [structure.sites[s].plates for s in argument.feeds]
            path = tuple(p for p in paths[0] if all(p in other for other in paths))
        nodes[argument.name] = {"kind": argument.role, "label": symbol(argument.name), "path": path, "role": "model"}
        for target in argument.feeds:
            edges.append({"source": argument.name, "target": target, "role": "model"})

    if guide is not None:
        data_nodes = {s.data_argument or s.name: s.name for s in structure.observed.values()}
        for site in guide.sites.values():
            if site.kind == "param" and site.name not in nodes:
                nodes[site.name] = {"kind": "param", "label": symbol(site.name), "path": (), "role": "guide"}
            if site.kind not in ("latent", "deterministic"):
                continue
            if site.name not in nodes:
                add_path(site.plates, guide)
                nodes[site.name] = {"kind": "latent", "label": symbol(site.name), "path": site.plates, "role": "guide"}
            for parent in site.parents + tuple(data_nodes.get(a, a) for a in site.arguments):
                if parent in nodes and parent != site.name:
                    edges.append({"source": parent, "target": site.name, "role": "guide"})
    return collapse_chains({"plates": plates, "nodes": nodes, "edges": edges})


_STEP = re.compile(r"^(.+)_(\d+)$")
MIN_CHAIN = 3  # steps a sequence needs before it is drawn (or listed) as one chain


def step_groups(names: Iterable[str]) -> dict[str, dict[int, str]]:
    """Names of the form ``prefix_<t>`` (the steps of a sequence), grouped: prefix -> {t: name}."""
    groups: dict[str, dict[int, str]] = {}
    for name in names:
        match = _STEP.match(name)
        if match:
            groups.setdefault(match.group(1), {})[int(match.group(2))] = name
    return groups


def collapse_chains(spec: dict[str, Any]) -> dict[str, Any]:
    """Draw the steps ``name_0, ..., name_{T-1}`` (or ``name_1, ..., name_T``) of a sequence (a
    loop under ``ppgen.markov``) as one node ``name_t`` (with ``chain_length`` T). An edge
    between consecutive steps becomes a self-loop labelled ``t−1 → t`` (``t → t−1`` for a chain
    run backwards, as a diffusion's reverse process); parallel edges between two chains become one.

    A group collapses when it has at least three members, indexed from 0 or 1 without gaps, all
    of one kind, role and plate path.
    """
    groups = step_groups(spec["nodes"])
    rename: dict[str, tuple[str, int]] = {}
    lengths: dict[str, int] = {}
    for prefix, members in groups.items():
        kinds = {(spec["nodes"][n]["kind"], spec["nodes"][n]["path"], spec["nodes"][n]["role"]) for n in members.values()}
        first = min(members)
        if len(members) < MIN_CHAIN or first not in (0, 1) or sorted(members) != list(range(first, first + len(members))) or len(kinds) != 1:
            continue
        collapsed = f"{prefix}_t"
        if collapsed in spec["nodes"]:
            continue
        lengths[collapsed] = len(members)
        rename.update({name: (collapsed, index) for index, name in members.items()})
    if not rename:
        return spec

    def step_label(label: str) -> str:
        for prefix in {c[: -len("_t")] for c in lengths}:
            label = re.sub(rf"\b{re.escape(prefix)}_1\b", f"{prefix}_t", label)
            label = re.sub(rf"\b{re.escape(prefix)}_0\b", f"{prefix}_t−1", label)
        return label

    nodes: dict[str, dict[str, Any]] = {}
    for name, node in spec["nodes"].items():
        if name not in rename:
            nodes[name] = node
            continue
        collapsed, index = rename[name]
        if collapsed in nodes and index != min(groups[collapsed[: -len("_t")]]) + 1:
            continue
        typical = dict(node)
        typical["label"] = symbol(collapsed) if node["label"] == symbol(name) else step_label(node["label"])
        typical["chain_length"] = lengths[collapsed]
        nodes[collapsed] = typical
    edges, seen = [], set()
    for edge in spec["edges"]:
        source, source_index = rename.get(edge["source"], (edge["source"], None))
        target, target_index = rename.get(edge["target"], (edge["target"], None))
        new = dict(edge, source=source, target=target)
        if source == target and source in lengths:
            if abs(target_index - source_index) != 1:
                continue
            new["label"] = "t−1 → t" if target_index == source_index + 1 else "t → t−1"
        key = (source, target, edge["role"])
        if key not in seen:
            seen.add(key)
            edges.append(new)
    return {"plates": spec["plates"], "nodes": nodes, "edges": edges}


class PlateDiagram(graphviz.Digraph):
    """A ``graphviz.Digraph`` that shows itself as SVG in Jupyter."""

    def _repr_svg_(self) -> str:
        return self.pipe(format="svg", encoding="utf-8")


_NODE_STYLE = {
    "latent": {"shape": "circle"},
    "observed": {"shape": "circle", "style": "filled", "fillcolor": "gray75"},
    "deterministic": {"shape": "diamond"},
    "factor": {"shape": "box", "style": "filled", "fillcolor": "black", "width": "0.15", "height": "0.15", "fixedsize": "true"},
    "param": {"shape": "square", "width": "0.3", "fontsize": "10"},
    "hyperparameter": {"shape": "point", "width": "0.08"},
    "covariate": {"shape": "square", "style": "filled", "fillcolor": "gray75"},
}


def to_graphviz(spec: dict[str, Any], name: str = "model") -> PlateDiagram:
    """Render a :func:`diagram_spec` with graphviz."""
    graph = PlateDiagram(name=name, graph_attr={"rankdir": "TB", "fontname": "Helvetica"}, node_attr={"fontname": "Helvetica"})
    clusters: dict[tuple[str, ...], graphviz.Digraph] = {(): graph}
    children: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for path in sorted(spec["plates"], key=len):
        clusters[path] = graphviz.Digraph(name="cluster_" + "__".join(path))
        clusters[path].attr(label=spec["plates"][path], labeljust="r", labelloc="b", style="rounded")
        children.setdefault(path[:-1], []).append(path)
    for node_name, node in spec["nodes"].items():
        style = dict(_NODE_STYLE[node["kind"]])
        if node["role"] == "guide":
            style.update(color=GUIDE_COLOUR, fontcolor=GUIDE_COLOUR, style="dashed")
        label = node["label"]
        if label != symbol(node_name) and style.get("shape") == "circle":
            style["shape"] = "ellipse"  # a distribution label does not fit a circle
        if node["kind"] == "hyperparameter":
            style["xlabel"] = label
            label = ""
        elif node["kind"] == "factor":
            style["xlabel"] = label
            label = ""
        else:
            label = f"<{_html(node_name) if label == symbol(node_name) else _escape(label)}>"
        clusters[node["path"]].node(node_name, label=label, **style)
    for edge in spec["edges"]:
        attributes = {"style": "dashed", "color": GUIDE_COLOUR} if edge["role"] == "guide" else {}
        if "label" in edge:
            attributes["label"] = edge["label"]
        graph.edge(edge["source"], edge["target"], **attributes)

    def attach(path: tuple[str, ...]) -> None:
        for child in children.get(path, []):
            attach(child)
            clusters[path].subgraph(clusters[child])

    attach(())
    return graph


def render(
    model: Callable,
    *args: Any,
    guide: Optional[Callable] = None,
    distributions: bool = False,
    **kwargs: Any,
) -> PlateDiagram:
    """The plate diagram of ``model(*args, **kwargs)``, drawn from the program.

    ``guide``: an inference program over the same latents; its dependencies are drawn as
    dashed arrows in a second colour. ``distributions=True`` labels every node with its
    distribution (``θ ~ Beta(α, β)``). Save with ``.render(filename, format="png")``.
    """
    structure = inspect(model, *args, **kwargs)
    if guide is not None and hasattr(guide, "bind"):  # ppgen.amortize(encoder): give it the model's signature
        guide = guide.bind(model, structure).program
    guide_structure = inspect(guide, *args, **kwargs) if guide is not None else None
    return to_graphviz(diagram_spec(structure, guide_structure, distributions), name=structure.name)
