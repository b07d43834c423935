"""Beam search against brute-force MAP, against enumerate's Viterbi path on an HMM, and a case
where greedy decoding misses the MAP that two beams find."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from pyro import poutine

import ppgen
from ppgen import dist, markov, sample
from ppgen.errors import EngineNotApplicable

_TABLE = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _recipe(taste=None):
    """A user's program: three dependent finite choices and an observed outcome."""
    base = sample("base", dist.Categorical(logits=torch.tensor([0.2, -0.4, 0.1], dtype=torch.float64)))
    spice = sample("spice", dist.Categorical(logits=_TABLE[base].sum(-1)))
    hot = sample("hot", dist.Bernoulli(logits=_TABLE[base, spice, 0]))
    sample("taste", dist.Normal(_TABLE[base, spice, 1] + hot, 0.5), obs=taste)


def _brute_force(taste: float) -> list[tuple[float, tuple[int, int, int]]]:
    out = []
    for base, spice, hot in itertools.product(range(3), range(4), range(2)):
        values = {"base": torch.tensor(base), "spice": torch.tensor(spice), "hot": torch.tensor(float(hot))}
        trace = poutine.trace(poutine.condition(_recipe, data=values)).get_trace(torch.tensor(taste, dtype=torch.float64))
        out.append((float(trace.log_prob_sum()), (base, spice, hot)))
    return sorted(out, reverse=True)


def test_exhaustive_beam_is_brute_force_map():
    taste = 0.8
    truth = _brute_force(taste)
    result = ppgen.infer(_recipe, taste, engine="beam", num_beams=24)
    best = tuple(int(result.map_estimate[name]) for name in ("base", "spice", "hot"))
    assert best == truth[0][1]
    np.testing.assert_allclose(result.sample_stats["log_joint"], [value for value, _ in truth], atol=1e-9)
    assert result.samples["spice"].shape == (24,)


def _two_state_hmm(y):
    z = None
    for t in markov(range(len(y))):
        z = sample(f"z_{t}", dist.Categorical(torch.tensor([0.55, 0.45]) if z is None else torch.tensor([[0.85, 0.15], [0.3, 0.7]])[z]))
        sample(f"y_{t}", dist.Categorical(torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]])[z]), obs=y[t])


def test_beam_on_hmm_matches_enumerate_viterbi():
    y = torch.tensor([0, 2, 2, 1, 0, 0, 2, 1, 2])
    viterbi = ppgen.infer(_two_state_hmm, y, engine="enumerate").map_estimate
    result = ppgen.infer(_two_state_hmm, y, engine="beam", num_beams=2 ** len(y))
    assert all(int(result.map_estimate[name]) == int(viterbi[name]) for name in viterbi)
    log_joints = result.sample_stats["log_joint"]
    assert np.all(np.diff(log_joints) <= 0) and len(log_joints) == 2 ** len(y)
    assert abs(np.logaddexp.reduce(log_joints) - ppgen.score(_two_state_hmm, y, engine="enumerate").value) < 1e-9


def _trap(signal=None):
    """Greedy takes a = 1 (p 0.6) but then spreads over four values of b (0.15 each); the MAP
    is a = 0, b = 0 (0.4 · 0.95 = 0.38)."""
    a = sample("a", dist.Bernoulli(0.6))
    probs = torch.tensor([[0.95, 0.05 / 3, 0.05 / 3, 0.05 / 3], [0.25, 0.25, 0.25, 0.25]])
    sample("b", dist.Categorical(probs[a.long()]))
    sample("signal", dist.Normal(0.0, 1.0), obs=signal)


def test_greedy_misses_the_map_and_two_beams_find_it():
    greedy = ppgen.infer(_trap, 0.0, engine="beam", num_beams=1)
    two = ppgen.infer(_trap, 0.0, engine="beam", num_beams=2)
    assert float(greedy.map_estimate["a"]) == 1.0
    assert (float(two.map_estimate["a"]), int(two.map_estimate["b"])) == (0.0, 0)
    assert two.sample_stats["log_joint"][0] == pytest.approx(np.log(0.38) - 0.5 * np.log(2 * np.pi))
    assert greedy.sample_stats["log_joint"][0] == pytest.approx(np.log(0.15) - 0.5 * np.log(2 * np.pi))


def test_beam_options_and_applicability():
    with pytest.raises(ValueError, match="num_beams"):
        ppgen.infer(_trap, 0.0, engine="beam", num_beams=0)

    def continuous(y=None):
        mu = sample("mu", dist.Normal(0.0, 1.0))
        sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(EngineNotApplicable, match="'mu'"):
        ppgen.infer(continuous, 0.3, engine="beam")
