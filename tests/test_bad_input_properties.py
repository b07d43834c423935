"""Property: malformed data raise a ppgen error, before any engine runs, for every program and
every engine that applies to it.

For each catalogue model (and two programs written here, with their own names and sizes) the
valid data come from its ``simulate``; hypothesis then breaks one observed-data argument (NaN or
±inf in a cell the program reads, a value outside the site's support there, an extra dimension,
no rows, strings, complex numbers, objects, bools, a ragged list) and runs one engine that
applies to the valid data, through the verb it serves. The only errors allowed are
``DataError``, ``ParameterError``, ``EngineNotApplicable``, ``TypeError`` and ``ValueError``,
and an error is required: malformed data must never run. Engines get tiny options, so a case
that wrongly runs fails quickly rather than slowly.

Which cells a program reads is found by tracing it once on the data argument replaced by the
cell numbers 0, 1, 2, ... (a sentinel trace, without ppgen's data checks): a program may read
only part of an argument (an undirected graph reads the upper triangle of its adjacency).
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Any, Optional

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ppgen
from ppgen import DataError, EngineNotApplicable, ParameterError, dist, ops, plate, sample
from ppgen.catalogue import Example, Simulated, catalogue
from ppgen.engine import check_all, engine_options
from ppgen.structure import trace_model

ALLOWED = (DataError, ParameterError, EngineNotApplicable, TypeError, ValueError)
TINY_OPTIONS = {"num_samples": 4, "num_warmup": 2, "num_steps": 2, "num_restarts": 1, "progress": False}
CELL_MALFORMATIONS = ("nan", "inf", "-inf", "out_of_support")
WHOLE_MALFORMATIONS = ("extra_dimension", "empty", "strings", "complex", "objects", "bools", "ragged_list")


# Programs written as a user would, with names and sizes unlike the catalogue's.
def clinic_visits(counts=None, exposure=None, num_clinics: int = 7):
    """Poisson counts with a per-clinic exposure and a Gamma prior on the rate."""
    rate = sample("rate", dist.Gamma(2.0, 1.0))
    with plate("clinic", num_clinics if counts is None else len(counts)):
        sample("visits", dist.Poisson(rate * exposure), obs=counts)


def simulate_clinic_visits(num_clinics: int = 7, seed: int = 3) -> Simulated:
    rng = np.random.default_rng(seed)
    exposure = rng.uniform(0.5, 2.0, num_clinics)
    return Simulated({"counts": rng.poisson(1.5 * exposure).astype(float), "exposure": exposure}, {"rate": 1.5})


def ballots(choices=None, num_voters: int = 13, num_parties: int = 4):
    """Each voter picks one of ``num_parties`` parties, with Dirichlet-distributed shares."""
    shares = sample("shares", dist.Dirichlet(ops.ones(num_parties)))
    with plate("voter", num_voters):
        sample("choice", dist.Categorical(shares), obs=choices)


def simulate_ballots(num_voters: int = 13, seed: int = 5) -> Simulated:
    rng = np.random.default_rng(seed)
    return Simulated({"choices": rng.integers(0, 4, num_voters).astype(float)}, {})


USER_PROGRAMS = [
    Example("clinic_visits", clinic_visits, simulate_clinic_visits),
    Example("ballots", ballots, simulate_ballots),
]
EXAMPLES = {example.name: example for example in [*catalogue(), *USER_PROGRAMS]}


@lru_cache(maxsize=None)
def _case(name: str) -> tuple[Example, dict[str, Any], dict[str, dict[str, Any]], list[str]]:
    """The example, its valid data, per observed-data argument its read cells and the support
    of the site reading them, and the engines that apply to the valid data."""
    example = EXAMPLES[name]
    data = example.simulate().data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = ppgen.inspect(example.model, **data)
    arguments: dict[str, dict[str, Any]] = {}
    for site in structure.observed.values():
        argument = site.data_argument
        if argument is None or argument in arguments or not isinstance(data.get(argument), np.ndarray):
            continue
        arguments[argument] = {"cells": _read_cells(example, data, argument), "support": _support(example, data, site.name)}
    engines = [check.name for check in check_all(structure) if check.applies]
    return example, data, arguments, engines


def _read_cells(example: Example, data: dict[str, Any], argument: str) -> list[tuple[int, ...]]:
    """Indices of the cells of ``data[argument]`` that some observed site reads verbatim."""
    value = data[argument]
    sentinel = np.arange(value.size, dtype=np.float64).reshape(value.shape)
    try:
        tracer, _ = trace_model(example.model, (), {**data, argument: sentinel})
    except Exception:  # the program uses the argument otherwise too (as an index): every cell
        return [tuple(int(i) for i in index) for index in np.ndindex(value.shape)]
    read: set[int] = set()
    for record in tracer.records.values():
        if record["kind"] == "observed" and isinstance(record.get("value"), torch.Tensor):
            values = record["value"].detach().reshape(-1).numpy()
            read.update(int(v) for v in values if 0 <= v < value.size and float(v).is_integer())
    cells = sorted(read) or list(range(value.size))
    return [tuple(int(i) for i in np.unravel_index(cell, value.shape)) for cell in cells]


def _support(example: Example, data: dict[str, Any], site: str) -> Any:
    """The element-wise support constraint of ``site``'s distribution (None if it has none)."""
    tracer, _ = trace_model(example.model, (), data)
    support = tracer.records[site]["fn"].support
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    return None if getattr(support, "event_dim", 0) else support


