"""The tour: every catalogue model with every applicable engine, as one static HTML report.

For each model: its program source, its plate diagram, the table of ``log p(x)`` by engine, and
per engine what it inferred or learned (posterior summaries, parameters, exact marginals,
objective traces, diagnostics, run time), with plots where a picture says more. At the top, the
capability table: which engine ran on which model, measured on this run, not claimed.
"""

from __future__ import annotations

import base64
import html
import inspect as pyinspect
import io
import json
import math
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ppgen.agreement import TRUTH, Verdict, verdicts
from ppgen.catalogue import Example, Simulated, catalogue
from ppgen.diagram import diagram_spec, to_graphviz
from ppgen.engine import check_all, engine_options, registered_engines
from ppgen.errors import ConvergenceWarning, ReliabilityWarning
from ppgen.results import Result
from ppgen.structure import ModelStructure, inspect
from ppgen.verbs import infer, learn

#: Options the tour lowers under ``--quick`` (only passed to engines that accept them).
QUICK_OPTIONS = {"num_samples": 300, "num_warmup": 200, "num_steps": 200}
TOUR_TASKS = ("infer", "learn")
GLOBAL_SIZE_LIMIT = 24  # latents with at most this many elements are summarised one by one
FIGURE_DPI = 72  # report figures: 90 dpi drew 1.6x the pixels for a page read on screen


@dataclass
class EngineRun:
    """One engine on one model: its result, or why it did not run."""

    engine: str
    result: Optional[Result] = None
    error: Optional[str] = None
    skipped: Optional[str] = None
    cautions: list[str] = field(default_factory=list)


@dataclass
class ModelReport:
    """An example's runs; ``verdicts`` (engine -> agreement with the reference) and ``aligned``
    (engine -> result with mixture labels aligned) are filled in by :func:`judge`."""

    example: Example
    simulated: Simulated
    structure: ModelStructure
    runs: list[EngineRun] = field(default_factory=list)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    aligned: dict[str, Result] = field(default_factory=dict)

    def result(self, engine: str) -> Optional[Result]:
        """The run's result with component labels aligned (the raw one before :func:`judge`)."""
        run = next((r for r in self.runs if r.engine == engine), None)
        return self.aligned.get(engine, run.result if run is not None else None)


def judge(report: ModelReport) -> ModelReport:
    """Align mixture labels across runs and state each run's agreement with the reference
    (see :mod:`ppgen.agreement`): only runs without warnings can be the reference."""
    results = {run.engine: run.result for run in report.runs if run.result is not None}
    trusted = {run.engine for run in report.runs if run.result is not None and not run.cautions and run.result.converged is not False}
    names = _small_globals(report.structure) + [n for n in report.structure.params if n in _comparable_params(results)]
    engines = registered_engines()
    learners = {engine for engine in results if engine in engines and "learn" in engines[engine].tasks}
    fits = _fit_log_likelihoods(report.structure, results, learners, report.simulated.truth)
    report.verdicts, report.aligned = verdicts(results, trusted, report.structure, names, report.simulated.truth, learners, fits)
    return report


def _fit_log_likelihoods(
    structure: ModelStructure, results: dict[str, Result], learners: set[str], truth: Optional[dict[str, Any]] = None
) -> dict[str, float]:
    """log p(x | θ) on the training data at each learner's ``param`` values, where it is exact:
    the program's latents are all finite discrete (summed out by enumeration) or absent; and,
    under the key ``TRUTH``, at the simulated true values when ``truth`` holds every ``param``.
    Two point fits are then compared by the likelihood they reach (see
    :func:`ppgen.agreement.compare_fits`), not coordinate by coordinate."""
    from dataclasses import replace

    from ppgen.verbs import score

    if not structure.params or any(not site.is_enumerable for site in structure.latent.values()):
        return {}
    fits = {engine: result.params for engine, result in results.items() if engine in learners and result.model is not None}
    template = next((results[engine] for engine in fits), None)
    truth = truth or {}
    if template is not None and all(
        n in truth and n in template.params and np.shape(truth[n]) == np.shape(template.params[n]) for n in structure.params
    ):
        fits[TRUTH] = {**template.params, **{n: np.asarray(truth[n]) for n in structure.params}}
    out = {}
    for engine, params in fits.items():
        if not set(structure.params) <= set(params):
            continue
        base = template if engine == TRUTH else results[engine]
        fitted = replace(base, params=params, task="learn", samples={}, map_estimate={})  # the parameters alone; latents summed out
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                estimate = score(fitted, engine="enumerate" if structure.latent else None)
        except Exception:  # a fit that cannot be scored is compared coordinate by coordinate
            continue
        if estimate.kind == "exact" and math.isfinite(estimate.value):
            out[engine] = float(estimate.value)
    return out


