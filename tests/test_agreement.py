"""Agreement with the reference and mixture label alignment (the capability table's verdicts).

Truth here is constructed: draws from known distributions (seeded), components permuted by a
known permutation; the verdicts must recover them."""

from __future__ import annotations

import numpy as np
import pytest

from ppgen import dist, ops, param, plate, sample
from ppgen.agreement import MCSE_MULTIPLE, align, choose_reference, compare, component_axes, verdicts
from ppgen.results import Estimate, Result
from ppgen.structure import inspect


def sensor_mixture(y=None, num_readings=60, num_modes=4):
    """A user's mixture: modes with their own centres and spreads, readings assigned to modes."""
    n = num_readings if y is None else len(y)
    mix = sample("mix", dist.Dirichlet(2.0 * ops.ones(num_modes)))
    with plate("modes", num_modes):
        centre = sample("centre", dist.Normal(0.0, 10.0))
        spread = sample("spread", dist.HalfNormal(2.0))
    with plate("readings", n):
        mode = sample("mode", dist.Categorical(mix))
        sample("y", dist.Normal(centre[mode], spread[mode]), obs=y)


def clustered_sites(y=None, num_points=50, groups=3):
    """Learned-parameter mixture: weights and 2-D centres as ``param`` sites."""
    n = num_points if y is None else y.shape[0]
    share = param("share", ops.ones(groups) / groups, constraint=dist.constraints.simplex)
    centres = param("centres", (ops.arange(groups * 2) * 1.0).reshape((groups, 2)))
    with plate("points", n):
        g = sample("g", dist.Categorical(share))
        sample("y", dist.Normal(centres[g], 1.0).to_event(1), obs=y)


@pytest.fixture(scope="module")
def mixture_structure():
    return inspect(sensor_mixture, np.linspace(-3, 3, 60))


def _draws(rng, means, sds, num):
    means, sds = np.asarray(means, float), np.asarray(sds, float)
    return means + sds * rng.standard_normal((num,) + means.shape)


def test_component_sites_are_read_from_the_structure(mixture_structure):
    axes = component_axes(mixture_structure)
    assert axes == {"mode": {"mix": [0], "centre": [0], "spread": [0], "mode": []}}
    learned = component_axes(inspect(clustered_sites, np.zeros((50, 2))))
    assert learned == {"g": {"share": [0], "centres": [0], "g": []}}


def test_alignment_undoes_a_known_permutation(mixture_structure):
    rng = np.random.default_rng(3)
    centres, spreads, mix = np.array([-6.0, -1.0, 2.5, 8.0]), np.array([0.5, 1.0, 1.5, 0.7]), np.array([0.1, 0.4, 0.3, 0.2])
    num = 400
    reference = Result("ref", samples={
        "centre": _draws(rng, centres, 0.1, num), "spread": _draws(rng, spreads, 0.05, num), "mix": _draws(rng, mix, 0.01, num),
        "mode": rng.integers(0, 4, (num, 60)),
    })
    order = np.array([2, 0, 3, 1])  # the other run's component k is the reference's component order[k]
    other_mode = rng.integers(0, 4, (num, 60))
    other = Result("other", samples={
        "centre": _draws(rng, centres[order], 0.1, num), "spread": _draws(rng, spreads[order], 0.05, num),
        "mix": _draws(rng, mix[order], 0.01, num), "mode": other_mode,
    })
    names = ["mix", "centre", "spread"]
    assert compare(other, reference, names).status == "disagrees"
    aligned = align(other, mixture_structure, {"centre": centres, "spread": spreads, "mix": mix})
    np.testing.assert_allclose(aligned.samples["centre"].mean(0), centres, atol=0.05)
    # labels of the per-datum assignment follow their components: the other run's k is order[k]
    np.testing.assert_array_equal(aligned.samples["mode"], order[other_mode])
    assert compare(aligned, reference, names).status == "agrees"


def test_learned_parameters_are_aligned_too():
    structure = inspect(clustered_sites, np.zeros((50, 2)))
    truth = {"share": np.array([0.2, 0.5, 0.3]), "centres": np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])}
    fitted = Result("em", params={"share": truth["share"][[1, 2, 0]], "centres": truth["centres"][[1, 2, 0]] + 0.01})
    aligned = align(fitted, structure, truth)
    np.testing.assert_allclose(aligned.params["centres"], truth["centres"] + 0.01)
    np.testing.assert_allclose(aligned.params["share"], truth["share"])


