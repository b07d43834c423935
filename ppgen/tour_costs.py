"""Seconds each cell of the quick tour and each report section took on a previous run.

:mod:`ppgen.tour_sweep` starts the costliest tasks first; only the order matters, so values
measured on a loaded machine serve. A cell or example not listed costs the median. Recorded
from the serial run's ``timings.json`` by ``benchmarks/bench_tour_workers.py --record-costs``.
"""

CELL_SECONDS: dict[str, float] = {
    "coin · advi": 18.19,
    "coin · cavi": 3.08,
    "coin · gibbs": 0.89,
    "coin · hmc": 0.75,
    "coin · importance": 0.04,
    "coin · map": 0.12,
    "coin · meanfield": 0.04,
    "coin · mh": 0.27,
    "coin · mle": 0.1,
    "coin · nuts": 0.82,
    "coin · svi": 1.6,
    "heights · advi": 2.08,
    "heights · gibbs": 4.09,
    "heights · hmc": 1.85,
    "heights · importance": 0.01,
    "heights · map": 0.08,
    "heights · meanfield": 0.07,
    "heights · mh": 0.77,
    "heights · mle": 0.06,
    "heights · nuts": 4.49,
    "heights · svi": 0.88,
    "two_class · advi": 9.02,
    "two_class · gibbs": 8.05,
    "two_class · hmc": 4.66,
    "two_class · importance": 3.99,
    "two_class · map": 0.92,
    "two_class · meanfield": 0.35,
    "two_class · mh": 2.22,
    "two_class · mle": 0.92,
    "two_class · nuts": 6.27,
    "two_class · svi": 6.61,
}
SECTION_SECONDS: dict[str, float] = {
    "coin": 2.74,
    "heights": 2.91,
    "two_class": 5.83,
}
