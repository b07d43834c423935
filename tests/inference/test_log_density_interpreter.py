"""``mle``'s objective without Pyro's handler stack: on latent-free user programs the
interpreter's log density (and its gradient) equals the log_prob_sum of Pyro's trace to 1e-10,
with a minibatch plate's N / B scale and factor sites; what it does not model is refused, and
the engine then keeps Pyro and says so in ``Result.diagnostics["log_density"]``."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

import ppgen
from ppgen import dist, factor, module, param, plate, sample
from ppgen.backend import torch_precision, use_backend
from ppgen.inference._interpreter import Unsupported
from ppgen.inference._log_density_interpreter import LogDensityInterpreter, VerifiedLogDensity
from ppgen.inference.svi import _scaled


class Readout(torch.nn.Module):
    """A user's small recurrent scorer: three-way logits from a running state."""

    def __init__(self, width=6):
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        self.mix = torch.nn.Parameter(torch.randn(width, 3, generator=generator, dtype=torch.float64))
        self.feed = torch.nn.Parameter(torch.randn(3, width, generator=generator, dtype=torch.float64) * 0.3)
        self.width = width

    def forward(self, state):
        return torch.tanh(state) @ self.mix


def weather_log(days, readout, num_days=5):
    """Latent-free: a chain of three-way days per station, a Bernoulli 'alarm' per station, a
    learned global bias (param) and a soft penalty (factor) inside the station plate."""
    module("readout", readout)
    bias = param("alarm_bias", torch.tensor(0.3, dtype=torch.float64))
    with plate("stations", days.shape[0]):
        state = torch.zeros(days.shape[0], readout.width, dtype=torch.float64)
        for t in range(num_days):
            day = sample(f"day_{t}", dist.Categorical(logits=readout(state)), obs=days[:, t])
            state = state + readout.feed[day]
        alarm = sample("alarm", dist.Bernoulli(logits=state.sum(-1) * 0.1 + bias), obs=days[:, num_days].double())
        factor("smooth", -0.05 * state.pow(2).sum(-1) + 0.01 * alarm)
    sample("season", dist.Normal(bias, 2.0), obs=torch.tensor(0.4, dtype=torch.float64))


def _data(rows=23, seed=3):
    rng = np.random.default_rng(seed)
    days = rng.integers(0, 3, size=(rows, 6))
    days[:, 5] = rng.integers(0, 2, size=rows)
    return torch.as_tensor(days)


def _pyro_log_density(program, args, plate_name=None, scale=1.0):
    scaled = _scaled(program, plate_name, scale) if plate_name else program
    trace = poutine.trace(scaled).get_trace(*args)
    return trace.log_prob_sum(site_filter=lambda name, site: site["is_observed"])


