"""Diffusion programs against closed forms.

Data x_0 ~ N(μ, Σ) have an affine optimal noise predictor (``GaussianDenoiser``), under which the
reverse chain is linear-Gaussian: its marginal p_θ(x_0), its ELBO and the DDIM map are all closed
form, computed here by independent matrix recursions. The step-sampled ELBO svi trains on is
checked for unbiasedness against Pyro's own Trace_ELBO of the full T-site program and guide.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

import ppgen
from ppgen.backend import torch_precision, use_backend
from ppgen.models.diffusion import (
    GaussianDenoiser, NoisingProcess, ddim, ddim_decode, ddim_encode, ddpm, forward_process, gaussian_elbo, make_denoiser,
    noise_schedule, sampling_steps,
)
from ppgen.inference._chain_elbo import ChainELBO

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small networks, many steps: one thread avoids thread-pool overhead on a shared machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


MEAN = np.array([1.0, -0.5])
COVARIANCE = np.array([[0.5, 0.2], [0.2, 0.3]])
T = 50


def _chain_marginal(mean, covariance, num_timesteps, schedule="linear"):
    """Mean and covariance of x_0 under the reverse chain with the Gaussian denoiser: the
    affine recursion x_{t−1} = P_t x_t + c_t + √β_t z from x_T ~ N(0, I), by matrices."""
    d = len(mean)
    process = NoisingProcess(num_timesteps, schedule)
    network = GaussianDenoiser(mean, covariance, num_timesteps, schedule)
    m, C = torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)
    for t in range(num_timesteps, 0, -1):
        beta, a_t = process.betas[t - 1], process.alphas_cumprod[t]
        k = beta / (1 - a_t).sqrt()
        P = (torch.eye(d, dtype=torch.float64) - k * network.gain[t]) / (1 - beta).sqrt()
        c = k * network.gain[t] @ network.offset[t] / (1 - beta).sqrt()
        m, C = P @ m + c, P @ C @ P.T + beta * torch.eye(d, dtype=torch.float64)
    return m.numpy(), C.numpy()


def _log_normal(x, mean, covariance):
    d = len(mean)
    diff = x - mean
    inverse = np.linalg.inv(covariance)
    return -0.5 * (np.einsum("ni,ij,nj->n", diff, inverse, diff) + d * math.log(2 * math.pi) + math.log(np.linalg.det(covariance)))


# ---- the schedule and the noising process ------------------------------------------------------


def test_linear_schedule_is_ddpm_at_1000_steps_and_cosine_follows_its_formula():
    betas = noise_schedule(1000)
    np.testing.assert_allclose(betas.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=1e-12)
    cosine = noise_schedule(20, "cosine")
    f = np.cos((np.arange(21) / 20 + 0.008) / 1.008 * np.pi / 2) ** 2
    # ᾱ_t = f(t)/f(0) until β_t reaches its clip at 0.999 (the last step of the cosine schedule)
    np.testing.assert_allclose(np.cumprod(1 - cosine.numpy())[:-1], f[1:-1] / f[0], rtol=1e-10)
    assert cosine[-1] == 0.999
    with pytest.raises(ValueError, match="kind must be one of"):
        noise_schedule(10, "quadratic")


def test_closed_form_marginal_matches_the_forward_chain_by_simulation():
    process = NoisingProcess(30, "cosine")
    x0 = torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    x = x0.expand(20000, 3).clone()
    for t in range(1, 13):
        beta = process.betas[t - 1]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    loc, scale = process.marginal(12, x0)
    z = (x.mean(0) - loc[0]) / (scale[0] / math.sqrt(len(x)))
    assert torch.all(z.abs() < 4)
    assert torch.allclose(x.std(0), scale[0], rtol=0.03)


# ---- the program, its structure and its diagram -----------------------------------------------


def _chain_program(obs=None, count=40, width=3, steps=12, net=None):
    """A user's diffusion-like program: other names, sizes and plate than the catalogue's."""
    betas = noise_schedule(steps, "cosine")
    bars = torch.cumprod(1 - betas, 0)
    pyro_net = ppgen.module("eps_net", net)
    with ppgen.plate("points", count if obs is None else obs.shape[0]):
        z = ppgen.sample(f"z_{steps}", ppgen.dist.Normal(torch.zeros(width, dtype=torch.float64), 1.0).to_event(1))
        for s in ppgen.markov(range(steps, 0, -1)):
            eps = pyro_net(z, torch.full(z.shape[:-1], s))
            loc = (z - betas[s - 1] / (1 - bars[s - 1]).sqrt() * eps) / (1 - betas[s - 1]).sqrt()
            if s > 1:
                z = ppgen.sample(f"z_{s - 1}", ppgen.dist.Normal(loc, betas[s - 1].sqrt()).to_event(1))
            else:
                ppgen.sample("obs_points", ppgen.dist.Normal(loc, betas[0].sqrt()).to_event(1), obs=obs)


def test_guide_reads_the_chain_from_the_structure_of_a_user_program():
    net = make_denoiser(3, hidden=16, seed=4)
    data = torch.randn(40, 3, dtype=torch.float64)
    structure = ppgen.inspect(_chain_program, obs=data, net=net)
    bound = NoisingProcess(12, "cosine").bind(_chain_program, structure)
    assert bound.chain == ["obs_points"] + [f"z_{t}" for t in range(1, 13)]
    assert bound.data == "obs" and bound.plate == "points"
    with pytest.raises(ValueError, match="has 12 latent steps, the noising process 20"):
        NoisingProcess(20).bind(_chain_program, structure)


def test_diagram_draws_the_long_chain_as_one_node_with_dashed_noising_arrows():
    data = np.zeros((5, 2))
    diagram = ppgen.render(ddpm, x=data, num_timesteps=200, denoiser=make_denoiser(2, hidden=8), guide=forward_process(200))
    source = diagram.source
    assert source.count("->") < 12  # compact: not one node per step
    assert "t → t−1" in source and "t−1 → t" in source and "dashed" in source


# ---- the step-sampled ELBO ---------------------------------------------------------------------


def test_step_sampled_elbo_is_unbiased_for_the_full_trace_elbo():
    """Mean of T·L̂_t − KL_T over many (t, x_t) draws vs Pyro's Trace_ELBO of the full program
    and guide (all 12 sites), both Monte Carlo means, compared within 4 standard errors. The
    network is the optimal predictor for a slightly wrong Gaussian, so every term is non-zero
    and the estimates' variance small enough for the check to have power."""
    torch.manual_seed(0)
    net = GaussianDenoiser(np.zeros(3), 0.5 * np.eye(3), 12, "cosine")
    data = torch.as_tensor(np.random.default_rng(2).normal(size=(40, 3)) * 0.7 + 0.3)
    structure = ppgen.inspect(_chain_program, obs=data, net=net)
    bound = NoisingProcess(12, "cosine").bind(_chain_program, structure)
    elbo = ChainELBO(bound, "elbo")
    with use_backend("pyro"), torch_precision(), pyro.get_param_store().scope(), torch.no_grad():
        sampled = np.array([float(elbo._estimate(_chain_program, (), {"obs": data, "net": net})[0]) for _ in range(2000)])
        every_step = np.array([-elbo.loss(_chain_program, None, obs=data, net=net) for _ in range(200)])
        full = np.array([-Trace_ELBO().loss(_chain_program, bound.program, obs=data, net=net) for _ in range(300)])
    for estimates, power in ((sampled, 0.1), (every_step, 0.01)):
        difference = estimates.mean() - full.mean()
        stderr = math.sqrt(estimates.var(ddof=1) / len(estimates) + full.var(ddof=1) / len(full))
        assert abs(difference) < 4 * stderr, (estimates.mean(), full.mean(), stderr)
        assert stderr < power * abs(full.mean()), (stderr, full.mean())  # the check has power


