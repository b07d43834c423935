"""Beam search against brute-force MAP, against enumerate's Viterbi path on an HMM, and a case
where greedy decoding misses the MAP that two beams find; each on both paths (``"carried"``:
the program declares its state with ``ppgen.carry``; ``"rerun"``: it does not). The carried
path against the rerun path on user-written recurrent programs, and a misplaced ``carry`` must
be caught (a warning, and the exact path's answer)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from pyro import poutine

import ppgen
from ppgen import carry, dist, factor, markov, plate, sample
from ppgen.errors import EngineNotApplicable, ReliabilityWarning


def _no_carry(name, value, event_dim=0):
    return value


PATHS = pytest.mark.parametrize("path", ["carried", "rerun"])


def _carrier(path: str):
    """``ppgen.carry`` for the carried path; the identity (a program declaring no state) for the rerun path."""
    return carry if path == "carried" else _no_carry

_TABLE = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _make_recipe(path: str):
    keep = _carrier(path)

    def recipe(taste=None):
        """A user's program: three dependent finite choices and an observed outcome."""
        base = sample("base", dist.Categorical(logits=torch.tensor([0.2, -0.4, 0.1], dtype=torch.float64)))
        spice = sample("spice", dist.Categorical(logits=_TABLE[base].sum(-1)))
        base = keep("base", base)  # base lives on past the decision on spice
        hot = sample("hot", dist.Bernoulli(logits=_TABLE[base, spice, 0]))
        base, spice = keep("base", base), keep("spice", spice)
        sample("taste", dist.Normal(_TABLE[base, spice, 1] + hot, 0.5), obs=taste)

    return recipe


def _brute_force(program, taste: float) -> list[tuple[float, tuple[int, int, int]]]:
    out = []
    for base, spice, hot in itertools.product(range(3), range(4), range(2)):
        values = {"base": torch.tensor(base), "spice": torch.tensor(spice), "hot": torch.tensor(float(hot))}
        trace = poutine.trace(poutine.condition(program, data=values)).get_trace(torch.tensor(taste, dtype=torch.float64))
        out.append((float(trace.log_prob_sum()), (base, spice, hot)))
    return sorted(out, reverse=True)


@PATHS
def test_exhaustive_beam_is_brute_force_map(path):
    taste = 0.8
    recipe = _make_recipe(path)
    truth = _brute_force(recipe, taste)
    result = ppgen.infer(recipe, taste, engine="beam", num_beams=24)
    assert result.diagnostics["path"] == path
    best = tuple(int(result.map_estimate[name]) for name in ("base", "spice", "hot"))
    assert best == truth[0][1]
    np.testing.assert_allclose(result.sample_stats["log_joint"], [value for value, _ in truth], atol=1e-9)
    assert result.samples["spice"].shape == (24,)


def _make_hmm(path: str):
    keep = _carrier(path)

    def two_state_hmm(y):
        z = None
        for t in markov(range(len(y))):
            z = sample(f"z_{t}", dist.Categorical(torch.tensor([0.55, 0.45]) if z is None else torch.tensor([[0.85, 0.15], [0.3, 0.7]])[z]))
            sample(f"y_{t}", dist.Categorical(torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]])[z]), obs=y[t])
            z = keep("z", z)  # the chain's state is its latest site

    return two_state_hmm


@PATHS
def test_beam_on_hmm_matches_enumerate_viterbi(path):
    y = torch.tensor([0, 2, 2, 1, 0, 0, 2, 1, 2])
    hmm = _make_hmm(path)
    viterbi = ppgen.infer(hmm, y, engine="enumerate").map_estimate
    result = ppgen.infer(hmm, y, engine="beam", num_beams=2 ** len(y))
    assert result.diagnostics["path"] == path
    assert all(int(result.map_estimate[name]) == int(viterbi[name]) for name in viterbi)
    log_joints = result.sample_stats["log_joint"]
    assert np.all(np.diff(log_joints) <= 0) and len(log_joints) == 2 ** len(y)
    assert abs(np.logaddexp.reduce(log_joints) - ppgen.score(hmm, y, engine="enumerate").value) < 1e-9


