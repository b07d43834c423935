"""Simulation-based calibration: exact posteriors give uniform ranks; a deliberately
over-confident engine is caught."""

from dataclasses import replace

from ppgen.calibration import simulation_based_calibration
from ppgen.inference.importance import Importance
from ppgen.models import basics


class OverconfidentImportance(Importance):
    """Importance sampling whose draws are shrunk halfway to their mean: too narrow a posterior."""

    name = "overconfident-importance"

    def run(self, model, *args, **kwargs):
        result = super().run(model, *args, **kwargs)
        samples = {k: 0.5 * (v + v.mean(0)) for k, v in result.samples.items()}
        return replace(result, samples=samples)


def _calibrate(engine, **options):
    return simulation_based_calibration(
        basics.coin, num_tosses=12, engine=engine, sites=["rho"], num_simulations=200, num_draws=49, **options
    )


def test_importance_sampling_is_calibrated_on_the_coin():
    calibration = _calibrate("importance", num_samples=4000)
    assert calibration.ranks["rho"].shape == (200,)
    assert calibration.p_values()["rho"] > 0.001


def test_an_overconfident_engine_fails_calibration():
    calibration = _calibrate(OverconfidentImportance(num_samples=4000))
    assert calibration.p_values()["rho"] < 1e-4
