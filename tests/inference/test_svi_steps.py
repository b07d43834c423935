"""The gradient-step loop behind ``svi`` and ``advi``: the same updates as Pyro's ``SVI``, bit for
bit (ELBO trace and parameters), parameters that first appear after the first step are trained,
untouched ones are left alone, Pyro's checks run on the first step, and draws from a guide that
does not vectorise."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

import ppgen
from ppgen import dist, param, plate, sample
from ppgen.backend import torch_precision, use_backend
from ppgen.errors import EngineFailure
from ppgen.inference._gradient_steps import GradientSteps, optimizer_factory


def normal_known_variance(x):
    mu = sample("mu", dist.Normal(1.0, 2.0))
    with plate("N", len(x)):
        sample("x", dist.Normal(mu, 0.7), obs=x)


def normal_guide(x):
    loc = param("q_loc", torch.tensor(0.0))
    scale = param("q_scale", torch.tensor(0.5), constraint=dist.constraints.positive)
    sample("mu", dist.Normal(loc, scale))


@pytest.mark.parametrize("optimizer", ["adam", "clipped_adam"])
def test_svi_takes_the_same_steps_as_pyro_svi(optimizer):
    """The engine against a plain ``pyro.infer.SVI`` loop from the same seed (after the engine's
    one run of the guide before training): identical ELBO estimates and final parameters. A
    small clip norm makes ClippedAdam's clipping act."""
    x = np.random.default_rng(2).normal(1.5, 0.7, size=15)
    result = ppgen.infer(
        normal_known_variance, x, engine="svi", guide=normal_guide, num_steps=60, learning_rate=0.05,
        optimizer=optimizer, clip_norm=0.5, num_particles=2, num_samples=1, seed=3,
    )
    pyro_optimizer = pyro.optim.ClippedAdam({"lr": 0.05, "clip_norm": 0.5}) if optimizer == "clipped_adam" else pyro.optim.Adam({"lr": 0.05})
    with use_backend("pyro"), torch_precision(), torch.random.fork_rng(), pyro.get_param_store().scope():
        torch.manual_seed(3)
        data = torch.as_tensor(x)
        with torch.no_grad(), poutine.block():
            normal_guide(data)
        svi = SVI(normal_known_variance, normal_guide, pyro_optimizer, loss=Trace_ELBO(num_particles=2))
        reference = [-svi.step(data) for _ in range(60)]
        loc, scale = float(pyro.param("q_loc").detach()), float(pyro.param("q_scale").detach())
    np.testing.assert_array_equal(result.traces["elbo"], reference)
    assert float(result.params["q_loc"]) == loc and float(result.params["q_scale"]) == scale


def two_parameters(x, use_b):
    a = param("a", torch.tensor(0.0))
    b = param("b", torch.tensor(0.0)) if use_b else 0.0
    with plate("N", len(x)):
        sample("x", dist.Normal(a + b, 1.0), obs=x)


def no_guide(x, use_b):
    pass


def test_parameters_join_when_first_touched_and_untouched_ones_stay():
    x = torch.full((10,), 3.0, dtype=torch.float64)
    with use_backend("pyro"), torch_precision(), pyro.get_param_store().scope():
        steps = GradientSteps(two_parameters, no_guide, Trace_ELBO(), optimizer_factory("adam", 0.1))
        steps.step(x, False)
        assert float(pyro.param("a")) == pytest.approx(0.1)  # Adam's first step is lr · sign(gradient)
        steps.step(x, True)  # "b" is created in this step and moves with it
        a, b = float(pyro.param("a")), float(pyro.param("b"))
        assert b == pytest.approx(0.1) and a > 0.1
        elbo = steps.step(x, False)  # "b" untouched: Adam must not move it with stale moments
        assert float(pyro.param("b")) == b and float(pyro.param("a")) > a
        assert elbo == pytest.approx(float(dist.Normal(a, 1.0).log_prob(x).sum()), rel=1e-12)  # before the step


def thresholded_guide(x):
    """A guide with Python control flow on a drawn value: it cannot run vectorised over draws."""
    loc = param("q_loc", torch.tensor(0.0))
    mu = sample("mu", dist.Normal(loc, 0.3))
    if mu > 10.0:
        raise RuntimeError("unreachable")


def test_draws_from_a_guide_that_does_not_vectorise():
    x = np.random.default_rng(0).normal(1.5, 0.7, size=8)
    result = ppgen.infer(normal_known_variance, x, engine="svi", guide=thresholded_guide, num_steps=200, learning_rate=0.05, num_samples=300)
    assert result.samples["mu"].shape == (300,)
    assert np.std(result.samples["mu"]) == pytest.approx(0.3, rel=0.15)  # independent draws, not one repeated


def unconstrained_scale(x):
    scale = param("scale", torch.tensor(0.05))  # no positivity constraint: Adam's first step makes it -0.05
    with plate("N", len(x)):
        sample("x", dist.Normal(0.0, scale), obs=x)


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_checks_run_on_the_first_step_and_a_parameter_leaving_its_support_later_fails_cleanly():
    x = np.zeros(10)
    with pytest.raises(ValueError, match="scale"):  # invalid from the start: Pyro's check on step 1
        ppgen.learn(unconstrained_scale, x, engine="svi", guide=lambda x: param("scale", torch.tensor(-1.0)), num_steps=3)
    with pytest.raises(EngineFailure, match="elbo became nan at iteration 2") as failure:
        ppgen.learn(unconstrained_scale, x, engine="svi", num_steps=5, learning_rate=0.1)
    assert len(failure.value.partial.objectives) == 1
    assert pyro.infer.util.is_validation_enabled() and torch.distributions.Distribution._validate_args  # checks restored
