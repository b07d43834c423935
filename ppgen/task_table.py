"""The measured task table: each catalogue family's five tasks, rated from this run.

For every family that lists ``EXAMPLES`` (read from the tour's reports, never from a list
typed here), the five tasks of the seed tutorial are measured on the family's examples and
rated by the thresholds below, next to the tutorial's own rating where it has one (§7.10,
§8.17, §9.17, §10.15, §11.16). A cell that cannot be measured says ``not measured`` and why.

Measures and thresholds (ratings ✓✓ very good, ✓ good, ~ approximate, × poor, ×× not available):

- **modeling**: what the programs express (latent kinds, networks, sequences); ✓✓ when every
  example runs on at least one engine, ✓ when some do, × when none.
- **learning**: wall time of the fastest learning run (``learn`` engines: svi, mle, em, ...) that
  reached the stated quality: no convergence or reliability warning and no disagreement with
  the model's reference (:mod:`ppgen.agreement`). ✓✓ ≤ 10 s, ✓ ≤ 60 s, ~ slower; × when
  every learning run warned or disagreed; ×× when no learning engine applies.
- **scoring**: ``ppgen.score`` on held-out data (the example simulated again with another seed)
  with the engine whose tour run gave the best kind of log p(x) (exact > estimate > bound); its
  kind and milliseconds per datum. An engine that fits its bound (``num_steps``: svi) would fit
  again on new data: its tour run's time per training datum is shown instead, and says so.
  ✓✓ exact and ≤ 1 ms/datum, ✓ exact, ~ a bound or an estimate, ×× no engine scores the
  program (the reason is ``engines_for``'s).
- **sampling**: ``ppgen.generate`` of fresh data, milliseconds per generated datum, and whether
  it is sequential (a ``markov`` chain of ≥ 3 steps: O(T) passes). ✓✓ one pass and ≤ 1 ms/datum,
  ✓ one pass and ≤ 10 ms, ~ one pass and slower, × sequential.
- **inference**: how p(z | x) is obtained: an amortised encoder (a guide network: one pass per
  datum) or an exact engine ✓✓; an MCMC run that agreed with the reference ✓; only approximate
  engines agreed (VI, MAP) ~; latents but no engine agreed ×; no latent sites ×× (nothing to
  infer).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ppgen.agreement import is_mcmc
from ppgen.diagram import MIN_CHAIN, step_groups
from ppgen.structure import ModelStructure, inspect

TASKS = ("modeling", "learning", "scoring", "sampling", "inference")

#: The seed tutorial's ratings (quoted from its sections; families keyed by catalogue module).
TUTORIAL_RATINGS: dict[str, dict[str, str]] = {
    "autoregressive": {"modeling": "✓✓", "learning": "✓✓ exact MLE", "scoring": "✓✓ exact chain rule", "sampling": "× sequential, O(T)", "inference": "× no latents"},
    "vae": {"modeling": "✓✓", "learning": "✓ ELBO", "scoring": "~ bound / IWAE", "sampling": "✓✓ one pass", "inference": "✓✓ encoder"},
    "gan": {"modeling": "✓✓", "learning": "× unstable", "scoring": "×× no density", "sampling": "✓✓ one pass", "inference": "× no encoder"},
    "flows": {"modeling": "✓✓", "learning": "✓", "scoring": "✓✓ exact", "sampling": "✓", "inference": "✓✓ exact inverse"},
    "diffusion": {"modeling": "✓✓", "learning": "✓✓ stable", "scoring": "✓ bound / ODE", "sampling": "× many steps", "inference": "~"},
}

LEARN_FAST, LEARN_OK = 10.0, 60.0  # seconds
SCORE_FAST = 1.0  # ms per datum
SAMPLE_FAST, SAMPLE_OK = 1.0, 10.0  # ms per datum
NUM_GENERATED = 20  # program runs drawn to time sampling
KIND_ORDER = {"exact": 0, "estimate": 1, "lower-bound": 2}


@dataclass(frozen=True)
class Cell:
    """One measured task of one family: a rating (``None``: not measured) and what was measured."""

    rating: Optional[str]
    measured: str

    @property
    def text(self) -> str:
        return f"{self.rating} {self.measured}" if self.rating else f"not measured: {self.measured}"


@dataclass(frozen=True)
class FamilyRow:
    family: str
    cells: dict[str, Cell]
    tutorial: dict[str, str]

    def disagreements(self) -> dict[str, str]:
        """Tasks where the measured rating differs from the tutorial's, with the measurement."""
        out = {}
        for task, quoted in self.tutorial.items():
            cell = self.cells[task]
            if cell.rating is None:
                out[task] = f"tutorial {quoted}; not measured here: {cell.measured}"
            elif quoted.split(" ")[0] != cell.rating:
                out[task] = f"tutorial {quoted}, measured {cell.rating}: {cell.measured}"
        return out


