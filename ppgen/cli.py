"""The ``ppgen`` command: ``models``, ``render`` and ``tour``."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Optional, Sequence

from ppgen.diagram import MIN_CHAIN, step_groups


def _compress_steps(names: list[str]) -> str:
    """``x_0, x_1, ..., x_99`` -> ``x_0…x_99``: the steps of a sequence as one entry."""
    chains = {prefix: steps for prefix, steps in step_groups(names).items() if len(steps) >= MIN_CHAIN}
    chain_of = {name: prefix for prefix, steps in chains.items() for name in steps.values()}
    out: list[str] = []
    for name in names:
        prefix = chain_of.get(name)
        if prefix is None:
            out.append(name)
        elif name == chains[prefix][min(chains[prefix])]:
            out.append(f"{name}…{chains[prefix][max(chains[prefix])]}")
    return ", ".join(out)


def models_table(markdown: bool = False) -> str:
    """Catalogue models with their latent and observed sites and the engines that apply."""
    from ppgen.catalogue import catalogue
    from ppgen.engine import check_all
    from ppgen.structure import inspect

    rows = []
    for example in catalogue():
        data = example.structure_data() if example.structure_data is not None else example.simulate().data
        structure = inspect(example.model, **data)
        engines = sorted(c.name for c in check_all(structure) if c.applies and c.name != "prior")
        rows.append(
            (example.family, example.name, _compress_steps(list(structure.latent)) or "—",
             _compress_steps(list(structure.observed)), ", ".join(engines))
        )
    header = ("family", "model", "latent", "observed", "engines that apply")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _load(target: str):
    module_name, _, function_name = target.partition(":")
    if not function_name:
        raise SystemExit(f"ppgen render: expected MODULE:FUNCTION (e.g. ppgen.models.mixtures:bernoulli_mixture), got {target!r}")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, function_name)
    except AttributeError:
        raise SystemExit(f"ppgen render: module {module_name!r} has no {function_name!r}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ppgen", description="Generative models as programs.")
    commands = parser.add_subparsers(dest="command", required=True)
    models_parser = commands.add_parser("models", help="list catalogue models and the engines that apply")
    models_parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    render_parser = commands.add_parser("render", help="draw the plate diagram of a program")
    render_parser.add_argument("target", help="MODULE:FUNCTION, called with its default arguments")
    render_parser.add_argument("-o", "--output", default=None, help="output file (.png, .svg, .pdf; default: print DOT)")
    render_parser.add_argument("--distributions", action="store_true", help="label nodes with their distributions")
    tour_parser = commands.add_parser("tour", help="run every catalogue model with every applicable engine")
    tour_parser.add_argument("--quick", action="store_true", help="fewer samples and steps")
    tour_parser.add_argument("-o", "--output", default="tour", help="report directory (default: tour/)")
    tour_parser.add_argument("--models", nargs="*", default=None, help="only these models or families")
    tour_parser.add_argument("--engines", nargs="*", default=None, help="only these engines")
    tour_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    tour_parser.add_argument("--workers", type=int, default=None, help="run the model × engine cells in N local processes")
    tour_parser.add_argument("--ray", default=None, metavar="ADDRESS", help="run the cells as Ray tasks on this cluster (pip install 'ppgen[ray]')")
    args = parser.parse_args(argv)

    if args.command == "models":
        print(models_table(markdown=args.markdown))
    elif args.command == "render":
        from ppgen.diagram import render

        graph = render(_load(args.target), distributions=args.distributions)
        if args.output is None:
            print(graph.source)
        else:
            path = Path(args.output)
            written = graph.render(path.with_suffix(""), format=path.suffix.lstrip(".") or "png", cleanup=True)
            print(written)
    elif args.command == "tour":
        from ppgen.tour import tour

        path = tour(args.output, quick=args.quick, models=args.models, engines=args.engines, progress=not args.no_progress,
                    workers=args.workers, ray=args.ray)
        print(f"tour written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