def test_monte_carlo_tolerance_accepts_the_same_distribution_and_rejects_a_shift():
    """Two independent samples of one Normal (importance-style draws with their ESS) agree: the
    4-MCSE test rejects with probability ~6e-5 per quantity; a shift of 8 combined standard
    errors is flagged."""
    rng = np.random.default_rng(11)
    num = 1000
    weighted = lambda draws: Result("importance", samples={"slope": draws}, diagnostics={"ess": float(num)})  # noqa: E731
    a = weighted(rng.normal(1.5, 0.3, (num, 3)))
    assert compare(weighted(rng.normal(1.5, 0.3, (num, 3))), a, ["slope"]).status == "agrees"
    shifted = weighted(rng.normal(1.5, 0.3, (num, 3)) + 8 * 0.3 * np.sqrt(2 / num))
    verdict = compare(shifted, a, ["slope"])
    assert verdict.status == "disagrees" and "slope" in verdict.detail


def test_variational_draws_get_half_a_posterior_sd():
    """Draws without MCMC or importance diagnostics (VI) may be ½ posterior sd off, not 1 sd."""
    rng = np.random.default_rng(12)
    num = 1000
    reference = Result("nuts", samples={"slope": rng.normal(1.5, 0.3, (num, 2))}, diagnostics={"r_hat": {}, "ess_bulk": {"slope": np.full(2, 1000.0)}})
    close = Result("advi", samples={"slope": rng.normal(1.5 + 0.25 * 0.3, 0.2, (num, 2))})
    far = Result("advi", samples={"slope": rng.normal(1.5 + 1.0 * 0.3, 0.2, (num, 2))})
    assert compare(close, reference, ["slope"]).status == "agrees"
    assert compare(far, reference, ["slope"]).status == "disagrees"


def test_exact_engines_are_held_to_monte_carlo_error_only():
    rng = np.random.default_rng(5)
    num = 2000
    ess = {"mu": np.full(2, float(num))}
    mcmc = lambda draws: Result("nuts", samples={"mu": draws}, diagnostics={"r_hat": {"mu": np.ones(2)}, "ess_bulk": ess})  # noqa: E731
    reference = mcmc(rng.normal(0.0, 1.0, (num, 2)))
    shift = 2 * MCSE_MULTIPLE * np.sqrt(2.0 / num)  # twice the tolerance
    assert compare(mcmc(rng.normal(0.0, 1.0, (num, 2))), reference, ["mu"]).status == "agrees"
    assert compare(mcmc(rng.normal(shift, 1.0, (num, 2))), reference, ["mu"]).status == "disagrees"


def test_draws_that_never_left_the_prior_disagree(mixture_structure):
    """The SBM failure: a run whose draws look like the prior against a concentrated posterior."""
    rng = np.random.default_rng(2)
    num = 300
    posterior = Result("cavi", samples={"mix": rng.dirichlet([40, 20, 25, 15], num), "centre": rng.normal([-6, -1, 2.5, 8], 0.2, (num, 4))}, converged=True)
    prior_like = Result("gibbs", samples={"mix": rng.dirichlet([2, 2, 2, 2], num), "centre": rng.normal(0, 10, (num, 4))})
    results = {"cavi": posterior, "gibbs": prior_like}
    found, _ = verdicts(results, {"cavi"}, mixture_structure, ["mix", "centre"])
    assert found["cavi"].status == "reference"
    assert found["gibbs"].status == "disagrees"


def test_reference_prefers_exact_then_converged_mcmc_and_never_a_warned_run():
    draws = {"w": np.zeros((10, 1))}
    results = {
        "advi": Result("advi", samples=draws, converged=True),
        "gibbs": Result("gibbs", samples=draws, diagnostics={"r_hat": {}, "min_ess_bulk": 900.0}),
        "nuts": Result("nuts", samples=draws, diagnostics={"r_hat": {}, "min_ess_bulk": 400.0}),
        "enumerate": Result("enumerate", samples=draws, log_evidence=Estimate(-3.0, kind="exact")),
    }
    assert choose_reference(results, set(results), ["w"]) == "enumerate"
    assert choose_reference(results, {"advi", "gibbs", "nuts"}, ["w"]) == "gibbs"
    assert choose_reference(results, {"advi", "nuts"}, ["w"]) == "nuts"
    assert choose_reference(results, {"advi"}, ["w"]) == "advi"
    assert choose_reference(results, set(), ["w"]) is None
