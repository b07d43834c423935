"""The adversarial engine's draws without Pyro's handler stack: the interpreter draws exactly
what Pyro draws (same random state, bit for bit) on user programs, refuses what it does not
model, and a training run is the same whichever draws it used."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch

import ppgen
from ppgen import dist, module, param, plate, sample
from ppgen.backend import torch_precision, use_backend
from ppgen.inference import adversarial
from ppgen.inference._draw_interpreter import DrawInterpreter, same_draws
from ppgen.inference._interpreter import Unsupported


class Decoder(torch.nn.Module):
    def __init__(self, codes=3, pixels=5):
        super().__init__()
        generator = torch.Generator().manual_seed(4)
        self.layer = torch.nn.Linear(codes, pixels, dtype=torch.float64)
        with torch.no_grad():
            self.layer.weight.normal_(0.0, 0.5, generator=generator)
            self.layer.bias.normal_(0.0, 0.5, generator=generator)

    def forward(self, code):
        return self.layer(code)


def noisy_sensors(images, decoder, num_batches=2):
    """A user's program: a batch-level drift (its own plate, at dim -2), per-image codes, a
    decoder and Gaussian pixel noise with a learned positive scale."""
    module("decoder", decoder)
    noise = param("noise", torch.tensor(0.2, dtype=torch.float64), constraint=dist.constraints.positive)
    with plate("batches", num_batches, dim=-2):
        drift = sample("drift", dist.Normal(0.0, 0.1))
    with plate("images", images.shape[0], dim=-1):
        code = sample("code", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        sample("pixels", dist.Normal(decoder(code) + drift.mean(), noise).to_event(1), obs=images)


def _pyro_draw(program, images, decoder):
    with pyro.poutine.trace() as tracer, pyro.poutine.uncondition():
        program(images, decoder)
    return tracer.trace.nodes["pixels"]["value"]


def test_interpreter_draws_what_pyro_draws_on_a_user_program():
    images = torch.zeros(7, 5, dtype=torch.float64)
    decoder = Decoder()
    with use_backend("pyro"), torch_precision(), pyro.get_param_store().scope():
        pyro.get_param_store().clear()
        _pyro_draw(noisy_sensors, images, decoder)  # creates the params, as the engine's first run does
        interpreter = DrawInterpreter(("pixels",))
        torch.manual_seed(11)
        state = torch.get_rng_state()
        expected = _pyro_draw(noisy_sensors, images, decoder)
        torch.set_rng_state(state)
        found = interpreter.run(noisy_sensors, (images, decoder), {})["pixels"]
        assert found.shape == (7, 5)
        assert torch.equal(found, expected)
        # gradients reach the decoder through the reparameterised draw
        found.sum().backward()
        assert decoder.layer.weight.grad is not None and torch.isfinite(decoder.layer.weight.grad).all()
        assert same_draws(lambda: _pyro_draw(noisy_sensors, images, decoder),
                          lambda: interpreter.run(noisy_sensors, (images, decoder), {})["pixels"])


def scaled_program(images, decoder):
    module("decoder", decoder)
    with plate("images", images.shape[0]), pyro.poutine.scale(scale=2.0):
        code = sample("code", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        sample("pixels", dist.Normal(decoder(code), 0.1).to_event(1), obs=images)


def test_what_it_does_not_model_is_refused_and_the_engine_keeps_pyro():
    """A module or param not yet in the store, a Pyro handler inside the program and a
    subsampled plate are refused;
    ``same_draws`` then says no, and the engine trains through Pyro, as before."""
    images = torch.zeros(6, 5, dtype=torch.float64)
    decoder = Decoder()
    with use_backend("pyro"), torch_precision(), pyro.get_param_store().scope():
        pyro.get_param_store().clear()
        interpreter = DrawInterpreter(("pixels",))
        with pytest.raises(Unsupported, match="not the store's tensor"):  # the program has not run under Pyro yet
            interpreter.run(noisy_sensors, (images, decoder), {})
        _pyro_draw(scaled_program, images, decoder)
        with pytest.raises(Unsupported, match="Pyro handler"):
            interpreter.run(scaled_program, (images, decoder), {})
        assert not same_draws(lambda: _pyro_draw(scaled_program, images, decoder),
                              lambda: interpreter.run(scaled_program, (images, decoder), {})["pixels"])
    with pytest.raises(Unsupported, match="subsampled"):
        interpreter.plate("images", 10, 4, None)


def _fit(monkeypatch, use_interpreter, loss):
    if not use_interpreter:
        monkeypatch.setattr(adversarial._Trainer, "_use_interpreter_if_it_draws_the_same", lambda self: None)
    images = np.random.default_rng(2).normal(0.5, 0.2, (40, 5))
    chosen = {}
    original = adversarial._Trainer._draw

    def draw(self, index):
        chosen["interpreter"] = self.interpreter is not None
        return original(self, index)

    monkeypatch.setattr(adversarial._Trainer, "_draw", draw)
    fit = ppgen.learn(noisy_sensors, images, decoder=Decoder(), engine="adversarial", loss=loss, num_steps=6,
                      subsample_size=16, seed=3)
    monkeypatch.undo()
    return fit, chosen["interpreter"]


@pytest.mark.parametrize("loss", ["non-saturating", "wgan-gp"])
def test_training_is_the_same_with_and_without_the_interpreter(monkeypatch, loss):
    fast, used = _fit(monkeypatch, True, loss)
    slow, unused = _fit(monkeypatch, False, loss)
    assert used and not unused
    np.testing.assert_array_equal(fast.traces["generator_loss"], slow.traces["generator_loss"])
    np.testing.assert_array_equal(fast.traces["critic_loss"], slow.traces["critic_loss"])
    for name in slow.params:
        np.testing.assert_array_equal(fast.params[name], slow.params[name])
