"""NUTS and HMC on programs whose enumerated latents form Markov chains (hidden Markov models).

Truths: brute-force sums over every path (the forward algorithms, FFBS draws), ppgen's
``enumerate`` engine (z_t marginals at fixed parameters), Gibbs samplers with forward filtering,
backward sampling written here in NumPy (posterior means, within 4 Monte Carlo standard errors),
and quadrature of a one-dimensional posterior (a mixture beside the chain).
"""

from __future__ import annotations

import itertools
import warnings

import jax
import numpy as np
import pytest
from scipy import stats
from scipy.special import gammaln, logsumexp

import ppgen
from ppgen import deterministic, dist, factor, markov, ops, plate, sample
from ppgen.errors import EngineNotApplicable, ReliabilityWarning
from ppgen.inference import _chain_jax, _chain_numpyro, _mcmc
from ppgen.inference._markov_chains import find_chains

from ._mcmc_reference import assert_within, mcse

# --------------------------------------------------------------------------------------------
# Programs, written as a user would


def two_state_hmm(y, prior_loc=np.array([3.0, 10.0])):
    """The issue's program: ordered positive means (flat prior plus a Normal factor on each),
    Dirichlet rows of the transition matrix, a uniform first state, unit-scale emissions."""
    mu = sample("mu", dist.ImproperUniform(dist.constraints.positive_ordered_vector, (), (2,)))
    factor("mu_prior", dist.Normal(prior_loc, 1.0).log_prob(mu).sum())
    with plate("rows", 2):
        theta = sample("theta", dist.Dirichlet(ops.ones(2)))
    z = None
    for t in markov(range(len(y))):
        probs = ops.ones(2) / 2 if t == 0 else theta[z]
        z = sample(f"z_{t}", dist.Categorical(probs))
        sample(f"y_{t}", dist.Normal(mu[z], 1.0), obs=y[t])


RATE_SHAPE = np.array([20.0, 60.0, 150.0])  # Gamma priors with means 1, 6 and 15 break the symmetry
RATE_RATE = np.array([20.0, 10.0, 10.0])
STICKY = np.ones((3, 3)) + 4.0 * np.eye(3)


def regime_counts(counts, rate_shape=RATE_SHAPE, rate_rate=RATE_RATE, sticky=STICKY, start=None, switch=None, rate=None):
    """Several count series switching among three regimes (K = 3, Poisson emissions, the series
    in a plate); ``start``, ``switch`` and ``rate`` can be given instead of drawn."""
    num_series, num_steps = counts.shape
    if start is None:
        start = sample("start", dist.Dirichlet(ops.ones(3)))
    with plate("from_regime", 3):
        if switch is None:
            switch = sample("switch", dist.Dirichlet(sticky))
        if rate is None:
            rate = sample("rate", dist.Gamma(rate_shape, rate_rate))
    with plate("series", num_series):
        regime = None
        for i in markov(range(num_steps)):
            probs = start if i == 0 else switch[regime]
            regime = sample(f"regime_{i}", dist.Categorical(probs))
            sample(f"count_{i}", dist.Poisson(rate[regime]), obs=counts[:, i])


def replicated_readings(y, seen, trans=None, locs=None):
    """Several series, each step read several times (a plate inside the series' plate), some
    readings missing (masked); a plain loop, no ``markov``."""
    num_replicates, num_series, num_steps = y.shape
    if trans is None:
        with plate("from", 3):
            trans = sample("trans", dist.Dirichlet(ops.ones(3)))
    if locs is None:
        locs = sample("locs", dist.Normal(0.0, 3.0).expand([3]).to_event(1))
    replicates = plate("replicates", num_replicates, dim=-2)
    with plate("series", num_series, dim=-1):
        state = None
        for t in range(num_steps):
            state = sample(f"s_{t}", dist.Categorical(ops.ones(3) / 3 if t == 0 else trans[state]))
            with replicates:
                sample(f"reading_{t}", dist.Normal(locs[state], 1.0).mask(seen[..., t]), obs=y[..., t])


