"""``generate`` without Pyro's handler stack: once a call signature's draws have been compared
bit for bit with Pyro's, :class:`AncestralInterpreter` draws it; the draws are Pyro's draws
(same seed, every site, with temperature, warpers and a kept prompt), and a program the
interpreter cannot run keeps Pyro (``Result.diagnostics["draws"]``)."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch

from ppgen import dist, module, param, plate, sample
from ppgen.inference import _draw_interpreter
from ppgen.inference.prior import Prior


class Tune(torch.nn.Module):
    """A user's recurrent note scorer: five-way logits from a state moved by each note."""

    def __init__(self, width=5):
        super().__init__()
        generator = torch.Generator().manual_seed(2)
        self.read = torch.nn.Linear(width, 5, dtype=torch.float64)
        with torch.no_grad():
            self.read.weight.normal_(0.0, 1.0, generator=generator)
        self.notes = torch.nn.Parameter(torch.randn(5, width, generator=generator, dtype=torch.float64))

    def forward(self, state):
        return self.read(torch.tanh(state))


def melodies(tune, opening=None, num_tunes=3, bars=6, voices=2):
    """Per tune: a tempo (continuous), per voice a chain of notes (the first ``opening`` ones
    given: kept without a tempo upstream, redrawn with one) and an accent bit per bar."""
    module("tune", tune)
    swing = param("swing", torch.tensor(0.5, dtype=torch.float64), constraint=dist.constraints.positive)
    with plate("tunes", num_tunes, dim=-2):
        tempo = sample("tempo", dist.Normal(torch.tensor(0.0, dtype=torch.float64), swing))
        with plate("voices", voices, dim=-1):
            state = torch.zeros(num_tunes, voices, 5, dtype=torch.float64)
            for bar in range(bars):
                given = None if opening is None or bar >= opening.shape[-1] else opening[..., bar]
                note = sample(f"note_{bar}", dist.Categorical(logits=tune(state)), obs=given)
                sample(f"accent_{bar}", dist.Bernoulli(logits=state.sum(-1) * 0.2 + tempo))
                state = state + tune.notes[note]


def _run(seed, **options):
    return Prior(num_samples=4, seed=seed, **{k: v for k, v in options.items() if k in ("temperature", "top_k", "top_p", "min_p")})


@pytest.mark.parametrize("options", [{}, {"temperature": 0.7, "top_p": 0.8}, {"top_k": 2, "min_p": 0.1}])
def test_interpreted_draws_are_pyros_bit_for_bit(options):
    tune = Tune()
    opening = torch.tensor([[3, 1], [0, 4]]).expand(3, 2, 2)
    kwargs = dict(opening=opening, num_tunes=3, bars=6, voices=2)
    first = _run(0, **options).run(melodies, tune, **kwargs)
    assert first.diagnostics["draws"] == "pyro"  # compared with the interpreter's, not yet used
    again = _run(0, **options).run(melodies, tune, **kwargs)
    assert again.diagnostics["draws"] == "interpreted"
    assert first.samples.keys() == again.samples.keys() and "tempo" in again.samples
    for name, values in first.samples.items():
        assert values.dtype == again.samples[name].dtype and np.array_equal(values, again.samples[name]), name
    assert np.array_equal(again.samples["note_0"], np.broadcast_to(opening[..., 0].numpy(), (4, 3, 2)))
    # another seed: the interpreter's draws against Pyro's own, the comparison forgotten
    other = _run(5, **options).run(melodies, tune, **kwargs)
    assert other.diagnostics["draws"] == "interpreted"
    _draw_interpreter._SAME_AS_PYRO.clear()
    by_pyro = _run(5, **options).run(melodies, tune, **kwargs)
    assert by_pyro.diagnostics["draws"] == "pyro"
    for name, values in by_pyro.samples.items():
        assert np.array_equal(values, other.samples[name]), name


def calls_pyro_directly(num=4):
    with plate("rows", num):
        level = pyro.sample("level", pyro.distributions.Normal(0.0, 1.0))
        sample("reading", dist.Normal(level, 0.5))


def scaled_inside(num=4):
    with plate("rows", num), pyro.poutine.scale(scale=3.0):
        sample("reading", dist.Normal(0.0, 0.5))


@pytest.mark.parametrize("program", [calls_pyro_directly, scaled_inside])
def test_a_program_it_cannot_run_keeps_pyro(program):
    first = _run(1).run(program, num=4)
    again = _run(1).run(program, num=4)
    assert first.diagnostics["draws"] == again.diagnostics["draws"] == "pyro"
    assert np.array_equal(first.samples["reading"], again.samples["reading"])


def test_a_trained_network_is_compared_again():
    """A module's weights moved in place (an optimiser step) change the call's signature."""
    tune = Tune()
    _run(0).run(melodies, tune, num_tunes=2, bars=3)
    assert _run(0).run(melodies, tune, num_tunes=2, bars=3).diagnostics["draws"] == "interpreted"
    with torch.no_grad():
        tune.notes.add_(0.1)
    assert _run(0).run(melodies, tune, num_tunes=2, bars=3).diagnostics["draws"] == "pyro"