def _make_trap(path: str):
    keep = _carrier(path)

    def trap(signal=None):
        """Greedy takes a = 1 (p 0.6) but then spreads over four values of b (0.15 each); the MAP
        is a = 0, b = 0 (0.4 · 0.95 = 0.38)."""
        a = sample("a", dist.Bernoulli(0.6))
        probs = torch.tensor([[0.95, 0.05 / 3, 0.05 / 3, 0.05 / 3], [0.25, 0.25, 0.25, 0.25]])
        sample("b", dist.Categorical(probs[a.long()]))
        a = keep("a", a)
        sample("signal", dist.Normal(0.0, 1.0 + 0.0 * a), obs=signal)

    return trap


@PATHS
def test_greedy_misses_the_map_and_two_beams_find_it(path):
    trap = _make_trap(path)
    greedy = ppgen.infer(trap, 0.0, engine="beam", num_beams=1)
    two = ppgen.infer(trap, 0.0, engine="beam", num_beams=2)
    assert greedy.diagnostics["path"] == two.diagnostics["path"] == path
    assert float(greedy.map_estimate["a"]) == 1.0
    assert (float(two.map_estimate["a"]), int(two.map_estimate["b"])) == (0.0, 0)
    assert two.sample_stats["log_joint"][0] == pytest.approx(np.log(0.38) - 0.5 * np.log(2 * np.pi))
    assert greedy.sample_stats["log_joint"][0] == pytest.approx(np.log(0.15) - 0.5 * np.log(2 * np.pi))


def test_beam_options_and_applicability():
    with pytest.raises(ValueError, match="num_beams"):
        ppgen.infer(_make_trap("rerun"), 0.0, engine="beam", num_beams=0)

    def continuous(y=None):
        mu = sample("mu", dist.Normal(0.0, 1.0))
        sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(EngineNotApplicable, match="'mu'"):
        ppgen.infer(continuous, 0.3, engine="beam")


# --------------------------------------------------------------------------------------------
# the carried path against the rerun path on user-written recurrent programs

_GEN = torch.Generator().manual_seed(11)
_EMBED = torch.randn(4, 6, generator=_GEN, dtype=torch.float64)  # 4 words, 6 hidden units
_MIX = torch.randn(6, 6, generator=_GEN, dtype=torch.float64) / 2
_READ = torch.randn(6, 4, generator=_GEN, dtype=torch.float64)
_FIRST = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)


def _make_diary(path: str, mistake: str = ""):
    """A tiny recurrent program: words w_t ∈ {0..3} drawn from a tanh RNN's readout, a running
    count of word 0 that lowers word 0's next logit, and a noisy reading r_t of each word (observed),
    inside a plate of one diary. A user's mistakes: ``"misplaced"`` carries h before the decision
    instead of after it, ``"forgotten"`` does not carry the count."""
    keep = _carrier(path)
    misplaced = mistake == "misplaced"

    def diary(readings, num_words: int):
        with plate("diary", 1):
            h = torch.zeros(1, 6, dtype=torch.float64)
            count = torch.zeros(1, dtype=torch.float64)
            for t in range(num_words):
                if misplaced:
                    h = keep("h", h, event_dim=1)
                logits = h @ _READ - 0.7 * count[..., None] * _FIRST  # each earlier 0 makes another 0 less likely
                word = sample(f"w_{t}", dist.Categorical(logits=logits))
                if not misplaced:
                    h = keep("h", h, event_dim=1)
                if mistake != "forgotten":
                    count = keep("count", count)
                if t < len(readings):
                    sample(f"r_{t}", dist.Normal(word.to(torch.float64) + 0.1 * h[..., 0], 0.8), obs=readings[t])
                h = torch.tanh(h @ _MIX + _EMBED[word])
                count = count + (word == 0).to(torch.float64)

    return diary


def _diary_brute_force(readings, num_words):
    program = _make_diary("rerun")
    out = []
    for words in itertools.product(range(4), repeat=num_words):
        data = {f"w_{t}": torch.tensor([w]) for t, w in enumerate(words)}
        trace = poutine.trace(poutine.condition(program, data=data)).get_trace(readings, num_words)
        out.append((float(trace.log_prob_sum()), words))
    return sorted(out, reverse=True)


