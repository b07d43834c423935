"""Seven reference posteriors from posteriordb, written as ppgen programs.

posteriordb (Magnusson, Bürkner & Vehtari 2023) pairs Stan models and data with reference
("gold standard") posterior draws; MCMC and VI engines are checked against them. The data and
the reference posterior means ship with ppgen in ``ppgen/models/data/posteriordb/<name>/``
(BSD 3-Clause, Stan Developers; the licence file is beside them). Each ``load_*`` helper
returns :class:`~ppgen.catalogue.Simulated` with the program's keyword arguments as ``data``
and the reference posterior means as ``truth``; :func:`reference_posterior` gives means and
standard deviations.

Porting conventions (Stan → ppgen): ``normal(m, s)`` has standard deviation s; a ``<lower=0>``
parameter with a prior symmetric about 0 is a half-normal or half-Cauchy; a parameter with no
sampling statement has a flat (improper) prior on its support, written as ``ImproperUniform``;
``ordered[K]`` is an ordered-vector latent with the elementwise prior added as a ``factor``.

Backends: the eight-schools, arK and gp_regr programs run on NumPyro and Pyro;
``kidscore_momiq`` and ``low_dim_gauss_mix`` use ``ImproperUniform``, which both backends
provide, but are only checked on NumPyro (ppgen's default for MCMC), as is ``gp_pois_regr``
(whose posterior needs float64, NumPyro's default in ppgen).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from typing import Any, Optional

import numpy as np

from ppgen import deterministic, dist, factor, ops, plate, sample
from ppgen.catalogue import Example, Simulated

#: Catalogue name -> posteriordb folder ("<data>-<model>").
POSTERIORS = {
    "eight_schools_centered": "eight_schools-eight_schools_centered",
    "eight_schools_noncentered": "eight_schools-eight_schools_noncentered",
    "kidscore_momiq": "kidiq-kidscore_momiq",
    "low_dim_gauss_mix": "low_dim_gauss_mix-low_dim_gauss_mix",
    "arK": "arK-arK",
    "gp_regr": "gp_pois_regr-gp_regr",
    "gp_pois_regr": "gp_pois_regr-gp_pois_regr",
}


def _read(folder: str, filename: str) -> Any:
    path = resources.files("ppgen.models").joinpath("data", "posteriordb", folder, filename)
    return json.loads(path.read_text())


@lru_cache(maxsize=None)
def _data(name: str) -> dict[str, Any]:
    return _read(POSTERIORS[name], "data.json")


def reference_posterior(name: str) -> dict[str, dict[str, np.ndarray]]:
    """posteriordb's reference posterior of ``name``: for each parameter (Stan's flattened
    names regrouped, 0-based), its ``mean``, ``sd`` = √(E[x²] − E[x]²) and the ``mcse`` of the
    mean, each an array of the parameter's shape."""
    folder = POSTERIORS[name]
    means = _read(folder, "reference_mean_value.json")
    squares = _read(folder, "reference_mean_squared_value.json")
    grouped: dict[str, dict[str, list[float]]] = {}
    indexed: set[str] = set()
    for index, flat_name in enumerate(means["names"]):
        base = flat_name.split("[")[0]
        if "[" in flat_name:
            indexed.add(base)
        entry = grouped.setdefault(base, {"mean": [], "sd": [], "mcse": []})
        mean, square = means["mean_value"][index], squares["mean_squared_value"][index]
        entry["mean"].append(mean)
        entry["sd"].append(math.sqrt(max(square - mean**2, 0.0)))
        entry["mcse"].append(means["mcse_mean"][index])
    return {
        base: {key: np.asarray(values if base in indexed else values[0]) for key, values in entry.items()}
        for base, entry in grouped.items()
    }


def _reference_means(name: str) -> dict[str, Any]:
    return {base: entry["mean"] for base, entry in reference_posterior(name).items()}


# --------------------------------------------------------------------------------------------
# Eight schools (Rubin 1981; BDA3 §5.5)