def _comparable_params(results: dict[str, Result]) -> set[str]:
    """Learned ``param`` values small enough to compare one by one (not network weights)."""
    return {
        name for result in results.values() for name, value in result.params.items()
        if "$$$" not in name and np.size(value) <= GLOBAL_SIZE_LIMIT
    }


def _figure_html(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="plot">'


def _small_globals(structure: ModelStructure) -> list[str]:
    names = []
    for site in structure.latent.values():
        size = math.prod(site.batch_shape + site.event_shape)
        if size <= GLOBAL_SIZE_LIMIT and not site.is_discrete:
            names.append(site.name)
    return names


def _engine_options(example: Example, engine: str, quick: bool) -> dict[str, Any]:
    accepted = engine_options(registered_engines()[engine])
    options: dict[str, Any] = {}
    if "progress" in accepted:
        options["progress"] = False
    if quick:
        options.update({k: v for k, v in QUICK_OPTIONS.items() if k in accepted})
    options.update(example.options.get(engine, {}))
    return options


def run_example(
    example: Example, quick: bool, engines: Optional[list[str]] = None, bar: Any = None, run_engine: Optional[Callable] = None
) -> ModelReport:
    """Simulate the example's data and run every applicable engine on it (``run_engine(example,
    simulated, engine, quick) -> EngineRun``, default :func:`_run_engine`; the parallel tour
    passes one that only plans the run, see :mod:`ppgen.tour_sweep`). The runs are not yet
    compared with each other: :func:`judge` does that once every cell is filled."""
    run_engine = _run_engine if run_engine is None else run_engine
    simulated = example.simulate()
    structure = inspect(example.model, **simulated.data)
    report = ModelReport(example, simulated, structure)
    for check in check_all(structure):
        if not any(task in check.tasks for task in TOUR_TASKS) or check.name == "prior":
            continue
        if engines is not None and check.name not in engines:
            continue
        if not check.applies:
            report.runs.append(EngineRun(check.name, skipped=check.reason))
            continue
        if check.name in example.skip:
            report.runs.append(EngineRun(check.name, skipped="skipped in the tour for this model (too slow or not meaningful)"))
            continue
        if "infer" not in check.tasks and check.name not in example.options:
            report.runs.append(EngineRun(check.name, skipped="a learning-only engine: the tour runs it where the example gives its options"))
            continue
        if bar is not None:
            bar.set_postfix(model=example.name, engine=check.name)
        report.runs.append(run_engine(example, simulated, check.name, quick))
    return report


def _run_engine(example: Example, simulated: Simulated, engine: str, quick: bool) -> EngineRun:
    options = _engine_options(example, engine, quick)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            verb = infer if "infer" in registered_engines()[engine].tasks else learn
            result = verb(example.model, engine=engine, **simulated.data, **options)
        return EngineRun(engine, result=result, cautions=_cautions(result, caught))
    except Exception as error:  # the tour reports failures instead of stopping
        return EngineRun(engine, error=f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}")


def _cautions(result: Result, caught: list[warnings.WarningMessage]) -> list[str]:
    """Why a run that returned should not be read as a plain success: ppgen's convergence and
    reliability warnings, and a result that says it did not converge."""
    notes = [str(w.message) for w in caught if issubclass(w.category, (ConvergenceWarning, ReliabilityWarning))]
    if result.converged is False and not notes:
        notes.append(f"{result.engine}: did not converge")
    return list(dict.fromkeys(notes))


# ------------------------------------------------------------------------------------------
# HTML


def _format_value(value: Any) -> str:
    array = np.asarray(value)
    if array.size == 1:
        number = float(array.reshape(-1)[0])
        return f"{number:.4g}"
    if array.size <= 12:
        return "[" + ", ".join(f"{float(v):.3g}" for v in array.reshape(-1)) + "]"
    return f"array{tuple(array.shape)}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _posterior_rows(result: Result, names: list[str], truth: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name in names:
        if name not in result.samples:
            continue
        draws = np.asarray(result.samples[name], dtype=float)
        flat = draws.reshape(draws.shape[0], -1)
        true = np.asarray(truth[name], dtype=float).reshape(-1) if name in truth and np.size(truth[name]) == flat.shape[1] else None
        for index in range(flat.shape[1]):
            label = name if flat.shape[1] == 1 else f"{name}[{index}]"
            sd = f"{flat[:, index].std():.3g}" if flat.shape[0] > 1 else "(point)"
            rows.append([html.escape(label), f"{flat[:, index].mean():.4g}", sd, f"{true[index]:.4g}" if true is not None else ""])
    return rows


def _marginals_figure(result: Result) -> Optional[Any]:
    import matplotlib.pyplot as plt

    items = [(k, np.asarray(v)) for k, v in result.marginals.items() if np.asarray(v).ndim == 2]
    if not items:
        return None
    figure, axes = plt.subplots(1, len(items), figsize=(5 * len(items), 2.2), squeeze=False)
    for axis, (name, probs) in zip(axes[0], items):
        shown = probs[:60]
        axis.imshow(shown.T, aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(f"p({name}_i = k | x), first {len(shown)} i")
        axis.set_xlabel("i")
        axis.set_ylabel("k")
    return figure


def _traces_figure(result: Result) -> Optional[Any]:
    import matplotlib.pyplot as plt

    traces = {k: np.asarray(v) for k, v in result.traces.items() if np.asarray(v).ndim == 1 and len(v) > 1}
    if not traces:
        return None
    figure, axes = plt.subplots(1, len(traces), figsize=(4.5 * len(traces), 2.5), squeeze=False)
    for axis, (name, values) in zip(axes[0], traces.items()):
        axis.plot(np.arange(1, len(values) + 1), values)
        axis.set_xlabel("iteration")
        axis.set_title(name)
    return figure


def _comparison_figure(report: ModelReport, names: list[str]) -> Optional[Any]:
    """Posterior histograms of each small global latent, one colour per engine."""
    import matplotlib.pyplot as plt

    panels = []
    for name in names:
        site = report.structure.sites[name]
        size = math.prod(site.batch_shape + site.event_shape)
        panels.extend((name, index, size) for index in range(min(size, 4)))
    runs = [(r.engine, report.result(r.engine)) for r in report.runs if r.result is not None]  # labels aligned
    if not panels or not any(name in result.samples for _, result in runs for name, _, _ in panels):
        return None
    panels = panels[:8]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.6), squeeze=False)
    for axis, (name, index, size) in zip(axes[0], panels):
        for engine, result in runs:
            if name not in result.samples:
                continue
            draws = np.asarray(result.samples[name], dtype=float).reshape(len(result.samples[name]), -1)[:, index]
            if draws.size > 1:
                axis.hist(draws, bins=30, density=True, histtype="step", label=engine)
            else:
                axis.axvline(draws[0], linestyle="--", color="gray", label=f"{engine} (point)")
        truth = report.simulated.truth.get(name)
        if truth is not None and np.size(truth) == size:
            axis.axvline(float(np.asarray(truth, dtype=float).reshape(-1)[index]), color="black", label="truth")
        axis.set_title(name if size == 1 else f"{name}[{index}]")
    axes[0][0].legend(fontsize=7)
    return figure


