"""NUTS on the seven posteriordb posteriors against their reference posteriors.

For every parameter: the posterior mean within 4 Monte Carlo standard errors of the reference
mean (MCSE from ppgen's bulk ESS and the reference sd, combined with the reference's own
MCSE), the posterior sd within 15 % of the reference sd, and max R-hat < 1.01. The reference
summaries are copies of posteriordb's (tests/data/posteriordb, BSD 3-Clause).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ppgen
from ppgen.models import posteriordb

REFERENCE = Path(__file__).resolve().parent.parent / "data" / "posteriordb"

#: Per posterior: NUTS options beyond the shared ones (the kidiq coefficients are strongly
#: correlated, so a dense mass matrix; the GP Poisson regression's reference was drawn with
#: Stan's adapt_delta 0.99, its curvature changes fast with the length scale).
OPTIONS = {name: {} for name in posteriordb.POSTERIORS}
OPTIONS["kidscore_momiq"] = {"dense_mass": True}
OPTIONS["gp_pois_regr"] = {"target_accept": 0.99}


def reference(name: str) -> dict[str, dict[str, np.ndarray]]:
    """Mean, sd and MCSE per flattened Stan name, from the test copy of the summaries."""
    folder = REFERENCE / posteriordb.POSTERIORS[name]
    means = json.loads((folder / "reference_mean_value.json").read_text())
    squares = json.loads((folder / "reference_mean_squared_value.json").read_text())
    out = {}
    for index, flat in enumerate(means["names"]):
        mean = means["mean_value"][index]
        out[flat] = {
            "mean": mean,
            "sd": float(np.sqrt(squares["mean_squared_value"][index] - mean**2)),
            "mcse": means["mcse_mean"][index],
        }
    return out


def flat_draws(result, flat_name: str) -> tuple[np.ndarray, float]:
    """Draws and bulk ESS of Stan's ``name[i]`` (1-based) from a Result."""
    base, _, index = flat_name.partition("[")
    draws, ess = result.samples[base], result.diagnostics["ess_bulk"][base]
    if index:
        i = int(index.rstrip("]")) - 1
        return draws[:, i], float(ess[i])
    return draws, float(ess)


@pytest.mark.parametrize("name", list(posteriordb.POSTERIORS))
def test_nuts_matches_posteriordb_reference(name):
    model, load = posteriordb.PROGRAMS[name]
    result = ppgen.infer(
        model, engine="nuts", num_warmup=500, num_samples=1000, num_chains=4, progress=False, seed=0,
        **OPTIONS[name], **load().data,
    )
    assert result.diagnostics["max_r_hat"] < 1.01
    assert result.diagnostics["divergences"] == 0
    for flat, ref in reference(name).items():
        draws, ess = flat_draws(result, flat)
        stderr = np.hypot(ref["sd"] / np.sqrt(ess), ref["mcse"])
        z = (draws.mean() - ref["mean"]) / stderr
        assert abs(z) < 4, f"{name} {flat}: mean {draws.mean():.4g} vs {ref['mean']:.4g} (z = {z:.2f})"
        assert abs(draws.std() / ref["sd"] - 1) < 0.15, f"{name} {flat}: sd {draws.std():.4g} vs {ref['sd']:.4g}"


def test_loaders_give_reference_means_as_truth():
    sim = posteriordb.load_eight_schools()
    assert sim.data["y"].shape == (8,) and sim.data["J"] == 8
    assert sim.truth["theta"].shape == (8,)
    np.testing.assert_allclose(sim.truth["mu"], reference("eight_schools_noncentered")["mu"]["mean"])
    summary = posteriordb.reference_posterior("kidscore_momiq")
    np.testing.assert_allclose(summary["beta"]["sd"][1], reference("kidscore_momiq")["beta[2]"]["sd"])