def levels_and_sides(y, x, prior_loc=np.array([3.0, 10.0])):
    """The issue's chain, a deterministic site computed from its last state, and beside it a
    mixture whose one latent per point is enumerated too (not a chain: funsor sums it)."""
    mu = sample("mu", dist.ImproperUniform(dist.constraints.positive_ordered_vector, (), (2,)))
    factor("mu_prior", dist.Normal(prior_loc, 1.0).log_prob(mu).sum())
    with plate("rows", 2):
        theta = sample("theta", dist.Dirichlet(ops.ones(2)))
    level = None
    for t in markov(range(len(y))):
        level = sample(f"level_{t}", dist.Categorical(ops.ones(2) / 2 if t == 0 else theta[level]))
        sample(f"reading_{t}", dist.Normal(mu[level], 1.0), obs=y[t])
    deterministic("last_mean", mu[level])
    weight = sample("weight", dist.Beta(2.0, 2.0))
    with plate("points", len(x)):
        side = sample("side", dist.Bernoulli(weight))
        sample("x", dist.Normal(4.0 * side - 2.0, 1.0), obs=x)


def second_order(y):
    """Each state depends on the two before it: not a first-order chain."""
    table = sample("table", dist.Dirichlet(ops.ones(2)).expand([2, 2]).to_event(2))
    locs = sample("locs", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
    before, last = 0, 0
    for t in markov(range(len(y)), history=2):
        probs = ops.ones(2) / 2 if t < 2 else table[before, last]
        before, last = last, sample(f"s_{t}", dist.Categorical(probs))
        sample(f"o_{t}", dist.Normal(locs[last], 1.0), obs=y[t])


# --------------------------------------------------------------------------------------------
# Data and independent references


def sticky_states(rng, num_steps, num_states, stay, shape=()):
    states = np.zeros(shape + (num_steps,), dtype=np.int64)
    states[..., 0] = rng.integers(num_states, size=shape)
    for t in range(1, num_steps):
        moves = rng.random(shape) > stay
        states[..., t] = np.where(moves, (states[..., t - 1] + rng.integers(1, num_states, size=shape)) % num_states, states[..., t - 1])
    return states


def ffbs(rng, log_unary, log_pairwise):
    """One path per batch element from p(z | x) ∝ exp(Σ unary + Σ pairwise): log_unary
    (B, T, K), log_pairwise (B, T-1, K, K) -> (B, T). Written independently of _chain_jax."""
    B, T, K = log_unary.shape
    alpha = np.empty_like(log_unary)
    alpha[:, 0] = log_unary[:, 0]
    for t in range(1, T):
        alpha[:, t] = logsumexp(alpha[:, t - 1, :, None] + log_pairwise[:, t - 1], axis=1) + log_unary[:, t]
    z = np.empty((B, T), dtype=np.int64)

    def draw(logits):
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return (rng.random((B, 1)) < p.cumsum(-1)).argmax(-1)

    z[:, -1] = draw(alpha[:, -1])
    for t in range(T - 2, -1, -1):
        z[:, t] = draw(alpha[:, t] + log_pairwise[np.arange(B), t, :, z[:, t + 1]])
    return z


def transition_counts(z, K):
    """(C, S, T) paths -> (C, K, K) counts of j -> k moves, summed over series."""
    C = z.shape[0]
    counts = np.zeros((C, K, K))
    for j, k in itertools.product(range(K), repeat=2):
        counts[:, j, k] = ((z[..., :-1] == j) & (z[..., 1:] == k)).sum(axis=(1, 2))
    return counts


def gibbs_two_state(y, prior_loc, num_chains=100, num_iterations=250, burn=50, seed=0):
    """Gibbs for :func:`two_state_hmm`: z | μ, θ by FFBS; θ_j | z ~ Dirichlet(1 + n_j·);
    μ_k | z, μ_other ~ N((m_k + Σ_{z_t=k} y_t) / (1 + n_k), 1 / (1 + n_k)) truncated to
    0 < μ_1 < μ_2. Draws of every chain after ``burn``: dict name -> (chains, draws, ...)."""
    rng = np.random.default_rng(seed)
    C, T = num_chains, len(y)
    mu = np.tile(np.sort(np.quantile(y, [0.25, 0.75])), (C, 1)) + rng.normal(0, 0.1, (C, 2))
    theta = np.full((C, 2, 2), 0.5)
    log_emission_const = -0.5 * np.log(2 * np.pi)
    kept = {"mu": [], "theta": [], "z": []}
    for iteration in range(num_iterations):
        unary = log_emission_const - 0.5 * (y[None, :, None] - mu[:, None, :]) ** 2
        unary[:, 0] += np.log(0.5)
        pairwise = np.broadcast_to(np.log(theta)[:, None], (C, T - 1, 2, 2))
        z = ffbs(rng, unary, pairwise)
        counts = transition_counts(z[:, None], 2)
        theta = np.empty((C, 2, 2))
        for j in range(2):
            gamma = rng.gamma(1.0 + counts[:, j])  # (C, 2)
            theta[:, j] = gamma / gamma.sum(-1, keepdims=True)
        n = np.stack([(z == k).sum(-1) for k in range(2)], -1)
        sums = np.stack([np.where(z == k, y, 0.0).sum(-1) for k in range(2)], -1)
        precision = 1.0 + n
        mean, sd = (prior_loc + sums) / precision, precision**-0.5
        low = (0.0 - mean[:, 0]) / sd[:, 0]
        high = (mu[:, 1] - mean[:, 0]) / sd[:, 0]
        mu[:, 0] = stats.truncnorm.rvs(low, high, loc=mean[:, 0], scale=sd[:, 0], random_state=rng)
        low = (mu[:, 0] - mean[:, 1]) / sd[:, 1]
        mu[:, 1] = stats.truncnorm.rvs(low, np.inf, loc=mean[:, 1], scale=sd[:, 1], random_state=rng)
        if iteration >= burn:
            kept["mu"].append(mu.copy())
            kept["theta"].append(theta.copy())
            kept["z"].append(z.copy())
    return {name: np.stack(values, 1) for name, values in kept.items()}


def gibbs_regimes(counts, num_chains=100, num_iterations=250, burn=50, seed=0):
    """Gibbs for :func:`regime_counts`: regimes by FFBS per series; start, rows of switch
    Dirichlet; rates Gamma (conjugate)."""
    rng = np.random.default_rng(seed)
    C, (S, T), K = num_chains, counts.shape, 3
    start = np.full((C, K), 1.0 / K)
    switch = np.tile(STICKY / STICKY.sum(-1, keepdims=True), (C, 1, 1))
    rate = np.tile(RATE_SHAPE / RATE_RATE, (C, 1))
    log_factorial = -gammaln(counts + 1.0)
    kept = {"start": [], "switch": [], "rate": [], "regime": []}
    for iteration in range(num_iterations):
        unary = counts[None, :, :, None] * np.log(rate)[:, None, None, :] - rate[:, None, None, :] + log_factorial[None, :, :, None]
        unary[:, :, 0] += np.log(start)[:, None]
        pairwise = np.broadcast_to(np.log(switch)[:, None, None], (C, S, T - 1, K, K))
        z = ffbs(rng, unary.reshape(C * S, T, K), pairwise.reshape(C * S, T - 1, K, K)).reshape(C, S, T)
        first = np.stack([(z[:, :, 0] == k).sum(-1) for k in range(K)], -1)
        gamma = rng.gamma(1.0 + first)
        start = gamma / gamma.sum(-1, keepdims=True)
        moves = transition_counts(z, K)
        gamma = rng.gamma(STICKY[None] + moves)
        switch = gamma / gamma.sum(-1, keepdims=True)
        n = np.stack([(z == k).sum((1, 2)) for k in range(K)], -1)
        total = np.stack([np.where(z == k, counts[None], 0).sum((1, 2)) for k in range(K)], -1)
        rate = rng.gamma(RATE_SHAPE + total) / (RATE_RATE + n)
        if iteration >= burn:
            for name, value in (("start", start), ("switch", switch), ("rate", rate), ("regime", z)):
                kept[name].append(value.copy())
    return {name: np.stack(values, 1) for name, values in kept.items()}


def gibbs_summary(draws):
    """Mean and MCSE (ArviZ bulk ESS over the Gibbs chains) of each element."""
    import arviz as az

    grouped = {name: np.asarray(v, dtype=float) for name, v in draws.items()}
    ess = az.ess(az.convert_to_dataset(grouped), method="bulk")
    rhat = az.rhat(az.convert_to_dataset(grouped))
    out = {}
    for name, v in grouped.items():
        assert float(np.max(rhat[name].values)) < 1.01, f"Gibbs reference for {name} has not mixed"
        flat = v.reshape((-1,) + v.shape[2:])
        out[name] = (flat.mean(0), flat.std(0) / np.sqrt(np.asarray(ess[name].values)))
    return out


def assert_matches_reference(result, reference, names):
    for name in names:
        mean, stderr = reference[name]
        draws = result.samples[name]
        nuts_stderr = mcse(draws, result.diagnostics["ess_bulk"][name])
        assert_within(draws.mean(0), mean, np.hypot(stderr, nuts_stderr), what=name)


# --------------------------------------------------------------------------------------------
# The forward algorithms, FFBS and the tables, against brute force and enumerate


def brute_force_chain(unary, pairwise):
    """log Z (n,), marginals (T, n, K) and pair marginals (T-1, n, K, K) by summing every path."""
    T, n, K = unary.shape
    pairwise = np.broadcast_to(pairwise, (T - 1, n, K, K))
    paths = np.array(list(itertools.product(range(K), repeat=T)))  # (K^T, T)
    steps = np.arange(T)
    log_joint = unary[steps, :, paths].sum(1)  # (K^T, n)
    log_joint = log_joint + pairwise[steps[:-1], :, paths[:, :-1], paths[:, 1:]].sum(1)
    log_z = logsumexp(log_joint, axis=0)
    weights = np.exp(log_joint - log_z)
    marginals = np.stack([np.stack([weights[paths[:, t] == k].sum(0) for k in range(K)], -1) for t in range(T)])
    pairs = np.zeros((T - 1, n, K, K))
    for t in range(T - 1):
        for j, k in itertools.product(range(K), repeat=2):
            pairs[t, :, j, k] = weights[(paths[:, t] == j) & (paths[:, t + 1] == k)].sum(0)
    return log_z, marginals, pairs


def test_forward_pass_and_draws_match_brute_force():
    rng = np.random.default_rng(4)
    T, n, K = 5, 3, 3
    unary = rng.normal(size=(T, n, K)) * 2
    pairwise = rng.normal(size=(T - 1, n, K, K))
    log_z, marginals, pairs = brute_force_chain(unary, pairwise)
    with jax.enable_x64(True):
        np.testing.assert_allclose(_chain_jax.log_partition(unary, pairwise), log_z, rtol=1e-12)
        np.testing.assert_allclose(_chain_jax.marginals(unary, pairwise), marginals, atol=1e-12)
        shared = pairwise[:, :1]  # one transition table for the whole batch
        np.testing.assert_allclose(_chain_jax.log_partition(unary, shared), brute_force_chain(unary, shared)[0], rtol=1e-12)
        # The gradient of log Z with respect to the unary table is the marginals.
        np.testing.assert_allclose(jax.grad(lambda u: _chain_jax.log_partition(u, pairwise).sum())(unary), marginals, atol=1e-12)
        num = 20000
        keys = jax.random.split(jax.random.PRNGKey(0), num)
        paths = np.asarray(jax.vmap(lambda key: _chain_jax.sample(key, unary, pairwise))(keys))  # (num, T, n)
    empirical = np.zeros_like(pairs)
    for j, k in itertools.product(range(K), repeat=2):
        empirical[..., j, k] = ((paths[:, :-1] == j) & (paths[:, 1:] == k)).mean(0)
    # Each cell a binomial proportion: within 4 standard errors (and a floor for p ≈ 0).
    stderr = np.sqrt(pairs * (1 - pairs) / num) + 1e-4
    assert np.all(np.abs(empirical - pairs) < 4 * stderr), np.max(np.abs(empirical - pairs) / stderr)


@pytest.fixture(scope="module")
def counts():
    rng = np.random.default_rng(7)
    regimes = sticky_states(rng, 40, 3, stay=0.85, shape=(2,))
    return rng.poisson((RATE_SHAPE / RATE_RATE)[regimes]).astype(float)


def regime_case(counts):
    fixed = {
        "start": np.array([0.2, 0.5, 0.3]),
        "switch": np.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.3, 0.3, 0.4]]),
        "rate": np.array([0.9, 5.0, 13.0]),
    }
    return regime_counts, (counts,), fixed, "regime", counts.shape[1], (2,)