def _arviz_figure(result: Result, names: list[str]) -> Optional[Any]:
    if "r_hat" not in result.diagnostics or not names:
        return None
    import arviz as az
    import matplotlib.pyplot as plt

    present = [n for n in names if n in result.samples][:4]
    if not present:
        return None
    axes = az.plot_trace(result.to_arviz(), var_names=present, compact=True)
    return np.asarray(axes).reshape(-1)[0].figure if axes is not None else plt.gcf()


def _diagnostic_value(value: Any) -> str:
    """A diagnostic for the report: numbers formatted, small mappings listed, the rest as text."""
    if isinstance(value, (str, bool)) or value is None:
        return html.escape(str(value))
    if hasattr(value, "items"):
        shown = [f"{html.escape(str(k))}: {_diagnostic_value(v)}" for k, v in list(value.items())[:12]]
        return ", ".join(shown)
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return html.escape(str(value)[:200])
    return _format_value(array) if array.size <= 64 else f"array{tuple(array.shape)}"


def _diagnostics_html(result: Result) -> str:
    rows = [[html.escape(str(key)), _diagnostic_value(value)] for key, value in result.diagnostics.items()]
    return _table(["diagnostic", "value"], rows) if rows else ""


def _run_html(report: ModelReport, run: EngineRun, globals_: list[str]) -> str:
    if run.skipped:
        return f"<h4>{run.engine}</h4><p class='muted'>not applicable: {html.escape(run.skipped)}</p>"
    if run.error:
        return f"<h4>{run.engine}</h4><pre class='error'>{html.escape(run.error)}</pre>"
    result = report.result(run.engine)  # mixture labels aligned across engines
    parts = [f"<h4>{run.engine}</h4>"]
    parts.extend(f"<p class='caution'>⚠ {html.escape(note)}</p>" for note in run.cautions)
    facts = [f"time {result.seconds:.2f} s"]
    if result.log_evidence is not None:
        facts.append(f"log p(x): {html.escape(str(result.log_evidence))}")
    if result.num_iterations is not None:
        facts.append(f"{result.num_iterations} iterations" + (" (converged)" if result.converged else ""))
    parts.append("<p>" + " · ".join(facts) + "</p>")
    verdict = report.verdicts.get(run.engine)
    if verdict is not None:
        css = "error" if verdict.status == "disagrees" else "muted"
        parts.append(f"<p class='{css}'>{VERDICT_MARKS[verdict.status]} {html.escape(verdict.detail)}</p>")
    rows = _posterior_rows(result, globals_, report.simulated.truth)
    if rows:
        parts.append(_table(["quantity", "mean", "sd", "true value"], rows))
    params = {k: v for k, v in result.params.items() if k not in globals_ and "$$$" not in k}
    if params:
        truth = report.simulated.truth
        parts.append(
            _table(
                ["parameter", "learned", "true value"],
                [[html.escape(k), _format_value(v), _format_value(truth[k]) if k in truth else ""] for k, v in params.items()],
            )
        )
    parts.append(_network_summary(result.params))
    parts.append(_diagnostics_html(result))
    figures = [_marginals_figure(result), _traces_figure(result), _arviz_figure(result, globals_)]
    if report.example.report is not None:
        extra = report.example.report(report.example, report.simulated, result)
        figures.extend(extra if isinstance(extra, list) else [extra])
    # a family's report gives figures, or HTML text (a table of its own measures)
    parts.extend(f if isinstance(f, str) else _figure_html(f) for f in figures if f is not None)
    return "\n".join(parts)