# ---- Gaussian closed forms -----------------------------------------------------------------------


def test_ancestral_samples_follow_the_exact_chain_marginal_and_it_is_close_to_the_data_law():
    network = GaussianDenoiser(MEAN, COVARIANCE, T)
    draws = ppgen.generate(ddpm, num_data=2000, num_timesteps=T, denoiser=network, num_samples=2, seed=3)["x"].reshape(-1, 2)
    m, C = _chain_marginal(MEAN, COVARIANCE, T)
    z = (draws.mean(0) - m) / np.sqrt(np.diag(C) / len(draws))
    assert np.all(np.abs(z) < 4), z
    # covariance: each entry's standard error from the fourth moments of a Gaussian
    n = len(draws)
    se = np.sqrt((C**2 + np.outer(np.diag(C), np.diag(C))) / n)
    assert np.all(np.abs(np.cov(draws.T) - C) < 4 * se)
    # and the chain's law is the data law up to the discretisation of T = 50 steps
    np.testing.assert_allclose(m, MEAN, atol=0.02)
    np.testing.assert_allclose(C, COVARIANCE, atol=0.02)


def test_score_svi_is_the_closed_form_elbo_and_importance_lies_between_it_and_the_exact_log_density():
    data = np.random.default_rng(5).multivariate_normal(MEAN, COVARIANCE, size=6)
    network = GaussianDenoiser(MEAN, COVARIANCE, T)
    exact_elbo = gaussian_elbo(data, MEAN, COVARIANCE, T).sum()
    bound = ppgen.score(ddpm, x=data, num_timesteps=T, denoiser=network, engine="svi", guide=forward_process(T), num_steps=1, num_elbo_evaluations=40)
    assert bound.kind == "lower-bound"
    assert abs(bound.value - exact_elbo) < 4 * bound.stderr, (bound, exact_elbo)
    m, C = _chain_marginal(MEAN, COVARIANCE, T)
    log_density = _log_normal(data, m, C).sum()
    assert exact_elbo < log_density
    estimate = ppgen.score(ddpm, x=data, num_timesteps=T, denoiser=network, engine="importance", guide=forward_process(T), num_samples=300)
    assert exact_elbo - 4 * estimate.stderr < estimate.value < log_density + 4 * estimate.stderr, (exact_elbo, estimate, log_density)


