"""``ppgen.amortize(encoder, flow=...)``: a per-datum flow posterior q(z_i | x_i), checked against
closed forms.

Truth: a linear-Gaussian latent model, z_i ~ Normal(0, I_K), x_i ~ Normal(A z_i + b, s² I_D). The
evidence is exact, log p(x) = Σ_i log Normal(x_i; b, s² I + A Aᵀ), and so is the posterior,
z_i | x_i ~ Normal(m(x_i), Λ⁻¹) with Λ = I + AᵀA / s², correlated when A's columns are alike. The
best diagonal Gaussian guide (mean exact, precisions Λ_kk) then misses log p(x) by exactly

    N · KL = N · (½ Σ_k log Λ_kk − ½ log det Λ)

(its ELBO cannot get closer, whatever the encoder), while one affine IAF layer on top of the
encoder's Gaussian contains the exact posterior (a triangular affine map of a Gaussian): its ELBO
can close the gap. Whatever the guide, ELBO ≤ IWAE ≤ log p(x) in expectation.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions.transforms import affine_autoregressive, conditional_affine_autoregressive
from scipy.stats import multivariate_normal

import ppgen
from ppgen import dist, plate, sample
from ppgen.backend import torch_precision, use_backend
from ppgen.errors import ReliabilityWarning

DTYPE = torch.float64


def _linear_gaussian(loadings: np.ndarray, offset: np.ndarray, noise: float, num_data: int, seed: int):
    """Data, exact log p(x) and the diagonal guide's best gap N · KL for x = A z + b + s ε."""
    rng = np.random.default_rng(seed)
    latent_dim = loadings.shape[1]
    x = rng.standard_normal((num_data, latent_dim)) @ loadings.T + offset + noise * rng.standard_normal((num_data, loadings.shape[0]))
    evidence = multivariate_normal(offset, noise ** 2 * np.eye(len(offset)) + loadings @ loadings.T).logpdf(x).sum()
    precision = np.eye(latent_dim) + loadings.T @ loadings / noise ** 2
    gap = num_data * (0.5 * np.log(np.diag(precision)).sum() - 0.5 * np.linalg.slogdet(precision)[1])
    return x, evidence, gap


