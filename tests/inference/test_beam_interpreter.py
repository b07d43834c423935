"""Beam search's carried path without Pyro's handler stack: once a call signature's search has
been run both ways with the same decisions, parents and scores, the interpreter runs it; its
result is the Pyro search's (bit for bit), a forgotten ``carry`` is still caught by the check,
and a program the interpreter cannot run keeps Pyro (``Result.diagnostics["search"]``)."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch

import ppgen
from ppgen import carry, dist, factor, module, plate, sample
from ppgen.errors import ReliabilityWarning


class Speller(torch.nn.Module):
    """A user's recurrent letter scorer over an alphabet of 6 (a tanh RNN)."""

    def __init__(self, width=7):
        super().__init__()
        generator = torch.Generator().manual_seed(9)
        self.embed = torch.nn.Parameter(torch.randn(6, width, generator=generator, dtype=torch.float64))
        self.mix = torch.nn.Parameter(torch.randn(width, width, generator=generator, dtype=torch.float64) * 0.5)
        self.read = torch.nn.Parameter(torch.randn(width, 6, generator=generator, dtype=torch.float64))

    def forward(self, h):
        return h @ self.read


def spell(speller, start, num_letters=9, forget=False):
    """Letters after a given start, a penalty on doubled letters (factor), one word (plate of 1)."""
    module("speller", speller)
    with plate("word", 1):
        h = torch.zeros(1, speller.mix.shape[0], dtype=torch.float64)
        previous = None
        for t in range(num_letters):
            if t < start.shape[-1]:
                letter = sample(f"letter_{t}", dist.Categorical(logits=speller(h)), obs=start[..., t])
            else:
                letter = sample(f"letter_{t}", dist.Categorical(logits=speller(h)))
            if not forget:
                h = carry("h", h, event_dim=1)
            if previous is not None:
                previous = carry("previous", previous)
                factor(f"double_{t}", -1.5 * (letter == previous).to(torch.float64))
            previous = letter
            h = torch.tanh(h @ speller.mix + speller.embed[letter])


def _equal(a, b):
    assert a.sample_stats["log_joint"].dtype == b.sample_stats["log_joint"].dtype
    assert np.array_equal(a.sample_stats["log_joint"], b.sample_stats["log_joint"])
    assert a.samples.keys() == b.samples.keys()
    for name in a.samples:
        assert np.array_equal(a.samples[name], b.samples[name]), name


@pytest.mark.parametrize("num_beams", [1, 4])
def test_interpreted_search_is_the_pyro_search(num_beams):
    speller, start = Speller(), torch.tensor([[2, 5]])
    first = ppgen.infer(spell, speller, start, 9, engine="beam", num_beams=num_beams)
    again = ppgen.infer(spell, speller, start, 9, engine="beam", num_beams=num_beams)
    assert first.diagnostics["path"] == again.diagnostics["path"] == "carried"
    assert (first.diagnostics["search"], again.diagnostics["search"]) == ("pyro", "interpreted")
    _equal(first, again)


def test_a_forgotten_carry_is_still_caught_on_the_interpreted_path():
    speller, start = Speller(width=5), torch.tensor([[1]])
    with pytest.warns(ReliabilityWarning, match="differ from the runs' own"):
        first = ppgen.infer(spell, speller, start, 8, True, engine="beam", num_beams=3)
    with pytest.warns(ReliabilityWarning, match="differ from the runs' own"):
        again = ppgen.infer(spell, speller, start, 8, True, engine="beam", num_beams=3)
    assert first.diagnostics["path"] == again.diagnostics["path"] == "rerun"
    _equal(first, again)


def pyro_inside(num_steps=5):
    h = torch.zeros(2, dtype=torch.float64)
    for t in range(num_steps):
        z = pyro.sample(f"z_{t}", pyro.distributions.Categorical(logits=torch.stack([h.sum(-1), -h.sum(-1)], -1)))
        h = carry("h", h, event_dim=1)
        h = torch.tanh(h + (z[..., None] - 0.5))


def test_a_program_calling_pyro_keeps_the_pyro_search():
    first = ppgen.infer(pyro_inside, 5, engine="beam", num_beams=2)
    again = ppgen.infer(pyro_inside, 5, engine="beam", num_beams=2)
    assert first.diagnostics["search"] == again.diagnostics["search"] == "pyro"
    _equal(first, again)
