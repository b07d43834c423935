"""The flows family (:mod:`ppgen.models.flows`) against independent truth.

For every flow: log p(x) equals log p₀(z₀) − log |det ∂f/∂z₀| with the determinant from
``torch.linalg.slogdet`` of the autograd Jacobian of the forward map (caches cleared: the
encoder/decoder forget them); forward-then-inverse and inverse-then-forward round trips hold to
1e-5 also far outside a spline's box; the 2-D density integrates to one on a grid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ppgen
from ppgen.backend import torch_precision
from ppgen.models.flows import FLOWS, decode, encode, make_flow, realnvp, spline


def tight(flow):
    if flow.kind == "cnf":  # the ODE's error, not the log-det's, would dominate at 1e-5
        flow.rtol = flow.atol = 1e-10
    return flow


@pytest.mark.parametrize("name", FLOWS)
def test_log_density_is_base_minus_log_det_of_the_autograd_jacobian(name):
    dim = 3
    flow = tight(make_flow(name, dim, num_layers=3, hidden=12, count_bins=5, bound=2.5, seed=4))
    generator = torch.Generator().manual_seed(17)
    z0 = torch.randn(6, dim, generator=generator, dtype=torch.float64) * 2.0  # some beyond the box
    x = decode(flow, z0)
    with torch_precision(torch.float64):
        jacobians = [torch.autograd.functional.jacobian(lambda u: flow(u[None])[0], point) for point in z0]
        log_dets = torch.stack([torch.linalg.slogdet(jacobian)[1] for jacobian in jacobians])
        base = -0.5 * (z0 ** 2).sum(-1) - 0.5 * dim * math.log(2 * math.pi)
        with torch.no_grad():
            log_p = flow.distribution().log_prob(x.clone())
    torch.testing.assert_close(log_p, base - log_dets, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", FLOWS)
def test_round_trips_including_far_outside_the_spline_box(name):
    dim = 4
    flow = tight(make_flow(name, dim, num_layers=2, hidden=10, count_bins=4, bound=1.5, seed=2))
    generator = torch.Generator().manual_seed(3)
    z0 = torch.randn(20, dim, generator=generator, dtype=torch.float64)
    z0[:5] *= 6.0  # well outside [-1.5, 1.5]
    torch.testing.assert_close(encode(flow, decode(flow, z0)), z0, rtol=0, atol=1e-5)
    x = torch.randn(20, dim, generator=generator, dtype=torch.float64) * 5.0
    torch.testing.assert_close(decode(flow, encode(flow, x)), x, rtol=0, atol=1e-5)


# not "spline": a randomly initialised spline has density spikes narrower than any affordable grid
# (a knot derivative near 0 squeezes a wide z-range into a sliver of x); its normalisation is
# covered by the log-det test above
@pytest.mark.parametrize("name", ["realnvp", "maf", "nice"])
def test_density_integrates_to_the_sampled_mass_of_the_grid(name):
    """∫ p over the grid's box (Riemann sum of exp log p, the inverse path) equals the share of
    draws x = f(z₀) that land in the box (the forward path): both are 1 up to the mass outside."""
    flow = make_flow(name, 2, num_layers=3, hidden=16, seed=9)
    with torch.no_grad():  # let the conditioners do something: a sizeable random perturbation
        for parameter in flow.parameters():
            parameter.mul_(1.5)
    step, half_width = 0.06, 7.0
    nodes = torch.arange(-half_width + step / 2, half_width, step, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2)
    with torch_precision(torch.float64), torch.no_grad():
        mass = float(flow.distribution().log_prob(grid).exp().sum() * step ** 2)
    draws = decode(flow, torch.randn(20000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    inside = float((draws.abs() < half_width).all(-1).double().mean())
    standard_error = math.sqrt(inside * (1 - inside) / len(draws))
    assert inside > 0.9  # the box holds most of the mass, so the check is about normalisation
    assert mass == pytest.approx(inside, abs=max(0.01, 4 * standard_error))


def test_catalogue_programs_score_and_generate_like_the_flow():
    """The program's exact score is the flow's own log-density summed; generate draws x."""
    flow = make_flow("spline", 3, num_layers=2, hidden=8, seed=5)
    readings = np.random.default_rng(0).normal(size=(40, 3)) * [1.0, 2.0, 0.5]
    estimate = ppgen.score(spline, readings, dim=3, flow=flow, engine="enumerate")
    with torch_precision(torch.float64), torch.no_grad():
        expected = float(flow.distribution().log_prob(torch.as_tensor(readings)).sum())
    assert estimate.value == pytest.approx(expected, rel=1e-9)
    draws = ppgen.generate(realnvp, num_data=7, dim=3, flow=make_flow("realnvp", 3, seed=1), num_samples=2)
    assert draws["x"].shape == (2, 7, 3) and np.all(np.isfinite(draws["x"]))
    with pytest.raises(ValueError, match="make_flow"):
        realnvp(readings)


def test_diagram_draws_the_base_latent_and_the_transform():
    """A user's flow site is drawn as z₀ → x (edge f) with θ, the registered network, into x."""
    from pyro.distributions.transforms import affine_autoregressive

    from ppgen import dist, module, plate, sample
    from ppgen.diagram import diagram_spec
    from ppgen.structure import inspect

    bijector = affine_autoregressive(3).double()

    def warped(points=None, count=6, bijector=None):
        module("phi_net", bijector)
        with plate("items", count):
            sample("points", dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), [bijector]), obs=points)

    spec = diagram_spec(inspect(warped, count=6, bijector=bijector))
    assert spec["nodes"]["z_0"]["kind"] == "latent" and spec["nodes"]["z_0"]["path"] == ("items",)
    assert {"source": "z_0", "target": "points", "role": "model", "label": "f"} in spec["edges"]
    assert {"source": "phi_net", "target": "points", "role": "model"} in spec["edges"]


