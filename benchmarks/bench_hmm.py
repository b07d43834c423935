"""HMM log-likelihood by enumeration vs a hand-written batched torch forward algorithm.

K = 10 states, T = 1000 steps, 100 sequences, Gaussian emissions, float64. ppgen runs the
catalogue program ``hmm_gaussian`` (sequential sites in ``ppgen.markov``) through the
``enumerate`` engine (log-likelihood only: ``marginals=False, map_estimate=False``); the anchors
get the emission log-densities and run the forward recursion on tensors directly:

* ``logsumexp``: α_t = logsumexp_j(α_{t-1}(j) + log A(j, k)) + log E_t(k) (the anchor of the issue);
* ``scaled``: the scaled-probability forward pass (α_t = (α_{t-1} A) ⊙ E_t / c_t).

Also reported: ``ppgen.score`` end to end, which gets the program's ``ModelStructure``
(``ppgen.inspect``) and then runs the engine: on a first call (the structure cache cleared
before each repeat: the program is traced) and on later calls (the structure of the same
program and argument shapes reused; the data re-checked).

    .venv/bin/python benchmarks/bench_hmm.py [--quick] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import ppgen
from ppgen.inference.enumerate import Enumerate
from ppgen.models.sequences import _sticky, hmm_gaussian, simulate_hmm_gaussian
from ppgen.structure import structure_cache


def forward_logsumexp(y: torch.Tensor, initial, transition, locs, scales) -> torch.Tensor:
    log_emission = torch.distributions.Normal(locs, scales).log_prob(y.unsqueeze(-1))  # (B, T, K)
    log_transition = transition.log()
    alpha = initial.log() + log_emission[:, 0]
    for t in range(1, y.shape[1]):
        alpha = torch.logsumexp(alpha.unsqueeze(-1) + log_transition, -2) + log_emission[:, t]
    return torch.logsumexp(alpha, -1).sum()


def forward_scaled(y: torch.Tensor, initial, transition, locs, scales) -> torch.Tensor:
    log_emission = torch.distributions.Normal(locs, scales).log_prob(y.unsqueeze(-1))
    shift = log_emission.max(-1, keepdim=True).values
    emission = (log_emission - shift).exp()
    alpha = initial * emission[:, 0]
    scale = alpha.sum(-1, keepdim=True)
    log_likelihood = scale.log().sum()
    alpha = alpha / scale
    for t in range(1, y.shape[1]):
        alpha = (alpha @ transition) * emission[:, t]
        scale = alpha.sum(-1, keepdim=True)
        log_likelihood = log_likelihood + scale.log().sum()
        alpha = alpha / scale
    return log_likelihood + shift.sum()


def interleaved_medians(rows: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Median seconds and the value of each row, the rows timed in turn within each repeat so
    that a shared machine's changing load falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in rows}
    values: dict[str, float] = {}
    for _ in range(repeats):
        for name, fn in rows.items():
            start = time.perf_counter()
            values[name] = float(fn())
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), values[name]) for name in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="T = 200, 20 sequences")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    num_sequences, T, K = (20, 200, 10) if options.quick else (100, 1000, 10)
    data = simulate_hmm_gaussian(num_sequences=num_sequences, num_steps=T, K=K, seed=0).data
    torch.set_default_dtype(torch.float64)
    y = torch.as_tensor(data["y"])
    initial, transition = torch.full((K,), 1.0 / K), torch.as_tensor(_sticky(K))
    locs, scales = torch.linspace(-1.0, 1.0, K), torch.ones(K)
    engine = Enumerate(marginals=False, map_estimate=False)

    def score_first_call() -> float:
        structure_cache().clear()
        return ppgen.score(hmm_gaussian, engine=engine, **data).value

    rows = {
        "anchor: logsumexp forward": lambda: forward_logsumexp(y, initial, transition, locs, scales),
        "anchor: scaled forward": lambda: forward_scaled(y, initial, transition, locs, scales),
        "ppgen enumerate (engine run)": lambda: engine.run(hmm_gaussian, **data).log_evidence.value,
        "ppgen.score (later calls)": lambda: ppgen.score(hmm_gaussian, engine=engine, **data).value,
    }
    first_calls = {"ppgen.score (first call)": score_first_call}
    for fn in list(rows.values()) + list(first_calls.values()):
        fn()  # warm-up
    # the engine and later calls of ppgen.score against the anchors, interleaved; then first
    # calls, whose seconds of tracing would otherwise leave every row after them running on a
    # cold cache and a grown heap
    results = interleaved_medians(rows, options.repeats)
    results.update(interleaved_medians(first_calls, options.repeats))
    reference, reference_value = results["anchor: logsumexp forward"]
    print(f"HMM K={K}, T={T}, {num_sequences} sequences, float64, torch threads {torch.get_num_threads()}; median of {options.repeats}")
    for name, (seconds, value) in results.items():
        print(f"  {name:<32} {seconds * 1e3:9.1f} ms   ratio {seconds / reference:5.2f}   log p(x) {value:.6f}")
    for name in ("ppgen enumerate (engine run)", "ppgen.score (later calls)", "ppgen.score (first call)"):
        assert np.isclose(results[name][1], reference_value, rtol=1e-9), name


if __name__ == "__main__":
    main()
