"""GMM marginal log-likelihood by enumeration vs a hand-written torch ``logsumexp``.

N = 1e5 points, D = 2, K = 8 components with full covariances, float64. ppgen runs the catalogue
program ``gaussian_mixture`` through the ``enumerate`` engine at given parameters (log p(x)
only: ``marginals=False, map_estimate=False``); the anchor evaluates
Σ_i logsumexp_k(log w_k + log N(x_i | μ_k, Σ_k)) with ``torch.distributions`` directly.
Also reported: ``ppgen.score`` end to end (tracing the program into its structure first).

    .venv/bin/python benchmarks/bench_enumerate.py [--quick] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import ppgen
from ppgen.inference.enumerate import Enumerate
from ppgen.models.mixtures import gaussian_mixture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1e4")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    num_data, dim, k = (10_000 if options.quick else 100_000), 2, 8
    rng = np.random.default_rng(0)
    locs = rng.normal(0.0, 3.0, (k, dim))
    x = locs[rng.integers(k, size=num_data)] + rng.normal(size=(num_data, dim))
    tril = np.tile(np.linalg.cholesky(np.array([[1.0, 0.3], [0.3, 0.8]])), (k, 1, 1))
    weights = rng.dirichlet(np.ones(k))
    params = {"weights": weights, "locs": locs, "scale_trils": tril}

    torch.set_default_dtype(torch.float64)
    x_t = torch.as_tensor(x)
    w_t, locs_t, tril_t = (torch.as_tensor(v) for v in (weights, locs, tril))

    def anchor() -> float:
        log_joint = w_t.log() + torch.distributions.MultivariateNormal(locs_t, scale_tril=tril_t).log_prob(x_t.unsqueeze(-2))
        return float(torch.logsumexp(log_joint, -1).sum())

    engine = Enumerate(params=params, marginals=False, map_estimate=False)
    rows = {
        "anchor: torch logsumexp": anchor,
        "ppgen enumerate (engine run)": lambda: engine.run(gaussian_mixture, x, K=k).log_evidence.value,
        "ppgen.score (inspect + run)": lambda: ppgen.score(gaussian_mixture, x, K=k, engine=engine).value,
    }
    results = {}
    for name, fn in rows.items():
        fn()
        times = []
        for _ in range(options.repeats):
            start = time.perf_counter()
            value = fn()
            times.append(time.perf_counter() - start)
        results[name] = (statistics.median(times), value)
    reference = results["anchor: torch logsumexp"][0]
    print(f"GMM log p(x), N={num_data}, D={dim}, K={k}, float64, torch threads {torch.get_num_threads()}; median of {options.repeats}")
    for name, (seconds, value) in results.items():
        print(f"  {name:<30} {seconds * 1e3:8.1f} ms   ratio {seconds / reference:5.2f}   log p(x) {value:.6f}")
    assert np.isclose(results["ppgen enumerate (engine run)"][1], results["anchor: torch logsumexp"][1], rtol=1e-10)


if __name__ == "__main__":
    main()
