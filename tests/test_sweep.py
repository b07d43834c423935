"""Independent tasks in worker processes and on Ray (``ppgen.sweep``): the values are those of
the serial run, in task order; a task whose worker raised or died is run once more and
otherwise reported as failed with the reason; the tour's cells and calibration's simulations
give the serial report and ranks.

Truth here is the serial run itself, computed in this process by the same seeded functions:
every comparison is exact (the same seeds give the same floating-point operations in the same
order in any process), so a worker that ran with another seed, lost a task or returned the
tasks out of order fails it.
"""

import os
import re
import signal
import sys

import cloudpickle
import numpy as np
import pytest

from ppgen import dist, plate, sample
from ppgen.calibration import simulation_based_calibration
from ppgen.catalogue import catalogue
from ppgen.sweep import Outcome, WorkerPool, check_workers, run_tasks
from ppgen.tour import run_example
from ppgen.tour import _model_html, judge
from ppgen.tour_sweep import run_examples, run_tour

# pytest imports this file under a name the spawned workers cannot import: send its functions
# by value, as cloudpickle does for a user's script or notebook (``__main__``).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def noisy_sum(seed, size):
    """A seeded computation whose value depends on the seed and the size."""
    return float(np.random.default_rng(seed).standard_normal(size).sum())


def dies_or_raises_until_marked(marker, how):
    """Fails on its first run (the worker kills itself, or raises), succeeds on the second;
    ``how='always-die'`` / ``'always-raise'`` never succeeds."""
    if how.startswith("always") or not os.path.exists(marker):
        open(marker, "w").close()
        if how.endswith("die"):
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"deliberate failure of task {os.path.basename(marker)}")
    return os.path.basename(marker)


def test_workers_give_serial_values_in_order_and_retry_a_killed_or_raising_task_once(tmp_path):
    """One pool for both checks (starting workers is the slow part): seeded values come back
    as in the serial run, in task order, and failures are retried once, then reported."""
    sums = [(seed, size) for seed, size in zip([7, 3, 11, 5], [4000, 10, 2500, 1])]
    failing = [(str(tmp_path / name), how) for name, how in
               [("dies-once", "die"), ("fine", "raise"), ("raises-once", "raise"), ("always-dies", "always-die"), ("always-raises", "always-raise")]]
    open(tmp_path / "fine", "w").close()  # marked already: succeeds first time
    outcomes = run_tasks(run_either, [("sum", task) for task in sums] + [("fail", task) for task in failing], workers=2)
    assert [o.value for o in outcomes[:4]] == [noisy_sum(*task) for task in sums] == [o.value for o in run_tasks(noisy_sum, sums)]
    assert all(o.error is None and o.attempts == 1 for o in outcomes[:4])
    outcomes = outcomes[4:]
    assert [(o.value, o.attempts, o.failed) for o in outcomes[:3]] == [("dies-once", 2, False), ("fine", 1, False), ("raises-once", 2, False)]
    assert outcomes[3].failed and outcomes[3].attempts == 2 and "worker process died (exit code -9)" in outcomes[3].error
    assert outcomes[4].failed and outcomes[4].attempts == 2 and "deliberate failure of task always-raises" in outcomes[4].error


def test_a_pool_runs_the_costliest_queued_task_first_including_tasks_queued_meanwhile():
    """One worker, so the order tasks finish in is the order they started in: by cost,
    highest first, among those queued when the worker became free; a task submitted while
    the pool runs joins the queue by its cost."""
    with WorkerPool(1) as pool:
        for seed, cost in [(0, 1.0), (1, 5.0), (2, 3.0), (3, 0.5)]:
            pool.submit(noisy_sum, (seed, 10), cost)
        finished = []
        for index, outcome in pool.completed():
            finished.append(index)
            assert outcome.value == noisy_sum(index if index < 4 else 9, 10)
            if index == 1:
                pool.submit(noisy_sum, (9, 10), 4.0)  # after the first: ahead of the 3.0 queued before it
    assert finished == [1, 4, 2, 0, 3]


def run_either(kind, task):
    return noisy_sum(*task) if kind == "sum" else dies_or_raises_until_marked(*task)


@pytest.mark.parametrize(
    "workers, ray, message",
    [
        (0, None, "run_tasks: workers must be a positive integer or None, got 0"),
        (True, None, "run_tasks: workers must be a positive integer or None, got True"),
        (None, "", "run_tasks: ray must be a cluster address (e.g. 'auto', 'ray://host:10001', 'local'), got ''"),
        (2, "auto", "run_tasks: give workers= or ray=, not both (Ray schedules on the cluster's CPUs)"),
    ],
)
def test_bad_worker_options_are_named(workers, ray, message):
    with pytest.raises(ValueError) as error:
        check_workers(workers, ray, "run_tasks")
    assert str(error.value) == message