def test_carried_path_is_exact_when_exhaustive_and_equals_the_rerun_path():
    readings = torch.tensor([0.3, 2.2, 1.1], dtype=torch.float64)
    truth = _diary_brute_force(readings, 5)
    exhaustive = ppgen.infer(_make_diary("carried"), readings, 5, engine="beam", num_beams=4 ** 5)
    assert exhaustive.diagnostics["path"] == "carried"
    np.testing.assert_allclose(exhaustive.sample_stats["log_joint"], [value for value, _ in truth], atol=1e-9)
    assert tuple(int(exhaustive.map_estimate[f"w_{t}"]) for t in range(5)) == truth[0][1]
    for num_beams in (1, 3, 7):  # a real search: the beams reorder at nearly every step
        carried = ppgen.infer(_make_diary("carried"), readings, 12, engine="beam", num_beams=num_beams)
        rerun = ppgen.infer(_make_diary("rerun"), readings, 12, engine="beam", num_beams=num_beams)
        assert (carried.diagnostics["path"], rerun.diagnostics["path"]) == ("carried", "rerun")
        np.testing.assert_allclose(carried.sample_stats["log_joint"], rerun.sample_stats["log_joint"], rtol=0, atol=1e-9)
        for t in range(12):
            np.testing.assert_array_equal(carried.samples[f"w_{t}"], rerun.samples[f"w_{t}"])


@pytest.mark.parametrize("mistake, caught_by", [("misplaced", "failed"), ("forgotten", "differ from the runs' own")])
def test_misplaced_or_forgotten_carry_warns_and_gives_the_rerun_answer(mistake, caught_by):
    readings = torch.tensor([0.3, 2.2, 1.1], dtype=torch.float64)
    with pytest.warns(ReliabilityWarning, match=caught_by):
        wrong = ppgen.infer(_make_diary("carried", mistake), readings, 10, engine="beam", num_beams=4)
    assert wrong.diagnostics["path"] == "rerun"
    rerun = ppgen.infer(_make_diary("rerun"), readings, 10, engine="beam", num_beams=4)
    np.testing.assert_allclose(wrong.sample_stats["log_joint"], rerun.sample_stats["log_joint"], rtol=0, atol=1e-9)


def test_wrong_event_dim_warns_and_gives_the_rerun_answer():
    def stream(num_steps: int):
        h = torch.zeros(3, dtype=torch.float64)
        for t in range(num_steps):
            z = sample(f"z_{t}", dist.Categorical(logits=torch.stack([h.sum(-1), -h.sum(-1), h[..., 0]], -1)))
            h = carry("h", h)  # a hidden vector of 3 is one event: event_dim=1
            h = torch.tanh(h + torch.tensor([0.5, -0.2, 0.3], dtype=torch.float64) * (z[..., None] - 1.0))

    with pytest.warns(ReliabilityWarning, match="event_dim"):
        result = ppgen.infer(stream, 6, engine="beam", num_beams=3)
    assert result.diagnostics["path"] == "rerun"


@PATHS
def test_factors_count_in_the_log_joint(path):
    keep = _carrier(path)

    def penalised(num_steps: int):
        previous = None
        for t in range(num_steps):
            z = sample(f"z_{t}", dist.Bernoulli(0.7))
            if previous is not None:
                previous = keep("previous", previous)  # made before the decision on z_t, used after it
                factor(f"same_{t}", 2.0 * (z == previous).to(torch.float64))
            previous = z

    result = ppgen.infer(penalised, 4, engine="beam", num_beams=16)
    assert result.diagnostics["path"] == path
    truth = sorted(
        (sum(np.log(0.7 if z else 0.3) for z in zs) + 2.0 * sum(a == b for a, b in zip(zs, zs[1:])), zs)
        for zs in itertools.product((0, 1), repeat=4)
    )[::-1]
    np.testing.assert_allclose(result.sample_stats["log_joint"], [value for value, _ in truth], atol=1e-9)


def test_carry_is_the_identity_outside_beam_search_and_checks_event_dim():
    value = torch.arange(6.0).reshape(2, 3)
    assert carry("h", value, event_dim=1) is value
    with pytest.raises(ValueError, match=r"carry\('h'\): event_dim must be an integer >= 0, got -1"):
        carry("h", value, event_dim=-1)