def _network_summary(params: dict[str, Any]) -> str:
    """Learned network weights (``module$$$layer.weight``) summarised per module: its layers'
    shapes and the parameter count, not one row per weight tensor."""
    modules: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for name, value in params.items():
        if "$$$" in name:
            module, _, tensor = name.partition("$$$")
            modules.setdefault(module, []).append((tensor, tuple(np.shape(value))))
    if not modules:
        return ""
    rows = []
    for module, tensors in modules.items():
        count = sum(math.prod(shape) for _, shape in tensors)
        shapes = ", ".join(f"{html.escape(t)} {'×'.join(map(str, s)) or 'scalar'}" for t, s in tensors)
        rows.append([html.escape(module), f"{count:,}", f"{len(tensors)}", shapes])
    return _table(["network", "parameters", "tensors", "shapes"], rows)


def _evidence_table(report: ModelReport) -> str:
    """Two tables: estimates of the evidence log p(x) = log ∫ p(x, z) dz (exact, lower bounds,
    stochastic estimates), and log-likelihoods at a fit, log p(x | θ̂) (EM, maximum
    likelihood), which are a different quantity (θ maximised, not integrated out)."""
    evidence, at_fit = [], []
    num_data = _num_data(report.structure)
    for run in report.runs:
        if run.result is not None and run.result.log_evidence is not None:
            estimate = run.result.log_evidence
            stderr = f"{estimate.stderr:.3g}" if estimate.kind == "estimate" else ""
            per_datum = f"{estimate.value / num_data:.4f}" if num_data else ""
            evidence.append([run.engine, f"{estimate.value:.4f}", per_datum, stderr, estimate.kind])
        elif run.result is not None and "log_likelihood" in run.result.traces:
            at_fit.append([run.engine, f"{float(run.result.traces['log_likelihood'][-1]):.4f}"])
    parts = []
    if evidence:
        parts.append(_table(["engine", "evidence log p(x)", f"per datum (÷ {num_data})" if num_data else "per datum", "stderr", "kind"], evidence))
    if at_fit:
        parts.append("<p>Log-likelihood at the fitted parameters, log p(x | θ̂): a maximised value, not an evidence "
                     "estimate (not comparable with the table above).</p>")
        parts.append(_table(["engine", "log p(x | θ̂)"], at_fit))
    return "".join(parts) or "<p class='muted'>no engine computed log p(x)</p>"


