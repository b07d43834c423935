"""MCMC benchmark: ppgen's NUTS against raw NumPyro NUTS and raw Pyro NUTS, side by side.

Models: eight schools non-centred (posteriordb data) and Bayesian logistic regression on
scikit-learn's breast-cancer data (569 × 30, standardised; α ~ N(0, 5), β_j ~ N(0, 1)).
Each run: 2 chains, 500 warmup + 1000 draws, seed = repeat index. ESS/s = min bulk ESS over
parameters (ArviZ) ÷ wall time of the whole call, compilation included.

ppgen runs with its defaults otherwise (target_accept 0.9, automatic non-centring), in a fresh
compilation-cache directory so that its first repeat is a true cold start; later repeats show
the in-process reuse. Raw NumPyro is used as its documentation shows (a new ``MCMC`` per run,
``num_chains=2`` which runs sequentially on one CPU device, target_accept 0.8). Raw Pyro runs
one thread (faster than two for these small models on a shared machine).

Time to first draw is ppgen's ``diagnostics["seconds_to_first_draw"]`` (from the engine's
``run`` to the end of the first compiled chunk of 50 iterations): cold, warm in the same
process, and in a new process with a warm cache (there JAX and NumPyro are imported first,
and that import time is reported beside it).

Usage: python benchmarks/bench_mcmc.py [--repeats 3] [--pyro-repeats 1] [--skip-pyro]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# A fresh cache for this run (a child process started below inherits it).
CACHE = os.environ.get("PPGEN_BENCH_CACHE") or tempfile.mkdtemp(prefix="ppgen-bench-cache-")
os.environ["PPGEN_BENCH_CACHE"] = os.environ["PPGEN_CACHE_DIR"] = CACHE

NUM_WARMUP, NUM_SAMPLES, NUM_CHAINS = 500, 1000, 2


# ----------------------------------------------------------------------------- the programs


def logistic_regression(X, y=None):
    """ppgen program: α ~ N(0, 5); β ~ N(0, I); y_i ~ Bernoulli(logit⁻¹(α + x_iᵀβ))."""
    from ppgen import dist, plate, sample

    alpha = sample("alpha", dist.Normal(0.0, 5.0))
    beta = sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with plate("N", X.shape[0]):
        sample("y", dist.Bernoulli(logits=alpha + X @ beta), obs=y)


def breast_cancer():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    return {"X": X, "y": y.astype(float)}


def eight_schools():
    from ppgen.models.posteriordb import load_eight_schools

    return load_eight_schools().data


def numpyro_model(name):
    import numpyro
    import numpyro.distributions as nd

    if name == "eight_schools":

        def model(y, sigma, J):
            mu = numpyro.sample("mu", nd.Normal(0.0, 5.0))
            tau = numpyro.sample("tau", nd.HalfCauchy(5.0))
            with numpyro.plate("J", J):
                theta_trans = numpyro.sample("theta_trans", nd.Normal(0.0, 1.0))
                theta = numpyro.deterministic("theta", mu + tau * theta_trans)
                numpyro.sample("y", nd.Normal(theta, sigma), obs=y)

    else:

        def model(X, y):
            alpha = numpyro.sample("alpha", nd.Normal(0.0, 5.0))
            beta = numpyro.sample("beta", nd.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
            with numpyro.plate("N", X.shape[0]):
                numpyro.sample("y", nd.Bernoulli(logits=alpha + X @ beta), obs=y)

    return model


def pyro_model(name):
    import pyro
    import pyro.distributions as pd

    if name == "eight_schools":

        def model(y, sigma, J):
            mu = pyro.sample("mu", pd.Normal(0.0, 5.0))
            tau = pyro.sample("tau", pd.HalfCauchy(5.0))
            with pyro.plate("J", J):
                theta_trans = pyro.sample("theta_trans", pd.Normal(0.0, 1.0))
                theta = pyro.deterministic("theta", mu + tau * theta_trans)
                pyro.sample("y", pd.Normal(theta, sigma), obs=y)

    else:

        def model(X, y):
            alpha = pyro.sample("alpha", pd.Normal(0.0, 5.0))
            beta = pyro.sample("beta", pd.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
            with pyro.plate("N", X.shape[0]):
                pyro.sample("y", pd.Bernoulli(logits=alpha + X @ beta), obs=y)

    return model


# ----------------------------------------------------------------------------- runners


def min_ess(samples: dict, num_chains: int, skip=("theta_trans",)) -> float:
    import arviz as az

    grouped = {
        k: np.asarray(v).reshape((num_chains, -1) + np.shape(v)[1:]) for k, v in samples.items() if k not in skip
    }
    ess = az.ess(az.convert_to_dataset(grouped), method="bulk")
    return float(min(float(ess[k].min()) for k in grouped))


def run_ppgen(name, program, data, seed):
    import ppgen

    start = time.perf_counter()
    result = ppgen.infer(
        program, engine="nuts", num_warmup=NUM_WARMUP, num_samples=NUM_SAMPLES, num_chains=NUM_CHAINS,
        progress=False, seed=seed, **data,
    )
    seconds = time.perf_counter() - start
    ess = min_ess(result.samples, NUM_CHAINS)
    return {"seconds": seconds, "ess": ess, "first_draw": result.diagnostics["seconds_to_first_draw"],
            "divergences": result.diagnostics["divergences"]}


def run_numpyro(name, data, seed):
    import jax
    from numpyro.infer import MCMC, NUTS

    model = numpyro_model(name)
    arrays = {k: (jax.numpy.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in data.items()}
    start = time.perf_counter()
    mcmc = MCMC(NUTS(model), num_warmup=NUM_WARMUP, num_samples=NUM_SAMPLES, num_chains=NUM_CHAINS, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), **arrays)
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
    seconds = time.perf_counter() - start
    divergences = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    return {"seconds": seconds, "ess": min_ess(samples, NUM_CHAINS), "divergences": divergences}


def run_pyro(name, data, seed):
    import pyro
    import torch
    from pyro.infer import MCMC, NUTS

    torch.set_num_threads(1)
    model = pyro_model(name)
    tensors = {k: (torch.as_tensor(v, dtype=torch.float32) if isinstance(v, np.ndarray) else v) for k, v in data.items()}
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    chains = []
    for _ in range(NUM_CHAINS):  # Pyro's multi-chain MCMC forks processes; run chains in turn
        mcmc = MCMC(NUTS(model), num_samples=NUM_SAMPLES, warmup_steps=NUM_WARMUP, disable_progbar=True)
        mcmc.run(**tensors)
        chains.append({k: v.numpy() for k, v in mcmc.get_samples().items()})
    seconds = time.perf_counter() - start
    samples = {k: np.concatenate([c[k] for c in chains]) for k in chains[0]}
    return {"seconds": seconds, "ess": min_ess(samples, NUM_CHAINS)}


def first_draw_in_new_process(name):
    code = (
        "import json, sys, time; sys.path.insert(0, %r); import bench_mcmc as b, ppgen; "
        "t = time.perf_counter(); import jax, numpyro; imports = time.perf_counter() - t; "
        "data = b.eight_schools() if %r == 'eight_schools' else b.breast_cancer(); "
        "program = b.programs()[%r]; "
        "r = ppgen.infer(program, engine='nuts', num_warmup=b.NUM_WARMUP, num_samples=b.NUM_SAMPLES, "
        "num_chains=b.NUM_CHAINS, progress=False, seed=0, **data); "
        "print(json.dumps([r.diagnostics['seconds_to_first_draw'], imports]))"
    ) % (os.path.dirname(os.path.abspath(__file__)), name, name)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def programs():
    from ppgen.models.posteriordb import eight_schools_noncentered

    return {"eight_schools": eight_schools_noncentered, "logistic_regression": logistic_regression}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pyro-repeats", type=int, default=1)
    parser.add_argument("--skip-pyro", action="store_true")
    options = parser.parse_args()
    table = {}
    models = (("eight_schools", eight_schools), ("logistic_regression", breast_cancer))
    # Raw NumPyro first: ppgen turns on JAX's persistent compilation cache for the process,
    # which raw NumPyro does not have by default.
    numpyro_all = {name: [run_numpyro(name, load(), seed) for seed in range(options.repeats)] for name, load in models}
    for name, load in models:
        data = load()
        program = programs()[name]
        ppgen_runs = [run_ppgen(name, program, data, seed) for seed in range(options.repeats)]
        numpyro_runs = numpyro_all[name]
        pyro_runs = [] if options.skip_pyro else [run_pyro(name, data, seed) for seed in range(options.pyro_repeats)]
        new_process = first_draw_in_new_process(name)

        def median(runs, key):
            return statistics.median(r[key] for r in runs) if runs else float("nan")

        def ess_per_second(runs):
            return statistics.median(r["ess"] / r["seconds"] for r in runs) if runs else float("nan")

        row = {
            "ppgen cold: s / ESS / ESS/s / first draw s": (ppgen_runs[0]["seconds"], ppgen_runs[0]["ess"], ppgen_runs[0]["ess"] / ppgen_runs[0]["seconds"], ppgen_runs[0]["first_draw"]),
            "ppgen warm (median of later repeats): s / ESS/s / first draw s": (
                median(ppgen_runs[1:], "seconds"), ess_per_second(ppgen_runs[1:]), median(ppgen_runs[1:], "first_draw")),
            "ppgen new process, warm cache: first draw s / importing jax+numpyro s (before)": new_process,
            "ppgen median ESS/s (all repeats)": ess_per_second(ppgen_runs),
            "numpyro median: s / ESS / ESS/s": (median(numpyro_runs, "seconds"), median(numpyro_runs, "ess"), ess_per_second(numpyro_runs)),
            "pyro median: s / ESS / ESS/s": (median(pyro_runs, "seconds"), median(pyro_runs, "ess"), ess_per_second(pyro_runs)),
            "ratio ESS/s ppgen / numpyro": ess_per_second(ppgen_runs) / ess_per_second(numpyro_runs),
            "ratio ESS/s ppgen / pyro": ess_per_second(ppgen_runs) / ess_per_second(pyro_runs) if pyro_runs else float("nan"),
            "divergences ppgen / numpyro": ([r["divergences"] for r in ppgen_runs], [r["divergences"] for r in numpyro_runs]),
        }
        table[name] = row
        print(f"\n== {name} ==")
        for key, value in row.items():
            print(f"  {key}: {json.dumps(value, default=float) if not isinstance(value, float) else f'{value:.3g}'}")
    print(f"\n(cache dir {CACHE}; repeats {options.repeats}, pyro repeats {options.pyro_repeats})")


if __name__ == "__main__":
    main()