def eight_schools_centered(y: Optional[Any] = None, sigma: Optional[Any] = None, J: int = 8) -> None:
    """Eight schools, centred: the classic funnel.

    μ ~ N(0, 5);  τ ~ half-Cauchy(0, 5);  θ_j ~ N(μ, τ);  y_j ~ N(θ_j, σ_j), j = 1..J,
    with known standard errors σ_j. ppgen's NUTS non-centres θ automatically.
    """
    sigma = ops.ones(J) * 10.0 if sigma is None else sigma
    mu = sample("mu", dist.Normal(0.0, 5.0))
    tau = sample("tau", dist.HalfCauchy(5.0))
    with plate("J", J):
        theta = sample("theta", dist.Normal(mu, tau))
        sample("y", dist.Normal(theta, sigma), obs=y)


def eight_schools_noncentered(y: Optional[Any] = None, sigma: Optional[Any] = None, J: int = 8) -> None:
    """Eight schools, non-centred by hand.

    μ ~ N(0, 5);  τ ~ half-Cauchy(0, 5);  θ̃_j ~ N(0, 1);  θ_j = μ + τ θ̃_j;  y_j ~ N(θ_j, σ_j).
    """
    sigma = ops.ones(J) * 10.0 if sigma is None else sigma
    mu = sample("mu", dist.Normal(0.0, 5.0))
    tau = sample("tau", dist.HalfCauchy(5.0))
    with plate("J", J):
        theta_trans = sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = deterministic("theta", mu + tau * theta_trans)
        sample("y", dist.Normal(theta, sigma), obs=y)


def load_eight_schools(seed: int = 0) -> Simulated:
    """The eight-schools data (y, σ) and the reference posterior means. ``seed`` is unused
    (the data are fixed); it is there so the loader can stand in for ``simulate``."""
    data = _data("eight_schools_noncentered")
    return Simulated(
        {"y": np.asarray(data["y"], dtype=float), "sigma": np.asarray(data["sigma"], dtype=float), "J": int(data["J"])},
        _reference_means("eight_schools_noncentered"),
    )


# --------------------------------------------------------------------------------------------
# kidiq: linear regression (Gelman & Hill, ARM ch. 3)


def kidscore_momiq(kid_score: Optional[Any] = None, mom_iq: Optional[Any] = None) -> None:
    """Child's test score on mother's IQ.

    β ~ flat on ℝ² (improper);  σ ~ half-Cauchy(0, 2.5);
    kid_score_i ~ N(β₁ + β₂ mom_iq_i, σ).

    Intercept and slope are strongly correlated (mom_iq ≈ 100): use ``dense_mass=True``.
    """
    beta = sample("beta", dist.ImproperUniform(dist.constraints.real, (), (2,)))
    sigma = sample("sigma", dist.HalfCauchy(2.5))
    n = len(mom_iq)
    with plate("N", n):
        sample("kid_score", dist.Normal(beta[0] + beta[1] * mom_iq, sigma), obs=kid_score)


def load_kidiq(seed: int = 0) -> Simulated:
    """The kidiq data (N = 434) and the reference posterior means."""
    data = _data("kidscore_momiq")
    return Simulated(
        {"kid_score": np.asarray(data["kid_score"], dtype=float), "mom_iq": np.asarray(data["mom_iq"], dtype=float)},
        _reference_means("kidscore_momiq"),
    )


# --------------------------------------------------------------------------------------------
# low_dim_gauss_mix: two-component 1-D mixture with an ordered mean


def low_dim_gauss_mix(y: Optional[Any] = None, N: int = 1000) -> None:
    """Two-component 1-D Gaussian mixture, component means ordered (no label switching).

    μ ∈ {μ₁ < μ₂} with N(0, 2) on each element (flat ordered vector plus a factor);
    σ_k ~ half-N(0, 2);  θ ~ Beta(5, 5) (weight of component 1);
    y_i ~ θ N(μ₁, σ₁) + (1 − θ) N(μ₂, σ₂), the assignment summed out.
    """
    mu = sample("mu", dist.ImproperUniform(dist.constraints.ordered_vector, (), (2,)))
    factor("mu_prior", dist.Normal(0.0, 2.0).log_prob(mu).sum())
    with plate("K", 2):
        sigma = sample("sigma", dist.HalfNormal(2.0))
    theta = sample("theta", dist.Beta(5.0, 5.0))
    weights = ops.stack([theta, 1.0 - theta])
    n = N if y is None else len(y)
    with plate("N", n):
        sample("y", dist.MixtureSameFamily(dist.Categorical(probs=weights), dist.Normal(mu, sigma)), obs=y)


