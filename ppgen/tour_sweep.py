"""The tour's model × engine cells as independent tasks (``ppgen tour --workers N`` / ``--ray``).

The parent plans every cell exactly as the serial tour does (:func:`ppgen.tour.run_example`
with a ``run_engine`` that only records the cell), then runs the cells with
:func:`ppgen.sweep.run_tasks` or a :class:`ppgen.sweep.WorkerPool`. A cell travels as names
(example, engine, quick), and its worker simulates the example's data itself: ``simulate`` is
seeded and every engine run carries its own seed, so each cell computes what it computes in the
serial tour. A cell whose worker failed twice appears in the report as a failed run with the
reason.

The schedule (:func:`run_tour`): the workers start first, so their imports overlap the parent's
planning; the cells go costliest first (:mod:`ppgen.tour_costs`, seconds measured on a previous
quick tour), so that no long cell starts last while the other workers idle; and as soon as an
example's cells are all done the parent judges it and a worker writes its report section
(figures and diagram, most of the report's time), alongside the cells still running.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Optional

from ppgen.catalogue import Example, Simulated, catalogue
from ppgen.sweep import Outcome, WorkerPool, is_parallel, run_tasks
from ppgen.tour import EngineRun, ModelReport, _model_html, _run_engine, judge, run_example
from ppgen.tour_costs import CELL_SECONDS, SECTION_SECONDS

#: An example's report section as written by a worker: the HTML and the seconds it took.
Section = tuple[str, float]


def tour_cell(example_name: str, engine: str, quick: bool) -> EngineRun:
    """One cell of the tour, run from names (in a worker process)."""
    examples = [e for e in catalogue() if e.name == example_name]
    if not examples:
        raise ValueError(f"tour_cell: no catalogue example named {example_name!r}")
    example = examples[0]
    return _run_engine(example, example.simulate(), engine, quick)


def report_section(report: ModelReport) -> Section:
    """A judged example's report section (in a worker process), and its seconds."""
    import matplotlib

    matplotlib.use("Agg")
    start = time.perf_counter()
    return _model_html(report), time.perf_counter() - start


def cell_cost(example: str, engine: str) -> float:
    """Expected seconds of a cell: the recorded ones, else the median recorded cell's."""
    return CELL_SECONDS.get(f"{example} · {engine}", _MEDIAN_CELL)


def section_cost(example: str) -> float:
    return SECTION_SECONDS.get(example, _MEDIAN_SECTION)


_MEDIAN_CELL = statistics.median(CELL_SECONDS.values()) if CELL_SECONDS else 1.0
_MEDIAN_SECTION = statistics.median(SECTION_SECONDS.values()) if SECTION_SECONDS else 1.0


def _plan(examples: list[Example], quick: bool, engines: Optional[list[str]]) -> tuple[list[ModelReport], list[tuple[EngineRun, ModelReport]]]:
    planned: list[tuple[EngineRun, str]] = []

    def plan(example: Example, simulated: Simulated, engine: str, quick: bool) -> EngineRun:
        run = EngineRun(engine)
        planned.append((run, example.name))
        return run

    reports = [run_example(example, quick, engines, run_engine=plan) for example in examples]
    by_name = {report.example.name: report for report in reports}
    return reports, [(run, by_name[name]) for run, name in planned]


def _fill(run: EngineRun, outcome: Outcome) -> None:
    if outcome.failed:
        run.error = f"the cell failed {outcome.attempts} times in a worker; last error:\n{outcome.error}"
    else:
        done: Any = outcome.value
        run.result, run.error, run.cautions = done.result, done.error, done.cautions


def run_examples(
    examples: list[Example],
    quick: bool,
    engines: Optional[list[str]] = None,
    *,
    workers: Optional[int] = None,
    ray: Optional[str] = None,
    progress: bool = False,
) -> list[ModelReport]:
    """The tour's reports with every engine run done by ``workers`` local processes or Ray
    (not yet judged), the costliest cells first."""
    reports, planned = _plan(examples, quick, engines)
    if progress:
        where = f"Ray cluster {ray}" if ray is not None else f"{workers} worker processes"
        print(f"tour: {len(planned)} engine runs on {where}", flush=True)
    tasks = [(report.example.name, run.engine, quick) for run, report in planned]
    outcomes = run_tasks(tour_cell, tasks, workers=workers, ray=ray, costs=[cell_cost(name, engine) for name, engine, _ in tasks])
    for (run, _), outcome in zip(planned, outcomes):
        _fill(run, outcome)
    return reports


def run_tour(
    examples: list[Example],
    quick: bool,
    engines: Optional[list[str]] = None,
    *,
    workers: Optional[int] = None,
    ray: Optional[str] = None,
    progress: bool = False,
) -> tuple[list[ModelReport], dict[str, Section]]:
    """The tour's judged reports and their report sections (example name -> :data:`Section`),
    computed by ``workers`` local processes or on Ray (see the module's docstring). A section
    whose worker failed is left out: :func:`ppgen.tour.write_report` then writes it itself."""
    if ray is not None or not is_parallel(workers, ray):
        reports = run_examples(examples, quick, engines, workers=workers, ray=ray, progress=progress)
        for report in reports:
            judge(report)
        outcomes = run_tasks(report_section, [(r,) for r in reports], workers=workers, ray=ray, costs=[section_cost(r.example.name) for r in reports])
        return reports, {r.example.name: o.value for r, o in zip(reports, outcomes) if not o.failed}
    sections: dict[str, Section] = {}
    with WorkerPool(workers) as pool:  # started before planning: the workers import meanwhile
        reports, planned = _plan(examples, quick, engines)
        if progress:
            print(f"tour: {len(planned)} engine runs on {workers} worker processes", flush=True)
        waiting = {report.example.name: 0 for report in reports}  # cells not done, per example
        tasks: dict[int, Any] = {}
        for run, report in planned:
            waiting[report.example.name] += 1
            tasks[pool.submit(tour_cell, (report.example.name, run.engine, quick), cell_cost(report.example.name, run.engine))] = (run, report)

        def write(report: ModelReport) -> None:
            judge(report)
            tasks[pool.submit(report_section, (report,), section_cost(report.example.name))] = report

        for report in reports:
            if not waiting[report.example.name]:
                write(report)
        for index, outcome in pool.completed():
            task = tasks.pop(index)
            if isinstance(task, ModelReport):
                if not outcome.failed:
                    sections[task.example.name] = outcome.value
                continue
            run, report = task
            _fill(run, outcome)
            waiting[report.example.name] -= 1
            if not waiting[report.example.name]:
                write(report)
    return reports, sections