@pytest.mark.slow
def test_flow_fitted_to_gaussian_data_recovers_the_exact_nll():
    """Exact maximum likelihood of a one-layer MAF on correlated Gaussian data: its held-out NLL
    is the true Gaussian's on the same points within 0.02 nats (the family contains the truth:
    x₂ | x₁ is Gaussian with mean linear in x₁; ~50 weights on 8,000 points overfit by ~0.003)."""
    from ppgen.models.flows import maf

    covariance = np.array([[1.5, 0.9], [0.9, 1.0]])
    truth = torch.distributions.MultivariateNormal(torch.tensor([0.5, -1.0], dtype=torch.float64), torch.as_tensor(covariance))
    torch.manual_seed(21)
    train, test = truth.sample((8000,)), truth.sample((4000,))
    flow = make_flow("maf", 2, num_layers=1, hidden=4, seed=3)
    ppgen.learn(maf, train.numpy(), flow=flow, engine="mle", num_steps=200)
    with torch_precision(torch.float64), torch.no_grad():
        flow_nll = float(-flow.distribution().log_prob(test.clone()).mean())
    true_nll = float(-truth.log_prob(test).mean())
    assert flow_nll == pytest.approx(true_nll, abs=0.02)


def test_tour_report_measures_held_out_nll_and_grid_mass_against_closed_forms():
    """The tour's measures on a RealNVP flow whose conditioners output zero (the identity map, so
    p = Normal(0, I) exactly): held-out NLL and its standard error are scipy's, and the grid on
    [−4, 4]² holds the Gaussian's mass there, (erf(4/√2))²; the report draws one figure."""
    from types import SimpleNamespace

    from scipy.stats import multivariate_normal, norm

    from ppgen.models.flows import EXAMPLES, grid_density, held_out_nll, report

    flow = make_flow("realnvp", 2, num_layers=3, hidden=6, seed=8)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.zero_()
    points = np.random.default_rng(11).normal(size=(300, 2)) * 1.5
    nll = -multivariate_normal(np.zeros(2), np.eye(2)).logpdf(points)
    mean, standard_error = held_out_nll(flow, points)
    assert mean == pytest.approx(nll.mean(), abs=1e-9)
    assert standard_error == pytest.approx(nll.std(ddof=1) / np.sqrt(len(nll)), abs=1e-9)
    _, mass = grid_density(flow, half_width=4.0, num_cells=120)
    assert mass == pytest.approx((norm.cdf(4.0) - norm.cdf(-4.0)) ** 2, abs=2e-3)  # midpoint rule, h = 1/15

    example = EXAMPLES[0]
    simulated = example.simulate(num_data=200)
    figures = report(example, simulated, SimpleNamespace(diagnostics={"modules": {"theta": flow}}))
    assert len(figures) == 1 and f"{example.name}: held-out NLL" in figures[0]._suptitle.get_text()