def load_low_dim_gauss_mix(seed: int = 0) -> Simulated:
    """The mixture data (N = 1000) and the reference posterior means."""
    data = _data("low_dim_gauss_mix")
    return Simulated({"y": np.asarray(data["y"], dtype=float), "N": int(data["N"])}, _reference_means("low_dim_gauss_mix"))


# --------------------------------------------------------------------------------------------
# arK: autoregression of order K


def arK(y: Any, K: int = 5) -> None:
    """AR(K) on a series y_1..y_T, the first K observations conditioned on.

    α ~ N(0, 10);  β_k ~ N(0, 10), k = 1..K;  σ ~ half-Cauchy(0, 2.5);
    y_t ~ N(α + Σ_k β_k y_{t−k}, σ),  t = K+1..T.
    """
    T = len(y)
    alpha = sample("alpha", dist.Normal(0.0, 10.0))
    with plate("lags", K):
        beta = sample("beta", dist.Normal(0.0, 10.0))
    sigma = sample("sigma", dist.HalfCauchy(2.5))
    lagged = ops.stack([y[K - k - 1 : T - k - 1] for k in range(K)], -1)  # (T − K, K): y_{t−1}..y_{t−K}
    with plate("T", T - K):
        sample("y_ahead", dist.Normal(alpha + (lagged * beta).sum(-1), sigma), obs=y[K:])


def load_arK(seed: int = 0) -> Simulated:
    """The AR(5) series (T = 200) and the reference posterior means."""
    data = _data("arK")
    return Simulated({"y": np.asarray(data["y"], dtype=float), "K": int(data["K"])}, _reference_means("arK"))


# --------------------------------------------------------------------------------------------
# gp_regr: Gaussian-process regression, latent function integrated out


def gp_regr(x: Any, y: Optional[Any] = None) -> None:
    """1-D GP regression with a squared-exponential kernel.

    ρ ~ Gamma(25, 4);  α ~ half-N(0, 2);  σ ~ half-N(0, 1);
    y ~ N(0, K + σ I),  K_ij = α² exp(−(x_i − x_j)² / (2ρ²)).

    As in posteriordb, σ is added to the diagonal as it is: it is a noise *variance*.
    """
    rho = sample("rho", dist.Gamma(25.0, 4.0))
    alpha = sample("alpha", dist.HalfNormal(2.0))
    sigma = sample("sigma", dist.HalfNormal(1.0))
    n = len(x)
    distance = x[:, None] - x[None, :]
    covariance = alpha**2 * ops.exp(-(distance**2) / (2.0 * rho**2)) + sigma * ops.eye(n)
    sample("y", dist.MultivariateNormal(ops.zeros(n), covariance_matrix=covariance), obs=y)


def load_gp_regr(seed: int = 0) -> Simulated:
    """The GP data (N = 11, x = −10..10) and the reference posterior means."""
    data = _data("gp_regr")
    return Simulated(
        {"x": np.asarray(data["x"], dtype=float), "y": np.asarray(data["y"], dtype=float)}, _reference_means("gp_regr")
    )


# --------------------------------------------------------------------------------------------
# gp_pois_regr: Gaussian-process Poisson regression, latent function sampled


