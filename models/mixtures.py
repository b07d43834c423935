"""Mixture models: Gaussian mixtures (1-D and multivariate) and the mixture of Bernoullis.

Two styles of the same family: with ``param`` sites (weights, means, covariances learned by
EM or maximum likelihood) and with priors on every global (fully Bayesian: MCMC, VI).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ppgen import dist, ops, param, plate, sample
from ppgen.catalogue import Example, Simulated



def gaussian_mixture(x: Optional[Any] = None, num_data: int = 200, K: int = 3, D: int = 2) -> None:
    """Gaussian mixture with full covariances, parameters learned (EM, MLE).

    z_i ~ Categorical(w);  x_i ~ Normal(μ_{z_i}, Σ_{z_i}),  Σ_k = L_k L_kᵀ.

    ``w`` (simplex), ``locs`` (K, D) and ``scale_trils`` (K, D, D, lower Cholesky) are
    ``param`` sites. Responsibilities γ_ik = p(z_i = k | x_i).
    """
    n, d = (num_data, D) if x is None else x.shape
    weights = param("weights", ops.ones(K) / K, constraint=dist.constraints.simplex)
    locs = param("locs", ops.sin(ops.arange(K * d) * 1.0 + 1.0).reshape((K, d)), constraint=dist.constraints.real)
    scale_trils = param("scale_trils", ops.ones(K)[:, None, None] * ops.eye(d), constraint=dist.constraints.lower_cholesky)
    with plate("N", n):
        z = sample("z", dist.Categorical(weights))
        sample("x", dist.MultivariateNormal(locs[z], scale_tril=scale_trils[z]), obs=x)


def gaussian_mixture_1d(x: Optional[Any] = None, num_data: int = 200, K: int = 3) -> None:
    """1-D Gaussian mixture, parameters learned (EM, MLE).

    z_i ~ Categorical(w);  x_i ~ Normal(μ_{z_i}, σ_{z_i}).
    """
    n = num_data if x is None else len(x)
    weights = param("weights", ops.ones(K) / K, constraint=dist.constraints.simplex)
    locs = param("locs", ops.linspace(-1.0, 1.0, K), constraint=dist.constraints.real)
    scales = param("scales", ops.ones(K), constraint=dist.constraints.positive)
    with plate("N", n):
        z = sample("z", dist.Categorical(weights))
        sample("x", dist.Normal(locs[z], scales[z]), obs=x)


def bayesian_gaussian_mixture_1d(
    x: Optional[Any] = None,
    num_data: int = 200,
    K: int = 3,
    gamma: float = 1.0,
    mu_scale: float = 10.0,
    sigma_scale: float = 5.0,
) -> None:
    """1-D Gaussian mixture with priors on every global.

    π ~ Dirichlet(γ 1_K);  μ_k ~ Normal(0, s_μ), σ_k ~ HalfNormal(s_σ), k = 1..K;
    z_i ~ Categorical(π);  x_i ~ Normal(μ_{z_i}, σ_{z_i}).
    """
    n = num_data if x is None else len(x)
    pi = sample("pi", dist.Dirichlet(gamma * ops.ones(K)))
    with plate("K", K):
        mu = sample("mu", dist.Normal(0.0, mu_scale))
        sigma = sample("sigma", dist.HalfNormal(sigma_scale))
    with plate("N", n):
        z = sample("z", dist.Categorical(pi))
        sample("x", dist.Normal(mu[z], sigma[z]), obs=x)


def bernoulli_mixture(
    x: Optional[Any] = None,
    num_data: int = 100,
    K: int = 2,
    D: int = 8,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
) -> None:
    """Mixture of Bernoullis with Beta priors on the component biases.

    θ_k ~ Beta(α, β) (one per feature), k = 1..K;  π ~ Dirichlet(γ 1_K);
    z_j ~ Categorical(π);  x_j ~ Bernoulli(θ_{z_j}), x_j ∈ {0, 1}^D, j = 1..N.
    """
    n, d = (num_data, D) if x is None else x.shape
    with plate("K", K):
        theta = sample("theta", dist.Beta(alpha, beta).expand([d]).to_event(1))
    pi = sample("pi", dist.Dirichlet(gamma * ops.ones(K)))
    with plate("N", n):
        z = sample("z", dist.Categorical(pi))
        sample("x", dist.Bernoulli(theta[z]).to_event(1), obs=x)


def conjugate_gaussian_mixture(
    x: Optional[Any] = None,
    num_data: int = 200,
    K: int = 3,
    weight_concentration: float = 1.0,
    mean_prior: float = 0.0,
    mean_precision: float = 0.1,
    precision_shape: float = 1.0,
    precision_rate: float = 1.0,
) -> None:
    """1-D Gaussian mixture with conjugate priors (the Dirichlet–Normal–Gamma mixture).

    π ~ Dirichlet(γ 1_K);  τ_k ~ Gamma(a, b),  μ_k | τ_k ~ Normal(m₀, (β₀ τ_k)^(−1/2)), k = 1..K;
    z_i ~ Categorical(π);  x_i ~ Normal(μ_{z_i}, τ_{z_i}^(−1/2)).

    Every complete conditional is conjugate, so coordinate-ascent VI applies; the same model
    is scikit-learn's ``BayesianGaussianMixture`` in one dimension with
    ``weight_concentration_prior_type="dirichlet_distribution"``,
    ``weight_concentration_prior=γ``, ``mean_prior=[m₀]``, ``mean_precision_prior=β₀``,
    ``degrees_of_freedom_prior=2a``, ``covariance_prior=[[2b]]``.
    """
    n = num_data if x is None else len(x)
    pi = sample("pi", dist.Dirichlet(weight_concentration * ops.ones(K)))
    with plate("K", K):
        tau = sample("tau", dist.Gamma(precision_shape, precision_rate))
        mu = sample("mu", dist.Normal(mean_prior, (mean_precision * tau) ** -0.5))
    with plate("N", n):
        z = sample("z", dist.Categorical(pi))
        sample("x", dist.Normal(mu[z], tau[z] ** -0.5), obs=x)


def simulate_gaussian_mixture(num_data: int = 300, seed: int = 0) -> Simulated:
    rng = np.random.default_rng(seed)
    weights = np.array([0.5, 0.3, 0.2])
    locs = np.array([[-3.0, 0.0], [2.5, 2.0], [2.0, -3.0]])
    covariances = np.array([[[1.0, 0.3], [0.3, 0.6]], [[0.5, -0.2], [-0.2, 0.8]], [[0.7, 0.0], [0.0, 0.4]]])
    z = rng.choice(3, size=num_data, p=weights)
    x = np.stack([rng.multivariate_normal(locs[k], covariances[k]) for k in z])
    return Simulated({"x": x, "K": 3}, {"weights": weights, "locs": locs, "covariances": covariances, "z": z})


def simulate_gaussian_mixture_1d(num_data: int = 300, seed: int = 0) -> Simulated:
    rng = np.random.default_rng(seed)
    weights, locs, scales = np.array([0.3, 0.5, 0.2]), np.array([-4.0, 0.0, 5.0]), np.array([1.0, 0.7, 1.2])
    z = rng.choice(3, size=num_data, p=weights)
    x = rng.normal(locs[z], scales[z])
    return Simulated({"x": x, "K": 3}, {"weights": weights, "locs": locs, "scales": scales, "z": z})


def simulate_bernoulli_mixture(num_data: int = 200, seed: int = 0) -> Simulated:
    rng = np.random.default_rng(seed)
    pi = np.array([0.6, 0.4])
    theta = np.array([[0.9, 0.9, 0.8, 0.9, 0.1, 0.2, 0.1, 0.1], [0.1, 0.2, 0.1, 0.1, 0.9, 0.8, 0.9, 0.9]])
    z = rng.choice(2, size=num_data, p=pi)
    x = (rng.random((num_data, 8)) < theta[z]).astype(np.float64)
    return Simulated({"x": x, "K": 2}, {"pi": pi, "theta": theta, "z": z})


EXAMPLES = [
    Example("gaussian_mixture", gaussian_mixture, simulate_gaussian_mixture, "2-D Gaussian mixture, full covariances, learned parameters"),
    Example("gaussian_mixture_1d", gaussian_mixture_1d, simulate_gaussian_mixture_1d, "1-D Gaussian mixture, learned parameters"),
    Example(
        "bayesian_gaussian_mixture_1d",
        bayesian_gaussian_mixture_1d,
        simulate_gaussian_mixture_1d,
        "1-D Gaussian mixture with Dirichlet, Normal and HalfNormal priors",
        options={"importance": {"num_samples": 300}},  # sequential particles: locs[z] is not batch-safe
        skip=("hmc",),  # fixed-length HMC trajectories over the enumerated mixture take minutes; nuts covers it
    ),
    Example(
        "conjugate_gaussian_mixture",
        conjugate_gaussian_mixture,
        simulate_gaussian_mixture_1d,
        "1-D Gaussian mixture with conjugate Dirichlet and Normal–Gamma priors (coordinate-ascent VI applies)",
        options={"importance": {"num_samples": 300}},  # sequential particles: locs[z] is not batch-safe
        skip=("hmc",),  # fixed-length HMC trajectories over the enumerated mixture take minutes; nuts covers it
    ),
    Example(
        "bernoulli_mixture", bernoulli_mixture, simulate_bernoulli_mixture, "mixture of Bernoullis with Beta/Dirichlet priors",
        options={"importance": {"num_samples": 300}},  # sequential particles: locs[z] is not batch-safe
        # cavi/meanfield fit it exactly in well under a second; advi's enumeration compiles for ~1 min;
        # fixed-length HMC trajectories over the enumerated mixture take minutes (nuts covers it)
        skip=("advi", "hmc"),
    ),
]
