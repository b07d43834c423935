"""Numerical faults are named: a non-finite loss or gradient in svi / mle / map stops the run
before the bad update, names the iteration and the site, and keeps the parameters from before
the failing iteration (checked against a rerun that stops one iteration earlier, and against
Adam's closed-form first step)."""

import re

import numpy as np
import pyro
import pytest
import torch

import ppgen
from ppgen import dist, param, plate, sample
from ppgen.errors import EngineFailure

pytestmark = pytest.mark.filterwarnings("ignore:Encountered NaN", "ignore:Encountered -?inf")


def _failing_iteration(failure: EngineFailure) -> int:
    return int(re.search(r"at iteration (\d+);", str(failure)).group(1))


def _assert_partial_is_the_rerun(failure: EngineFailure, rerun) -> None:
    """``partial.state`` holds finite values equal to the parameters a run stopped one
    iteration before the failing one reaches."""
    iteration = _failing_iteration(failure)
    state = failure.partial.state
    assert len(failure.partial.objectives) == iteration - 1
    assert all(np.all(np.isfinite(value)) for value in state.values())
    with pyro.validation_enabled(False):  # the state may score NaN: its ELBO estimate is NaN, not an error
        reference = rerun(iteration - 1).params
    assert set(state) == set(reference)
    for name in state:
        np.testing.assert_allclose(state[name], reference[name], rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------------------
# a Normal scale driven negative by a large step


def sensor_noise(readings):
    noise = param("noise", torch.tensor(0.3))  # no positivity constraint, as a user might forget
    with plate("sensors", len(readings)):
        sample("reading", dist.Normal(0.0, noise), obs=readings)


def test_svi_names_the_site_whose_scale_went_negative_and_keeps_the_parameter_before():
    """Adam's first step moves each parameter by exactly the learning rate against the sign of
    its gradient; d(−log p)/dσ = n/σ − Σx²/σ³ > 0 when σ² > mean(x²), so σ goes 0.3 → 0.3 − 0.5
    = −0.2 and the second iteration evaluates a Normal with a negative scale."""
    readings = np.array([0.05, -0.1, 0.02, 0.08, -0.04, 0.0])
    learning_rate = 0.5

    def run(num_steps):
        return ppgen.learn(sensor_noise, readings, engine="svi", num_steps=num_steps, learning_rate=learning_rate, num_samples=10)

    with pytest.raises(EngineFailure, match=r"svi: elbo became nan at iteration 2; .*site 'reading' \(model\): log-density nan") as caught:
        run(40)
    # Adam's step is lr · g / (|g| + 1e-8): within lr · 1e-8 / |g| (|g| > 1 here) of lr
    assert caught.value.partial.state["noise"] == pytest.approx(0.3 - learning_rate, abs=1e-8)
    _assert_partial_is_the_rerun(caught.value, run)


# --------------------------------------------------------------------------------------------
# the log of a latent that goes negative


def log_concentration(assay):
    amount = sample("amount", dist.Normal(2.0, 1.0))
    with plate("wells", len(assay)):
        sample("assay", dist.Normal(torch.log(amount), 0.4), obs=assay)


def concentration_guide(assay):
    centre = param("centre", torch.tensor(1.5))
    sample("amount", dist.Normal(centre, 0.02))


def test_svi_names_the_site_fed_by_the_log_of_a_negative_latent():
    assay = np.full(9, -4.0)  # pulls log(amount) to −4: the guide's centre runs through 0

    def run(num_steps):
        return ppgen.learn(log_concentration, assay, engine="svi", guide=concentration_guide, num_steps=num_steps, learning_rate=0.4, num_samples=10)

    with pytest.raises(EngineFailure, match=r"svi: elbo became nan at iteration \d+; .*site 'assay' \(model\): log-density nan") as caught:
        run(60)
    assert "'amount'" not in str(caught.value).split("; lower")[0]  # the latent's own log-density is finite
    _assert_partial_is_the_rerun(caught.value, run)


# --------------------------------------------------------------------------------------------
# a Poisson rate that overflows


def outbreak(cases, day):
    growth = param("growth", torch.tensor(0.0))
    with plate("days", len(day)):
        sample("cases", dist.Poisson(torch.exp(growth * day)), obs=cases)


DAY = np.linspace(0.0, 90.0, 10)
CASES = np.arange(10.0) * 3


@pytest.mark.parametrize("engine", ["mle", "map"])
def test_point_estimates_name_the_poisson_site_whose_rate_overflowed(engine):
    """Started at g = 0, where d log p / dg = Σ day · (cases − 1) > 0, Adam's
    first step moves g by its learning rate, to 10; exp(10 · 90) overflows float64 (> e^709.8),
    so iteration 1 fails and keeps the start, g = 0."""

    def run(num_steps):
        return ppgen.learn(outbreak, CASES, DAY, engine=engine, optimizer="adam", learning_rate=10.0, num_steps=num_steps, tol=0.0)

    objective = "log_joint" if engine == "map" else "log_likelihood"
    with pytest.raises(EngineFailure, match=rf"{engine}: {objective} became nan at iteration 1; .*site 'cases' \(model\): log-density nan") as caught:
        run(50)
    assert caught.value.partial.objectives == []
    assert caught.value.partial.state == {"growth": 0.0}


def test_svi_names_the_poisson_site_whose_rate_overflowed():
    """As for the point estimates, the first step moves g from 0 to 10; the second iteration
    evaluates the overflowing rate and keeps g = 10."""

    def run(num_steps):
        return ppgen.learn(outbreak, CASES, DAY, engine="svi", learning_rate=10.0, num_steps=num_steps, num_samples=10, num_restarts=1)

    with pytest.raises(EngineFailure, match=r"svi: elbo became -?(nan|inf) at iteration 2; .*site 'cases' \(model\): log-density") as caught:
        run(50)
    assert caught.value.partial.state["growth"] == pytest.approx(10.0, abs=1e-6)
    _assert_partial_is_the_rerun(caught.value, run)


# --------------------------------------------------------------------------------------------
# a finite loss with a non-finite gradient


def thresholded_dose(response):
    dose = param("dose", torch.tensor(1.0))
    # the untaken branch sqrt(dose < 0) is NaN: its zero weight in the gradient is 0 · NaN = NaN
    effect = torch.where(dose > 0, torch.sqrt(dose), torch.zeros(()))
    with plate("patients", len(response)):
        sample("response", dist.Normal(effect, 1.0), obs=response)


@pytest.mark.parametrize("engine", ["svi", "mle"])
def test_a_non_finite_gradient_with_a_finite_loss_names_the_parameter_and_its_site(engine):
    response = np.full(5, -2.0)
    options = {"learning_rate": 0.3, "num_samples": 10} if engine == "svi" else {"optimizer": "adam", "learning_rate": 0.3, "tol": 0.0}

    def run(num_steps):
        return ppgen.learn(thresholded_dose, response, engine=engine, num_steps=num_steps, **options)

    with pytest.raises(EngineFailure, match=r"gradient became non-finite \(\w+ -?[0-9.]+\) at iteration \d+; non-finite gradient of parameter\(s\) 'dose' through the log-density of site\(s\) 'response' \(model\)") as caught:
        run(40)
    # svi keeps the point the failing iteration evaluated (dose < 0, where the gradient is NaN);
    # the optimisers' iterations end at a point that is checked, so they keep the one before it
    dose = caught.value.partial.state["dose"]
    assert dose < 0 if engine == "svi" else dose > 0
    _assert_partial_is_the_rerun(caught.value, run)
