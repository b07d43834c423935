"""Agreement with the reference and mixture label alignment (the capability table's verdicts).

Truth here is constructed: draws from known distributions (seeded), components permuted by a
known permutation; the verdicts must recover them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ppgen import dist, ops, param, plate, sample
from ppgen.agreement import MCSE_MULTIPLE, align, choose_reference, compare, compare_marginals, component_axes, verdicts
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


# ------------------------------------------------------------------------------------------
# the reference for learned parameters, and point fits judged by their likelihood


def checkout_delays(delay=None, num_orders=120, lanes=2):
    """A user's model: delays at a shop's checkout, a mixture of lanes with learned centres."""
    n = num_orders if delay is None else len(delay)
    share = param("share", ops.ones(lanes) / lanes, constraint=dist.constraints.simplex)
    centre = param("centre", ops.linspace(0.0, 8.0, lanes))
    width = param("width", ops.ones(lanes), constraint=dist.constraints.positive)
    with plate("orders", n):
        lane = sample("lane", dist.Categorical(share))
        sample("delay", dist.Normal(centre[lane], width[lane]), obs=delay)


def sensor_factors(reading=None, num_reads=150, num_sensors=4, num_factors=2):
    """A user's factor model with the factors integrated out: reading ~ N(m, L Lᵀ + s² I);
    the loadings L are identified only up to a rotation."""
    n, d = (num_reads, num_sensors) if reading is None else reading.shape
    loadings = param("loadings", 0.3 * ops.sin(ops.arange(d * num_factors) * 1.0 + 0.5).reshape((d, num_factors)))
    offset = param("offset", ops.zeros(d))
    noise = param("noise", ops.ones(()), constraint=dist.constraints.positive)
    covariance = loadings @ loadings.T + noise**2 * ops.eye(d)
    with plate("reads", n):
        sample("reading", dist.MultivariateNormal(offset, covariance_matrix=covariance), obs=reading)


def _mixture_log_likelihood(delay, share, centre, width):
    from scipy.special import logsumexp
    from scipy.stats import norm

    return float(logsumexp(np.log(share)[None] + norm.logpdf(delay[:, None], centre, width), axis=1).sum())


def test_reference_is_the_best_founded_run_and_never_a_fixed_budget_stochastic_fit():
    """Tiers: exact, then exact up to Monte Carlo error, then a converged deterministic fit,
    then a stochastic fit converged by its own test; a fixed-budget SVI run (converged None,
    a noisy ELBO) is never the reference, however early it comes in the table."""
    values = {"centre": np.array([1.0, 4.0])}
    results = {
        "svi": Result("svi", params=values, log_evidence=Estimate(-50.0, 0.4, "lower-bound"), diagnostics={"elbo_stderr": 0.4}),
        "advi": Result("advi", params=values, log_evidence=Estimate(-49.0, 0.3, "lower-bound"), converged=True, diagnostics={"elbo_stderr": 0.3}),
        "em": Result("em", params=values, converged=True),
        "nuts": Result("nuts", samples={"centre": np.zeros((10, 2))}, diagnostics={"r_hat": {}, "min_ess_bulk": 300.0}),
    }
    assert choose_reference(results, set(results), ["centre"]) == "nuts"
    assert choose_reference(results, {"svi", "advi", "em"}, ["centre"]) == "em"
    assert choose_reference(results, {"svi", "advi"}, ["centre"]) == "advi"
    assert choose_reference(results, {"svi"}, ["centre"]) is None
    found, _ = verdicts({"svi": results["svi"]}, {"svi"}, inspect(checkout_delays, np.zeros(5)), ["centre"])
    assert found["svi"].status == "not compared"


@pytest.fixture(scope="module")
def checkout_fits():
    from ppgen.verbs import learn

    rng = np.random.default_rng(21)
    lane = rng.random(120) < 0.35
    delay = np.where(lane, rng.normal(6.0, 1.0, 120), rng.normal(2.0, 0.5, 120))
    em = learn(checkout_delays, delay, engine="em")
    # fixed budgets of noisy steps (converged unknown): 15 stop far from the maximum, 400 reach it
    svi = {steps: learn(checkout_delays, delay, engine="svi", num_steps=steps, learning_rate=0.05, num_restarts=1, num_samples=10) for steps in (15, 400)}
    return delay, {"svi_short": svi[15], "em": em, "svi_long": svi[400]}


def test_point_fits_are_judged_by_the_log_likelihood_they_reach(checkout_fits):
    """The log-likelihood at each fit (discrete lanes summed out) matches a brute-force sum;
    converged EM is the reference ahead of fixed-budget SVI runs listed first; each SVI
    verdict is the likelihood-ratio rule applied to the brute-force values."""
    from scipy.stats import chi2

    from ppgen.tour import _fit_log_likelihoods

    delay, fits = checkout_fits
    structure = inspect(checkout_delays, delay)
    fitted = _fit_log_likelihoods(structure, fits, set(fits))
    brute = {e: _mixture_log_likelihood(delay, r.params["share"], r.params["centre"], r.params["width"]) for e, r in fits.items()}
    for engine in fits:
        np.testing.assert_allclose(fitted[engine], brute[engine], rtol=1e-9)
    names = ["share", "centre", "width"]
    found, _ = verdicts(fits, set(fits), structure, names, log_likelihoods=fitted)
    assert found["em"].status == "reference"
    for run in ("svi_short", "svi_long"):
        expected = "agrees" if brute["em"] - brute[run] <= 0.5 * chi2.ppf(0.95, 6) else "disagrees"
        assert found[run].status == expected and "log-likelihood" in found[run].detail
    assert brute["em"] - brute["svi_short"] > 20.0  # the budget was far too small: it must be flagged
    assert found["svi_short"].status == "disagrees" and found["svi_long"].status == "agrees"


def test_an_unidentified_rotation_of_a_point_fit_agrees_and_a_worse_fit_does_not():
    """Rotating the loadings leaves the likelihood unchanged (brute force with scipy): the
    rotated fit agrees although every coordinate moved, while doubling the noise scale is
    far outside the 95 % likelihood-ratio region."""
    from scipy.stats import multivariate_normal

    from ppgen.tour import _fit_log_likelihoods
    from ppgen.verbs import learn

    rng = np.random.default_rng(8)
    truth = rng.normal(0.0, 1.0, (4, 2))
    reading = rng.normal(size=(150, 2)) @ truth.T + 0.4 * rng.normal(size=(150, 4)) + np.array([1.0, -2.0, 0.5, 3.0])
    fit = learn(sensor_factors, reading, engine="mle")
    angle = 0.9
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rotated = replace(fit, engine="rotated", params={**fit.params, "loadings": fit.params["loadings"] @ rotation})
    noisier = replace(fit, engine="noisier", params={**fit.params, "noise": 2.0 * fit.params["noise"]})
    runs = {"mle": fit, "rotated": rotated, "noisier": noisier}
    structure = inspect(sensor_factors, reading)
    fitted = _fit_log_likelihoods(structure, runs, set(runs))
    for engine, result in runs.items():
        p = result.params
        covariance = p["loadings"] @ p["loadings"].T + p["noise"] ** 2 * np.eye(4)
        np.testing.assert_allclose(fitted[engine], multivariate_normal(p["offset"], covariance).logpdf(reading).sum(), rtol=1e-9)
    names = ["loadings", "offset", "noise"]
    found, _ = verdicts(runs, {"mle"}, structure, names, log_likelihoods=fitted)
    assert found["mle"].status == "reference"
    assert found["rotated"].status == "agrees"
    assert compare(rotated, fit, names).status == "disagrees"  # coordinate by coordinate it would be a false ✗
    assert found["noisier"].status == "disagrees"


def test_a_converged_fit_below_the_simulated_truths_likelihood_is_flagged_and_not_the_reference(checkout_fits):
    """The maximum's log-likelihood is at least the true values'; a converged deterministic fit
    more than ½ χ²_d(0.95) below the truth's (here both lanes merged: a local optimum) is ✗ and
    cannot be the reference, even listed first."""
    from scipy.stats import chi2

    from ppgen.agreement import TRUTH
    from ppgen.tour import _fit_log_likelihoods

    delay, fits = checkout_fits
    em = fits["em"]
    pooled = {"share": np.array([0.5, 0.5]), "centre": np.full(2, delay.mean()), "width": np.full(2, delay.std())}
    runs = {"stuck": replace(em, engine="stuck", params=pooled), "em": em}
    truth = {"share": np.array([0.65, 0.35]), "centre": np.array([2.0, 6.0]), "width": np.array([0.5, 1.0]), "lane": np.zeros(120)}
    structure = inspect(checkout_delays, delay)
    fitted = _fit_log_likelihoods(structure, runs, set(runs), truth)
    np.testing.assert_allclose(fitted[TRUTH], _mixture_log_likelihood(delay, truth["share"], truth["centre"], truth["width"]), rtol=1e-9)
    assert fitted[TRUTH] - fitted["stuck"] > 0.5 * chi2.ppf(0.95, 6)  # brute force says: far below the truth
    assert fitted["em"] >= fitted[TRUTH]  # EM reached the maximum
    found, _ = verdicts(runs, set(runs), structure, ["share", "centre", "width"], log_likelihoods=fitted)
    assert found["stuck"].status == "disagrees" and "below the simulated truth" in found["stuck"].detail
    assert found["em"].status == "reference"


# ------------------------------------------------------------------------------------------
# discrete marginals


def beacon_mixture(signal=None, num_pings=40, num_sources=3):
    """A user's mixture with a per-datum source: other names and sizes than above."""
    n = num_pings if signal is None else len(signal)
    weight = sample("weight", dist.Dirichlet(ops.ones(num_sources)))
    with plate("sources", num_sources):
        level = sample("level", dist.Normal(0.0, 5.0))
    with plate("pings", n):
        source = sample("source", dist.Categorical(weight))
        sample("signal", dist.Normal(level[source], 1.0), obs=signal)