def _num_data(structure: ModelStructure) -> Optional[int]:
    """Size of the outermost plate of the observed sites (the data plate), if they share one."""
    outer = {site.plates[0] for site in structure.observed.values() if site.plates}
    if len(outer) != 1:
        return None
    return structure.plates[outer.pop()].size


def _guide_structure(example: Example, simulated: Simulated) -> Optional[ModelStructure]:
    """The structure of the guide an engine runs with in the tour (an amortised encoder), so
    that the diagram draws it: dashed arrows x → z."""
    for options in example.options.values():
        guide = options.get("guide")
        if guide is None:
            continue
        try:
            program = guide.bind(example.model).program if hasattr(guide, "bind") else guide
            return inspect(program, **simulated.data)
        except Exception:  # noqa: BLE001 - the diagram then shows the model alone
            return None
    return None


def _model_html(report: ModelReport) -> str:
    example = report.example
    source = html.escape(pyinspect.getsource(example.model))
    guide = _guide_structure(example, report.simulated)
    diagram = to_graphviz(diagram_spec(report.structure, guide=guide, distributions=True), name=example.name)
    svg = diagram.pipe(format="svg", encoding="utf-8")
    svg = svg[svg.find("<svg"):]
    globals_ = _small_globals(report.structure)
    comparison = _comparison_figure(report, globals_)
    parts = [
        f"<section id='{example.name}'><h2>{example.name} <small>({example.family})</small></h2>",
        f"<p>{html.escape(example.description)}</p>",
        f"<div class='row'><div class='col'><h3>Program</h3><pre>{source}</pre></div>",
        f"<div class='col'><h3>Plate diagram</h3>{svg}</div></div>",
        "<h3>log p(x) by engine</h3>",
        _evidence_table(report),
    ]
    if comparison is not None:
        parts += ["<h3>Posteriors side by side</h3>", _figure_html(comparison)]
    parts.append("<h3>Engines</h3>")
    parts.extend(_run_html(report, run, globals_) for run in report.runs)
    parts.append("</section>")
    return "\n".join(parts)


#: Capability-cell marks: the run's agreement with the model's reference (see ppgen.agreement).
VERDICT_MARKS = {"reference": "★", "agrees": "✓", "disagrees": "✗", "not compared": "?"}
CAPABILITY_LEGEND = (
    "★ the reference: the best-founded run without warnings (exact, else MCMC or importance sampling, else a converged "
    "deterministic fit such as EM or CAVI, else a stochastic fit converged by its own test; never a fixed-budget SVI run); "
    "✓ agreed with it within Monte Carlo error (4 MCSE; plus ½ posterior sd for variational engines, 1 sd for point "
    "estimates), or, between two point fits, a log-likelihood within ½ χ²_d(0.95) of the reference's (5 % per value where "
    "it cannot be computed), mixture labels aligned first; ✗ disagreed; ? nothing to compare; "
    "⚠ the run warned (R-hat, ESS, divergences, not converged, importance ESS near 1); — not applicable or skipped. "
    "Hover a cell for the numbers."
)


def _capability_cell(run: Optional[EngineRun], verdict: Optional[Verdict]) -> str:
    if run is None or run.skipped:
        title = html.escape(run.skipped, quote=True) if run and run.skipped else ""
        return f"<span class='muted' title='{title}'>—</span>"
    if run.error:
        return f"<span class='error' title='{html.escape(run.error.splitlines()[0], quote=True)}'>failed</span>"
    verdict = verdict or Verdict("not compared", detail="not judged")
    mark = VERDICT_MARKS[verdict.status]
    notes = [verdict.detail] + run.cautions
    title = html.escape(" | ".join(n for n in notes if n), quote=True)
    warned = "⚠" if run.cautions else ""
    css = "error" if verdict.status == "disagrees" else "caution" if run.cautions else ""
    return f"<span class='{css}' title='{title}'>{mark}{warned} {run.result.seconds:.1f}s</span>"


def _capability_table(reports: list[ModelReport]) -> str:
    engines = sorted({run.engine for report in reports for run in report.runs})
    rows = []
    for report in reports:
        cells = [f"<a href='#{report.example.name}'>{report.example.name}</a>"]
        by_engine = {run.engine: run for run in report.runs}
        cells.extend(_capability_cell(by_engine.get(engine), report.verdicts.get(engine)) for engine in engines)
        rows.append(cells)
    return f"<p class='muted'>{html.escape(CAPABILITY_LEGEND)}</p>" + _table(["model"] + engines, rows)