def test_ddim_maps_noise_to_the_data_law_and_round_trips():
    network = GaussianDenoiser(MEAN, COVARIANCE, 1000)
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def affine_map(steps):
        """The η = 0 sampler is an affine map of the noise, x_0 = offset + noise @ linear."""
        offset = ddim_decode(torch.zeros(1, 2, dtype=torch.float64), network, 1000, steps).numpy()[0]
        return offset, ddim_decode(torch.eye(2, dtype=torch.float64), network, 1000, steps).numpy() - offset

    offset, linear = affine_map(100)
    np.testing.assert_allclose(ddim_decode(noise, network, 1000, 100).numpy(), noise.numpy() @ linear + offset, atol=1e-10)
    # its law N(offset, linearᵀ linear) tends to N(μ, Σ) as the steps get finer (a first-order scheme)
    errors = []
    for steps in (20, 100, 1000):
        offset, linear = affine_map(steps)
        assert np.abs(offset - MEAN).max() < 0.01
        errors.append(np.abs(linear.T @ linear - COVARIANCE).max())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.005, errors
    # encode-decode: the identity up to a discretisation error that shrinks with more steps
    data = np.random.default_rng(7).multivariate_normal(MEAN, COVARIANCE, size=200)
    errors = [np.abs(ddim_decode(ddim_encode(data, network, 1000, s), network, 1000, s).numpy() - data).max() for s in (20, 100, 500)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] / errors[2] > 3  # first order in the step size: 5 steps as fine, ~5 times smaller
    assert errors[2] < 0.05 * np.sqrt(COVARIANCE.diagonal().min())
    # the program draws the same law as the map (η = 0)
    offset, linear = affine_map(100)
    draws = ppgen.generate(ddim, num_data=1000, num_timesteps=1000, num_sampling_steps=100, denoiser=network, num_samples=1, seed=1)["x"][0]
    z = (draws.mean(0) - offset) / np.sqrt(np.diag(linear.T @ linear) / len(draws))
    assert np.all(np.abs(z) < 4)


def test_ddim_steps_are_evenly_spaced_and_checked():
    assert sampling_steps(1000, 50)[:3] == [1, 21, 41]
    with pytest.raises(ValueError, match="num_sampling_steps must be an integer in 1..100"):
        sampling_steps(100, 0)


# ---- training -----------------------------------------------------------------------------------


def test_training_on_a_toy_set_raises_the_elbo_which_stays_below_minus_the_entropy():
    """Checkerboard: uniform on area 32, so E log p(x) ≤ −H = −log 32 for any model; the ELBO
    lies below that (it is a bound on a cross-entropy), and training moves it up."""
    from ppgen.models._toy2d import sample_toy2d

    x = sample_toy2d("checkerboard", 1024, seed=11)
    result = ppgen.learn(
        ddpm, x=x, num_timesteps=40, denoiser=make_denoiser(2, hidden=32, seed=1), engine="svi", guide=forward_process(40),
        num_steps=300, subsample_size=256, learning_rate=3e-3, num_elbo_evaluations=2,
    )
    per_point = result.log_evidence.value / len(x)
    assert per_point < -math.log(32.0) + 4 * result.log_evidence.stderr / len(x)
    trace = result.traces["elbo"]
    assert trace[-50:].mean() > trace[:50].mean()
    assert "theta" in result.diagnostics["modules"] and result.diagnostics["elbo"] == "ChainELBO"


