"""meanfield: coordinate ascent when the program is conjugate-exponential, ADVI otherwise,
and the Result says which and why."""

from __future__ import annotations

import numpy as np
import pytest

import ppgen
from ppgen import dist, ops, plate, sample
from ppgen.models.basics import coin, coin_log_evidence, heights


def exp_link(x):
    mu = sample("mu", dist.Normal(0.0, 1.0))
    with plate("N", len(x)):
        sample("x", dist.Normal(ops.exp(mu), 1.0), obs=x)


def test_conjugate_program_runs_cavi():
    x = np.array([1.0, 0.0, 1.0, 1.0, 1.0])
    result = ppgen.infer(coin, x, engine="meanfield", num_samples=10)
    assert result.engine == "cavi"
    assert dict(result.diagnostics["meanfield"]) == {"chose": "cavi", "reason": "every latent's complete conditional is conjugate-exponential"}
    assert result.log_evidence.value == pytest.approx(coin_log_evidence(x), abs=1e-8)


def test_non_conjugate_prior_runs_advi_and_names_the_site():
    result = ppgen.infer(heights, np.array([170.0, 181.0, 175.5]), engine="meanfield", num_steps=200, num_samples=10)
    assert result.engine == "advi"
    assert result.diagnostics["meanfield"]["chose"] == "advi"
    assert "'sigma' has a HalfNormal prior" in result.diagnostics["meanfield"]["reason"]


def test_non_conjugate_likelihood_runs_advi_and_names_the_site():
    result = ppgen.infer(exp_link, np.array([0.5, 1.2, 2.0]), engine="meanfield", num_steps=200, num_samples=10)
    assert result.engine == "advi"
    assert "site 'x': its log density is not conjugate-exponential" in result.diagnostics["meanfield"]["reason"]
