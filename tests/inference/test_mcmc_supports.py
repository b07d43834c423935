"""Dependent supports on the NumPyro MCMC machinery (nuts, hmc, mh, gibbs).

A latent whose support depends on another latent (a flat prior on (0, 1 − α₁), a Uniform(0, c))
must have every returned draw mapped through the support at that draw. Checked three ways:
every draw of every site inside its support (replaying the program at each draw, and the
closed-form inequalities); the posterior against an exact answer (one-dimensional quadrature
over the bound, truncated-normal means given it); a GARCH(1,1) against raw NumPyro run so that
it maps draws correctly (a deterministic site forces NumPyro to replay the model).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import ppgen
from ppgen import dist, ops, plate, sample

from ._mcmc_reference import assert_within

CAP_PRIOR_HIGH = 3.0
NOISE = 0.5


def capped_effects(scores, noise=NOISE):
    """Two effects, each uniform on (0, cap), the cap uniform on (0, 3); scores ~ N(effect, noise).
    The Uniform is made a vector event with ``to_event``, which NumPyro's own dependent-support
    detection does not see through."""
    cap = sample("cap", dist.Uniform(0.0, CAP_PRIOR_HIGH))
    effect = sample("effect", dist.Uniform(0.0, cap * ops.ones(2)).to_event(1))
    with plate("trial", scores.shape[0]):
        sample("scores", dist.Normal(effect, noise).to_event(1), obs=scores)


def capped_effects_data(num_trials=12, effects=(0.7, 2.1), seed=5):
    return np.random.default_rng(seed).normal(effects, NOISE, size=(num_trials, 2))


def capped_effects_exact(scores):
    """Posterior means and sds of cap and both effects, by quadrature over the cap.

    Given the cap c, the effects are independent normals N(m_j, s²) (m_j the mean score,
    s = noise/√n) truncated to (0, c), so p(c | y) ∝ c⁻² Π_j [Φ((c − m_j)/s) − Φ(−m_j/s)] on
    (0, 3), and E[effect_j | c, y] is a truncated-normal mean."""
    m = scores.mean(0)
    s = NOISE / np.sqrt(scores.shape[0])
    cap = np.linspace(1e-6, CAP_PRIOR_HIGH, 20_001)
    a, b = (0.0 - m[None, :]) / s, (cap[:, None] - m[None, :]) / s
    mass = stats.norm.cdf(b) - stats.norm.cdf(a)
    log_weight = -2 * np.log(cap) + np.log(np.maximum(mass, 1e-300)).sum(1)
    weight = np.exp(log_weight - log_weight.max())
    weight /= weight.sum()
    truncated = stats.truncnorm(a, b, loc=m[None, :], scale=s)
    effect_mean = truncated.mean()
    effect_second = truncated.var() + effect_mean**2
    means = {"cap": np.sum(weight * cap), "effect": weight @ effect_mean}
    sds = {
        "cap": np.sqrt(np.sum(weight * cap**2) - means["cap"] ** 2),
        "effect": np.sqrt(weight @ effect_second - means["effect"] ** 2),
    }
    return means, sds


def assert_draws_in_support(model, result, *args, **kwargs):
    """Replay ``model`` on NumPyro at every draw of its latents and check each latent's value
    against its distribution's support *at that draw* (NumPyro's own constraint check)."""
    import jax
    from numpyro import handlers

    from ppgen.backend import use_backend

    names = list(ppgen.inspect(model, *args, **kwargs).latent)
    draws = {name: np.asarray(result.samples[name]) for name in names}

    def inside(values):
        with use_backend("numpyro"):
            trace = handlers.trace(handlers.substitute(handlers.seed(model, 0), data=values)).get_trace(*args, **kwargs)
        return {name: trace[name]["fn"].support(trace[name]["value"]) for name in names}

    with jax.enable_x64(True):
        checks = jax.vmap(inside)(draws)
    for name, check in checks.items():
        fraction = float(np.mean(np.asarray(check)))
        assert fraction == 1.0, f"site {name!r}: only {fraction:.1%} of the draws lie in its support"


@pytest.mark.parametrize(
    "engine, options",
    [
        ("nuts", dict(num_warmup=500, num_samples=1000)),
        ("hmc", dict(num_warmup=500, num_samples=1000)),
        ("gibbs", dict(num_warmup=500, num_samples=1000)),
        ("mh", dict(num_warmup=5000, num_samples=20000, thinning=5)),
    ],
)
def test_dependent_uniform_draws_lie_in_their_support_and_match_quadrature(engine, options):
    scores = capped_effects_data()
    result = ppgen.infer(capped_effects, scores, engine=engine, num_chains=4, progress=False, seed=1, **options)
    cap, effect = result.samples["cap"], result.samples["effect"]
    assert np.all((effect >= 0) & (effect <= cap[:, None])), f"{np.mean(effect > cap[:, None]):.1%} of effects above the cap"
    assert_draws_in_support(capped_effects, result, scores)
    means, sds = capped_effects_exact(scores)
    for name in ("cap", "effect"):
        stderr = sds[name] / np.sqrt(result.diagnostics["ess_bulk"][name])
        assert_within(result.samples[name].mean(0), means[name], stderr, what=f"{engine} {name} mean")


# --------------------------------------------------------------------------------------------
# GARCH(1,1) with flat priors, as posteriordb's garch11: β₁ flat on (0, 1 − α₁)


def volatility(returns, first_sd=1.0):
    """GARCH(1,1): σ_t² = ω + a (r_{t−1} − m)² + b σ_{t−1}², r_t ~ N(m, σ_t); flat priors on
    m ∈ ℝ, ω > 0, a ∈ (0, 1) and b ∈ (0, 1 − a) (stationarity)."""
    m = sample("m", dist.ImproperUniform(dist.constraints.real, (), ()))
    omega = sample("omega", dist.ImproperUniform(dist.constraints.positive, (), ()))
    a = sample("a", dist.ImproperUniform(dist.constraints.unit_interval, (), ()))
    b = sample("b", dist.ImproperUniform(dist.constraints.interval(0.0, 1.0 - a), (), ()))
    sd = [ops.ones(()) * first_sd]
    for t in range(1, len(returns)):
        sd.append(ops.sqrt(omega + a * (returns[t - 1] - m) ** 2 + b * sd[-1] ** 2))
    with plate("day", len(returns)):
        sample("returns", dist.Normal(m, ops.stack(sd)), obs=returns)


def simulate_volatility(num_days=40, m=0.3, omega=0.15, a=0.25, b=0.6, seed=11):
    rng = np.random.default_rng(seed)
    returns, sd = np.zeros(num_days), 1.0
    for t in range(num_days):
        if t:
            sd = np.sqrt(omega + a * (returns[t - 1] - m) ** 2 + b * sd**2)
        returns[t] = m + sd * rng.normal()
    return returns


def raw_numpyro_volatility(returns, seed=0):
    """The same posterior with raw NumPyro in float64, started at a good point; the
    deterministic site makes NumPyro replay the model when it constrains the draws."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd
    from numpyro.infer import MCMC, NUTS, init_to_value

    def model(returns):
        m = numpyro.sample("m", nd.ImproperUniform(nd.constraints.real, (), ()))
        omega = numpyro.sample("omega", nd.ImproperUniform(nd.constraints.positive, (), ()))
        a = numpyro.sample("a", nd.ImproperUniform(nd.constraints.unit_interval, (), ()))
        b = numpyro.sample("b", nd.ImproperUniform(nd.constraints.interval(0.0, 1.0 - a), (), ()))
        numpyro.deterministic("persistence", a + b)

        def step(sd, previous_return):
            sd = jnp.sqrt(omega + a * (previous_return - m) ** 2 + b * sd**2)
            return sd, sd

        _, sd = jax.lax.scan(step, jnp.ones(()), returns[:-1])
        numpyro.sample("returns", nd.Normal(m, jnp.concatenate([jnp.ones(1), sd])), obs=returns)

    with jax.enable_x64(True):
        start = init_to_value(values={"m": 0.0, "omega": 0.2, "a": 0.2, "b": 0.5})
        mcmc = MCMC(NUTS(model, init_strategy=start, target_accept_prob=0.9), num_warmup=1000, num_samples=2000,
                    num_chains=2, chain_method="sequential", progress_bar=False)
        mcmc.run(jax.random.PRNGKey(seed), jnp.asarray(returns))
        return {name: np.asarray(value) for name, value in mcmc.get_samples(group_by_chain=True).items()}