# ------------------------------------------------------------------------------------------
# measurements


def _num_data(structure: ModelStructure) -> int:
    """Data in the observed sites' outermost plate (1 when they have no plate)."""
    sizes = [structure.plates[site.plates[0]].size for site in structure.observed.values() if site.plates]
    return max(sizes) if sizes else 1


def _sequential(structure: ModelStructure) -> Optional[int]:
    """The longest chain of steps ``name_0 .. name_{T-1}`` (a ``markov`` loop), if any."""
    lengths = [len(m) for m in step_groups(structure.sites).values() if len(m) >= MIN_CHAIN]
    return max(lengths) if lengths else None


def modeling(reports: list[Any]) -> Cell:
    latent = {"continuous": 0, "discrete": 0}
    networks, sequences, runnable = 0, False, 0
    for report in reports:
        structure = report.structure
        for site in structure.latent.values():
            latent["discrete" if site.is_discrete else "continuous"] += 1
        networks += bool(structure.has_modules)
        sequences = sequences or _sequential(structure) is not None
        runnable += any(run.result is not None for run in report.runs)
    parts = [f"{len(reports)} program(s)", f"{latent['continuous']} continuous and {latent['discrete']} discrete latent sites"]
    if networks:
        parts.append("neural networks")
    if sequences:
        parts.append("sequences")
    rating = "✓✓" if runnable == len(reports) else "✓" if runnable else "×"
    return Cell(rating, f"{', '.join(parts)}; {runnable} of {len(reports)} ran on an engine")


def learning(reports: list[Any]) -> Cell:
    from ppgen.engine import registered_engines

    engines = registered_engines()
    tried, good = [], []
    for report in reports:
        for run in report.runs:
            if run.result is None or "learn" not in engines[run.engine].tasks:
                continue
            tried.append(run.engine)
            verdict = report.verdicts.get(run.engine)
            if not run.cautions and (verdict is None or verdict.status != "disagrees"):
                good.append((run.result.seconds, run.engine, report.example.name))
    if not tried:
        return Cell("××", "no learning engine applies")
    if not good:
        return Cell("×", f"every learning run ({', '.join(sorted(set(tried)))}) warned or disagreed with the reference")
    seconds, engine, example = min(good)
    rating = "✓✓" if seconds <= LEARN_FAST else "✓" if seconds <= LEARN_OK else "~"
    return Cell(rating, f"{seconds:.1f} s ({engine} on {example}, no warning, no disagreement)")


def _best_scorer(reports: list[Any]) -> Optional[tuple[Any, str]]:
    best = None
    for report in reports:
        for run in report.runs:
            if run.result is None or run.result.log_evidence is None or run.cautions:
                continue
            rank = KIND_ORDER[run.result.log_evidence.kind]
            if best is None or rank < best[0]:
                best = (rank, report, run.engine)
    return None if best is None else best[1:]