@pytest.mark.parametrize("scale", [1.0, 23 / 7])
def test_log_density_and_gradient_equal_pyros_on_a_user_program(scale):
    days, readout = _data(), Readout()
    with use_backend("pyro"), torch_precision(), pyro.get_param_store().scope():
        pyro.get_param_store().clear()
        expected = _pyro_log_density(weather_log, (days, readout), "stations", scale)  # creates the params
        expected_grads = torch.autograd.grad(expected, [readout.mix, readout.feed, pyro.get_param_store()._params["alarm_bias"]])
        found = LogDensityInterpreter("stations", scale).log_density(weather_log, (days, readout), {})
        found_grads = torch.autograd.grad(found, [readout.mix, readout.feed, pyro.get_param_store()._params["alarm_bias"]])
    assert found.dtype == torch.float64
    assert abs(found.item() - expected.item()) <= 1e-10 * max(1.0, abs(expected.item()))
    for a, b in zip(found_grads, expected_grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_the_scale_is_applied_only_inside_its_plate():
    """Against an independent sum: the 'season' site outside the plate is not scaled."""
    days, readout = _data(rows=9), Readout(width=4)
    with use_backend("pyro"), torch_precision(), pyro.get_param_store().scope():
        pyro.get_param_store().clear()
        _pyro_log_density(weather_log, (days, readout))
        one = LogDensityInterpreter("stations", 1.0).log_density(weather_log, (days, readout), {})
        three = LogDensityInterpreter("stations", 3.0).log_density(weather_log, (days, readout), {})
        season = torch.distributions.Normal(pyro.param("alarm_bias"), 2.0).log_prob(torch.tensor(0.4, dtype=torch.float64))
    assert abs(float(three - season) - 3 * float(one - season)) <= 1e-10 * abs(float(one))


def coin_with_latent(flips):
    rho = sample("rho", dist.Beta(2.0, 2.0))
    with plate("flips", flips.shape[0]):
        sample("flip", dist.Bernoulli(rho), obs=flips)


def handler_inside(flips):
    weight = param("weight", torch.tensor(0.0))
    with plate("flips", flips.shape[0]), poutine.scale(scale=2.0):
        sample("flip", dist.Bernoulli(logits=weight), obs=flips)


def subsampled_plate(flips):
    weight = param("weight", torch.tensor(0.0))
    with plate("flips", flips.shape[0], subsample_size=3) as index:
        sample("flip", dist.Bernoulli(logits=weight), obs=flips[index])


@pytest.mark.parametrize("program, words", [(coin_with_latent, "latent"), (handler_inside, "handler"), (subsampled_plate, "subsampled")])
def test_what_it_does_not_model_is_refused(program, words):
    flips = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    with use_backend("pyro"), pyro.get_param_store().scope():
        pyro.get_param_store().clear()
        poutine.trace(program).get_trace(flips)
        with pytest.raises(Unsupported, match=words):
            LogDensityInterpreter().log_density(program, (flips,), {})


def test_a_value_that_disagrees_keeps_pyro():
    """The comparison can fail: a Pyro evaluation that differs from the interpreter's keeps Pyro."""
    flips = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)

    def tosses(flips):
        weight = param("weight", torch.tensor(0.2, dtype=torch.float64))
        with plate("tosses", 3):
            sample("toss", dist.Bernoulli(logits=weight), obs=flips)

    with use_backend("pyro"), pyro.get_param_store().scope():
        pyro.get_param_store().clear()
        checked = VerifiedLogDensity(tosses)
        checked(lambda: _pyro_log_density(tosses, (flips,)) + 1e-6, (flips,), {})
        assert checked.interpreter is None and "differs" in checked.how
        agreeing = VerifiedLogDensity(tosses)
        agreeing(lambda: _pyro_log_density(tosses, (flips,)), (flips,), {})
        assert agreeing.interpreter is not None and agreeing.how.startswith("interpreted")


def bigram_counts(text):
    """A user's latent-free program: letters after letters, a learned transition table."""
    logits = param("bigram_logits", torch.zeros(4, 4, dtype=torch.float64))
    with plate("lines", text.shape[0]):
        previous = text[:, 0]
        for t in range(1, text.shape[1]):
            previous = sample(f"letter_{t}", dist.Categorical(logits=logits[previous]), obs=text[:, t])


def test_mle_uses_the_interpreter_and_reaches_the_closed_form():
    """Bigram MLE: the transition probabilities are the row-normalised counts (closed form)."""
    rng = np.random.default_rng(5)
    text = rng.integers(0, 4, size=(60, 7))
    text[:, 1:] = np.where(rng.random((60, 6)) < 0.6, (text[:, :-1] + 1) % 4, text[:, 1:])
    result = ppgen.learn(bigram_counts, torch.as_tensor(text), engine="mle", optimizer="adam", learning_rate=0.05, num_steps=1500)
    assert result.diagnostics["log_density"].startswith("interpreted")
    counts = np.zeros((4, 4))
    for t in range(1, 7):
        np.add.at(counts, (text[:, t - 1], text[:, t]), 1)
    truth = counts / counts.sum(1, keepdims=True)
    logits = torch.as_tensor(result.params["bigram_logits"])
    assert np.allclose(torch.softmax(logits, -1).numpy(), truth, atol=2e-3)


def test_minibatch_mle_uses_the_interpreter_and_a_latent_program_keeps_pyro():
    rng = np.random.default_rng(2)
    text = torch.as_tensor(rng.integers(0, 4, size=(40, 5)))
    result = ppgen.learn(bigram_counts, text, engine="mle", subsample_size=8, num_steps=5)
    assert result.diagnostics["log_density"].startswith("interpreted")

    def offset_coin(flips):
        shift = sample("shift", dist.Normal(0.0, 1.0))
        weight = param("weight", torch.tensor(0.0))
        with plate("flips", flips.shape[0]):
            sample("flip", dist.Bernoulli(logits=weight + shift), obs=flips)

    fallback = ppgen.learn(offset_coin, np.array([1.0, 0.0, 1.0, 1.0]), engine="mle", num_steps=5)
    assert fallback.diagnostics["log_density"].startswith("pyro (latent sites")
