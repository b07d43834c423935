"""Seconds each cell of the quick tour and each report section took on a previous run.

:mod:`ppgen.tour_sweep` starts the costliest tasks first; only the order matters, so values
measured on a loaded machine serve. A cell or example not listed costs the median. Recorded
from the serial run's ``timings.json`` by ``benchmarks/bench_tour_workers.py --record-costs``.
"""

CELL_SECONDS: dict[str, float] = {}
SECTION_SECONDS: dict[str, float] = {}