class LinearEncoder(torch.nn.Module):
    """x ↦ (loc, scale[, context]) by one linear map: the exact posterior mean is linear in x and
    its covariance constant, so the encoder is never what limits the bound."""

    def __init__(self, data_dim: int, latent_dim: int, context_dim: int = 0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.sizes = [latent_dim, latent_dim] + ([context_dim] if context_dim else [])
        self.linear = torch.nn.Linear(data_dim, sum(self.sizes), dtype=DTYPE)

    def forward(self, x: torch.Tensor):
        loc, raw_scale, *context = self.linear(x).split(self.sizes, -1)
        return (loc, torch.nn.functional.softplus(raw_scale) + 1e-3, *context)


# a user's program: rooms with two hidden heat sources read by three sensors
LOADINGS = 1.5 * np.array([[1.0, 0.9], [0.8, 1.0], [1.0, 1.1]])
OFFSET = np.array([0.5, -1.0, 2.0])
NOISE = 0.5


def rooms(readings=None):
    loadings, offset = torch.as_tensor(LOADINGS), torch.as_tensor(OFFSET)
    with plate("rooms", readings.shape[0]):
        heat = sample("heat", dist.Normal(torch.zeros(2, dtype=DTYPE), 1.0).to_event(1))
        sample("readings", dist.Normal(heat @ loadings.T + offset, NOISE).to_event(1), obs=readings)


SVI = {"engine": "svi", "num_steps": 700, "learning_rate": 0.01, "num_elbo_evaluations": 20, "num_samples": 10, "seed": 0}


def test_iaf_guide_closes_the_gap_the_diagonal_guide_cannot_and_iwae_stays_below_the_evidence():
    readings, evidence, gap = _linear_gaussian(LOADINGS, OFFSET, NOISE, num_data=30, seed=1)
    assert gap > 20  # posterior correlation −0.95: the diagonal guide is visibly short
    diagonal = ppgen.learn(rooms, readings, guide=ppgen.amortize(LinearEncoder(3, 2), latent="heat"), **SVI)
    torch.manual_seed(0)
    flow = affine_autoregressive(2, hidden_dims=[16, 16]).to(DTYPE)
    guide = ppgen.amortize(LinearEncoder(3, 2), latent="heat", flow=flow)
    flowed = ppgen.learn(rooms, readings, guide=guide, **{**SVI, "num_steps": 1000})
    assert flowed.diagnostics["elbo"] == "Trace_ELBO"  # no analytic KL through a flow
    for result in (diagonal, flowed):  # lower bounds, within their Monte Carlo error
        assert result.log_evidence.kind == "lower-bound"
        assert result.log_evidence.value <= evidence + 4 * result.log_evidence.stderr
    # the diagonal guide cannot beat log p(x) − N·KL; the flow closes at least half of that gap
    assert diagonal.log_evidence.value <= evidence - gap + 4 * diagonal.log_evidence.stderr
    assert flowed.log_evidence.value >= evidence - 0.5 * gap + 4 * flowed.log_evidence.stderr
    # the trained encoder and flow come back by name; the originals are untouched (copy_modules)
    modules = flowed.diagnostics["modules"]
    assert set(modules) == {"phi", "phi_flow"} and modules["phi_flow"] is not flow
    # IWAE (importance engine, K = 500 draws of the trained flow guide per datum) ≥ ELBO and ≤ log p(x)
    with warnings.catch_warnings():  # Pareto k near 0.7 speaks of the estimate's spread, not of its bound
        warnings.simplefilter("ignore", ReliabilityWarning)
        iwae = ppgen.score(rooms, readings, engine="importance", num_samples=500,
                           guide=ppgen.amortize(modules["phi"], latent="heat", flow=modules["phi_flow"]))
    assert iwae.value >= flowed.log_evidence.value - 4 * flowed.log_evidence.stderr
    assert iwae.value <= evidence + 4 * iwae.stderr


def survey(answers=None, loadings=None):
    with plate("people", answers.shape[0]):
        traits = sample("traits", dist.Normal(torch.zeros(3, dtype=DTYPE), 1.0).to_event(1))
        sample("answers", dist.Normal(traits @ loadings.T, 0.4).to_event(1), obs=answers)


def test_conditional_iaf_guide_takes_the_encoders_context_and_closes_the_gap():
    """A 3-D latent and a conditional IAF, its layers fed the encoder's third output h(x)."""
    loadings = np.random.default_rng(5).normal(size=(4, 3)) + 1.0
    answers, evidence, gap = _linear_gaussian(loadings, np.zeros(4), 0.4, num_data=25, seed=5)
    torch.manual_seed(0)
    flow = conditional_affine_autoregressive(3, 5, hidden_dims=[16, 16]).to(DTYPE)
    guide = ppgen.amortize(LinearEncoder(4, 3, context_dim=5, seed=2), latent="traits", flow=flow)
    result = ppgen.learn(survey, answers, loadings=torch.as_tensor(loadings), guide=guide, **{**SVI, "num_steps": 1000})
    bound = result.log_evidence
    assert bound.value <= evidence + 4 * bound.stderr
    assert bound.value >= evidence - 0.5 * gap + 4 * bound.stderr


@pytest.mark.parametrize("conditional", [False, True])
def test_guide_density_is_the_change_of_variables_of_the_encoders_gaussian(conditional):
    """log q(z | x) of the guide's own draw equals log Normal(ε; μ(x), σ(x)) − log |det ∂f/∂ε|
    with ε = f⁻¹(z) and the Jacobian by autograd, datum by datum."""
    torch.manual_seed(3)
    context_dim = 4 if conditional else 0
    flow = (conditional_affine_autoregressive(3, context_dim, hidden_dims=[8]) if conditional else affine_autoregressive(3, hidden_dims=[8])).to(DTYPE)
    encoder = LinearEncoder(5, 3, context_dim, seed=4)
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(6, 5)))

    def program(x):
        with plate("items", x.shape[0]):
            sample("code", dist.Normal(torch.zeros(3, dtype=DTYPE), 1.0).to_event(1))
            sample("x", dist.Normal(torch.zeros(5, dtype=DTYPE), 1.0).to_event(1), obs=x)

    guide = ppgen.amortize(encoder, latent="code", flow=flow).bind(program, ppgen.inspect(program, x)).program
    with use_backend("pyro"), torch_precision(), pyro.get_param_store().scope():  # Pyro's inverses allocate in the default dtype
        with torch.no_grad():
            site = poutine.trace(guide).get_trace(x).nodes["code"]
        z = site["value"]
        log_q = site["fn"].log_prob(z)
        loc, scale, *context = encoder(x)
        expected = []
        for i in range(x.shape[0]):
            layer = flow.condition(context[0][i]) if conditional else flow
            epsilon = layer.inv(z[i]).detach()
            jacobian = torch.autograd.functional.jacobian(layer, epsilon)
            base = torch.distributions.Normal(loc[i], scale[i]).log_prob(epsilon).sum()
            expected.append((base - torch.linalg.slogdet(jacobian)[1]).item())
    np.testing.assert_allclose(log_q.detach().numpy(), expected, atol=1e-8)


def test_flow_options_are_checked_with_clear_errors():
    x = torch.zeros(4, 3, dtype=DTYPE)
    with pytest.raises(TypeError, match="flow must be a torch.nn.Module"):
        ppgen.amortize(LinearEncoder(3, 2), latent="heat", flow="iaf")
    with pytest.raises(TypeError, match="flow must be a transform module or hold a list of transforms"):
        ppgen.amortize(LinearEncoder(3, 2), latent="heat", flow=torch.nn.Linear(2, 2))
    cases = [
        (LinearEncoder(3, 2), conditional_affine_autoregressive(2, 3).to(DTYPE), ValueError, "must return \\(loc, scale, context\\)"),
        (LinearEncoder(3, 2, context_dim=3), affine_autoregressive(2).to(DTYPE), ValueError, "no layer of the flow is conditional"),
        (LinearEncoder(3, 2), affine_autoregressive(2), TypeError, "flow's parameters are torch.float32 but the model computes in torch.float64"),
    ]
    for encoder, flow, error, message in cases:
        with pytest.raises(error, match=message):
            ppgen.learn(rooms, x, guide=ppgen.amortize(encoder, latent="heat", flow=flow), engine="svi", num_steps=1)


@pytest.mark.parametrize("context_dim", [0, 3])
def test_plate_diagram_draws_the_encoder_the_flow_and_the_data_as_parents_of_the_latent(context_dim):
    """q(heat | readings) depends on the data and the encoder through the flow's base, and on the
    flow's own parameters (also when a conditional layer is conditioned anew on every call):
    three dashed edges into the latent."""
    readings = torch.as_tensor(_linear_gaussian(LOADINGS, OFFSET, NOISE, num_data=5, seed=0)[0])
    flow = (conditional_affine_autoregressive(2, context_dim) if context_dim else affine_autoregressive(2)).to(DTYPE)
    guide = ppgen.amortize(LinearEncoder(3, 2, context_dim), latent="heat", flow=flow)
    source = ppgen.render(rooms, readings, guide=guide).source
    for parent in ("phi", "phi_flow", "readings"):
        assert f'{parent} -> heat [color="#c0392b" style=dashed]' in source
