"""``ppgen tour --quick --workers N`` against the serial tour: wall time, and the same cells.

Runs the serial tour and the tour with ``--workers N`` (each in its own ``ppgen`` process, so
both pay the same start-up), writes both reports under ``--output``, and checks that every
capability-table cell has the same status in both (timings aside). Issue 16's target for the
whole quick tour on 2 cores: workers=2 / serial <= 0.65.

    .venv/bin/python benchmarks/bench_tour_workers.py [--workers 2] [--models basics mixtures] [--output DIR]

The workers start the costliest cells first, by the seconds in ``ppgen/tour_costs.py``;
``--record-costs`` updates that file from this run's serial ``timings.json`` (or, given a
path, from that ``timings.json`` alone, running nothing).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_tour(directory: Path, models: list[str], workers: int) -> float:
    command = [sys.executable, "-m", "ppgen.cli", "tour", "--quick", "--no-progress", "-o", str(directory)]
    if models:
        command += ["--models", *models]
    if workers > 1:
        command += ["--workers", str(workers)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def cells(directory: Path) -> list[str]:
    """The capability table's cells with times removed: ✓ / ⚠ / failed / — per model and engine."""
    page = (directory / "index.html").read_text(encoding="utf-8")
    table = page[page.index("<table>"): page.index("</table>")]
    return [re.sub(r"[\d.]+s", "", cell) for cell in re.findall(r"<td>(.*?)</td>", table)]


COSTS = Path(__file__).resolve().parents[1] / "ppgen" / "tour_costs.py"


def record_costs(timings: Path) -> None:
    """Update ``ppgen/tour_costs.py`` from a tour's ``timings.json``: each cell's engine
    seconds (``"  example · engine"``) and each example's section seconds (``"write example"``);
    entries the run did not have are kept."""
    from ppgen import tour_costs

    phases = json.loads(timings.read_text(encoding="utf-8"))
    cells = {**tour_costs.CELL_SECONDS, **{key.strip(): round(value, 2) for key, value in phases.items() if key.startswith("  ") and " · " in key}}
    sections = {**tour_costs.SECTION_SECONDS, **{key[len("write "):]: round(value, 2) for key, value in phases.items() if key.startswith("write ") and key != "write report"}}
    text = COSTS.read_text(encoding="utf-8")
    head = text[: text.index("CELL_SECONDS")]
    lines = [head + "CELL_SECONDS: dict[str, float] = {"]
    lines += [f"    {json.dumps(name, ensure_ascii=False)}: {seconds}," for name, seconds in sorted(cells.items())]
    lines += ["}", "SECTION_SECONDS: dict[str, float] = {"]
    lines += [f"    {json.dumps(name, ensure_ascii=False)}: {seconds}," for name, seconds in sorted(sections.items())]
    lines += ["}", ""]
    COSTS.write_text("\n".join(lines), encoding="utf-8")
    print(f"recorded {len(cells)} cells and {len(sections)} sections from {timings} in {COSTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=[], help="only these models or families (default: the whole catalogue)")
    parser.add_argument("--output", default=None, help="directory for the two reports (default: a temporary one)")
    parser.add_argument("--record-costs", nargs="?", const="", default=None, metavar="TIMINGS_JSON",
                        help="update ppgen/tour_costs.py from the serial run's timings (or from this file, running nothing)")
    options = parser.parse_args()
    if options.record_costs:
        record_costs(Path(options.record_costs))
        return
    root = Path(options.output or tempfile.mkdtemp(prefix="tour-workers-"))
    serial = run_tour(root / "serial", options.models, 1)
    if options.record_costs is not None:
        record_costs(root / "serial" / "timings.json")
    parallel = run_tour(root / f"workers-{options.workers}", options.models, options.workers)
    same = cells(root / "serial") == cells(root / f"workers-{options.workers}")
    print(f"serial {serial:.1f} s, --workers {options.workers} {parallel:.1f} s, ratio {parallel / serial:.2f} (target <= 0.65); "
          f"capability table cells {'identical' if same else 'DIFFER'}; reports in {root}")


if __name__ == "__main__":
    main()
