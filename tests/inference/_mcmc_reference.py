"""Shared, cached MCMC runs and checks for the nuts / gibbs / mh tests (one compile each per
pytest process), and the z-test they all use."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

import ppgen
from ppgen.models.basics import coin_posterior, simulate_coin
from ppgen.models.mixtures import bayesian_gaussian_mixture_1d, simulate_gaussian_mixture_1d

COIN = simulate_coin(num_tosses=30, rho=0.7, seed=3)
GMM = simulate_gaussian_mixture_1d(num_data=120, seed=1)


def coin_exact() -> tuple[float, float]:
    """Posterior mean and sd of the coin's ρ: Beta(a, b)."""
    a, b = coin_posterior(COIN.data["x"])
    return a / (a + b), float(np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1))))


def mcse(draws: np.ndarray, ess: np.ndarray) -> np.ndarray:
    """Monte Carlo standard error of the mean: sd / √ESS."""
    return np.asarray(draws).std(axis=0) / np.sqrt(np.asarray(ess))


def assert_within(estimate, reference, stderr, sigmas: float = 4.0, what: str = "") -> None:
    z = (np.asarray(estimate) - np.asarray(reference)) / np.asarray(stderr)
    assert np.all(np.abs(z) < sigmas), f"{what}: z-scores {np.round(z, 2)} (estimate {estimate}, reference {reference})"


def relabelled(result) -> dict[str, np.ndarray]:
    """GMM draws with components sorted by their mean in every draw (removes label switching)."""
    order = np.argsort(result.samples["mu"], axis=1)
    return {name: np.take_along_axis(result.samples[name], order, axis=1) for name in ("mu", "sigma", "pi")}


def relabelled_summary(result) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per relabelled GMM quantity: mean, sd and MCSE (ESS of the relabelled draws, ArviZ)."""
    import arviz as az

    draws = relabelled(result)
    out = {}
    for name, values in draws.items():
        grouped = values.reshape(result.num_chains, -1, values.shape[-1])
        ess = np.array([float(az.ess(grouped[:, :, k], method="bulk")) for k in range(values.shape[-1])])
        out[name] = (values.mean(0), values.std(0), values.std(0) / np.sqrt(ess))
    return out


@lru_cache(maxsize=None)
def nuts_gmm():
    return ppgen.infer(
        bayesian_gaussian_mixture_1d, engine="nuts", num_warmup=400, num_samples=600, num_chains=2,
        progress=False, seed=0, **GMM.data,
    )
