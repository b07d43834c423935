"""Sequence models: a Markov chain over discrete states and hidden Markov models.

Each step is its own site (``x_0, x_1, ...`` or ``z_t`` / ``y_t``) inside ``ppgen.markov``,
which tells enumeration that z_t depends on the past only through z_{t-1}: the engines sum an
HMM of length T in O(T K²), and the plate diagram draws the chain as one node with a self-loop.
Several independent sequences sit in a plate, so every step is vectorised across them.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ppgen import dist, markov, ops, param, plate, sample
from ppgen.catalogue import Example, Simulated


# --------------------------------------------------------------------------------------------
# Markov chain over observed states


def markov_chain(x: Optional[Any] = None, T: int = 100, K: int = 3, concentration: float = 1.0) -> None:
    """First-order Markov chain over ``K`` states with Dirichlet priors on its probabilities.

    π ~ Dirichlet(c 1_K);  A_j ~ Dirichlet(c 1_K), j = 1..K (rows of the transition matrix);
    x_0 ~ Categorical(π);  x_t ~ Categorical(A_{x_{t-1}}), t = 1..T-1.

    Parameters
    ----------
    x : int array of shape (T,) with values in {0, ..., K-1} (e.g. daily temperature as
        cold / mild / warm), or None to simulate ``T`` states.
    concentration : Dirichlet pseudo-count c (hyperparameter).

    Conjugate: the posterior is π | x ~ Dirichlet(c + e_{x_0}) and A_j | x ~ Dirichlet(c + n_j),
    n_jk the number of j -> k transitions; see :func:`markov_chain_posterior` and
    :func:`markov_chain_log_evidence`.
    """
    T = T if x is None else len(x)
    initial = sample("initial", dist.Dirichlet(concentration * ops.ones(K)))
    with plate("states", K):
        transition = sample("transition", dist.Dirichlet(concentration * ops.ones(K)))
    state = None
    for t in markov(range(T)):
        probs = initial if t == 0 else transition[state]
        state = sample(f"x_{t}", dist.Categorical(probs), obs=None if x is None else x[t])


def _transition_counts(x: Any, K: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.int64)
    first = np.bincount(x[:1], minlength=K).astype(float)
    counts = np.zeros((K, K))
    np.add.at(counts, (x[:-1], x[1:]), 1.0)
    return first, counts


def markov_chain_posterior(x: Any, K: int = 3, concentration: float = 1.0) -> dict[str, np.ndarray]:
    """Closed-form posterior of :func:`markov_chain`: Dirichlet concentrations of ``initial`` (K,)
    and of each row of ``transition`` (K, K)."""
    first, counts = _transition_counts(x, K)
    return {"initial": concentration + first, "transition": concentration + counts}


def markov_chain_log_evidence(x: Any, K: int = 3, concentration: float = 1.0) -> float:
    """Closed-form log p(x) of :func:`markov_chain`: a product of Dirichlet–multinomial terms,
    log B(c + n) − log B(c) for the first state and for each row of transitions, with
    B(a) = Π Γ(a_k) / Γ(Σ a_k)."""
    from scipy.special import gammaln

    def log_beta(a: np.ndarray) -> np.ndarray:
        return gammaln(a).sum(-1) - gammaln(a.sum(-1))

    posterior = markov_chain_posterior(x, K, concentration)
    prior = np.full(K, float(concentration))
    return float(
        log_beta(posterior["initial"]) - log_beta(prior)
        + (log_beta(posterior["transition"]) - log_beta(prior)).sum()
    )


def simulate_markov_chain(num_steps: int = 100, seed: int = 0) -> Simulated:
    """Daily temperature over ``num_steps`` days (a seasonal cycle plus AR(1) weather),
    discretised into cold / mild / warm (0, 1, 2) at the tertiles."""
    rng = np.random.default_rng(seed)
    days = np.arange(num_steps)
    weather = np.zeros(num_steps)
    for t in range(1, num_steps):
        weather[t] = 0.8 * weather[t - 1] + rng.normal(0.0, 2.0)
    temperature = 12.0 + 8.0 * np.sin(2 * np.pi * days / 365.0) + weather
    x = np.digitize(temperature, np.quantile(temperature, [1 / 3, 2 / 3])).astype(np.int64)
    return Simulated({"x": x, "K": 3}, {"temperature": temperature})


# --------------------------------------------------------------------------------------------
# Hidden Markov models


def _sticky(K: int) -> np.ndarray:
    """Initial transition matrix: stay with probability 0.5 + 0.5 / K."""
    return 0.5 * np.eye(K) + 0.5 / K


def _spread_rows(K: int, V: int) -> np.ndarray:
    """K distinct probability vectors over V symbols (symmetry-breaking initial values)."""
    logits = np.sin(np.arange(K * V, dtype=float).reshape(K, V) + 1.0)
    probs = np.exp(logits)
    return probs / probs.sum(-1, keepdims=True)


def hmm_categorical(
    y: Optional[Any] = None, num_sequences: int = 3, T: int = 100, K: int = 2, V: int = 6
) -> None:
    """Hidden Markov model with categorical emissions, parameters learned (EM = Baum–Welch).

    z_0 ~ Categorical(π);  z_t ~ Categorical(A_{z_{t-1}});  y_t ~ Categorical(B_{z_t}),
    for each of ``num_sequences`` independent sequences.

    Parameters
    ----------
    y : int array of shape (num_sequences, T) with values in {0, ..., V-1}, or None to simulate.
    K : number of hidden states;  V : number of symbols.

    ``initial`` π (K,), ``transition`` A (K, K) and ``emission`` B (K, V) are ``param`` sites on
    the simplex. The first state is drawn from π (no transition before the first observation,
    as in hmmlearn).
    """
    num_sequences, T = (num_sequences, T) if y is None else y.shape
    initial = param("initial", np.full(K, 1.0 / K), constraint=dist.constraints.simplex)
    transition = param("transition", _sticky(K), constraint=dist.constraints.simplex)
    emission = param("emission", _spread_rows(K, V), constraint=dist.constraints.simplex)
    with plate("sequences", num_sequences, dim=-1):
        state = None
        for t in markov(range(T)):
            probs = initial if t == 0 else transition[state]
            state = sample(f"z_{t}", dist.Categorical(probs))
            sample(f"y_{t}", dist.Categorical(emission[state]), obs=None if y is None else y[:, t])


def hmm_gaussian(y: Optional[Any] = None, num_sequences: int = 3, T: int = 100, K: int = 3) -> None:
    """Hidden Markov model with Gaussian emissions (regime switching), parameters learned.

    z_0 ~ Categorical(π);  z_t ~ Categorical(A_{z_{t-1}});  y_t ~ Normal(μ_{z_t}, σ_{z_t}).

    ``initial`` (K,), ``transition`` (K, K), ``locs`` (K,) and ``scales`` (K,) are ``param`` sites.
    ``y`` has shape (num_sequences, T).
    """
    num_sequences, T = (num_sequences, T) if y is None else y.shape
    initial = param("initial", np.full(K, 1.0 / K), constraint=dist.constraints.simplex)
    transition = param("transition", _sticky(K), constraint=dist.constraints.simplex)
    locs = param("locs", np.linspace(-1.0, 1.0, K), constraint=dist.constraints.real)
    scales = param("scales", np.ones(K), constraint=dist.constraints.positive)
    with plate("sequences", num_sequences, dim=-1):
        state = None
        for t in markov(range(T)):
            probs = initial if t == 0 else transition[state]
            state = sample(f"z_{t}", dist.Categorical(probs))
            sample(f"y_{t}", dist.Normal(locs[state], scales[state]), obs=None if y is None else y[:, t])


def _simulate_states(rng: np.random.Generator, initial: np.ndarray, transition: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    num_sequences, T = shape
    z = np.zeros(shape, dtype=np.int64)
    z[:, 0] = rng.choice(len(initial), size=num_sequences, p=initial)
    for t in range(1, T):
        cumulative = transition[z[:, t - 1]].cumsum(-1)
        z[:, t] = (rng.random((num_sequences, 1)) < cumulative).argmax(-1)
    return z


def simulate_casino(num_sequences: int = 3, num_steps: int = 100, seed: int = 0) -> Simulated:
    """The occasionally dishonest casino (Durbin et al. 1998): a fair die and a loaded one
    (a six half the time), switching rarely."""
    rng = np.random.default_rng(seed)
    initial = np.array([0.5, 0.5])
    transition = np.array([[0.95, 0.05], [0.10, 0.90]])
    emission = np.vstack([np.full(6, 1 / 6), np.r_[np.full(5, 0.1), 0.5]])
    z = _simulate_states(rng, initial, transition, (num_sequences, num_steps))
    cumulative = emission[z].cumsum(-1)
    y = (rng.random(z.shape + (1,)) < cumulative).argmax(-1).astype(np.int64)
    return Simulated({"y": y, "K": 2, "V": 6}, {"initial": initial, "transition": transition, "emission": emission, "z": z})


def simulate_hmm_gaussian(num_sequences: int = 3, num_steps: int = 100, K: int = 3, seed: int = 0) -> Simulated:
    """Regime switching between ``K`` well-separated Gaussian levels."""
    rng = np.random.default_rng(seed)
    initial = np.full(K, 1.0 / K)
    transition = 0.85 * np.eye(K) + 0.15 / K
    locs = np.linspace(-3.0, 3.0, K)
    scales = np.full(K, 0.8)
    z = _simulate_states(rng, initial, transition, (num_sequences, num_steps))
    y = rng.normal(locs[z], scales[z])
    return Simulated({"y": y, "K": K}, {"initial": initial, "transition": transition, "locs": locs, "scales": scales, "z": z})


#: svi on the HMMs: every step runs Pyro's enumerated ELBO over the whole chain (~0.5 s); EM reaches
#: the same maximum in a second, so the tour shows a short run.
_SVI_ON_CHAINS = {"num_steps": 50, "learning_rate": 0.05}

EXAMPLES = [
    Example(
        "markov_chain", markov_chain, simulate_markov_chain,
        "Markov chain over discretised daily temperature, Dirichlet priors (closed-form posterior and evidence)",
        options={"importance": {"num_samples": 300}},  # sequential particles: transition[x] is not batch-safe
        # no discrete latent, so gibbs would be nuts again; fixed-length hmc over 100 sites compiles for a minute
        skip=("gibbs", "hmc"),
    ),
    Example(
        "hmm_categorical", hmm_categorical, simulate_casino,
        "HMM with categorical emissions: the occasionally dishonest casino (Baum–Welch by EM)",
        options={"svi": _SVI_ON_CHAINS},
    ),
    Example(
        "hmm_gaussian", hmm_gaussian, simulate_hmm_gaussian, "HMM with Gaussian emissions: regime switching",
        options={"svi": _SVI_ON_CHAINS},
    ),
]