def test_bad_input_names_what_was_expected():
    with pytest.raises(ValueError, match="pass denoiser=make_denoiser"):
        ppgen.inspect(ddpm, x=np.zeros((3, 2)), num_timesteps=5)
    with pytest.raises(ValueError, match="weighting must be one of"):
        ppgen.learn(ddpm, x=np.zeros((3, 2)), num_timesteps=5, denoiser=make_denoiser(2), engine="svi", guide=forward_process(5), weighting="snr")


# ---- one step against diffusers' schedulers -----------------------------------------------------


def _step_distribution(program, first_site, iteration, value, **kwargs):
    """The distribution of the site the program's ``iteration``-th markov step samples, with
    the chain's first site set to ``value`` (only that iteration runs)."""
    from ppgen.primitives import markov_window

    with use_backend("pyro"), torch.no_grad(), markov_window(iteration, iteration + 1):
        trace = poutine.trace(poutine.condition(program, data={first_site: value})).get_trace(**kwargs)
    site = [node for name, node in trace.nodes.items() if node["type"] == "sample" and name != first_site][-1]
    fn = site["fn"]
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    if type(fn).__name__ == "Delta":  # a deterministic step (DDIM with η = 0)
        return fn.v, torch.zeros(())
    return fn.loc, fn.scale


def _in_float64(scheduler, betas):
    """diffusers keeps its schedule in float32; the same arithmetic in float64 for exact comparison."""
    scheduler.betas = betas.clone()
    scheduler.alphas = 1 - betas
    scheduler.alphas_cumprod = torch.cumprod(1 - betas, 0)
    return scheduler


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_one_ddpm_step_equals_diffusers_ddpm_scheduler(schedule):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.utils.torch_utils import randn_tensor

    steps, width = 30, 4
    betas = noise_schedule(steps, schedule)
    scheduler = _in_float64(diffusers.DDPMScheduler(num_train_timesteps=steps, trained_betas=betas.numpy(), variance_type="fixed_large", clip_sample=False), betas)
    net = make_denoiser(width, hidden=16, seed=3)
    x_t = torch.randn(5, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (steps, 17, 2, 1):
        loc, scale = _step_distribution(ddpm, f"x_{steps}", steps - t, x_t, num_data=5, dim=width, num_timesteps=steps, denoiser=net, schedule=schedule)
        with torch.no_grad():
            epsilon = net(x_t, torch.full((5,), t))
        output = scheduler.step(epsilon, t - 1, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        noise = randn_tensor(x_t.shape, generator=torch.Generator().manual_seed(t), dtype=x_t.dtype) if t > 1 else torch.zeros_like(x_t)
        torch.testing.assert_close(loc + scale * noise, output, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_one_ddim_step_equals_diffusers_ddim_scheduler(eta):
    diffusers = pytest.importorskip("diffusers")

    steps, sampled, width = 100, 10, 3
    betas = noise_schedule(steps)
    scheduler = _in_float64(diffusers.DDIMScheduler(num_train_timesteps=steps, trained_betas=betas.numpy(), clip_sample=False, set_alpha_to_one=True), betas)
    scheduler.set_timesteps(sampled)
    net = make_denoiser(width, hidden=16, seed=5)
    taus = sampling_steps(steps, sampled)
    assert [t - 1 for t in reversed(taus)] == scheduler.timesteps.tolist()
    x_t = torch.randn(6, width, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    z = torch.randn(6, width, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for k, t in enumerate(reversed(taus)):
        loc, scale = _step_distribution(ddim, f"x_{taus[-1]}", k, x_t, num_data=6, dim=width, num_timesteps=steps, denoiser=net, num_sampling_steps=sampled, eta=eta)
        with torch.no_grad():
            epsilon = net(x_t, torch.full((6,), t))
        output = scheduler.step(epsilon, t - 1, x_t, eta=eta, variance_noise=z).prev_sample
        torch.testing.assert_close(loc + scale * z, output, rtol=1e-9, atol=1e-9)
