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
