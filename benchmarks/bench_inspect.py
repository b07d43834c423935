"""Tracing a program into its ModelStructure (``ppgen.inspect``) vs one plain Pyro trace of it.

``ppgen.inspect`` runs the program once with provenance tracking (every tensor operation records
which sites and arguments it was computed from), checks data and parameters, and classifies
sites and arguments; the anchor is ``pyro.poutine.trace(model).get_trace(...)`` with Pyro's
validation on, the cheapest run of the same program that records its sites. Programs: the
2,000-site Gaussian HMM (K = 10, T = 1000, 100 sequences) and the 2-D Gaussian mixture (N = 1000).

    .venv/bin/python benchmarks/bench_inspect.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch
from pyro import poutine

import ppgen
from ppgen.backend import to_backend, torch_precision, use_backend
from ppgen.models.mixtures import gaussian_mixture, simulate_gaussian_mixture
from ppgen.models.sequences import hmm_gaussian, simulate_hmm_gaussian


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_trace(model, data):
    with use_backend("pyro"), torch_precision(), pyro.get_param_store().scope(), torch.no_grad():
        return poutine.trace(model).get_trace(**to_backend(data, "pyro"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    torch.set_num_threads(1)
    programs = {
        "HMM, 2,000 sites": (hmm_gaussian, simulate_hmm_gaussian(num_sequences=100, num_steps=1000, K=10, seed=0).data),
        "GMM, N = 1000": (gaussian_mixture, simulate_gaussian_mixture(num_data=1000).data),
    }
    print(f"median of {options.repeats}, 1 torch thread")
    for name, (model, data) in programs.items():
        anchor = median_seconds(lambda: plain_trace(model, data), options.repeats)
        ours = median_seconds(lambda: ppgen.inspect(model, **data), options.repeats)
        print(f"  {name:<18} pyro trace {anchor * 1e3:8.1f} ms   ppgen.inspect {ours * 1e3:8.1f} ms   ratio {ours / anchor:5.2f}")


if __name__ == "__main__":
    main()
