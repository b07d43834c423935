"""NumPyro's example models, ported to ppgen the way a NumPyro user ports them, sampled by
ppgen's NUTS and by raw NumPyro's NUTS on the same simulated data: posterior means agree within
4 combined Monte Carlo standard errors (each side's MCSE from its bulk ESS).

A port replaces ``numpyro.`` with ``ppgen.`` and ``jnp.`` with ``ppgen.ops.`` (the array
namespace of whichever backend runs the program), and writes the few JAX-only calls portably
(``jnp.dot`` → ``ops.matmul``, ``jnp.newaxis`` → ``None``, ``jax.nn.one_hot(c, K)`` →
``c[..., None] == ops.arange(K)``). The originals are NumPyro's examples
(``examples/{baseball,ucbadmit,stochastic_volatility,funnel,ar2,annotation}.py``) with their
data simulated at small sizes. What the ports exercise: observed Binomials whose total_count
differs per datum (baseball, ucbadmit), sizes computed from the data with NumPy
(``len(np.unique(dept))``, ``int(np.max(positions)) + 1``), a loop over the data's length
(ar2), NumPyro-only families (GaussianRandomWalk, DiscreteUniform), hierarchical funnels that
ppgen non-centres by itself and the examples non-centre by hand (funnel), and enumerated
discrete latents (annotation, ``slow``).
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as numpyro_dist
import pytest
from numpyro.handlers import reparam
from numpyro.infer import MCMC, NUTS
from numpyro.infer.reparam import LocScaleReparam

import ppgen
from ppgen import dist
from ppgen.errors import ReliabilityWarning

NUM_WARMUP, NUM_SAMPLES, NUM_CHAINS = 300, 500, 2


def mean_and_mcse(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and its Monte Carlo standard error sd / √ESS (ArviZ bulk ESS) of draws
    of shape (chains, draws, *shape)."""
    ess = np.asarray(az.ess(az.convert_to_dataset({"x": draws}), method="bulk")["x"])
    flat = draws.reshape((-1,) + draws.shape[2:])
    return flat.mean(0), flat.std(0) / np.sqrt(ess)


