"""The four verbs and the Result contract."""

import numpy as np
import pytest

import ppgen
from ppgen.inference.optimize import MAP
from ppgen.models import basics


def test_engine_by_instance_equals_engine_by_name():
    x = basics.simulate_coin(seed=3).data["x"]
    by_name = ppgen.infer(basics.coin, x, engine="map", num_steps=50)
    by_instance = ppgen.infer(basics.coin, x, engine=MAP(num_steps=50))
    assert by_instance.params["rho"] == pytest.approx(float(by_name.params["rho"]), abs=1e-12)


def test_result_fields_and_arviz():
    x = basics.simulate_coin(seed=3).data["x"]
    result = ppgen.infer(basics.coin, x, engine="prior", num_samples=50)
    assert result.engine == "prior" and result.seconds > 0
    assert result.samples["rho"].shape == (50,)
    data = result.to_arviz()
    assert "posterior" in data.groups() and data.posterior["rho"].shape == (1, 50)
    summary = result.summary()
    assert summary["rho"]["mean"] == pytest.approx(result.samples["rho"].mean())


def test_model_kwargs_and_engine_options_are_split():
    x = basics.simulate_coin(seed=3).data["x"]
    result = ppgen.infer(basics.coin, x, a=10.0, b=1.0, engine="map", tol=1e-12)
    heads, n = x.sum(), len(x)
    assert result.params["rho"] == pytest.approx((heads + 9) / (n + 9), abs=1e-7)
    assert result.model_kwargs == {"a": 10.0, "b": 1.0}


def test_estimate_kinds():
    assert str(ppgen.Estimate(-1.5, 0.1, "estimate")) == "-1.5000 ± 0.1000 (estimate)"
    with pytest.raises(ValueError, match="Estimate.kind"):
        ppgen.Estimate(0.0, kind="guess")


def test_a_verb_traces_the_program_once(monkeypatch):
    """The verb's structure is handed to the engine (which asks for it again) for the same call,
    and only for the same call."""
    import ppgen.structure

    calls = []
    original = ppgen.structure.trace_model
    monkeypatch.setattr(ppgen.structure, "trace_model", lambda *a, **k: calls.append(1) or original(*a, **k))
    ppgen.structure.structure_cache().clear()
    x = np.array([1.0, 0.0, 1.0, 1.0])
    result = ppgen.infer(basics.coin, x, engine="map")
    assert len(calls) == 1 and result.params["rho"] == pytest.approx(4 / 6, abs=1e-6)  # (h + a - 1) / (n + a + b - 2)
    with ppgen.structure.known_structure(ppgen.inspect(basics.coin, x), basics.coin, (x,), {}):
        ppgen.inspect(basics.coin, x.copy())  # other data: not the known call, but the cached signature
    assert len(calls) == 1 and ppgen.structure.structure_cache().statistics.reuses == 2