def scoring(reports: list[Any], quick: bool) -> Cell:
    from ppgen.engine import check_all
    from ppgen.verbs import score

    chosen = _best_scorer(reports)
    if chosen is None:
        reasons = [c.reason for r in reports for c in check_all(r.structure) if "score" in c.tasks and not c.applies and c.reason]
        return Cell("××", f"no engine scored the programs without warnings{': ' + reasons[0] if reasons else ''}")
    report, engine = chosen
    from ppgen.tour import _engine_options

    options = _engine_options(report.example, engine, quick)
    if "num_steps" in options:  # the bound is fitted (svi): scoring new data means fitting again
        run = next(r for r in report.runs if r.engine == engine)
        num_data = _num_data(report.structure)
        ms = 1000.0 * run.result.seconds / num_data
        return Cell("~" if run.result.log_evidence.kind != "exact" else "✓", (
            f"{run.result.log_evidence.kind}, {ms:.3g} ms/datum including the fit ({engine} on the {num_data} training "
            f"data of {report.example.name}; a held-out score needs the fitted networks, not measured here)"
        ))
    try:
        held_out = report.example.simulate(seed=1).data
    except TypeError as error:
        return Cell(None, f"{report.example.name}: cannot simulate held-out data with another seed ({error})")
    try:
        start = time.perf_counter()
        estimate = score(report.example.model, engine=engine, **held_out, **options)
        seconds = time.perf_counter() - start
        num_data = _num_data(inspect(report.example.model, **held_out))
    except Exception as error:  # noqa: BLE001 - the table says why instead of stopping
        return Cell(None, f"{engine} on held-out {report.example.name} failed: {type(error).__name__}: {error}")
    ms = 1000.0 * seconds / num_data
    if estimate.kind == "exact":
        rating = "✓✓" if ms <= SCORE_FAST else "✓"
    else:
        rating = "~"
    return Cell(rating, f"{estimate.kind}, {ms:.3g} ms/datum ({engine} on {num_data} held-out data of {report.example.name})")


def _free_data(report: Any) -> dict[str, Any]:
    """The example's arguments with its observed data removed (to generate fresh data)."""
    data = dict(report.simulated.data)
    for site in report.structure.observed.values():
        if site.data_argument in data:
            data[site.data_argument] = None
    return data


def sampling(reports: list[Any]) -> Cell:
    from ppgen.verbs import generate

    measured = []
    for report in reports:
        try:
            arguments = _free_data(report)
            generate(report.example.model, num_samples=1, seed=0, **arguments)  # warm-up (tracing, caches)
            start = time.perf_counter()
            generate(report.example.model, num_samples=NUM_GENERATED, seed=1, **arguments)
            seconds = time.perf_counter() - start
            structure = inspect(report.example.model, **arguments)
        except Exception as error:  # noqa: BLE001
            measured.append((None, report.example.name, f"{type(error).__name__}: {error}", None))
            continue
        ms = 1000.0 * seconds / (NUM_GENERATED * _num_data(structure))
        measured.append((ms, report.example.name, "", _sequential(structure)))
    timed = [m for m in measured if m[0] is not None]
    if not timed:
        return Cell(None, f"generate failed on {measured[0][1]}: {measured[0][2]}" if measured else "no example")
    ms, name, _, steps = max(timed, key=lambda m: m[0])
    if any(m[3] for m in timed):
        steps = max(m[3] for m in timed if m[3])
        return Cell("×", f"sequential over {steps} steps, {ms:.3g} ms/datum (slowest: {name})")
    rating = "✓✓" if ms <= SAMPLE_FAST else "✓" if ms <= SAMPLE_OK else "~"
    return Cell(rating, f"one pass, {ms:.3g} ms/datum (slowest: {name})")


