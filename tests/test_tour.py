"""The tour's report: honest capability cells (agreement with the reference and warnings), the
evidence table kept apart from log-likelihoods at a fit, network weights summarised, and a
guide's encoder drawn in the diagram."""

from __future__ import annotations

import re
import warnings

import numpy as np

from ppgen import dist, plate, sample
from ppgen.catalogue import Example, Simulated
from ppgen.diagram import diagram_spec
from ppgen.results import Estimate, Result
from ppgen.tour import EngineRun, ModelReport, _capability_table, _evidence_table, _guide_structure, _network_summary, judge
from ppgen.structure import inspect


def defect_rate(inspected=None, num_items=80, a=1.0, b=1.0):
    """Share of defective items on a production line (Beta–Bernoulli)."""
    rate = sample("rate", dist.Beta(a, b))
    with plate("items", num_items if inspected is None else len(inspected)):
        sample("defective", dist.Bernoulli(rate), obs=inspected)


def simulate_line(num_items=80, seed=0):
    rng = np.random.default_rng(seed)
    return Simulated({"inspected": (rng.random(num_items) < 0.12).astype(float)}, {"rate": 0.12})


def test_capability_cells_state_agreement_with_the_reference():
    """The closed-form Beta posterior is the reference (exact); a posterior sample from the
    right family agrees, one that never left the prior is ✗, and an importance run with an
    effective sample size near 1 is ⚠ (flagged by the engine itself), so neither is a plain ✓."""
    from scipy.special import betaln

    from ppgen.tour import _cautions
    from ppgen.verbs import infer

    simulated = simulate_line()
    example = Example("defects", defect_rate, simulate_line, "defect rate")
    report = ModelReport(example, simulated, inspect(defect_rate, **simulated.data))
    heads = simulated.data["inspected"].sum()
    n = len(simulated.data["inspected"])
    rng = np.random.default_rng(1)
    closed_form = Result(
        "closed_form", samples={"rate": rng.beta(1 + heads, 1 + n - heads, 4000)},
        log_evidence=Estimate(float(betaln(1 + heads, 1 + n - heads) - betaln(1, 1)), kind="exact"),
    )
    vi_like = Result("cavi", samples={"rate": rng.beta(1 + heads, 1 + n - heads, 2000)}, converged=True)
    prior = Result("stuck", samples={"rate": rng.beta(1.0, 1.0, 2000)}, converged=True)

    def far_guide(inspected=None, num_items=80, a=1.0, b=1.0):
        sample("rate", dist.Beta(40.0, 2.0))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bad = infer(defect_rate, **simulated.data, engine="importance", guide=far_guide, num_samples=300)
    report.runs += [
        EngineRun("closed_form", result=closed_form), EngineRun("cavi", result=vi_like), EngineRun("stuck", result=prior),
        EngineRun("importance", result=bad, cautions=_cautions(bad, caught)),
    ]
    judge(report)
    assert report.verdicts["closed_form"].status == "reference"
    assert report.verdicts["cavi"].status == "agrees"
    assert report.verdicts["stuck"].status == "disagrees"
    table = _capability_table([report])
    assert re.search(r"title='the reference \(exact\)'>★ [0-9.]+s", table)
    assert re.search(r"<span class='error' title='disagrees with closed_form[^']*rate: 0\.[45]", table)
    importance_cell = re.search(r"<td><span class='[a-z]*' title='[^']*effective sample size[^']*'>(.)(⚠)", table)
    assert importance_cell is not None and importance_cell.group(1) != "★"


def test_evidence_estimates_are_kept_apart_from_the_log_likelihood_at_a_fit():
    structure = inspect(defect_rate, np.zeros(30))
    runs = [
        EngineRun("enumerate", result=Result("enumerate", log_evidence=Estimate(-20.5, kind="exact"))),
        EngineRun("importance", result=Result("importance", log_evidence=Estimate(-20.6, 0.05, "estimate"))),
        EngineRun("em", result=Result("em", traces={"log_likelihood": np.array([-30.0, -19.0])})),
    ]
    page = _evidence_table(ModelReport(Example("d", defect_rate, simulate_line), None, structure, runs))
    evidence, _, at_fit = page.partition("Log-likelihood at the fitted parameters")
    assert "enumerate" in evidence and "importance" in evidence and "em" not in evidence.replace("enumerate", "")
    assert "<td>em</td><td>-19.0000</td>" in at_fit and "importance" not in at_fit
    assert "÷ 30" in evidence and "-0.6833" in evidence  # per datum: −20.5 / 30


def test_network_weights_are_summarised_per_module():
    params = {
        "encoder$$$net.0.weight": np.zeros((32, 64)), "encoder$$$net.0.bias": np.zeros(32),
        "encoder$$$net.2.weight": np.zeros((4, 32)), "encoder$$$net.2.bias": np.zeros(4),
        "decoder$$$net.0.weight": np.zeros((64, 2)), "scale": np.ones(1),
    }
    page = _network_summary(params)
    assert page.count("<tr>") == 3  # header, encoder, decoder
    assert "<td>encoder</td><td>2,212</td><td>4</td>" in page  # 32·64 + 32 + 4·32 + 4
    assert "<td>decoder</td><td>128</td><td>1</td>" in page
    assert "scale" not in page


def test_the_vae_diagram_draws_its_encoder():
    from ppgen.models.vae import EXAMPLES

    example = EXAMPLES[0]
    simulated = example.simulate()
    guide = _guide_structure(example, simulated)
    spec = diagram_spec(inspect(example.model, **simulated.data), guide=guide)
    assert {"source": "x", "target": "z", "role": "guide"} in spec["edges"]
