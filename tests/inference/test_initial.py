"""Initial points of the NumPyro MCMC engines: drawn from the run's seed inside the support,
redrawn while not finite (Stan's rule), the best of several; a clear error naming the site
when no finite point exists.

The ARMA(1,1) of posteriordb (Stan's ``arma11``) is the hard case: a moving-average
coefficient beyond ±1 makes the 200-step error recursion explode (to 10⁶⁰ in float64, to inf
in float32), so many points of the initial box are not finite, and the finite ones there are
so improbable that a chain started at one never comes back.
"""

from __future__ import annotations

import numpy as np
import pytest

import ppgen
from ppgen import dist, ops, plate, sample
from ppgen.errors import EngineFailure

from ._mcmc_reference import assert_within


def test_initial_point_is_finite_seeded_the_best_of_several_and_nan_when_nothing_is_finite():
    import jax
    import jax.numpy as jnp

    from ppgen.inference import _initial

    prototype = {"a": jax.ShapeDtypeStruct((), jnp.float32), "b": jax.ShapeDtypeStruct((3,), jnp.float32)}

    def half_box(z):  # finite only where a < -1: a quarter of the box [-2, 2]
        return jnp.where(z["a"] < -1.0, jnp.sum(z["b"] ** 2) + z["a"] ** 2, jnp.inf)

    start = jax.jit(lambda key: _initial.initial_point(key, half_box, prototype))
    points = [start(jax.random.PRNGKey(seed)) for seed in range(5)]
    assert all(-2.0 <= float(p["a"]) < -1.0 and np.all(np.abs(p["b"]) <= 2.0) for p in points)
    assert len({float(p["a"]) for p in points}) == 5  # another seed, another start
    again = start(jax.random.PRNGKey(3))
    assert float(again["a"]) == float(points[3]["a"])

    def cliff(z):  # finite everywhere, but astronomically improbable where a > 0
        return jnp.where(z["a"] > 0.0, 1e30, 0.0) + jnp.sum(z["b"] ** 2) + z["a"] ** 2

    best = jax.jit(lambda key: _initial.initial_point(key, cliff, prototype))
    assert all(float(best(jax.random.PRNGKey(seed))["a"]) < 0.0 for seed in range(8))  # the first finite draw: half > 0

    nowhere = jax.jit(lambda key: _initial.initial_point(key, lambda z: jnp.inf * z["a"], prototype))(jax.random.PRNGKey(0))
    assert all(np.all(np.isnan(value)) for value in nowhere.values())


def gauge(readings):
    """A spread whose prior is far from the unit scale the initial box covers: the noise sd is
    √(spread − 10), NaN for every spread = exp(u), u ∈ [−2, 2]."""
    offset = sample("offset", dist.Normal(0.0, 1.0))
    spread = sample("spread", dist.HalfNormal(100.0))
    with plate("reading", len(readings)):
        sample("readings", dist.Normal(offset, ops.sqrt(spread - 10.0)), obs=readings)


def test_no_finite_initial_point_is_an_engine_failure_naming_the_site():
    readings = np.random.default_rng(0).normal(0.5, 4.0, 15)
    for engine in ("nuts", "mh"):
        with pytest.raises(EngineFailure) as failure:
            ppgen.infer(gauge, readings, engine=engine, num_warmup=10, num_samples=10, num_chains=2, progress=False)
        message = str(failure.value)
        assert message.startswith(f"{engine} (chains 1, 2 of 2): no initial point with a finite log density"), message
        assert "site 'readings' got a NaN scale parameter (Normal) at 5 of 5 points tried" in message, message
        assert "init_radius" in message
    # a wider box reaches spread > 10 (u > 2.3): the run starts, and the spread respects its bound
    result = ppgen.infer(gauge, readings, engine="nuts", init_radius=4.0, num_warmup=300, num_samples=300, num_chains=2, progress=False)
    assert result.samples["spread"].min() > 10.0


