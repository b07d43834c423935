"""Memory and time of minibatch learning as the data grow: stochastic (online) EM on a 1-D
two-component Gaussian mixture, N = 1e5, 1e6, 1e7 points (issue 16, part 2).

Each N runs in a fresh Python process. The data are generated in chunks of 1e6 into a ``.npy``
file in a temporary directory and opened memory-mapped (``mmap_mode="c"``, copy-on-write, so
ppgen uses the pages in place instead of copying them); nothing holds all N points in the
process's own heap. The engine is ``em`` with ``subsample_size=B``, ``--steps`` minibatch steps,
then its final pass computing log p(x; θ̂) over all N data in chunks of max(B, 2^16). Reported per N:

* seconds per step (the steps' time / steps: flat in N is the goal),
* seconds of one full pass over the data (the final streamed log-likelihood),
  and its ratio between N = 1e7 and 1e6 (target ≈ 10: linear in N),
* peak resident memory above the baseline after the data file is opened (``resource``:
  includes the data pages the process touched, which are file-backed, shared and reclaimable:
  the final pass reads every page, so up to the data's size),
* peak anonymous resident memory above its baseline (``RssAnon`` of ``/proc/self/status``
  sampled every millisecond: the process's own heap and tensors, without the data pages;
  Linux only), and the peak of Python-level allocations during the run (``tracemalloc``;
  torch's tensor memory is not traced there).

``ppgen.learn`` reads the program's structure from traces on slices of the data
(:mod:`ppgen.sliced_structure`) and the epoch's order a minibatch at a time
(:mod:`ppgen.inference._epoch_order`), so nothing of size N is built.

    .venv/bin/python benchmarks/bench_memory.py [--sizes 1e5 1e6 1e7] [--batch 1000] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, os, resource, sys, tempfile, threading, time, tracemalloc
import numpy as np
import torch
import ppgen
from ppgen import dist, param, plate, sample

size, batch, steps = int(float(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)

def two_groups(y, K=2):
    share = param("share", torch.ones(K) / K, constraint=dist.constraints.simplex)
    centre = param("centre", torch.linspace(-1.0, 1.0, K))
    width = param("width", torch.ones(K), constraint=dist.constraints.positive)
    with plate("readings", y.shape[0]):
        group = sample("group", dist.Categorical(share))
        sample("y", dist.Normal(centre[group], width[group]), obs=y)

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def anonymous_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:")) / 1024

class AnonymousPeak(threading.Thread):
    # the process's anonymous resident memory (heap, tensors; not the file-backed data
    # pages), sampled every millisecond; peak: its largest value
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = anonymous_mb(), True
    def run(self):
        while self.running:
            self.peak = max(self.peak, anonymous_mb())
            time.sleep(0.001)

with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, "y.npy")
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(size,))
    rng = np.random.default_rng(0)
    for lo in range(0, size, 10**6):
        hi = min(lo + 10**6, size)
        first = rng.random(hi - lo) < 0.4
        data[lo:hi] = np.where(first, rng.normal(-2.0, 0.6, hi - lo), rng.normal(1.0, 1.1, hi - lo))
    data.flush()
    del data
    y = np.load(path, mmap_mode="c")
    baseline, anonymous_baseline = rss_mb(), anonymous_mb()
    sampler = AnonymousPeak()
    sampler.start()
    tracemalloc.start()
    start = time.perf_counter()
    result = ppgen.learn(two_groups, y, engine="em", subsample_size=batch, num_steps=steps, num_restarts=1)
    total = time.perf_counter() - start
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sampler.running = False
    sampler.join()
    print(json.dumps({
        "N": size, "seconds_per_step": result.diagnostics["training_seconds"] / steps,
        "full_pass_seconds": result.diagnostics["full_pass_seconds"], "total_seconds": total,
        "peak_rss_above_baseline_mb": rss_mb() - baseline,
        "peak_anonymous_above_baseline_mb": sampler.peak - anonymous_baseline, "python_peak_mb": python_peak / 2**20,
        "data_mb": size * 8 / 2**20, "centre": sorted(result.params["centre"].tolist()),
    }))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1e5", "1e6", "1e7"])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    options = parser.parse_args()
    rows = []
    for size in options.sizes:
        done = subprocess.run([sys.executable, "-c", CHILD, size, str(options.batch), str(options.steps)], capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"stochastic EM, 1-D mixture, B = {options.batch}, {options.steps} steps")
    print(f"{'N':>10} {'s/step':>9} {'full pass s':>12} {'peak RSS+ MB':>13} {'anon peak+ MB':>14} {'python peak MB':>15} {'data MB':>8}")
    for row in rows:
        print(f"{row['N']:>10} {row['seconds_per_step']:>9.4f} {row['full_pass_seconds']:>12.2f} "
              f"{row['peak_rss_above_baseline_mb']:>13.1f} {row['peak_anonymous_above_baseline_mb']:>14.1f} "
              f"{row['python_peak_mb']:>15.2f} {row['data_mb']:>8.1f}")
    by_size = {row["N"]: row for row in rows}
    for small, large in zip(sorted(by_size), sorted(by_size)[1:]):
        a, b = by_size[small], by_size[large]
        print(f"N {large:g} / {small:g}: full pass x{b['full_pass_seconds'] / a['full_pass_seconds']:.1f} "
              f"(data x{large / small:g}), time per step x{b['seconds_per_step'] / a['seconds_per_step']:.2f}")


if __name__ == "__main__":
    main()