def test_garch_stationarity_bound_holds_at_every_draw_and_posterior_matches_raw_numpyro():
    import arviz as az

    returns = simulate_volatility()
    result = ppgen.infer(volatility, returns, engine="nuts", num_warmup=1000, num_samples=1000, num_chains=4, progress=False, seed=3)
    a, b = result.samples["a"], result.samples["b"]
    assert np.all((b >= 0) & (a + b <= 1)), f"a + b > 1 at {np.mean(a + b > 1):.1%} of draws (max {np.max(a + b):.3f})"
    assert_draws_in_support(volatility, result, returns)
    reference = raw_numpyro_volatility(returns)
    assert np.all(reference["persistence"] <= 1)
    for name in ("m", "omega", "a", "b"):
        ours, theirs = result.samples[name], reference[name]
        ours_se = ours.std() / np.sqrt(result.diagnostics["ess_bulk"][name])
        theirs_se = theirs.std() / np.sqrt(float(az.ess(theirs, method="bulk")))
        assert_within(ours.mean(), theirs.mean(), np.hypot(ours_se, theirs_se), what=f"garch {name} mean vs raw NumPyro")


def test_dependent_support_is_recorded_in_the_structure_and_blocks_pyro_hmc():
    """The support's bounds are computed from another latent: the structure records it as a
    parent (the diagram's edge), and NUTS on Pyro, whose transforms are fixed at the first
    point, refuses rather than return draws outside the support."""
    scores = capped_effects_data()
    structure = ppgen.inspect(volatility, simulate_volatility(num_days=5))
    assert structure.sites["b"].support_parents == ("a",)
    assert "a" in structure.sites["b"].parents
    assert structure.sites["a"].support_parents == ()
    assert ppgen.inspect(capped_effects, scores).sites["effect"].support_parents == ("cap",)
    with pytest.raises(ppgen.EngineNotApplicable, match="'effect' has a support that depends on 'cap'"):
        ppgen.infer(capped_effects, scores, engine="nuts", backend="pyro", progress=False)