def gp_pois_regr(x: Any, k: Optional[Any] = None) -> None:
    """1-D GP Poisson regression with a squared-exponential kernel, non-centred.

    ρ ~ Gamma(25, 4);  α ~ half-N(0, 2);  f̃ ~ N(0, I);
    f = L f̃ with L Lᵀ = K + 10⁻¹⁰ I,  K_ij = α² exp(−(x_i − x_j)² / (2ρ²));
    k_i ~ Poisson(exp(f_i)).

    The jitter 10⁻¹⁰ is posteriordb's: for long length scales K is nearly singular, and its
    Cholesky factor is only defined in float64 (in float32 it is NaN from ρ ≈ 7 on).
    """
    rho = sample("rho", dist.Gamma(25.0, 4.0))
    alpha = sample("alpha", dist.HalfNormal(2.0))
    n = len(x)
    distance = x[:, None] - x[None, :]
    covariance = alpha**2 * ops.exp(-(distance**2) / (2.0 * rho**2)) + 1e-10 * ops.eye(n)
    with plate("N", n):
        f_tilde = sample("f_tilde", dist.Normal(0.0, 1.0))
        f = deterministic("f", ops.linalg.cholesky(covariance) @ f_tilde)
        sample("k", dist.Poisson(ops.exp(f)), obs=k)


def load_gp_pois_regr(seed: int = 0) -> Simulated:
    """The GP Poisson data (N = 11 counts at x = −10..10) and the reference posterior means."""
    data = _data("gp_pois_regr")
    return Simulated(
        {"x": np.asarray(data["x"], dtype=float), "k": np.asarray(data["k"], dtype=np.int64)},
        _reference_means("gp_pois_regr"),
    )


#: Each catalogue name -> (program, loader).
PROGRAMS = {
    "eight_schools_centered": (eight_schools_centered, load_eight_schools),
    "eight_schools_noncentered": (eight_schools_noncentered, load_eight_schools),
    "kidscore_momiq": (kidscore_momiq, load_kidiq),
    "low_dim_gauss_mix": (low_dim_gauss_mix, load_low_dim_gauss_mix),
    "arK": (arK, load_arK),
    "gp_regr": (gp_regr, load_gp_regr),
    "gp_pois_regr": (gp_pois_regr, load_gp_pois_regr),
}

_POSTERIORDB = "posteriordb reference posterior"
_QUICK = {"num_warmup": 500, "num_samples": 500}

EXAMPLES = [
    Example(
        "eight_schools_centered", eight_schools_centered, load_eight_schools,
        f"{_POSTERIORDB}: hierarchical normal, centred (the funnel)", options={"nuts": dict(_QUICK)},
    ),
    Example(
        "eight_schools_noncentered", eight_schools_noncentered, load_eight_schools,
        f"{_POSTERIORDB}: hierarchical normal, non-centred", options={"nuts": dict(_QUICK)},
    ),
    Example(
        "kidscore_momiq", kidscore_momiq, load_kidiq,
        f"{_POSTERIORDB}: linear regression, flat prior on the coefficients",
        # hmc: a fixed 32 leapfrog steps (the default 2π trajectory over the adapted step size runs to
        # thousands of steps per draw on these unscaled covariates)
        options={"nuts": {**_QUICK, "dense_mass": True}, "hmc": {**_QUICK, "dense_mass": True, "num_leapfrog": 32}},
    ),
    Example(
        "low_dim_gauss_mix", low_dim_gauss_mix, load_low_dim_gauss_mix,
        f"{_POSTERIORDB}: two-component mixture with ordered means", options={"nuts": dict(_QUICK)},
    ),
    Example("arK", arK, load_arK, f"{_POSTERIORDB}: AR(5) time series", options={"nuts": dict(_QUICK)}),
    Example("gp_regr", gp_regr, load_gp_regr, f"{_POSTERIORDB}: GP regression, function integrated out", options={"nuts": dict(_QUICK)}),
    Example(
        "gp_pois_regr", gp_pois_regr, load_gp_pois_regr,
        f"{_POSTERIORDB}: GP Poisson regression, latent function sampled (float64 needed)",
        # the reference was drawn with Stan's adapt_delta 0.99
        options={"nuts": {**_QUICK, "target_accept": 0.99}, "hmc": {**_QUICK, "target_accept": 0.99}},
    ),
]
