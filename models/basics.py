"""Basic models: coin tosses, heights, and the two-class generative classifier.

Each program runs unchanged on Pyro and NumPyro. Observed data are arguments (``obs=x``);
with ``x=None`` the program simulates them.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ppgen import dist, plate, sample
from ppgen.catalogue import Example, Simulated


def coin(x: Optional[Any] = None, num_tosses: int = 10, a: float = 2.0, b: float = 2.0) -> None:
    """Coin tosses with a Beta prior on the bias.

    ρ ~ Beta(a, b);  x_i ~ Bernoulli(ρ), i = 1..n.

    Parameters
    ----------
    x : array of shape (n,) with values in {0, 1}, or None to simulate ``num_tosses`` tosses.
    a, b : Beta prior pseudo-counts (hyperparameters).

    The posterior is Beta(a + h, b + n − h) with h = Σ x_i; the evidence is
    B(a + h, b + n − h) / B(a, b).
    """
    n = num_tosses if x is None else len(x)
    rho = sample("rho", dist.Beta(a, b))
    with plate("N", n):
        sample("x", dist.Bernoulli(rho), obs=x)


def coin_posterior(x: Any, a: float = 2.0, b: float = 2.0) -> tuple[float, float]:
    """Closed-form posterior Beta(a + h, b + n − h) of :func:`coin` as its two parameters."""
    x = np.asarray(x)
    heads = float(x.sum())
    return a + heads, b + len(x) - heads


def coin_log_evidence(x: Any, a: float = 2.0, b: float = 2.0) -> float:
    """Closed-form log p(x) = log B(a + h, b + n − h) − log B(a, b) of :func:`coin`."""
    from scipy.special import betaln

    post_a, post_b = coin_posterior(x, a, b)
    return float(betaln(post_a, post_b) - betaln(a, b))


def simulate_coin(num_tosses: int = 20, rho: float = 0.7, seed: int = 0) -> Simulated:
    rng = np.random.default_rng(seed)
    x = (rng.random(num_tosses) < rho).astype(np.float64)
    return Simulated({"x": x}, {"rho": rho})


def heights(
    x: Optional[Any] = None,
    num_people: int = 50,
    mu_loc: float = 170.0,
    mu_scale: float = 20.0,
    sigma_scale: float = 20.0,
) -> None:
    """Heights (cm) as a Normal with priors on its mean and scale.

    μ ~ Normal(μ₀, s₀);  σ ~ HalfNormal(s_σ);  x_i ~ Normal(μ, σ).
    """
    n = num_people if x is None else len(x)
    mu = sample("mu", dist.Normal(mu_loc, mu_scale))
    sigma = sample("sigma", dist.HalfNormal(sigma_scale))
    with plate("N", n):
        sample("x", dist.Normal(mu, sigma), obs=x)


def simulate_heights(num_people: int = 50, mu: float = 172.0, sigma: float = 8.0, seed: int = 0) -> Simulated:
    rng = np.random.default_rng(seed)
    return Simulated({"x": rng.normal(mu, sigma, num_people)}, {"mu": mu, "sigma": sigma})


def two_class(
    x: Optional[Any] = None,
    y: Optional[Any] = None,
    num_data: int = 100,
    num_features: int = 2,
    prior_scale: float = 5.0,
) -> None:
    """The two-class generative classifier: class prior and class-conditional Gaussians.

    p ~ Beta(1, 1);  μ_c ~ Normal(0, s I), σ_c ~ HalfNormal(1) per class c ∈ {0, 1};
    y_i ~ Bernoulli(p);  x_i ~ Normal(μ_{y_i}, σ_{y_i}² I).

    With ``y`` observed this is supervised learning of the class densities; with ``y=None``
    the labels are latent and p(y_i | x_i) is Bayes' rule (see :func:`classify`).
    """
    n, d = (num_data, num_features) if x is None else x.shape
    p = sample("p", dist.Beta(1.0, 1.0))
    with plate("C", 2):
        mu = sample("mu", dist.Normal(0.0, prior_scale).expand([d]).to_event(1))
        sigma = sample("sigma", dist.HalfNormal(1.0).expand([d]).to_event(1))
    with plate("N", n):
        label = sample("y", dist.Bernoulli(p), obs=y)
        index = label.astype("int32") if hasattr(label, "astype") else label.long()
        sample("x", dist.Normal(mu[index], sigma[index]).to_event(1), obs=x)


def classify(x: Any, p: float, mu: Any, sigma: Any) -> np.ndarray:
    """Bayes' rule for :func:`two_class`: p(y = 1 | x) for each row of ``x``, shape (n,)."""
    from scipy.stats import norm

    x, mu, sigma = np.asarray(x), np.asarray(mu), np.asarray(sigma)
    log_joint = np.stack(
        [np.log(1 - p) + norm.logpdf(x, mu[0], sigma[0]).sum(-1), np.log(p) + norm.logpdf(x, mu[1], sigma[1]).sum(-1)],
        axis=-1,
    )
    log_joint -= log_joint.max(-1, keepdims=True)
    probs = np.exp(log_joint)
    return probs[:, 1] / probs.sum(-1)


def simulate_two_class(num_data: int = 200, seed: int = 0) -> Simulated:
    rng = np.random.default_rng(seed)
    p, mu, sigma = 0.4, np.array([[-1.5, 0.0], [1.5, 1.0]]), np.array([[1.0, 0.7], [0.6, 1.2]])
    y = (rng.random(num_data) < p).astype(np.float64)
    labels = y.astype(int)
    x = rng.normal(mu[labels], sigma[labels])
    return Simulated({"x": x, "y": y}, {"p": p, "mu": mu, "sigma": sigma})


EXAMPLES = [
    Example("coin", coin, simulate_coin, "Beta–Bernoulli coin: conjugate, closed-form posterior and evidence"),
    Example("heights", heights, simulate_heights, "Normal with unknown mean and scale"),
    Example(
        "two_class", two_class, simulate_two_class, "generative classifier with Gaussian class densities",
        options={"importance": {"num_samples": 300}},  # sequential particles: mu[index] is not batch-safe
    ),
]
