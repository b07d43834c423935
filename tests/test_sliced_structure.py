"""A minibatch run's structure is read from slices of its data (:mod:`ppgen.sliced_structure`).

Truth: the structure traced on all the data (:func:`ppgen.structure.inspect`); the sliced
structure must equal it. And a data tensor that logs every operation on itself shows that a
minibatch ``learn`` reads the data only by selecting rows: at most B + 1 rows while reading
the structure, B per step, and chunks in the final streamed pass; never an operation over all N.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ppgen
from ppgen import dist, param, plate, sample
from ppgen.engine import resolve
from ppgen.sliced_structure import minibatch_structure
from ppgen.structure import inspect


def shop_visits(y, K=3):
    """A user's 1-D mixture with its own names."""
    mix = param("mix", torch.ones(K) / K, constraint=dist.constraints.simplex)
    level = param("level", torch.linspace(-1.0, 1.0, K))
    spread = param("spread", torch.ones(K), constraint=dist.constraints.positive)
    with plate("visits", y.shape[0]):
        kind = sample("kind", dist.Categorical(mix))
        sample("y", dist.Normal(level[kind], spread[kind]), obs=y)


def noisy_regression(features, outcome, prior_scale=2.0):
    """Covariates (N, D), a global latent vector, a per-datum latent and an observed site."""
    weights = sample("weights", dist.Normal(torch.zeros(features.shape[1]), prior_scale).to_event(1))
    noise = sample("noise", dist.HalfNormal(1.0))
    with plate("patients", len(outcome)):
        offset = sample("offset", dist.Normal(0.0, 1.0))
        sample("outcome", dist.Normal(features @ weights + offset, noise), obs=outcome)


def panel(scores):
    """Two nested plates over (N, 4) data: the data plate outermost, a fixed plate inside."""
    mean = param("mean", torch.zeros(4))
    with plate("students", scores.shape[0], dim=-2):
        ability = sample("ability", dist.Normal(0.0, 1.0))
        with plate("tests", 4, dim=-1):
            sample("scores", dist.Normal(mean + ability, 1.0), obs=scores)


def sized_by_values(counts):
    """Its number of categories is read from the data's values: needs the full trace."""
    categories = int(counts.max()) + 1
    probs = param("probs", torch.ones(categories) / categories, constraint=dist.constraints.simplex)
    with plate("items", len(counts)):
        sample("counts", dist.Categorical(probs), obs=counts)


def one_site_per_datum(y):
    """A site per datum: the structure grows with N, so it cannot be read from a slice."""
    loc = param("loc", torch.tensor(0.0))
    for i in range(len(y)):
        sample(f"y_{i}", dist.Normal(loc, 1.0), obs=y[i])


def sized_by_argument(y, n=None):
    loc = param("loc", torch.tensor(0.0))
    with plate("rows", n):
        sample("y", dist.Normal(loc, 1.0), obs=y)


RNG = np.random.default_rng(7)


@pytest.mark.parametrize(
    "model, args, batch",
    [
        (shop_visits, (RNG.normal(size=700),), 40),
        (noisy_regression, (RNG.normal(size=(333, 5)), RNG.normal(size=333)), 17),
        (panel, (torch.as_tensor(RNG.normal(size=(90, 4))),), 1),
    ],
    ids=["mixture", "covariates", "nested-plates"],
)
def test_sliced_structure_equals_the_full_trace(model, args, batch):
    sliced = minibatch_structure(model, args, {}, batch)
    assert sliced is not None
    assert sliced == inspect(model, *args)


@pytest.mark.parametrize(
    "model, args, kwargs",
    [
        (sized_by_values, (RNG.integers(0, 6, size=400).astype(float),), {}),
        (one_site_per_datum, (RNG.normal(size=30),), {}),
        (sized_by_argument, (RNG.normal(size=200),), {"n": 200}),
    ],
    ids=["value-read", "site-per-datum", "plate-from-an-argument"],
)
def test_structures_a_slice_cannot_tell_need_the_full_trace(model, args, kwargs):
    assert minibatch_structure(model, args, kwargs, 10) is None


def test_small_data_are_traced_whole():
    assert minibatch_structure(shop_visits, (RNG.normal(size=21),), {}, 20) is None


class RowLog(torch.Tensor):
    """A data tensor that logs each operation on itself: (operation, rows of its result).
    Its results are plain tensors, so only operations on the whole data are logged."""

    log: list[tuple[str, object]] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        rows = out.shape[0] if isinstance(out, torch.Tensor) and out.dim() else None
        cls.log.append((getattr(func, "__name__", repr(func)), rows))
        return out


def _logged(array: np.ndarray) -> RowLog:
    RowLog.log = []
    return torch.as_tensor(array).as_subclass(RowLog)


def _reads(log: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """The operations that read values: all but attribute look-ups (shape, dtype) and ``dim``."""
    return [(name, rows) for name, rows in log if name not in ("__get__", "dim", "size", "__len__")]


@pytest.mark.parametrize("engine", ["em", "svi"])
def test_reading_the_structure_selects_a_slice(engine):
    data = _logged(RNG.normal(size=5000))
    resolve(engine, shop_visits, (data,), {"subsample_size": 64}, "learn")
    reads = _reads(RowLog.log)
    assert reads and all(name == "__getitem__" and rows <= 65 for name, rows in reads), reads


def test_minibatch_mle_reads_the_data_only_by_rows():
    """The structure (B and B + 1 rows) and the Adam steps (B rows each): the whole run."""
    def rates(counts, exposure):
        base = param("base", torch.tensor(1.0), constraint=dist.constraints.positive)
        with plate("shops", counts.shape[0]):
            sample("counts", dist.Poisson(base * exposure), obs=counts)

    exposure = RNG.uniform(0.5, 2.0, size=3000)
    counts = _logged(RNG.poisson(3.0 * exposure).astype(float))
    ppgen.learn(rates, counts, exposure, engine="mle", subsample_size=100, num_steps=20)
    reads = _reads(RowLog.log)
    assert reads and all(name == "__getitem__" and rows <= 101 for name, rows in reads), reads


def test_stochastic_em_reads_the_data_only_by_rows():
    """The whole run: the structure (B + 1 rows), the steps (B rows each) and the final
    streamed pass (chunks of 2^16 rows) select rows; nothing reads all N at once."""
    from ppgen.inference.em import _PASS_CHUNK

    size, batch = 2 * _PASS_CHUNK + 123, 500
    first = RNG.random(size) < 0.4
    data = _logged(np.where(first, RNG.normal(-2.0, 0.5, size), RNG.normal(1.5, 1.0, size)))
    result = ppgen.learn(shop_visits, data, engine="em", subsample_size=batch, num_steps=5, num_restarts=1, K=2)
    reads = _reads(RowLog.log)
    assert all(name == "__getitem__" and rows <= _PASS_CHUNK for name, rows in reads), sorted(set(reads))
    assert [rows for _, rows in reads[-3:]] == [_PASS_CHUNK, _PASS_CHUNK, 123]  # the pass, in consecutive chunks
    assert np.isfinite(result.diagnostics["log_likelihood"])