def _outside(support: Any, value: np.ndarray) -> list[float]:
    """Values outside ``support``, judged by the constraint itself: negative, fractional,
    above an upper bound (K for a Categorical on 0..K-1)."""
    if support is None:
        return []
    candidates = [-1.0, -0.5, 0.5, 1.5]
    upper = getattr(support, "upper_bound", None)
    if upper is not None:
        candidates += [float(upper) + 1.0, float(upper) + 0.5]
    return [c for c in candidates if not bool(support.check(torch.tensor(c, dtype=torch.float64)))]


def _malformed(draw: Any, value: np.ndarray, info: dict[str, Any]) -> Optional[Any]:
    kind = draw(st.sampled_from(CELL_MALFORMATIONS + WHOLE_MALFORMATIONS))
    if kind in CELL_MALFORMATIONS:
        bad_values = {"nan": [np.nan], "inf": [np.inf], "-inf": [-np.inf], "out_of_support": _outside(info["support"], value)}[kind]
        if not bad_values:
            return None  # every real number is in this support
        broken = value.astype(np.float64)  # a copy
        broken[draw(st.sampled_from(info["cells"]))] = draw(st.sampled_from(bad_values))
        return broken
    if kind == "extra_dimension":
        return np.stack([value, value], axis=-1)
    if kind == "empty":
        return value[:0]
    if kind == "strings":
        return value.astype(str)
    if kind == "complex":
        return value + 1j
    if kind == "objects":
        return value.astype(object)
    if kind == "bools":
        return value != 0
    rows = value.reshape(len(value), -1).tolist() if value.ndim else [[float(value)]]
    return [rows[0] + [0.0], *rows[1:]] if len(rows) > 1 else [[0.0, 1.0], [0.0]]


def _task(engine: str) -> str:
    tasks = ppgen.registered_engines()[engine].tasks
    return next(task for task in ("infer", "learn", "score") if task in tasks)


@pytest.mark.parametrize("name", list(EXAMPLES))
@settings(max_examples=12, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(draw=st.data())
def test_malformed_data_raise_a_ppgen_error_before_any_engine_runs(name: str, draw: Any) -> None:
    example, data, arguments, engines = _case(name)
    argument = draw.draw(st.sampled_from(sorted(arguments)))
    broken = _malformed(draw.draw, data[argument], arguments[argument])
    if broken is None:
        return
    engine = draw.draw(st.sampled_from(engines))
    cls = ppgen.registered_engines()[engine]
    options = {key: value for key, value in TINY_OPTIONS.items() if key in engine_options(cls)}
    verb = getattr(ppgen, _task(engine))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ALLOWED):
            verb(example.model, engine=engine, **{**data, argument: broken}, **options)
