"""NUTS with 2 chains on 2 cores: ``chain_method="parallel"`` (one chain per XLA device) against
``"sequential"`` (one after another) and ``"vectorized"``, at equal ESS.

Model: Bayesian logistic regression, N = 2000 points, D = 8 features (synthetic, seeded). Each
method runs in its own fresh Python process (the parallel one must ask XLA for its devices
before JAX starts), first one untimed run to compile, then ``--repeats`` timed runs with other
seeds. Reported: wall time of the sampling, the smallest bulk ESS over the coefficients, and
seconds per 1000 effective draws; the ratio parallel / sequential of that last number is the
speed-up at equal ESS (issue 16's target: <= 0.6).

    .venv/bin/python benchmarks/bench_parallel_chains.py [--repeats 3] [--num-samples 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, sys, time
import numpy as np
import ppgen
from ppgen import dist, plate, sample
from ppgen.inference.hmc import NUTS

method, repeats, num_samples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def logistic(features, labels=None):
    weights = sample("weights", dist.Normal(0.0, 1.0).expand([features.shape[1]]).to_event(1))
    with plate("point", features.shape[0]):
        sample("labels", dist.Bernoulli(logits=features @ weights), obs=labels)

rng = np.random.default_rng(0)
features = rng.normal(size=(2000, 8))
labels = (rng.random(2000) < 1 / (1 + np.exp(-features @ rng.normal(size=8)))).astype(float)

def run(seed):
    engine = NUTS(num_chains=2, num_warmup=num_samples, num_samples=num_samples, chain_method=method, progress=False, seed=seed)
    start = time.perf_counter()
    result = ppgen.infer(logistic, features, labels, engine=engine)
    return time.perf_counter() - start, float(np.min(result.diagnostics["ess_bulk"]["weights"]))

run(0)  # compile
import jax
rows = [run(seed) for seed in range(1, repeats + 1)]
print(json.dumps({"method": method, "devices": jax.local_device_count(), "runs": rows}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=1000, help="warmup and kept draws per chain")
    options = parser.parse_args()
    per_effective = {}
    for method in ("sequential", "parallel", "vectorized"):
        done = subprocess.run([sys.executable, "-c", CHILD, method, str(options.repeats), str(options.num_samples)],
                              capture_output=True, text=True, check=True)
        out = json.loads(done.stdout.strip().splitlines()[-1])
        seconds = sorted(t for t, _ in out["runs"])
        ess = [e for _, e in out["runs"]]
        median_seconds, median_ess = seconds[len(seconds) // 2], sorted(ess)[len(ess) // 2]
        per_effective[method] = sum(t / e for t, e in out["runs"]) / len(out["runs"]) * 1000
        print(f"{method:>10}: {out['devices']} XLA device(s), median {median_seconds:.2f} s, median min ESS {median_ess:.0f}, "
              f"{per_effective[method]:.2f} s per 1000 effective draws")
    print(f"parallel / sequential at equal ESS: {per_effective['parallel'] / per_effective['sequential']:.2f} (target <= 0.6)")
    print(f"parallel / vectorized at equal ESS: {per_effective['parallel'] / per_effective['vectorized']:.2f}")


if __name__ == "__main__":
    main()
