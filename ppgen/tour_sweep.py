"""The tour's model × engine cells as independent tasks (``ppgen tour --workers N`` / ``--ray``).

The parent plans every cell exactly as the serial tour does (:func:`ppgen.tour.run_example`
with a ``run_engine`` that only records the cell), then runs the cells with
:func:`ppgen.sweep.run_tasks`. A cell travels as names (example, engine, quick), and its worker
simulates the example's data itself: ``simulate`` is seeded and every engine run carries its own
seed, so each cell computes what it computes in the serial tour. A cell whose worker failed
twice appears in the report as a failed run with the reason.
"""

from __future__ import annotations

from typing import Any, Optional

from ppgen.catalogue import Example, Simulated, catalogue
from ppgen.sweep import run_tasks
from ppgen.tour import EngineRun, ModelReport, _run_engine, run_example


def tour_cell(example_name: str, engine: str, quick: bool) -> EngineRun:
    """One cell of the tour, run from names (in a worker process)."""
    examples = [e for e in catalogue() if e.name == example_name]
    if not examples:
        raise ValueError(f"tour_cell: no catalogue example named {example_name!r}")
    example = examples[0]
    return _run_engine(example, example.simulate(), engine, quick)


def run_examples(
    examples: list[Example],
    quick: bool,
    engines: Optional[list[str]] = None,
    *,
    workers: Optional[int] = None,
    ray: Optional[str] = None,
    progress: bool = False,
) -> list[ModelReport]:
    """The tour's reports with every engine run done by ``workers`` local processes or Ray."""
    planned: list[tuple[EngineRun, str]] = []

    def plan(example: Example, simulated: Simulated, engine: str, quick: bool) -> EngineRun:
        run = EngineRun(engine)
        planned.append((run, example.name))
        return run

    reports = [run_example(example, quick, engines, run_engine=plan) for example in examples]
    if progress:
        where = f"Ray cluster {ray}" if ray is not None else f"{workers} worker processes"
        print(f"tour: {len(planned)} engine runs on {where}", flush=True)
    outcomes = run_tasks(tour_cell, [(name, run.engine, quick) for run, name in planned], workers=workers, ray=ray)
    for (run, _), outcome in zip(planned, outcomes):
        done: Any = outcome.value
        if outcome.failed:
            run.error = f"the cell failed {outcome.attempts} times in a worker; last error:\n{outcome.error}"
        else:
            run.result, run.error, run.cautions = done.result, done.error, done.cautions
    return reports