STYLE = """
body { font-family: Helvetica, Arial, sans-serif; margin: 2em; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
.row { display: flex; gap: 2em; flex-wrap: wrap; } .col { flex: 1; min-width: 420px; }
.muted { color: #888; } .error { color: #b00; } .caution { color: #b60; }
section { border-top: 2px solid #ddd; margin-top: 2em; }
svg { max-width: 100%; height: auto; }
"""


def _timing_table(phases: dict[str, float]) -> str:
    rows = [[html.escape(name), f"{seconds:.1f}"] for name, seconds in phases.items()]
    return _table(["phase", "seconds"], rows)


def write_report(
    reports: list[ModelReport],
    directory: Path,
    seconds: float,
    task_rows: Optional[list[Any]] = None,
    phases: Optional[dict[str, float]] = None,
    sections: Optional[dict[str, tuple[str, float]]] = None,
) -> Path:
    """Write ``directory/index.html`` and return its path. ``task_rows`` is the measured task
    table (:func:`ppgen.task_table.measure`); ``phases`` maps a phase of the tour (running an
    example, measuring the task table) to its seconds, and gains the report writing's.
    ``sections``: examples' sections written already (by the parallel tour's workers: the HTML
    and its seconds); the others are written here."""
    from ppgen.task_table import to_html

    directory.mkdir(parents=True, exist_ok=True)
    phases = phases if phases is not None else {}
    written = sections or {}
    sections = []
    for report in reports:
        start = time.perf_counter()
        text, took = written.get(report.example.name) or (_model_html(report), None)
        sections.append(text)
        phases[f"write {report.example.name}"] = time.perf_counter() - start if took is None else took
    body = [
        "<h1>ppgen tour</h1>",
        f"<p>{len(reports)} models, {sum(1 for r in reports for run in r.runs if run.result)} engine runs, "
        f"{seconds:.0f} s in all. Each model is one program; each engine ran on that same program.</p>",
        "<h2>Capability table (measured on this run)</h2>",
        _capability_table(reports),
    ]
    if task_rows:
        body += ["<h2>Task table: the tutorial's ratings, measured on the catalogue</h2>", to_html(task_rows)]
    body.extend(sections)
    body += ["<h2>Where the time went</h2>", _timing_table(phases)]
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>ppgen tour</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    path = directory / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def tour(
    directory: str = "tour",
    quick: bool = False,
    models: Optional[list[str]] = None,
    engines: Optional[list[str]] = None,
    progress: bool = True,
    workers: Optional[int] = None,
    ray: Optional[str] = None,
) -> Path:
    """Run the catalogue through every applicable engine and write the HTML report; with
    ``workers=N`` the model × engine cells run in N local processes, with ``ray=ADDRESS`` as Ray
    tasks (same report, see :mod:`ppgen.tour_sweep`)."""
    import matplotlib

    matplotlib.use("Agg")
    from tqdm.auto import tqdm

    from ppgen.task_table import measure

    examples = [e for e in catalogue() if models is None or e.name in models or e.family in models]
    start = time.perf_counter()
    from ppgen.sweep import check_workers, is_parallel

    check_workers(workers, ray, "tour")
    reports: list[ModelReport] = []
    phases: dict[str, float] = {}
    sections: dict[str, tuple[str, float]] = {}
    if is_parallel(workers, ray):
        from ppgen.tour_sweep import run_tour

        # judged, and their sections written, by the workers
        reports, sections = run_tour(examples, quick, engines, workers=workers, ray=ray, progress=progress)
        phases["run every example and write its section"] = time.perf_counter() - start
    else:
        bar = tqdm(examples, desc="tour", disable=not progress)
        for example in bar:
            begin = time.perf_counter()
            reports.append(run_example(example, quick, engines, bar))
            phases[f"run {example.name}"] = time.perf_counter() - begin
        for report in reports:
            judge(report)
    for report in reports:
        phases.update({f"  {report.example.name} · {run.engine}": run.result.seconds for run in report.runs if run.result})
    begin = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cells say what went wrong
        task_rows = measure(reports, quick)
    phases["task table"] = time.perf_counter() - begin
    begin = time.perf_counter()
    path = write_report(reports, Path(directory), time.perf_counter() - start, task_rows, phases, sections)
    phases["write report"] = time.perf_counter() - begin
    (Path(directory) / "timings.json").write_text(json.dumps(phases, indent=1), encoding="utf-8")
    return path
