"""GMM EM: ppgen's ``em`` engine vs scikit-learn ``GaussianMixture`` from the same initialisation.

N = 1e6 points, D = 10, K = 8 components, full covariances, 100 iterations (``tol=0`` on both
sides), float64. Both start from the same weights, means (K data points) and identity
covariances; the final mean log-likelihoods must agree (scikit-learn's ``score(X)`` against
ppgen's last ``traces["log_likelihood"]`` / N). ppgen is timed end to end through
``ppgen.learn`` (tracing the program, recognising the closed-form M-step, the iterations).

    .venv/bin/python benchmarks/bench_em.py [--quick] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

import ppgen
from ppgen.models.mixtures import gaussian_mixture


def simulate(num_data: int, dim: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, (k, dim))
    scales = rng.uniform(0.5, 1.5, (k, dim))
    z = rng.integers(k, size=num_data)
    return centres[z] + scales[z] * rng.normal(size=(num_data, dim))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1e5, 20 iterations")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch and BLAS threads (default: library defaults)")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(options.threads)
    num_data, dim, k, steps = (100_000, 10, 8, 20) if options.quick else (1_000_000, 10, 8, 100)
    x = simulate(num_data, dim, k)
    rng = np.random.default_rng(1)
    weights, means = np.full(k, 1.0 / k), x[rng.choice(num_data, k, replace=False)]
    identity = np.tile(np.eye(dim), (k, 1, 1))
    init = {"weights": weights, "locs": means, "scale_trils": identity}

    def sklearn_fit():
        from sklearn.mixture import GaussianMixture

        model = GaussianMixture(
            k, covariance_type="full", max_iter=steps, tol=0.0, reg_covar=1e-6,
            weights_init=weights, means_init=means, precisions_init=identity,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x)
        return model.score(x), model

    def ppgen_fit():
        result = ppgen.learn(gaussian_mixture, x, K=k, engine="em", num_steps=steps, tol=0.0, init_params=init, num_restarts=1)
        return result.traces["log_likelihood"][-1] / num_data, result

    times: dict[str, list[float]] = {"scikit-learn": [], "ppgen em": []}
    values: dict[str, float] = {}
    fits = {}
    for _ in range(options.repeats):
        for name, fit in (("scikit-learn", sklearn_fit), ("ppgen em", ppgen_fit)):
            start = time.perf_counter()
            values[name], fits[name] = fit()
            times[name].append(time.perf_counter() - start)
            print(f"  ({name}: {times[name][-1]:.2f} s)", flush=True)
    reference = statistics.median(times["scikit-learn"])
    print(f"GMM EM, N={num_data}, D={dim}, K={k}, full covariances, {steps} iterations, float64, "
          f"torch threads {torch.get_num_threads()}; median of {options.repeats}")
    for name, samples in times.items():
        seconds = statistics.median(samples)
        print(f"  {name:<14} {seconds:8.2f} s   ratio {seconds / reference:5.2f}   mean log-likelihood {values[name]:.10f}"
              f"   (runs: {', '.join(f'{t:.2f}' for t in samples)})")
    gap = abs(values["ppgen em"] - values["scikit-learn"]) / abs(values["scikit-learn"])
    means_gap = np.abs(fits["ppgen em"].params["locs"] - fits["scikit-learn"].means_).max()
    print(f"  relative log-likelihood gap {gap:.2e}; largest mean difference {means_gap:.2e}")


if __name__ == "__main__":
    main()