def readings_case(counts):
    rng = np.random.default_rng(5)
    y, seen = rng.normal(size=(2, 3, 7)) * 2.0, rng.random((2, 3, 7)) > 0.3
    fixed = {"trans": np.array([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]]), "locs": np.array([-2.0, 0.0, 2.5])}
    return replicated_readings, (y, seen), fixed, "s", 7, (3,)


@pytest.mark.parametrize("case", [regime_case, readings_case])
def test_chain_tables_give_enumerate_marginals_at_fixed_parameters(counts, case):
    program, args, fixed, prefix, num_steps, shape = case(counts)
    exact = ppgen.infer(program, *args, **fixed, engine="enumerate").marginals
    structure = ppgen.inspect(program, *args)
    chains = find_chains(structure, _mcmc.enumerated_sites(structure))
    assert [chain.label for chain in chains] == [f"{prefix}_0..{prefix}_{num_steps - 1}"]
    with jax.enable_x64(True):
        bound = _mcmc.bind_program(program, args, {})
        ours = _chain_numpyro.exact_marginals(bound.numpyro_model(), chains, structure.max_plate_nesting, fixed, bound.data)
    assert set(ours) == set(exact) == {f"{prefix}_{t}" for t in range(num_steps)}
    for name, probs in exact.items():
        assert ours[name].shape == shape + (3,)
        np.testing.assert_allclose(ours[name], probs, atol=1e-6)


