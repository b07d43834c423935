"""Plate diagrams, checked on the graph specification and the DOT text."""

import re

import numpy as np

import ppgen
from ppgen import dist, param, plate, sample
from ppgen.diagram import GUIDE_COLOUR, diagram_spec, symbol
from ppgen.models import factor, mixtures


def _edges(spec, role="model"):
    return {(e["source"], e["target"]) for e in spec["edges"] if e["role"] == role}


def _cluster_body(dot: str, name: str) -> str:
    start = dot.index(f"subgraph cluster_{name} {{")
    depth, index = 0, dot.index("{", start)
    for index in range(index, len(dot)):
        depth += {"{": 1, "}": -1}.get(dot[index], 0)
        if depth == 0:
            return dot[start:index]
    raise AssertionError("unbalanced DOT")


def test_bernoulli_mixture_acceptance_example():
    data = mixtures.simulate_bernoulli_mixture(num_data=100).data
    spec = diagram_spec(ppgen.inspect(mixtures.bernoulli_mixture, **data))
    assert {("alpha", "theta"), ("beta", "theta"), ("gamma", "pi"), ("pi", "z"), ("z", "x"), ("theta", "x")} == _edges(spec)
    for name in ("alpha", "beta", "gamma"):
        assert spec["nodes"][name]["kind"] == "hyperparameter"
    assert spec["nodes"]["theta"]["path"] == ("K",)
    assert spec["nodes"]["z"]["path"] == spec["nodes"]["x"]["path"] == ("N",)
    assert spec["plates"] == {("K",): "K = 2", ("N",): "N = 100"}

    dot = ppgen.render(mixtures.bernoulli_mixture, **data).source
    k_plate, n_plate = _cluster_body(dot, "K"), _cluster_body(dot, "N")
    assert 'label="K = 2"' in k_plate and re.search(r"\btheta \[label=<θ>", k_plate)
    assert re.search(r"\bz \[", n_plate) and re.search(r"\bx \[", n_plate) and 'label="N = 100"' in n_plate
    assert re.search(r"\bx \[[^]]*fillcolor=gray75[^]]*style=filled", dot)
    assert not re.search(r"\bz \[[^]]*style=filled", dot)
    for name, greek in (("alpha", "α"), ("beta", "β"), ("gamma", "γ")):
        assert re.search(rf'\b{name} \[[^]]*shape=point[^]]*xlabel="{greek}"', dot)
    for edge in ("alpha -> theta", "beta -> theta", "gamma -> pi", "pi -> z", "z -> x", "theta -> x"):
        assert edge in dot
    assert re.search(r"\bpi \[label=<π>", dot)


def test_distribution_labels():
    spec = diagram_spec(ppgen.inspect(mixtures.bernoulli_mixture), distributions=True)
    assert spec["nodes"]["theta"]["label"] == "θ ~ Beta(α, β)"
    assert spec["nodes"]["pi"]["label"] == "π ~ Dirichlet(γ)"
    assert spec["nodes"]["z"]["label"] == "z ~ Categorical(π)"
    ppca = diagram_spec(ppgen.inspect(factor.ppca), distributions=True)
    assert ppca["nodes"]["z"]["label"] == "z ~ Normal(0, 1)"
    assert ppca["nodes"]["x"]["label"] == "x ~ Normal(f(W, mu, z), sigma)".replace("mu", "μ").replace("sigma", "σ")


def test_gaussian_mixture_diagram():
    data = mixtures.simulate_gaussian_mixture(num_data=50).data
    spec = diagram_spec(ppgen.inspect(mixtures.gaussian_mixture, **data))
    assert _edges(spec) == {("weights", "z"), ("locs", "x"), ("scale_trils", "x"), ("z", "x")}
    assert {n for n, v in spec["nodes"].items() if v["kind"] == "param"} == {"weights", "locs", "scale_trils"}
    dot = ppgen.render(mixtures.gaussian_mixture, **data).source
    assert re.search(r"\bweights \[[^]]*shape=square", dot)
    body = _cluster_body(dot, "N")
    assert re.search(r"\bz \[", body) and re.search(r"\bx \[", body) and "weights" not in body


def test_factor_model_diagram():
    spec = diagram_spec(ppgen.inspect(factor.ppca, **factor.simulate_ppca(num_data=40).data))
    assert _edges(spec) == {("W", "x"), ("mu", "x"), ("sigma", "x"), ("z", "x")}
    assert spec["nodes"]["z"]["path"] == ("N",) and spec["nodes"]["W"]["path"] == ()
    dot = ppgen.render(factor.ppca).source
    assert re.search(r"\bsigma \[label=<σ>", dot) and re.search(r"\bmu \[label=<μ>", dot)


def test_intersection_of_plates_is_nested():
    def model(x=None):
        with plate("rows", 4, dim=-2):
            row_effect = sample("row_effect", dist.Normal(0.0, 1.0))
            with plate("cols", 3, dim=-1):
                sample("x", dist.Normal(row_effect, 1.0), obs=x)

    dot = ppgen.render(model, np.zeros((4, 3))).source
    inner = _cluster_body(dot, "rows__cols")
    assert re.search(r"\bx \[", inner) and 'label="cols = 3"' in inner
    assert "subgraph cluster_rows__cols" in _cluster_body(dot, "rows")


def test_guide_edges_are_dashed_in_second_colour():
    def model(x=None):
        rho = sample("rho", dist.Beta(2.0, 2.0))
        with plate("N", 6):
            sample("x", dist.Bernoulli(rho), obs=x)

    def guide(x=None):
        shape = param("shape", 1.0)
        sample("rho", dist.Beta(shape + x.sum(), 2.0))

    x = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    spec = diagram_spec(ppgen.inspect(model, x), ppgen.inspect(guide, x))
    assert ("x", "rho") in _edges(spec, "guide") and ("shape", "rho") in _edges(spec, "guide")
    dot = ppgen.render(model, x, guide=guide).source
    assert re.search(rf'x -> rho \[color="{GUIDE_COLOUR}" style=dashed\]', dot)
    assert "rho -> x\n" in dot or "rho -> x\t" in dot or re.search(r"rho -> x$", dot, re.M)


def test_greek_symbols():
    assert symbol("theta") == "θ" and symbol("mu_loc") == "μ_loc" and symbol("x") == "x"


def test_render_writes_png(tmp_path):
    path = ppgen.render(mixtures.bernoulli_mixture).render(tmp_path / "bm", format="png", cleanup=True)
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert ppgen.render(mixtures.bernoulli_mixture)._repr_svg_().lstrip().startswith("<?xml")
