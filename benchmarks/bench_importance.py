"""Importance sampling on the Beta–Bernoulli coin vs a hand-written vectorised torch estimator.

10,000 particles from the prior, 20 tosses, float64. The anchor draws ρ ~ Beta(a, b) in one
call and returns log p̂(x) = logsumexp(log w) − log S with its delta-method standard error and
the effective sample size; ppgen's ``importance`` engine (one vectorised pass over a particle
plate) returns the same plus the PSIS Pareto k̂ (ArviZ) and 10,000 resampled posterior draws.
Also reported: ``ppgen.score`` end to end, which traces the program into its structure first.

    .venv/bin/python benchmarks/bench_importance.py [--quick] [--repeats 7] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import ppgen
from ppgen.inference.importance import Importance
from ppgen.models.basics import coin, coin_log_evidence, simulate_coin


def anchor(x: torch.Tensor, num_samples: int, a: float = 2.0, b: float = 2.0) -> tuple[float, float, float]:
    rho = torch.distributions.Beta(a, b).sample((num_samples,))
    log_w = torch.distributions.Bernoulli(rho.unsqueeze(-1)).log_prob(x).sum(-1)
    top = log_w.max()
    w = (log_w - top).exp()
    mean = w.mean()
    log_evidence = float(top + mean.log())
    stderr = float(w.std() / (math.sqrt(num_samples) * mean))
    ess = float(w.sum() ** 2 / (w**2).sum())
    return log_evidence, stderr, ess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 particles")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    num_samples = 1_000 if options.quick else 10_000
    x = simulate_coin(num_tosses=20, seed=0).data["x"]
    torch.set_default_dtype(torch.float64)
    x_t = torch.as_tensor(x)
    engine = Importance(num_samples=num_samples, seed=0)
    rows = {
        "anchor: hand-written torch": lambda: anchor(x_t, num_samples)[:2],
        "ppgen importance (engine run)": lambda: tuple(vars(engine.run(coin, x).log_evidence).values())[:2],
        "ppgen.score (inspect + run)": lambda: tuple(vars(ppgen.score(coin, x, engine=engine)).values())[:2],
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
    reference = results["anchor: hand-written torch"][0]
    print(f"Importance sampling, Beta–Bernoulli coin, {num_samples} particles, float64, torch threads "
          f"{torch.get_num_threads()}; median of {options.repeats}; exact log p(x) = {coin_log_evidence(x):.4f}")
    for name, (seconds, (value, stderr)) in results.items():
        print(f"  {name:<30} {seconds * 1e3:8.2f} ms   ratio {seconds / reference:5.2f}   log p(x) {value:.4f} ± {stderr:.4f}")


if __name__ == "__main__":
    main()
