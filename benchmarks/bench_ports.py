"""Ported NumPyro examples: ppgen's NUTS on the ports against raw NumPyro's NUTS on the originals.

The programs and simulated data are those of ``tests/test_ports.py`` (NumPyro's baseball,
ucbadmit, stochastic volatility, funnel, AR(2) and MACE annotation examples, ported by
replacing ``numpyro.`` with ``ppgen.``). Each run: 2 chains (vectorised on both sides),
500 warmup + 1000 draws, seed = repeat index; ESS/s = min bulk ESS over the compared sites
(ArviZ) ÷ wall time of the whole call, compilation included.

Raw NumPyro runs first in the process (a new ``MCMC`` per run, as its documentation shows,
target_accept 0.9 like ppgen), before ppgen turns on JAX's persistent compilation cache; ppgen
then runs in a fresh cache directory, so its first repeat is a true cold start. For the
programs that compute sizes from their data (ucbadmit: ``len(np.unique(dept))``; MACE:
``int(np.max(positions)) + 1``), ppgen's first run in a process also pays the failed
compilation and the probe that finds which arguments to bind as values; that probe
(``_mcmc.find_concrete``) is timed on its own.

Usage: python benchmarks/bench_ports.py [--repeats 3] [--models baseball,glmm,...]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

CACHE = os.environ.get("PPGEN_BENCH_CACHE") or tempfile.mkdtemp(prefix="ppgen-bench-cache-")
os.environ["PPGEN_BENCH_CACHE"] = os.environ["PPGEN_CACHE_DIR"] = CACHE

NUM_WARMUP, NUM_SAMPLES, NUM_CHAINS = 500, 1000, 2


def load_ports():
    path = Path(__file__).resolve().parent.parent / "tests" / "test_ports.py"
    spec = importlib.util.spec_from_file_location("ports", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cases(ports) -> dict:
    """name -> (ppgen program, NumPyro program, data, quantities to compare or None)."""
    rng = np.random.default_rng(0)
    at_bats = rng.integers(15, 90, size=9)
    baseball = (at_bats, rng.binomial(at_bats, rng.beta(3, 9, size=9)))
    rng = np.random.default_rng(1)
    dept, male = np.repeat(np.arange(5), 2), np.tile([1, 0], 5)
    applications = rng.integers(30, 400, size=10)
    logits = rng.normal(-0.3, 1.0, 5)[dept] + rng.normal(0.0, 0.3, 5)[dept] * male
    glmm = (dept, male, applications, rng.binomial(applications, 1 / (1 + np.exp(-logits))))
    rng = np.random.default_rng(2)
    returns = rng.standard_t(5, 24) * np.exp(np.cumsum(rng.normal(0.0, 0.1, 24)) - 3.5)
    rng = np.random.default_rng(3)
    y = np.zeros(16)
    for t in range(2, len(y)):
        y[t] = 0.3 + 0.6 * y[t - 1] - 0.2 * y[t - 2] + rng.normal(0.0, 0.5)
    rng = np.random.default_rng(4)
    positions = np.array([0, 0, 1, 2, 3])
    true_class = rng.integers(0, 3, 25)
    spams = rng.random((25, 5)) < np.array([0.1, 0.15, 0.3, 0.5])[positions]
    annotations = np.where(spams, rng.integers(0, 3, (25, 5)), true_class[:, None])
    return {
        "baseball": (ports.partially_pooled_with_logit, ports.numpyro_partially_pooled_with_logit, baseball, None),
        "glmm": (ports.glmm, ports.numpyro_glmm, glmm, None),
        "stochastic_volatility": (ports.stochastic_volatility, ports.numpyro_stochastic_volatility, (returns,), None),
        "funnel": (ports.funnel, ports.numpyro_reparam_funnel, (), ports.standardised_funnel),
        "ar2": (ports.ar2_for_loop, ports.numpyro_ar2_for_loop, (y,), None),
        "mace": (ports.mace, ports.numpyro_mace, (positions, annotations), None),
    }


def min_ess(grouped: dict) -> float:
    import arviz as az

    ess = az.ess(az.convert_to_dataset(grouped), method="bulk")
    return float(min(np.nanmin(np.asarray(ess[k])) for k in grouped))


def run_numpyro(original, data, quantities, seed):
    import jax
    from numpyro.infer import MCMC, NUTS

    start = time.perf_counter()
    mcmc = MCMC(NUTS(original, target_accept_prob=0.9), num_warmup=NUM_WARMUP, num_samples=NUM_SAMPLES,
                num_chains=NUM_CHAINS, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), *data)
    grouped = {k: np.asarray(v, dtype=float) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    seconds = time.perf_counter() - start
    grouped = quantities(grouped) if quantities else {k: v for k, v in grouped.items() if not k.endswith("_decentered")}
    return {"seconds": seconds, "ess": min_ess(grouped), "sites": set(grouped)}


def run_ppgen(port, data, quantities, sites, seed):
    import ppgen

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ppgen.infer(port, *data, engine="nuts", num_warmup=NUM_WARMUP, num_samples=NUM_SAMPLES,
                             num_chains=NUM_CHAINS, progress=False, seed=seed)
    seconds = time.perf_counter() - start
    grouped = {k: np.asarray(v, dtype=float).reshape((NUM_CHAINS, -1) + v.shape[1:]) for k, v in result.samples.items()}
    grouped = quantities(grouped) if quantities else {k: v for k, v in grouped.items() if k in sites}
    return {"seconds": seconds, "ess": min_ess(grouped), "concrete": result.diagnostics["concrete_arguments"],
            "divergences": result.diagnostics["divergences"]}


def probe_seconds(port, data) -> float:
    from ppgen.inference import _mcmc

    bound = _mcmc.bind_program(port, data, {})
    start = time.perf_counter()
    _mcmc.find_concrete(bound)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="baseball,glmm,stochastic_volatility,funnel,ar2,mace")
    options = parser.parse_args()
    ports = load_ports()
    chosen = {name: case for name, case in cases(ports).items() if name in options.models.split(",")}
    numpyro_runs = {
        name: [run_numpyro(original, data, quantities, seed) for seed in range(options.repeats)]
        for name, (_, original, data, quantities) in chosen.items()
    }
    print("| model | raw NumPyro: s / ESS/s (median) | ppgen cold: s / ESS/s | ppgen warm: s / ESS/s (median) "
          "| ESS/s ratio ppgen ÷ NumPyro (median) | concrete arguments (probe s) | divergences ppgen |")
    print("|---|---|---|---|---|---|---|")
    for name, (port, _, data, quantities) in chosen.items():
        sites = numpyro_runs[name][0]["sites"]
        runs = [run_ppgen(port, data, quantities, sites, seed) for seed in range(options.repeats)]
        theirs = numpyro_runs[name]
        rate = lambda r: r["ess"] / r["seconds"]  # noqa: E731
        warm = runs[1:] or runs
        ratio = statistics.median(rate(r) for r in runs) / statistics.median(rate(r) for r in theirs)
        concrete = runs[0]["concrete"]
        probe = f" ({probe_seconds(port, data):.2f} s)" if concrete else ""
        print(
            f"| {name} | {statistics.median(r['seconds'] for r in theirs):.1f} / {statistics.median(rate(r) for r in theirs):.0f} "
            f"| {runs[0]['seconds']:.1f} / {rate(runs[0]):.0f} "
            f"| {statistics.median(r['seconds'] for r in warm):.2f} / {statistics.median(rate(r) for r in warm):.0f} "
            f"| **{ratio:.2g}** | {', '.join(concrete) or '—'}{probe} | {[r['divergences'] for r in runs]} |",
            flush=True,
        )
    print(f"\n(cache dir {CACHE}; repeats {options.repeats})")


if __name__ == "__main__":
    main()
