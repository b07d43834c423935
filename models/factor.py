"""Latent-Gaussian compression: probabilistic PCA and factor analysis.

z_i ~ N(0, I_K);  x_i ~ N(W z_i + μ, σ² I_D)  (factor analysis: diagonal Ψ instead of σ² I).
Integrating z out gives x_i ~ N(μ, W Wᵀ + σ² I), whose maximum-likelihood solution is known in
closed form (Tipping & Bishop 1999): :func:`ppca_closed_form`.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ppgen import dist, ops, param, plate, sample
from ppgen.amortize import amortize
from ppgen.catalogue import Example, Simulated


def _loadings_init(d: int, k: int):
    return 0.5 * ops.sin(ops.arange(d * k) * 1.0 + 1.0).reshape((d, k))


def ppca(x: Optional[Any] = None, num_data: int = 100, D: int = 5, K: int = 2) -> None:
    """Probabilistic PCA with latent codes: z_i ~ N(0, I_K); x_i ~ N(W z_i + μ, σ² I_D).

    ``W`` (D, K), ``mu`` (D,) and ``sigma`` are ``param`` sites; ``z`` is latent per datum.
    """
    n, d = (num_data, D) if x is None else x.shape
    loadings = param("W", _loadings_init(d, K))
    mean = param("mu", ops.zeros(d))
    sigma = param("sigma", ops.ones(()), constraint=dist.constraints.positive)
    with plate("N", n):
        z = sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
        sample("x", dist.Normal(z @ loadings.T + mean, sigma).to_event(1), obs=x)


def ppca_marginal(x: Optional[Any] = None, num_data: int = 100, D: int = 5, K: int = 2) -> None:
    """PPCA with the codes integrated out: x_i ~ N(μ, W Wᵀ + σ² I_D)."""
    n, d = (num_data, D) if x is None else x.shape
    loadings = param("W", _loadings_init(d, K))
    mean = param("mu", ops.zeros(d))
    sigma = param("sigma", ops.ones(()), constraint=dist.constraints.positive)
    covariance = loadings @ loadings.T + sigma**2 * ops.eye(d)
    with plate("N", n):
        sample("x", dist.MultivariateNormal(mean, covariance_matrix=covariance), obs=x)


def factor_analysis(x: Optional[Any] = None, num_data: int = 100, D: int = 5, K: int = 2) -> None:
    """Factor analysis: z_i ~ N(0, I_K); x_i ~ N(W z_i + μ, diag(ψ))."""
    n, d = (num_data, D) if x is None else x.shape
    loadings = param("W", _loadings_init(d, K))
    mean = param("mu", ops.zeros(d))
    psi = param("psi", ops.ones(d), constraint=dist.constraints.positive)
    with plate("N", n):
        z = sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
        sample("x", dist.Normal(z @ loadings.T + mean, psi**0.5).to_event(1), obs=x)


def ppca_closed_form(x: Any, K: int) -> dict[str, np.ndarray]:
    """Maximum-likelihood PPCA (Tipping & Bishop 1999): with eigenpairs (λ_j, u_j) of the sample
    covariance, σ² = mean of the D − K smallest λ and W = U_K (Λ_K − σ² I)^{1/2} (up to rotation)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(0)
    covariance = np.cov(x, rowvar=False, bias=True)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    sigma2 = eigenvalues[K:].mean()
    loadings = eigenvectors[:, :K] * np.sqrt(eigenvalues[:K] - sigma2)
    return {"W": loadings, "mu": mean, "sigma": np.sqrt(sigma2)}


def simulate_ppca(num_data: int = 300, D: int = 5, K: int = 2, seed: int = 0) -> Simulated:
    rng = np.random.default_rng(seed)
    loadings = rng.normal(0.0, 1.0, (D, K)) * np.array([2.0, 1.0])[:K]
    mean = rng.normal(0.0, 2.0, D)
    z = rng.normal(size=(num_data, K))
    x = z @ loadings.T + mean + 0.3 * rng.normal(size=(num_data, D))
    return Simulated({"x": x, "K": K}, {"W": loadings, "mu": mean, "sigma": 0.3, "z": z})


class LinearEncoder(torch.nn.Module):
    """x (D) -> (loc, scale) of q(z | x) (K each), loc linear in x: PPCA's exact posterior
    family, for ``ppgen.amortize(LinearEncoder(D, K))`` with ``engine="svi"``."""

    def __init__(self, D: int = 5, K: int = 2, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.loc = torch.nn.Linear(D, K, dtype=torch.float64)
        with torch.no_grad():
            self.loc.weight.normal_(0.0, 0.1, generator=generator)
            self.loc.bias.zero_()
        self.raw_scale = torch.nn.Parameter(torch.zeros(K, dtype=torch.float64))

    def forward(self, x: Any) -> tuple[Any, Any]:
        return self.loc(x), torch.nn.functional.softplus(self.raw_scale).expand(x.shape[0], -1)


EXAMPLES = [
    Example(
        "ppca", ppca, simulate_ppca, "probabilistic PCA with per-datum latent codes",
        options={
            "svi": {"guide": amortize(LinearEncoder(5, 2)), "subsample_size": 100, "num_steps": 1500, "learning_rate": 0.03},
            "map": {"num_steps": 20},  # W and the codes jointly: a slow ridge, ~1 s per L-BFGS step
        },
        skip=("mle",),  # the joint MLE over per-datum codes is degenerate; ppca_marginal shows the MLE
    ),
    Example("ppca_marginal", ppca_marginal, simulate_ppca, "probabilistic PCA with the codes integrated out"),
]
