"""What simulation-based calibration costs per simulation, engine by engine, and ADVI reruns on
new data against a hand-written NumPyro SVI loop compiled once.

Part 1 (the anchor ratio): 20 data sets of the same shape from a Normal-mean program; the
anchor is NumPyro's ``SVI`` with ``AutoNormal``, its update and its draws ``jax.jit``-compiled once
and reused for every data set (the best a user can do by hand); ppgen's ``advi`` reruns through ``ppgen.infer``
(compiled pieces reused from the in-process cache), and once more with the cache cleared before
every run (what every run cost before the cache). Same steps, learning rate and draws.

Part 2: seconds per simulation of ``simulation_based_calibration`` with the engine settings of
``tests/inference/test_sbc.py`` (after one simulation that compiles), CPU and wall time.

    .venv/bin/python benchmarks/bench_sbc.py [--quick] [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import ppgen
from ppgen import dist, plate, sample
from ppgen.calibration import simulation_based_calibration

NUM_STEPS, LEARNING_RATE, NUM_DRAWS = 1000, 0.05, 200


def rainfall(totals, season_mean=0.0, season_scale=3.0):
    level = sample("level", dist.Normal(season_mean, season_scale))
    with plate("month", len(totals)):
        sample("total", dist.Normal(level, 1.5), obs=totals)


def numpyro_anchor():
    """A compiled-once SVI loop: returns run(data, seed) -> draws of ``level``."""
    import jax
    import numpyro
    import numpyro.distributions as nd
    from numpyro.infer import SVI, Predictive, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.infer.initialization import init_to_median

    def model(totals):
        level = numpyro.sample("level", nd.Normal(0.0, 3.0))
        with numpyro.plate("month", totals.shape[0]):
            numpyro.sample("total", nd.Normal(level, 1.5), obs=totals)

    guide = AutoNormal(model, init_loc_fn=init_to_median, init_scale=0.1)
    svi = SVI(model, guide, numpyro.optim.Adam(LEARNING_RATE), Trace_ELBO())
    update = jax.jit(svi.update)
    draw = jax.jit(lambda key, params, totals: Predictive(guide, params=params, num_samples=NUM_DRAWS)(key, totals)["level"])

    def run(totals, seed):
        init_key, draw_key = jax.random.split(jax.random.PRNGKey(seed))
        state = svi.init(init_key, totals)
        for _ in range(NUM_STEPS):
            state, loss = update(state, totals)
            float(loss)  # one device sync per step, as ppgen's driver loop does
        params = svi.get_params(state)
        return np.asarray(draw(draw_key, params, totals))

    return run


def time_runs(fn, data_sets) -> float:
    fn(data_sets[0], 0)  # compile
    start = time.perf_counter()
    for seed, data in enumerate(data_sets, 1):
        fn(data, seed)
    return (time.perf_counter() - start) / len(data_sets)


def advi_rows(repeats: int) -> dict[str, float]:
    from ppgen.inference import _mcmc

    rng = np.random.default_rng(0)
    data_sets = [rng.normal(rng.normal(0, 3), 1.5, size=12) for _ in range(repeats)]
    options = dict(engine="advi", num_steps=NUM_STEPS, learning_rate=LEARNING_RATE, num_samples=NUM_DRAWS, num_elbo_evaluations=1)

    def ppgen_run(data, seed):
        return ppgen.infer(rainfall, data, seed=seed, **options).samples["level"]

    def ppgen_cold(data, seed):
        _mcmc.clear_cache()
        return ppgen_run(data, seed)

    return {
        "anchor: NumPyro SVI, update and draws jit-compiled once": time_runs(numpyro_anchor(), data_sets),
        "ppgen advi rerun (compiled pieces cached)": time_runs(ppgen_run, data_sets),
        "ppgen advi, cache cleared before each run": time_runs(ppgen_cold, data_sets[: max(3, repeats // 5)]),
    }


def sbc_rows(num_simulations: int) -> dict[str, tuple[float, float]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "inference"))
    import test_sbc as cases

    settings = {
        "nuts": cases.MCMC, "hmc": cases.MCMC, "gibbs": cases.MCMC, "mh": cases.RANDOM_WALK,
        "advi": cases.ADVI_OPTIONS, "svi": {**cases.SVI_OPTIONS, "guide": cases.typical_size_guide},
        "importance": cases.IMPORTANCE,
    }
    programs = {"nuts": "outliers", "hmc": "trend", "gibbs": "outliers", "mh": "coin", "advi": "group_levels", "svi": "typical_size", "importance": "coin"}
    rows = {}
    for engine, options in settings.items():
        cases._calibrate(engine, programs[engine], 1, **options)  # compile
        cpu, wall = time.process_time(), time.perf_counter()
        cases._calibrate(engine, programs[engine], num_simulations, seed=2, **options)
        rows[f"{engine} on {programs[engine]}"] = ((time.process_time() - cpu) / num_simulations, (time.perf_counter() - wall) / num_simulations)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 data sets / simulations per row")
    parser.add_argument("--repeats", type=int, default=20)
    options = parser.parse_args()
    repeats = 5 if options.quick else options.repeats
    warnings.simplefilter("ignore")
    rows = advi_rows(repeats)
    anchor = next(iter(rows.values()))
    print(f"| ADVI, {NUM_STEPS} steps, per data set | seconds | ratio to anchor |\n|---|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.3f} | {seconds / anchor:.2f} |")
    print("\n| SBC, per simulation (test_sbc settings) | CPU s | wall s |\n|---|---|---|")
    for name, (cpu, wall) in sbc_rows(repeats).items():
        print(f"| {name} | {cpu:.3f} | {wall:.3f} |")


if __name__ == "__main__":
    main()
