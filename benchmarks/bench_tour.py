"""Where ``ppgen tour --quick`` spends its time: per example, per engine, the task table and
the report writing (per example), and the size of the page.

    .venv/bin/python benchmarks/bench_tour.py [--models mixtures vae] [-o tour-bench]

Prints the phases the tour records in ``<output>/timings.json`` (seconds), largest first.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="only these models or families")
    parser.add_argument("-o", "--output", default="tour-bench")
    parser.add_argument("--top", type=int, default=25, help="engine runs to list")
    args = parser.parse_args()

    from ppgen.tour import tour

    start = time.perf_counter()
    path = tour(args.output, quick=True, models=args.models, progress=False)
    total = time.perf_counter() - start
    phases = json.loads((Path(args.output) / "timings.json").read_text())
    runs = {k: v for k, v in phases.items() if k.startswith("run ")}
    engines = {k.strip(): v for k, v in phases.items() if k.startswith("  ")}
    writes = {k: v for k, v in phases.items() if k.startswith("write ") and k != "write report"}
    print(f"total {total:.1f} s; running examples {sum(runs.values()):.1f} s; task table {phases.get('task table', 0):.1f} s; "
          f"writing the report {phases.get('write report', 0):.1f} s (of which model sections {sum(writes.values()):.1f} s)")
    print(f"index.html {path.stat().st_size / 1e6:.2f} MB")
    for title, table in (("examples", runs), ("report sections", writes), ("engine runs", engines)):
        print(f"\n{title}:")
        for name, seconds in sorted(table.items(), key=lambda item: -item[1])[: args.top]:
            print(f"  {seconds:8.1f}  {name}")


if __name__ == "__main__":
    main()