# --------------------------------------------------------------------------------------------
# NUTS and HMC against Gibbs


@pytest.fixture(scope="module")
def issue_data():
    rng = np.random.default_rng(0)
    states = sticky_states(rng, 50, 2, stay=0.9)
    return rng.normal(np.array([3.0, 10.0])[states], 1.0)


@pytest.fixture(scope="module")
def issue_gibbs(issue_data):
    gibbs = gibbs_two_state(issue_data, np.array([3.0, 10.0]))
    return gibbs, gibbs_summary({"mu": gibbs["mu"], "theta": gibbs["theta"]})


def assert_states_match(draws, gibbs_states):
    """Frequencies of z_t = 1 among the draws against Gibbs's (binomial standard errors)."""
    num = draws.shape[0]
    expected = gibbs_states.reshape(-1, gibbs_states.shape[-1]).mean(0)
    stderr = np.sqrt(np.maximum(expected * (1 - expected), 1e-3) / num)
    assert np.all(np.abs(draws.mean(0) - expected) < 4 * stderr), np.max(np.abs(draws.mean(0) - expected) / stderr)


def test_issue_program_nuts_matches_gibbs(issue_data, issue_gibbs):
    y = issue_data
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReliabilityWarning)
        result = ppgen.infer(two_state_hmm, y, engine="nuts", num_warmup=400, num_samples=500, num_chains=4, progress=False, seed=1)
    assert result.diagnostics["markov_chains"] == ["z_0..z_49"]
    assert result.samples["z_7"].shape == (2000,) and result.samples["mu"].shape == (2000, 2)
    gibbs, reference = issue_gibbs
    assert_matches_reference(result, reference, ["mu", "theta"])
    assert_states_match(np.stack([result.samples[f"z_{t}"] for t in range(len(y))], -1), gibbs["z"])