def inference(reports: list[Any]) -> Cell:
    if not any(report.structure.latent for report in reports):
        return Cell("××", "no latent sites: nothing to infer")
    for report in reports:
        for engine, options in report.example.options.items():
            guide = options.get("guide")
            if getattr(guide, "encoder", None) is not None and any(r.engine == engine and r.result is not None for r in report.runs):
                return Cell("✓✓", f"amortised encoder q(z | x) trained by {engine} on {report.example.name}: one pass per datum")
    agreeing = []
    for report in reports:
        for run in report.runs:
            verdict = report.verdicts.get(run.engine)
            if run.result is None or run.cautions or verdict is None or verdict.status not in ("agrees", "reference"):
                continue
            exact = run.result.log_evidence is not None and run.result.log_evidence.kind == "exact"
            agreeing.append(("exact" if exact else "mcmc" if is_mcmc(run.result) else "approximate", run.engine))
    kinds = {kind for kind, _ in agreeing}
    engines = ", ".join(sorted({engine for _, engine in agreeing}))
    if "exact" in kinds:
        return Cell("✓✓", f"exact engine ({engines} agreed)")
    if "mcmc" in kinds:
        return Cell("✓", f"MCMC agreed with the reference ({engines})")
    if kinds:
        return Cell("~", f"only approximate engines agreed ({engines})")
    return Cell("×", "no engine agreed with a reference without warnings")


def measure(reports: list[Any], quick: bool = True) -> list[FamilyRow]:
    """One :class:`FamilyRow` per family present in ``reports`` (tour :class:`ModelReport` s)."""
    families: dict[str, list[Any]] = {}
    for report in reports:
        families.setdefault(report.example.family, []).append(report)
    rows = []
    for family, members in families.items():
        cells = {
            "modeling": modeling(members),
            "learning": learning(members),
            "scoring": scoring(members, quick),
            "sampling": sampling(members),
            "inference": inference(members),
        }
        rows.append(FamilyRow(family, cells, TUTORIAL_RATINGS.get(family, {})))
    return rows


def to_html(rows: list[FamilyRow]) -> str:
    """The table (tutorial rating | measured, per task) and the disagreements explained."""
    header = ["family"] + [task for task in TASKS]
    body, notes = [], []
    for row in rows:
        cells = [html.escape(row.family)]
        for task in TASKS:
            cell = row.cells[task]
            quoted = row.tutorial.get(task)
            tutorial = f"<span class='muted'>tutorial: {html.escape(quoted)}</span><br>" if quoted else ""
            shown = cell.rating or "not measured"
            cells.append(f"{tutorial}<span title='{html.escape(cell.measured, quote=True)}'>{html.escape(shown)}</span> "
                         f"<small>{html.escape(cell.measured)}</small>")
        body.append(cells)
        notes.extend(f"<li>{html.escape(row.family)} · {task}: {html.escape(text)}</li>" for task, text in row.disagreements().items())
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    table = "<table><tr>" + head + "</tr>" + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body) + "</table>"
    legend = f"<p class='muted'>{html.escape(_THRESHOLDS)}</p>"
    explained = f"<h3>Where the measurement disagrees with the tutorial</h3><ul>{''.join(notes)}</ul>" if notes else ""
    return legend + table + explained


_THRESHOLDS = (
    f"Thresholds: learning ✓✓ ≤ {LEARN_FAST:g} s, ✓ ≤ {LEARN_OK:g} s to a run without warnings that agrees with the "
    f"reference; scoring ✓✓ exact ≤ {SCORE_FAST:g} ms/datum on held-out data, ✓ exact, ~ bound or estimate, ×× none; "
    f"sampling ✓✓ one pass ≤ {SAMPLE_FAST:g} ms/datum, ✓ ≤ {SAMPLE_OK:g} ms, ~ slower, × sequential; inference ✓✓ "
    "encoder or exact engine, ✓ MCMC agreed, ~ only approximate engines agreed, × none agreed, ×× no latents. "
    "Times from this run's machine."
)
