"""What float64 costs: ppgen's NUTS in float32 (the default before issue 10) and float64 (the
default since), on the seven posteriordb posteriors of the catalogue.

Per posterior and precision: one cold run (tracing and compiling included; a fresh
compilation-cache directory, so it is a true cold start), then ``--repeats`` warm runs in the
same process (the compiled sampler reused), seeds 0, 1, .... Each run: 4 chains, 500 warmup +
1000 draws, the options of ``tests/models/test_posteriordb.py`` (dense mass for kidiq,
target_accept 0.99 for the GP Poisson regression, as its reference). Reported: ESS/s = min bulk
ESS over parameters (ArviZ) ÷ wall time of the whole call, the median over warm runs; the cold
run's seconds; divergences; and the largest |z| of a posterior mean against the posteriordb
reference (z = (mean − reference) / √(sd²/ESS + MCSE²)), which says whether the answer is right.

Usage: python benchmarks/bench_precision.py [--repeats 2] [--models gp_pois_regr,arK]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import numpy as np

CACHE = os.environ.get("PPGEN_BENCH_CACHE") or tempfile.mkdtemp(prefix="ppgen-bench-cache-")
os.environ["PPGEN_CACHE_DIR"] = CACHE

RUN = dict(num_warmup=500, num_samples=1000, num_chains=4, progress=False)
OPTIONS = {"kidscore_momiq": {"dense_mass": True}, "gp_pois_regr": {"target_accept": 0.99}}


def max_abs_z(result, name: str) -> float:
    from ppgen.models import posteriordb

    worst = 0.0
    for site, ref in posteriordb.reference_posterior(name).items():
        draws = np.asarray(result.samples[site], dtype=float)
        ess = np.asarray(result.diagnostics["ess_bulk"][site])
        stderr = np.hypot(ref["sd"] / np.sqrt(ess), ref["mcse"])
        worst = max(worst, float(np.max(np.abs((draws.mean(0) - ref["mean"]) / stderr))))
    return worst


def run(name: str, precision: str, seed: int) -> dict:
    import ppgen
    from ppgen.models import posteriordb

    model, load = posteriordb.PROGRAMS[name]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ppgen.infer(model, engine="nuts", precision=precision, seed=seed, **RUN, **OPTIONS.get(name, {}), **load().data)
    seconds = time.perf_counter() - start
    ess = min(float(np.min(v)) for k, v in result.diagnostics["ess_bulk"].items() if k in posteriordb.reference_posterior(name))
    return {
        "seconds": seconds, "ess_per_second": ess / seconds, "divergences": result.diagnostics["divergences"],
        "max_r_hat": result.diagnostics["max_r_hat"], "max_z": max_abs_z(result, name),
    }


def main() -> None:
    from ppgen.models import posteriordb

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default=",".join(posteriordb.POSTERIORS))
    options = parser.parse_args()
    print("| posterior | precision | cold s | warm ESS/s (median) | divergences (cold, warm…) | max R-hat | max abs z vs reference |")
    print("|---|---|---|---|---|---|---|")
    for name in options.models.split(","):
        for precision in ("float32", "float64"):
            runs = [run(name, precision, seed) for seed in range(options.repeats + 1)]
            warm = runs[1:] or runs
            print(
                f"| {name} | {precision} | {runs[0]['seconds']:.1f} | "
                f"{statistics.median(r['ess_per_second'] for r in warm):.0f} | "
                f"{', '.join(str(r['divergences']) for r in runs)} | {max(r['max_r_hat'] for r in runs):.3f} | "
                f"{max(r['max_z'] for r in runs):.1f} |",
                flush=True,
            )
    print(f"\n(cache dir {CACHE}; {options.repeats} warm repeats)")


if __name__ == "__main__":
    main()