def _beacon_runs(rng, num=2000, pings=40):
    """An MCMC-like reference and exact marginals p(source | signal) built from the same known
    posterior: confident assignments for the first 30 pings, a 70/30 split for the last 10."""
    probs = np.zeros((pings, 3))
    truth = rng.integers(0, 3, pings)
    probs[np.arange(pings), truth] = 1.0
    probs[30:] = 0.0
    probs[30:, 0], probs[30:, 1] = 0.7, 0.3
    draws = np.stack([rng.choice(3, size=num, p=row) for row in probs], axis=1)
    levels = {"weight": rng.dirichlet([30, 20, 10], num), "level": rng.normal([-5.0, 0.0, 5.0], 0.2, (num, 3))}
    ess = {"source": np.full(pings, float(num)), "weight": np.full(3, float(num)), "level": np.full(3, float(num))}
    mcmc = Result("nuts", samples={**levels, "source": draws}, diagnostics={"r_hat": {}, "ess_bulk": ess})
    return probs, levels, mcmc


def test_a_run_that_differs_only_in_a_discrete_marginal_disagrees():
    """Same continuous draws; one engine's marginals move five confident pings to another
    source (a difference of 1 against a tolerance of c = 5.0 MCSE of the reference's frequencies
    for 120 probabilities, ≈ 0.002 for a category drawn every time in 2000 draws, ≈ 0.05 for
    the 70/30 pings), the other holds the exact marginals the reference's draws were made from."""
    rng = np.random.default_rng(21)
    structure = inspect(beacon_mixture, np.zeros(40))
    probs, levels, mcmc = _beacon_runs(rng)
    exact = Result("enumerate", samples=levels, marginals={"source": probs}, log_evidence=Estimate(-100.0, 0.0, "exact"))
    wrong = probs.copy()
    wrong[:5] = np.roll(wrong[:5], 1, axis=1)
    misassigned = Result("gibbs", samples=levels, marginals={"source": wrong}, diagnostics={"ess": 2000.0})
    names = ["weight", "level"]
    assert compare(misassigned, mcmc, names).status == "agrees"  # the continuous summaries alone cannot tell
    found, _ = verdicts({"nuts": mcmc, "enumerate": exact, "gibbs": misassigned}, {"nuts"}, structure, names)
    assert found["nuts"].status == "reference"
    assert found["enumerate"].status == "agrees", found["enumerate"].detail
    assert found["gibbs"].status == "disagrees" and "source[" in found["gibbs"].detail