def thermometer(num_readings=7, readings=None):
    """A user's program: a sensor offset with a normal prior, read with known noise."""
    offset = sample("offset", dist.Normal(1.5, 2.0))
    with plate("reading", num_readings):
        sample("readings", dist.Normal(offset, 0.7), obs=readings)


@pytest.mark.slow  # two pools of workers running an engine: about 15 s on an idle machine
def test_calibration_in_workers_gives_the_serial_ranks():
    options = dict(engine="importance", num_samples=300, num_simulations=4, num_draws=19, seed=31)
    serial = simulation_based_calibration(thermometer, num_readings=5, **options)
    parallel = simulation_based_calibration(thermometer, num_readings=5, workers=2, **options)
    assert set(parallel.ranks) == {"offset"}
    np.testing.assert_array_equal(parallel.ranks["offset"], serial.ranks["offset"])
    np.testing.assert_array_equal(parallel.num_draws["offset"], serial.num_draws["offset"])


def _cells(reports):
    out = []
    for report in reports:
        for run in report.runs:
            result = run.result
            out.append((report.example.name, run.engine, run.skipped, run.error,
                        None if result is None else {k: np.asarray(v) for k, v in {**result.samples, **result.params}.items()}))
    return out


@pytest.mark.slow  # the serial and the parallel tour of one model: about 25 s on an idle machine
def test_tour_cells_in_workers_give_the_serial_report():
    examples = [e for e in catalogue(["basics"]) if e.name == "coin"]
    engines = ["map", "importance", "enumerate"]  # enumerate does not apply to coin: a skipped cell
    serial = _cells([run_example(example, True, engines) for example in examples])
    parallel = _cells(run_examples(examples, True, engines, workers=2))
    assert [cell[:4] for cell in parallel] == [cell[:4] for cell in serial]
    assert sum(cell[4] is not None for cell in serial) == 2  # the comparison covers real runs (map, importance)
    for (_, _, _, _, values), (_, _, _, _, expected) in zip(parallel, serial):
        assert (values is None) == (expected is None)
        if values is not None:
            assert values.keys() == expected.keys()
            for name in values:
                np.testing.assert_array_equal(values[name], expected[name])


@pytest.mark.slow  # a pool of workers running engines and drawing figures: about 40 s on an idle machine
def test_parallel_tour_writes_the_serial_report_sections():
    """Judged in the parent, written by the workers: each section is the serial one, figures
    included, once the run times (which differ between runs) are blanked."""
    examples = [e for e in catalogue(["basics"]) if e.name == "coin"]
    engines = ["map", "importance", "enumerate"]
    serial = [judge(run_example(example, True, engines)) for example in examples]
    reports, sections = run_tour(examples, True, engines, workers=2)
    assert [r.example.name for r in reports] == [r.example.name for r in serial] and sections.keys() == {"coin"}
    seconds = re.compile(r"\d+\.\d+ ?s\b")
    for report in serial:
        assert seconds.sub("", sections[report.example.name][0]) == seconds.sub("", _model_html(report))


def test_outcome_of_a_serial_task_that_raises_twice_is_failed(tmp_path):
    outcome = run_tasks(dies_or_raises_until_marked, [(str(tmp_path / "marker"), "always-raise")])[0]
    assert isinstance(outcome, Outcome) and outcome.failed and outcome.attempts == 2


def test_ray_tasks_give_the_serial_values_in_order():
    ray = pytest.importorskip("ray")
    tasks = [(seed, 50 * seed) for seed in range(1, 6)]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcomes = run_tasks(noisy_sum, tasks, ray="local")
    finally:
        ray.shutdown()
    assert [o.value for o in outcomes] == [noisy_sum(*task) for task in tasks]
    assert not any(o.failed for o in outcomes)


@pytest.mark.slow  # a Ray instance and engine runs in its workers
def test_calibration_on_ray_gives_the_serial_ranks():
    ray = pytest.importorskip("ray")
    options = dict(engine="importance", num_samples=300, num_simulations=4, num_draws=19, seed=8)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = simulation_based_calibration(thermometer, num_readings=3, ray="local", **options)
    finally:
        ray.shutdown()
    serial = simulation_based_calibration(thermometer, num_readings=3, **options)
    np.testing.assert_array_equal(on_ray.ranks["offset"], serial.ranks["offset"])