def assert_same_posterior(
    port: Callable,
    original: Callable,
    data: tuple,
    *,
    seed: int,
    quantities: Optional[Callable[[dict], dict]] = None,
) -> None:
    """ppgen's NUTS on ``port`` and NumPyro's NUTS on ``original``, same data: every posterior
    mean (of each site, or of ``quantities(draws)``) within 4 combined MCSE."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReliabilityWarning)  # judged by the comparison below
        result = ppgen.infer(
            port, *data, engine="nuts", num_warmup=NUM_WARMUP, num_samples=NUM_SAMPLES,
            num_chains=NUM_CHAINS, seed=seed, progress=False,
        )
    mcmc = MCMC(
        NUTS(original, target_accept_prob=0.9), num_warmup=NUM_WARMUP, num_samples=NUM_SAMPLES,
        num_chains=NUM_CHAINS, chain_method="vectorized", progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed), *data)
    reference = {k: np.asarray(v, dtype=float) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    ours = {
        k: np.asarray(v, dtype=float).reshape((NUM_CHAINS, -1) + v.shape[1:])
        for k, v in result.samples.items()
        if k in reference
    }
    assert set(ours) == set(reference) - {k for k in reference if k.endswith("_decentered")}
    if quantities is not None:
        ours, reference = quantities(ours), quantities(reference)
    for name in reference:
        mean, mcse = mean_and_mcse(ours[name])
        reference_mean, reference_mcse = mean_and_mcse(reference[name])
        varies = (mcse > 0) | (reference_mcse > 0)  # e.g. the fixed entries of a Cholesky factor
        np.testing.assert_allclose(mean[~varies], reference_mean[~varies], atol=1e-6)
        z = (mean - reference_mean)[varies] / np.hypot(mcse, reference_mcse)[varies]
        assert np.all(np.abs(z) < 4), f"{name}: z-scores {np.round(z, 2)}"


# --- baseball.py: partially pooled batting averages, at-bats differ per player ---------------


def partially_pooled_with_logit(at_bats, hits=None):
    loc = ppgen.sample("loc", dist.Normal(-1, 1))
    scale = ppgen.sample("scale", dist.HalfCauchy(1))
    num_players = at_bats.shape[0]
    with ppgen.plate("num_players", num_players):
        alpha = ppgen.sample("alpha", dist.Normal(loc, scale))
        return ppgen.sample("obs", dist.Binomial(at_bats, logits=alpha), obs=hits)


def numpyro_partially_pooled_with_logit(at_bats, hits=None):
    loc = numpyro.sample("loc", numpyro_dist.Normal(-1, 1))
    scale = numpyro.sample("scale", numpyro_dist.HalfCauchy(1))
    num_players = at_bats.shape[0]
    with numpyro.plate("num_players", num_players):
        alpha = numpyro.sample("alpha", numpyro_dist.Normal(loc, scale))
        return numpyro.sample("obs", numpyro_dist.Binomial(at_bats, logits=alpha), obs=hits)


def test_baseball_partial_pooling():
    rng = np.random.default_rng(0)
    at_bats = rng.integers(15, 90, size=9)
    hits = rng.binomial(at_bats, rng.beta(3, 9, size=9))
    assert_same_posterior(partially_pooled_with_logit, numpyro_partially_pooled_with_logit, (at_bats, hits), seed=1)


# --- ucbadmit.py: a binomial GLMM with correlated varying intercepts and slopes ---------------


def glmm(dept, male, applications, admit=None):
    v_mu = ppgen.sample("v_mu", dist.Normal(0, ppgen.ops.tensor([4.0, 1.0])))
    sigma = ppgen.sample("sigma", dist.HalfNormal(ppgen.ops.ones(2)))
    L_Rho = ppgen.sample("L_Rho", dist.LKJCholesky(2, concentration=2))
    scale_tril = sigma[..., None] * L_Rho
    # non-centered parameterization
    num_dept = len(np.unique(dept))
    z = ppgen.sample("z", dist.Normal(ppgen.ops.zeros((num_dept, 2)), 1))
    v = ppgen.ops.matmul(scale_tril, z.T).T
    logits = v_mu[0] + v[dept, 0] + (v_mu[1] + v[dept, 1]) * male
    if admit is None:
        probs = 1 / (1 + ppgen.ops.exp(-logits))
        ppgen.sample("probs", dist.Delta(probs), obs=probs)
    ppgen.sample("admit", dist.Binomial(applications, logits=logits), obs=admit)


def numpyro_glmm(dept, male, applications, admit=None):
    v_mu = numpyro.sample("v_mu", numpyro_dist.Normal(0, jnp.array([4.0, 1.0])))
    sigma = numpyro.sample("sigma", numpyro_dist.HalfNormal(jnp.ones(2)))
    L_Rho = numpyro.sample("L_Rho", numpyro_dist.LKJCholesky(2, concentration=2))
    scale_tril = sigma[..., jnp.newaxis] * L_Rho
    # non-centered parameterization
    num_dept = len(np.unique(dept))
    z = numpyro.sample("z", numpyro_dist.Normal(jnp.zeros((num_dept, 2)), 1))
    v = jnp.dot(scale_tril, z.T).T
    logits = v_mu[0] + v[dept, 0] + (v_mu[1] + v[dept, 1]) * male
    if admit is None:
        probs = jax.scipy.special.expit(logits)
        numpyro.sample("probs", numpyro_dist.Delta(probs), obs=probs)
    numpyro.sample("admit", numpyro_dist.Binomial(applications, logits=logits), obs=admit)


def test_ucbadmit_glmm():
    rng = np.random.default_rng(1)
    num_dept = 5
    dept = np.repeat(np.arange(num_dept), 2)
    male = np.tile([1, 0], num_dept)
    applications = rng.integers(30, 400, size=2 * num_dept)
    logits = rng.normal(-0.3, 1.0, num_dept)[dept] + rng.normal(0.0, 0.3, num_dept)[dept] * male
    admit = rng.binomial(applications, 1 / (1 + np.exp(-logits)))
    assert_same_posterior(glmm, numpyro_glmm, (dept, male, applications, admit), seed=2)


# --- stochastic_volatility.py: a Gaussian random walk of log-volatility -----------------------


def stochastic_volatility(returns):
    step_size = ppgen.sample("sigma", dist.Exponential(50.0))
    s = ppgen.sample("s", dist.GaussianRandomWalk(scale=step_size, num_steps=len(returns)))
    nu = ppgen.sample("nu", dist.Exponential(0.1))
    return ppgen.sample("r", dist.StudentT(df=nu, loc=0.0, scale=ppgen.ops.exp(s)), obs=returns)


def numpyro_stochastic_volatility(returns):
    step_size = numpyro.sample("sigma", numpyro_dist.Exponential(50.0))
    s = numpyro.sample("s", numpyro_dist.GaussianRandomWalk(scale=step_size, num_steps=jnp.shape(returns)[0]))
    nu = numpyro.sample("nu", numpyro_dist.Exponential(0.1))
    return numpyro.sample("r", numpyro_dist.StudentT(df=nu, loc=0.0, scale=jnp.exp(s)), obs=returns)


def test_stochastic_volatility():
    rng = np.random.default_rng(2)
    log_volatility = np.cumsum(rng.normal(0.0, 0.1, 24)) - 3.5
    returns = rng.standard_t(5, 24) * np.exp(log_volatility)
    assert_same_posterior(stochastic_volatility, numpyro_stochastic_volatility, (returns,), seed=3)


# --- funnel.py: Neal's funnel, centred (ppgen non-centres it; the example by hand) -----------


def funnel(dim=10):
    y = ppgen.sample("y", dist.Normal(0, 3))
    ppgen.sample("x", dist.Normal(ppgen.ops.zeros(dim - 1), ppgen.ops.exp(y / 2)))


def numpyro_funnel(dim=10):
    y = numpyro.sample("y", numpyro_dist.Normal(0, 3))
    numpyro.sample("x", numpyro_dist.Normal(jnp.zeros(dim - 1), jnp.exp(y / 2)))


numpyro_reparam_funnel = reparam(numpyro_funnel, config={"x": LocScaleReparam(0)})


def standardised_funnel(draws: dict) -> dict:
    """y and x / e^{y/2} (standard normal given y): x itself is too heavy-tailed for a
    variance-based MCSE."""
    return {"y": draws["y"], "x_standardised": draws["x"] / np.exp(draws["y"][..., None] / 2)}


def test_funnel():
    assert_same_posterior(funnel, numpyro_reparam_funnel, (), seed=4, quantities=standardised_funnel)


# --- ar2.py: an AR(2) process written as a Python loop over the data ----------------------------


def ar2_for_loop(y):
    alpha_1 = ppgen.sample("alpha_1", dist.Normal(0, 1))
    alpha_2 = ppgen.sample("alpha_2", dist.Normal(0, 1))
    const = ppgen.sample("const", dist.Normal(0, 1))
    sigma = ppgen.sample("sigma", dist.HalfNormal(1))
    y_prev = y[1]
    y_prev_prev = y[0]
    for i in range(2, len(y)):
        m_t = const + alpha_1 * y_prev + alpha_2 * y_prev_prev
        y_t = ppgen.sample("y_{}".format(i), dist.Normal(m_t, sigma), obs=y[i])
        y_prev_prev = y_prev
        y_prev = y_t


def numpyro_ar2_for_loop(y):
    alpha_1 = numpyro.sample("alpha_1", numpyro_dist.Normal(0, 1))
    alpha_2 = numpyro.sample("alpha_2", numpyro_dist.Normal(0, 1))
    const = numpyro.sample("const", numpyro_dist.Normal(0, 1))
    sigma = numpyro.sample("sigma", numpyro_dist.HalfNormal(1))
    y_prev = y[1]
    y_prev_prev = y[0]
    for i in range(2, len(y)):
        m_t = const + alpha_1 * y_prev + alpha_2 * y_prev_prev
        y_t = numpyro.sample("y_{}".format(i), numpyro_dist.Normal(m_t, sigma), obs=y[i])
        y_prev_prev = y_prev
        y_prev = y_t


def test_ar2():
    rng = np.random.default_rng(3)
    y = np.zeros(16)
    for t in range(2, len(y)):
        y[t] = 0.3 + 0.6 * y[t - 1] - 0.2 * y[t - 2] + rng.normal(0.0, 0.5)
    assert_same_posterior(ar2_for_loop, numpyro_ar2_for_loop, (y,), seed=5)


# --- annotation.py: MACE, annotators who sometimes spam (discrete latents enumerated) --------


def mace(positions, annotations):
    num_annotators = int(np.max(positions)) + 1
    num_classes = int(np.max(annotations)) + 1
    num_items, num_positions = annotations.shape
    with ppgen.plate("annotator", num_annotators):
        epsilon = ppgen.sample("epsilon", dist.Dirichlet(ppgen.ops.full((num_classes,), 10.0)))
        theta = ppgen.sample("theta", dist.Beta(0.5, 0.5))
    with ppgen.plate("item", num_items, dim=-2):
        c = ppgen.sample("c", dist.DiscreteUniform(0, num_classes - 1))
        with ppgen.plate("position", num_positions):
            s = ppgen.sample("s", dist.Bernoulli(1 - theta[positions]))
            probs = ppgen.ops.where(s[..., None] == 0, c[..., None] == ppgen.ops.arange(num_classes), epsilon[positions])
            ppgen.sample("y", dist.Categorical(probs), obs=annotations)


def numpyro_mace(positions, annotations):
    num_annotators = int(np.max(positions)) + 1
    num_classes = int(np.max(annotations)) + 1
    num_items, num_positions = annotations.shape
    with numpyro.plate("annotator", num_annotators):
        epsilon = numpyro.sample("epsilon", numpyro_dist.Dirichlet(jnp.full(num_classes, 10.0)))
        theta = numpyro.sample("theta", numpyro_dist.Beta(0.5, 0.5))
    with numpyro.plate("item", num_items, dim=-2):
        c = numpyro.sample("c", numpyro_dist.DiscreteUniform(0, num_classes - 1), infer={"enumerate": "parallel"})
        with numpyro.plate("position", num_positions):
            s = numpyro.sample("s", numpyro_dist.Bernoulli(1 - theta[positions]), infer={"enumerate": "parallel"})
            probs = jnp.where(s[..., None] == 0, jax.nn.one_hot(c, num_classes), epsilon[positions])
            numpyro.sample("y", numpyro_dist.Categorical(probs), obs=annotations)


@pytest.mark.slow
def test_annotation_mace():
    rng = np.random.default_rng(4)
    positions = np.array([0, 0, 1, 2, 3])
    true_class = rng.integers(0, 3, 25)
    spams = rng.random((25, len(positions))) < np.array([0.1, 0.15, 0.3, 0.5])[positions]
    annotations = np.where(spams, rng.integers(0, 3, (25, len(positions))), true_class[:, None])
    assert_same_posterior(mace, numpyro_mace, (positions, annotations), seed=6)