def test_discrete_marginals_are_compared_after_label_alignment():
    """A run in another labelling (components and assignments permuted together) agrees once
    aligned; its assignments compared without alignment would not."""
    rng = np.random.default_rng(22)
    structure = inspect(beacon_mixture, np.zeros(40))
    probs, levels, mcmc = _beacon_runs(rng)
    order = np.array([2, 0, 1])  # the run's component k is the reference's order[k]
    permuted = Result(
        "cavi",
        samples={"weight": levels["weight"][:, order], "level": levels["level"][:, order]},
        marginals={"source": probs[:, order]},
        converged=True,
    )
    assert compare_marginals(permuted, mcmc, {"source": 3}).status == "disagrees"
    found, aligned = verdicts({"nuts": mcmc, "cavi": permuted}, {"nuts"}, structure, ["weight", "level"])
    np.testing.assert_allclose(aligned["cavi"].marginals["source"], probs)
    assert found["cavi"].status == "agrees", found["cavi"].detail


def test_marginal_frequencies_of_independent_draws_agree_and_a_small_shift_does_not():
    """Two independent sets of 2000 draws of the same marginals agree (each of 120
    probabilities within c = 5.0 combined MCSE, the family-wise level of one quantity at 4);
    moving 0.1 of mass on one ping is flagged (tolerance 5.0 × 0.0102 ≈ 0.05)."""
    rng = np.random.default_rng(23)
    probs, levels, mcmc = _beacon_runs(rng)
    again = Result("importance", samples={"source": np.stack([rng.choice(3, size=2000, p=row) for row in probs], axis=1)}, diagnostics={"ess": 2000.0})
    assert compare_marginals(again, mcmc, {"source": 3}).status == "agrees"
    shifted = probs.copy()
    shifted[35] = [0.6, 0.4, 0.0]
    exact = Result("enumerate", marginals={"source": shifted}, log_evidence=Estimate(-1.0, 0.0, "exact"))
    verdict = compare_marginals(exact, mcmc, {"source": 3})
    assert verdict.status == "disagrees" and "source[35]" in verdict.detail


