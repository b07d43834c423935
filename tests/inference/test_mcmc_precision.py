"""Floating-point precision of the NumPyro MCMC engines: float64 by default (as Stan and PyMC),
float32 on request, for the run only: JAX's process-wide x64 flag, which the user's own JAX
code depends on, is the same after a run as before. (That float64 is what gets the GP Poisson
regression right is checked against posteriordb in tests/models/test_posteriordb.py.)"""

from __future__ import annotations

import numpy as np
import pytest

import ppgen
from ppgen import dist, plate, sample

from ._mcmc_reference import assert_within

RUN = dict(num_warmup=300, num_samples=600, num_chains=2, progress=False, seed=4)


def counts_rate(counts, prior_shape=3.0, prior_rate=0.5):
    """Gamma–Poisson: rate ~ Gamma(a, b), counts_i ~ Poisson(rate); posterior Gamma(a + Σk, b + n)."""
    rate = sample("rate", dist.Gamma(prior_shape, prior_rate))
    with plate("day", len(counts)):
        sample("counts", dist.Poisson(rate), obs=counts)


COUNTS = np.array([7, 4, 9, 6, 5, 8, 3, 6, 7, 5])


def assert_gamma_posterior(result):
    shape, rate = 3.0 + COUNTS.sum(), 0.5 + len(COUNTS)
    draws = result.samples["rate"]
    assert_within(draws.mean(), shape / rate, np.sqrt(shape) / rate / np.sqrt(result.diagnostics["ess_bulk"]["rate"]), what="rate")


@pytest.mark.parametrize("engine", ["nuts", "mh"])
def test_float64_by_default_float32_on_request_and_the_global_flag_untouched(engine):
    import jax
    import jax.numpy as jnp

    assert not jax.config.jax_enable_x64
    default = ppgen.infer(counts_rate, COUNTS, engine=engine, **RUN)
    assert default.samples["rate"].dtype == np.float64 and default.diagnostics["precision"] == "float64"
    assert not jax.config.jax_enable_x64 and jnp.ones(1).dtype == jnp.float32
    single = ppgen.infer(counts_rate, COUNTS, engine=engine, precision="float32", **RUN)
    assert single.samples["rate"].dtype == np.float32 and single.diagnostics["precision"] == "float32"
    assert not single.diagnostics["compiled_sampler_reused"]  # one compiled sampler per precision
    assert ppgen.infer(counts_rate, COUNTS, engine=engine, **RUN).diagnostics["compiled_sampler_reused"]
    for result in (default, single):
        assert_gamma_posterior(result)


def grouped_means(groups, values):
    """A size computed from the data (so ``groups`` reaches the program as a NumPy array)."""
    num_groups = int(np.max(groups)) + 1
    mean = sample("mean", dist.Normal(ppgen.ops.zeros(num_groups), 1.0).to_event(1))
    with plate("reading", len(values)):
        sample("values", dist.Normal(mean[groups], 1.0), obs=values)


def test_the_callers_arrays_still_work_in_their_float32_jax_code():
    """JAX remembers the dtype of a NumPy constant it traced by the array object: the program
    must get a copy of an array bound as a value, or the caller's own jitted float32 code
    indexing with that array fails afterwards (int64 against int32)."""
    import jax
    import jax.numpy as jnp

    groups = np.repeat(np.arange(4), 3)
    values = np.linspace(-1.0, 1.0, groups.size)
    ppgen.infer(grouped_means, groups, values, engine="nuts", **{**RUN, "num_warmup": 50, "num_samples": 50})
    picked = jax.jit(lambda table: table[groups, 0])(jnp.zeros((4, 2)))
    assert picked.shape == (groups.size,) and picked.dtype == jnp.float32


def test_float32_on_request_when_the_user_turned_x64_on():
    import jax

    jax.config.update("jax_enable_x64", True)
    try:
        result = ppgen.infer(counts_rate, COUNTS, engine="nuts", precision="float32", **RUN)
        assert result.samples["rate"].dtype == np.float32
        assert jax.config.jax_enable_x64 and jax.numpy.ones(1).dtype == jax.numpy.float64
    finally:
        jax.config.update("jax_enable_x64", False)


def test_advi_on_numpyro_also_defaults_to_float64():
    import jax

    default = ppgen.infer(counts_rate, COUNTS, engine="advi", num_steps=300, num_samples=200)
    single = ppgen.infer(counts_rate, COUNTS, engine="advi", num_steps=300, num_samples=200, precision="float32")
    assert default.samples["rate"].dtype == np.float64 and single.samples["rate"].dtype == np.float32
    assert not jax.config.jax_enable_x64


@pytest.mark.parametrize("engine", ["nuts", "hmc", "gibbs", "mh", "advi"])
def test_precision_is_validated(engine):
    with pytest.raises(ValueError, match="precision must be 'float64' or 'float32', got 'float16'"):
        ppgen.infer(counts_rate, COUNTS, engine=engine, precision="float16", progress=False)