def arma(y):
    """ARMA(1,1) as Stan's arma11: ν_t = μ + φ y_{t−1} + θ ε_{t−1}, ε_t = y_t − ν_t (ε_0 = 0,
    y_0 taken as μ), y_t ~ N(ν_t, σ); μ ~ N(0, 10), φ, θ ~ N(0, 2), σ ~ half-Cauchy(2.5)."""
    mu = sample("mu", dist.Normal(0.0, 10.0))
    phi = sample("phi", dist.Normal(0.0, 2.0))
    theta = sample("theta", dist.Normal(0.0, 2.0))
    sigma = sample("sigma", dist.HalfCauchy(2.5))
    predictions = [mu + phi * mu]
    for t in range(1, len(y)):
        predictions.append(mu + phi * y[t - 1] + theta * (y[t - 1] - predictions[-1]))
    with plate("time", len(y)):
        sample("y", dist.Normal(ops.stack(predictions), sigma), obs=y)


def simulate_arma(num_steps=200, mu=1.0, phi=0.6, theta=0.3, sigma=0.5, seed=2):
    rng = np.random.default_rng(seed)
    y, previous_error, previous = np.zeros(num_steps), 0.0, mu
    for t in range(num_steps):
        error = sigma * rng.normal()
        y[t] = mu + phi * previous + theta * previous_error + error
        previous, previous_error = y[t], error
    return y


def raw_numpyro_arma(y, seed=0):
    """Raw NumPyro NUTS, float64, every chain started at the prior's centre (θ = 0), the
    recursion as a ``lax.scan``."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd
    from numpyro.infer import MCMC, NUTS, init_to_value

    def model(y):
        mu = numpyro.sample("mu", nd.Normal(0.0, 10.0))
        phi = numpyro.sample("phi", nd.Normal(0.0, 2.0))
        theta = numpyro.sample("theta", nd.Normal(0.0, 2.0))
        sigma = numpyro.sample("sigma", nd.HalfCauchy(2.5))

        def step(previous, y_previous):
            prediction = mu + phi * y_previous + theta * (y_previous - previous)
            return prediction, prediction

        first = jnp.asarray(mu + phi * mu)
        _, rest = jax.lax.scan(step, first, y[:-1])
        numpyro.sample("y", nd.Normal(jnp.concatenate([first[None], rest]), sigma), obs=y)

    with jax.enable_x64(True):
        start = init_to_value(values={"mu": float(np.mean(y)), "phi": 0.0, "theta": 0.0, "sigma": float(np.std(y))})
        mcmc = MCMC(NUTS(model, init_strategy=start), num_warmup=1000, num_samples=2000, num_chains=2,
                    chain_method="sequential", progress_bar=False)
        mcmc.run(jax.random.PRNGKey(seed), jnp.asarray(y))
        return {name: np.asarray(value) for name, value in mcmc.get_samples(group_by_chain=True).items()}


@pytest.mark.slow
def test_arma_200_steps_runs_from_the_seed_and_matches_raw_numpyro():
    """Slow: compiling NUTS through a 200-step Python loop takes a minute or more."""
    import arviz as az

    y = simulate_arma()
    reference = raw_numpyro_arma(y)
    for seed in (0, 1):
        result = ppgen.infer(arma, y, engine="nuts", num_warmup=500, num_samples=1000, num_chains=4, progress=False, seed=seed)
        # a chain stuck where the recursion explodes puts R-hat at 2-3
        assert result.diagnostics["max_r_hat"] < 1.05
        for name in ("mu", "phi", "theta", "sigma"):
            ours, theirs = result.samples[name], reference[name]
            ours_se = ours.std() / np.sqrt(result.diagnostics["ess_bulk"][name])
            theirs_se = theirs.std() / np.sqrt(float(az.ess(theirs, method="bulk")))
            assert_within(ours.mean(), theirs.mean(), np.hypot(ours_se, theirs_se), what=f"arma {name}, seed {seed}")