def test_marginals_given_parameters_an_engine_did_not_learn_are_not_compared():
    """On a program with learned weights and centres, an exact engine that does not learn
    reports p(g | y) at the program's initial values: another question than the learner's."""
    structure = inspect(clustered_sites, np.zeros((50, 2)))
    rng = np.random.default_rng(24)
    share, centres = np.array([0.2, 0.5, 0.3]), np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    fitted = np.eye(3)[rng.integers(0, 3, 50)]
    em = Result("em", params={"share": share, "centres": centres}, marginals={"g": fitted}, converged=True)
    at_start = Result("enumerate", params={"share": np.ones(3) / 3, "centres": np.arange(6.0).reshape(3, 2)},
                      marginals={"g": np.roll(fitted, 1, axis=1)}, log_evidence=Estimate(-1.0, 0.0, "exact"))
    learner = Result("svi", params={"share": share, "centres": centres}, marginals={"g": np.roll(fitted, 1, axis=1)})
    results = {"em": em, "enumerate": at_start, "svi": learner}
    found, _ = verdicts(results, {"em"}, structure, ["share", "centres"], learners={"em", "svi"})
    assert found["em"].status == "reference"
    assert found["enumerate"].status == "not compared"
    assert found["svi"].status == "disagrees" and "g[" in found["svi"].detail