@pytest.mark.parametrize(
    "engine, options",
    [
        ("nuts", {}),
        # HMC's default trajectory (2π) mixes slowly on this posterior (bulk ESS ≈ 30 of 1000); a
        # shorter one gives independent-looking draws.
        pytest.param("hmc", {"trajectory_length": 1.5}, marks=pytest.mark.slow),
    ],
)
def test_regimes_in_a_plate_match_gibbs(counts, engine, options):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReliabilityWarning)
        result = ppgen.infer(
            regime_counts, counts, engine=engine, num_warmup=400, num_samples=500, num_chains=4, progress=False, seed=3, **options
        )
    assert result.diagnostics["markov_chains"] == ["regime_0..regime_39"]
    assert result.samples["regime_3"].shape == (2000, 2)
    reference = gibbs_summary({k: v for k, v in gibbs_regimes(counts).items() if k != "regime"})
    assert_matches_reference(result, reference, ["start", "switch", "rate"])


@pytest.mark.slow
def test_chain_beside_a_mixture_and_a_deterministic_site(issue_data):
    """The chain is summed by the forward pass, the mixture's latents by funsor (drawn given the
    chain's draws), the deterministic site recovered from the chain's draws; the weight's
    posterior is one-dimensional: quadrature."""
    y = issue_data[:20]
    rng = np.random.default_rng(11)
    x = np.where(rng.random(30) < 0.3, 2.0, -2.0) + rng.normal(size=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReliabilityWarning)
        result = ppgen.infer(levels_and_sides, y, x, engine="nuts", num_warmup=400, num_samples=500, num_chains=4, progress=False, seed=2)
    assert result.diagnostics["markov_chains"] == ["level_0..level_19"]
    gibbs = gibbs_two_state(y, np.array([3.0, 10.0]))
    assert_matches_reference(result, gibbs_summary({"mu": gibbs["mu"], "theta": gibbs["theta"]}), ["mu", "theta"])
    levels = np.stack([result.samples[f"level_{t}"] for t in range(len(y))], -1)
    assert_states_match(levels, gibbs["z"])
    np.testing.assert_allclose(result.samples["last_mean"], result.samples["mu"][np.arange(len(levels)), levels[:, -1]])
    w = np.linspace(0.0005, 0.9995, 2000)
    right, left = stats.norm.pdf(x[:, None], 2.0, 1.0), stats.norm.pdf(x[:, None], -2.0, 1.0)
    log_post = stats.beta.logpdf(w, 2.0, 2.0) + np.log(w * right + (1 - w) * left).sum(0)
    post = np.exp(log_post - log_post.max())
    post /= post.sum()
    mean, sd = (w * post).sum(), np.sqrt((w**2 * post).sum() - (w * post).sum() ** 2)
    assert_within(result.samples["weight"].mean(), mean, sd / np.sqrt(result.diagnostics["ess_bulk"]["weight"]), what="weight")
    side_probability = ((w * right / (w * right + (1 - w) * left)) * post).sum(1)
    num = result.samples["side"].shape[0]
    stderr = np.sqrt(np.maximum(side_probability * (1 - side_probability), 1e-3) / num)
    assert np.all(np.abs(result.samples["side"].mean(0) - side_probability) < 4 * stderr)


# --------------------------------------------------------------------------------------------
# Which programs apply


def test_engines_for_lists_nuts_and_hmc_on_chains_and_refuses_second_order(counts, issue_data):
    applicable = {check.name: check for check in ppgen.engines_for(regime_counts, counts)}
    assert applicable["nuts"].applies and applicable["hmc"].applies
    assert {check.name: check.applies for check in ppgen.engines_for(two_state_hmm, issue_data)}["nuts"]
    y = np.random.default_rng(0).normal(size=30)
    refused = {check.name: check for check in ppgen.engines_for(second_order, y)}
    assert not refused["nuts"].applies and "site 's_2' depends on 's_0', 's_1', 's_2'" in refused["nuts"].reason
    with pytest.raises(EngineNotApplicable, match="'s_0', ..., 's_29' .30 sites. are coupled but not as a first-order Markov chain"):
        ppgen.infer(second_order, y, engine="hmc")
