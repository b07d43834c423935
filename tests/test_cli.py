"""The command line: models table, render, and the tour on a small subset."""

import re

from ppgen.cli import main


def test_models_table(capsys):
    main(["models"])
    out = capsys.readouterr().out
    assert re.search(r"coin\s+rho\s+x\s+.*map", out)
    assert "bernoulli_mixture" in out


def test_render_prints_dot_and_writes_png(capsys, tmp_path):
    main(["render", "ppgen.models.mixtures:bernoulli_mixture"])
    assert "subgraph cluster_N" in capsys.readouterr().out
    main(["render", "ppgen.models.basics:coin", "-o", str(tmp_path / "coin.png")])
    assert (tmp_path / "coin.png").read_bytes()[:4] == b"\x89PNG"


def test_tour_writes_report(tmp_path):
    main(["tour", "--quick", "--no-progress", "-o", str(tmp_path), "--models", "coin", "--engines", "map", "mle"])
    page = (tmp_path / "index.html").read_text()
    assert "Capability table" in page and "<svg" in page and "def coin" in page
    assert re.search(r"<h4>map</h4>\s*<p>time [0-9.]+ s", page)


def test_tour_marks_a_run_that_warned_or_did_not_converge():
    """A run that returned with a convergence or reliability warning, or converged=False, is
    never a plain ✓ in the capability table."""
    import warnings

    from ppgen.catalogue import catalogue
    from ppgen.errors import ConvergenceWarning
    from ppgen.results import Result
    from ppgen.tour import EngineRun, ModelReport, _capability_table, _cautions

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("em: the objective did not converge", ConvergenceWarning)
        warnings.warn("an unrelated deprecation", DeprecationWarning)
    assert _cautions(Result("em"), caught) == ["em: the objective did not converge"]
    assert _cautions(Result("cavi", converged=False), []) == ["cavi: did not converge"]
    assert _cautions(Result("cavi", converged=True), []) == []

    from ppgen.agreement import Verdict

    example = next(e for e in catalogue() if e.name == "coin")
    runs = [
        EngineRun("good", result=Result("good", converged=True)),
        EngineRun("stalled", result=Result("stalled", converged=False), cautions=["stalled: did not converge"]),
    ]
    verdicts = {"good": Verdict("agrees", "nuts", 0.3, "agrees with nuts"), "stalled": Verdict("agrees", "nuts", 0.5, "agrees with nuts")}
    table = _capability_table([ModelReport(example, None, None, runs, verdicts)])
    assert re.search(r"<td><span class='' title='agrees with nuts'>✓ [0-9.]+s</span></td>", table)
    assert "title='agrees with nuts | stalled: did not converge'>✓⚠" in table
