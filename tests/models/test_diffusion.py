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
    noise_schedule, predict_noise, probability_flow_log_prob, sampling_steps,
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
        sampled = np.array([float(elbo._estimate(_chain_program, (), {"obs": data, "net": net})[0]) for _ in range(500)])
        every_step = np.array([-elbo.loss(_chain_program, None, obs=data, net=net) for _ in range(200)])
        full = np.array([-Trace_ELBO().loss(_chain_program, bound.program, obs=data, net=net) for _ in range(300)])
    for estimates, power in ((sampled, 0.1), (every_step, 0.01)):
        difference = estimates.mean() - full.mean()
        stderr = math.sqrt(estimates.var(ddof=1) / len(estimates) + full.var(ddof=1) / len(full))
        assert abs(difference) < 4 * stderr, (estimates.mean(), full.mean(), stderr)
        assert stderr < power * abs(full.mean()), (stderr, full.mean())  # the check has power


def _shifted_chain(values=None, shifts=None, pixels=30, size=2, length=9, predictor=None):
    """Another user's chain: per-datum ``shifts`` move each reverse step's mean, so the engine
    must hand every datum its own row of them when it runs the data's steps apart."""
    betas = noise_schedule(length)
    bars = torch.cumprod(1 - betas, 0)
    ppgen.module("predictor", predictor)
    with ppgen.plate("pixels", pixels if values is None else values.shape[0]):
        h = ppgen.sample(f"h{length}", ppgen.dist.Normal(torch.zeros(size, dtype=torch.float64), 1.0).to_event(1))
        for k in ppgen.markov(range(length, 0, -1)):
            eps = predictor(h, torch.full(h.shape[:-1], k))
            mean = (h - betas[k - 1] / (1 - bars[k - 1]).sqrt() * eps) / (1 - betas[k - 1]).sqrt() + 0.05 * shifts[:, None]
            if k > 1:
                h = ppgen.sample(f"h{k - 1}", ppgen.dist.Normal(mean, betas[k - 1].sqrt()).to_event(1))
            else:
                ppgen.sample("pixel_values", ppgen.dist.Normal(mean, betas[0].sqrt()).to_event(1), obs=values)


def test_each_datum_draws_its_own_step_with_the_sampling_law():
    """draw_steps: one datum's step over many draws follows p (uniform, or the importance law
    set from a planted history), by a chi-square test; within one draw the data's steps are
    K evenly spread distinct values."""
    from scipy import stats

    bound = NoisingProcess(9).bind(_shifted_chain, ppgen.inspect(_shifted_chain, values=torch.zeros(30, 2), shifts=torch.zeros(30), predictor=make_denoiser(2, hidden=8)))
    torch.manual_seed(3)
    for sampling in ("uniform", "importance"):
        elbo = ChainELBO(bound, "elbo", step_sampling=sampling, num_step_groups=4)
        if sampling == "importance":
            elbo._squares = torch.arange(1, 10, dtype=torch.float64)[:, None].repeat(1, 10) ** 2  # p_t ∝ t
            elbo._filled[:] = 10
        p = elbo.step_probabilities().numpy()
        draws = [elbo.draw_steps(30) for _ in range(3000)]
        counts = np.bincount(np.array([int(steps[7]) for steps, _ in draws]), minlength=10)[1:]
        assert stats.chisquare(counts, 3000 * p).pvalue > 1e-3, (sampling, counts)
        for steps, probabilities in draws[:20]:
            assert len(torch.unique(steps)) == 4
            np.testing.assert_allclose(probabilities.numpy(), p[steps.numpy() - 1])
    np.testing.assert_allclose(p, (1 - 1e-3) * np.arange(1, 10) / 45 + 1e-3 / 9)


@pytest.mark.parametrize("sampling", ["uniform", "importance"])
def test_per_datum_step_sampled_elbo_is_unbiased_for_the_full_trace_elbo(sampling):
    """Every datum at its own step (weighted by 1 / p(t_i)) on a user's chain with per-datum
    arguments: the mean of the estimates equals Pyro's Trace_ELBO of the full 9-site program and
    guide within 4 standard errors; for importance sampling p_t ∝ 10 − t is planted (far from
    uniform, so a missing or wrong 1 / p weight shifts the mean)."""
    torch.manual_seed(1)
    rng = np.random.default_rng(4)
    data = torch.as_tensor(rng.normal(size=(30, 2)) * 0.8 - 0.2)
    shifts = torch.as_tensor(rng.normal(size=30))
    net = GaussianDenoiser(np.array([0.3, 0.0]), 0.6 * np.eye(2), 9)
    arguments = {"values": data, "shifts": shifts, "predictor": net}
    bound = NoisingProcess(9).bind(_shifted_chain, ppgen.inspect(_shifted_chain, **arguments))
    elbo = ChainELBO(bound, "elbo", step_sampling=sampling, num_step_groups=5)
    if sampling == "importance":
        elbo._squares = torch.arange(9, 0, -1, dtype=torch.float64)[:, None].repeat(1, 10) ** 2
        elbo._filled[:] = 10
        elbo._record = lambda t, terms: None  # keep the planted law fixed
    with use_backend("pyro"), torch_precision(), pyro.get_param_store().scope(), torch.no_grad():
        sampled = np.array([float(elbo._estimate(_shifted_chain, (), arguments)[0]) for _ in range(300)])
        full = np.array([-Trace_ELBO().loss(_shifted_chain, bound.program, **arguments) for _ in range(300)])
    difference = sampled.mean() - full.mean()
    stderr = math.sqrt(sampled.var(ddof=1) / len(sampled) + full.var(ddof=1) / len(full))
    assert abs(difference) < 4 * stderr, (sampled.mean(), full.mean(), stderr)
    assert stderr < 0.06 * abs(full.mean()), (stderr, full.mean())  # the check has power


def _declared_chain(readings=None, offsets=None, sensors=25, width=3, length=11, predictor=None, calls=None):
    """A user's chain declared with ``ppgen.chain`` (other names, sizes, schedule than the
    catalogue's), with per-datum ``offsets`` its step must receive row by row."""
    betas = noise_schedule(length, "cosine")
    bars = torch.cumprod(1 - betas, 0)
    gain = torch.cat([torch.ones(1, dtype=torch.float64), betas / (1 - bars).sqrt()])
    rescale = torch.cat([torch.ones(1, dtype=torch.float64), (1 - betas).rsqrt()])
    spread = torch.cat([torch.ones(1, dtype=torch.float64), betas.sqrt()])
    ppgen.module("predictor", predictor)

    def reverse(u, k):
        if calls is not None:
            calls.append(tuple(k.shape))
        eps = predictor(u, k.expand(u.shape[:-1]))
        mean = (u - gain[k][..., None] * eps) * rescale[k][..., None] + 0.05 * offsets[:, None]
        return ppgen.dist.Normal(mean, spread[k][..., None]).to_event(1)

    with ppgen.plate("sensors", sensors if readings is None else readings.shape[0]):
        start = ppgen.dist.Normal(torch.zeros(width, dtype=torch.float64), 1.0).to_event(1)
        return ppgen.chain("reading", length, start, reverse, obs=readings)


def test_a_declared_chain_unrolls_into_the_markov_loops_sites_and_parents():
    """``ppgen.chain`` is the loop it declares: the same sites, parents and diagram."""
    net = make_denoiser(3, hidden=8, seed=1)
    offsets = torch.zeros(25, dtype=torch.float64)
    structure = ppgen.inspect(_declared_chain, readings=torch.zeros(25, 3), offsets=offsets, predictor=net)
    names = ["reading"] + [f"reading_{t}" for t in range(1, 12)]
    assert sorted(structure.latent) == sorted(names[1:]) and list(structure.observed) == ["reading"]
    for t in range(11):
        assert [p for p in structure.sites[names[t]].parents if p in structure.latent] == [names[t + 1]]
    bound = NoisingProcess(11, "cosine").bind(_declared_chain, structure)
    assert bound.chain == names and bound.data == "readings" and bound.plate == "sensors"
    draws = ppgen.generate(_declared_chain, offsets=offsets, predictor=net, num_samples=2, seed=0)
    assert draws["reading"].shape == (2, 25, 3)


@pytest.mark.parametrize("sampling", ["uniform", "importance"])
def test_declared_chain_elbo_calls_the_step_once_with_per_datum_steps_and_is_unbiased(sampling):
    """svi's estimate on a program that declares its chain: one call of the step per estimate,
    with a tensor of per-datum steps, and the mean of the estimates equals Pyro's Trace_ELBO of
    the full 11-site program and guide within 4 standard errors (importance: p_t ∝ 12 − t
    planted, far from uniform, so a missing 1 / p weight shifts the mean)."""
    torch.manual_seed(5)
    rng = np.random.default_rng(6)
    data = torch.as_tensor(rng.normal(size=(25, 3)) * 0.6 + 0.4)
    offsets = torch.as_tensor(rng.normal(size=25))
    net = GaussianDenoiser(np.array([0.2, 0.0, -0.3]), 0.5 * np.eye(3), 11, "cosine")
    arguments = {"readings": data, "offsets": offsets, "predictor": net}
    bound = NoisingProcess(11, "cosine").bind(_declared_chain, ppgen.inspect(_declared_chain, **arguments))
    calls = []
    arguments["calls"] = calls
    elbo = ChainELBO(bound, "elbo", step_sampling=sampling)
    if sampling == "importance":
        elbo._squares = torch.arange(11, 0, -1, dtype=torch.float64)[:, None].repeat(1, 10) ** 2
        elbo._filled[:] = 10
        elbo._record = lambda t, terms: None  # keep the planted law fixed
    with use_backend("pyro"), torch_precision(), pyro.get_param_store().scope(), torch.no_grad():
        elbo._estimate(_declared_chain, (), arguments)
        calls.clear()
        sampled = np.array([float(elbo._estimate(_declared_chain, (), arguments)[0]) for _ in range(300)])
        assert elbo._declared and calls == [(25,)] * 300  # one call per estimate, a step per datum
        full = np.array([-Trace_ELBO().loss(_declared_chain, bound.program, **arguments) for _ in range(300)])
    difference = sampled.mean() - full.mean()
    stderr = math.sqrt(sampled.var(ddof=1) / len(sampled) + full.var(ddof=1) / len(full))
    assert abs(difference) < 4 * stderr, (sampled.mean(), full.mean(), stderr)
    assert stderr < 0.06 * abs(full.mean()), (stderr, full.mean())  # the check has power


def test_declared_chain_simple_loss_is_the_noise_regression_of_a_plain_loop():
    """With ``weighting="simple"`` the declared chain's loss is Ho et al.'s ‖ε − ε_θ(x_t, t)‖²
    at each datum's own t, averaged over steps: recomputed here from the same draws (seeded
    twice) by the textbook formula."""
    net = make_denoiser(3, hidden=16, seed=2)
    data = torch.as_tensor(np.random.default_rng(7).normal(size=(25, 3)))
    offsets = torch.zeros(25, dtype=torch.float64)
    arguments = {"readings": data, "offsets": offsets, "predictor": net}
    bound = NoisingProcess(11, "cosine").bind(_declared_chain, ppgen.inspect(_declared_chain, **arguments))
    elbo = ChainELBO(bound, "simple")
    with use_backend("pyro"), torch_precision(), pyro.get_param_store().scope(), torch.no_grad():
        elbo._estimate(_declared_chain, (), arguments)
        torch.manual_seed(8)
        loss = float(elbo._estimate(_declared_chain, (), arguments)[1])
        torch.manual_seed(8)
        steps, probabilities = elbo.draw_steps(25, 25)
        a = bound.alphas_cumprod[steps][:, None]
        noise = torch.randn_like(data)
        residual = noise - net(a.sqrt() * data + (1 - a).sqrt() * noise, steps)
    expected = float(((residual**2).sum(-1) / probabilities / 11).sum())
    assert loss == pytest.approx(expected, rel=1e-9)


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


class _ScaledPredictor(torch.nn.Module):
    """A trainable gain times a fixed predictor: gain 1 is the predictor itself."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.gain = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def forward(self, x_t, t, y=None):
        return self.gain * self.inner(x_t, t)


def test_score_svi_scores_the_given_network_without_training_it():
    """score(engine="svi") with the noising guide is the ELBO of the network as passed, at any
    num_steps: on ddpm it is the closed-form ELBO of the Gaussian predictor (training the gain
    would move it), and on a user's chain the network passed in place is left untouched."""
    data = np.random.default_rng(12).multivariate_normal(MEAN, COVARIANCE, size=5)
    network = _ScaledPredictor(GaussianDenoiser(MEAN, 1.5 * COVARIANCE, T))
    exact_elbo = gaussian_elbo(data, MEAN, 1.5 * COVARIANCE, T).sum()
    bound = ppgen.score(
        ddpm, x=data, num_timesteps=T, denoiser=network, engine="svi", guide=forward_process(T), num_steps=300, learning_rate=0.1,
        num_elbo_evaluations=30, copy_modules=False,
    )
    assert float(network.gain.detach()) == 1.0
    assert abs(bound.value - exact_elbo) < 4 * bound.stderr, (bound, exact_elbo)
    user_net = make_denoiser(2, hidden=16, seed=5)
    before = {k: v.clone() for k, v in user_net.state_dict().items()}
    arguments = {"values": torch.as_tensor(data[:, :2]), "shifts": torch.zeros(5), "predictor": user_net}
    ppgen.score(_shifted_chain, engine="svi", guide=forward_process(9), num_steps=200, num_elbo_evaluations=2, copy_modules=False, **arguments)
    assert all(torch.equal(before[k], v) for k, v in user_net.state_dict().items())


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


# ---- the score-SDE view: probability-flow ODE likelihood ------------------------------------------

# a 3-D Gaussian unlike the module's 2-D one: correlated, off-centre
FLOW_MEAN = np.array([0.3, -1.2, 2.0])
_FACTOR = np.array([[0.9, 0.0, 0.0], [0.4, 0.5, 0.0], [-0.2, 0.3, 0.7]])
FLOW_COVARIANCE = _FACTOR @ _FACTOR.T


def _flow_error_budget(x, num_timesteps, schedule):
    """The part of |ODE − log N(x; μ, Σ)| known in closed form, before ε's interpolation in t.

    The ODE starts at t = 1: it is the density p_1 = N(√ᾱ_1 μ, ᾱ_1 Σ + (1 − ᾱ_1) I) of the
    once-noised data, |log p_1 − log p_0| apart. Its prior N(0, I) stands for
    p_T = N(m, S), m = √ᾱ_T μ, S = ᾱ_T Σ + (1 − ᾱ_T) I, off at the ODE's end point z by
    log N(z; 0, I) − log N(z; m, S) = ½|m|² + mᵀu + ½ uᵀ(I − S⁻¹)u − ½ log det S (u = z − m).
    The exact flow is affine and carries N(μ_1, C_1) onto N(m, S), so |u| ≤ ‖S^½‖ |C_1^{-½}(x − μ_1)|."""
    a = NoisingProcess(num_timesteps, schedule).alphas_cumprod
    a_1, a_T = float(a[1]), float(a[-1])
    mean_1, cov_1 = math.sqrt(a_1) * FLOW_MEAN, a_1 * FLOW_COVARIANCE + (1 - a_1) * np.eye(3)
    start_gap = np.abs(_log_normal(x, mean_1, cov_1) - _log_normal(x, FLOW_MEAN, FLOW_COVARIANCE))
    m, S = math.sqrt(a_T) * FLOW_MEAN, a_T * FLOW_COVARIANCE + (1 - a_T) * np.eye(3)
    whitened = np.sqrt(np.einsum("ni,ij,nj->n", x - mean_1, np.linalg.inv(cov_1), x - mean_1))
    radius = math.sqrt(np.linalg.eigvalsh(S).max()) * whitened
    curvature = np.abs(np.linalg.eigvalsh(np.eye(3) - np.linalg.inv(S))).max()
    prior_gap = 0.5 * m @ m + np.linalg.norm(m) * radius + 0.5 * curvature * radius**2 + 0.5 * abs(np.log(np.linalg.det(S)))
    return start_gap + prior_gap


def test_probability_flow_likelihood_of_the_gaussian_denoiser_is_the_exact_log_density():
    """With the exact optimal denoiser the ODE's value is log N(x; μ, Σ) up to the closed-form
    gaps of :func:`_flow_error_budget` plus the discretisation of the schedule in time (ε linear
    between steps, a piecewise-constant rate β(t)): first order, O(1/T), allowed as 10/T nats,
    five times the T = 10 error's 2/T. That term must shrink with T: on the cosine schedule (whose
    ᾱ_T ≈ 0 makes the prior gap vanish) the error falls at least fourfold per tenfold T."""
    x = np.random.default_rng(7).multivariate_normal(FLOW_MEAN, FLOW_COVARIANCE, size=5)
    exact = _log_normal(x, FLOW_MEAN, FLOW_COVARIANCE)
    errors = {}
    for schedule, num_timesteps in (("linear", 1000), ("cosine", 10), ("cosine", 100), ("cosine", 1000)):
        network = GaussianDenoiser(FLOW_MEAN, FLOW_COVARIANCE, num_timesteps, schedule)
        value = probability_flow_log_prob(network, x, num_timesteps, schedule, rtol=1e-5, atol=1e-5).numpy()
        error = np.abs(value - exact)
        assert np.all(error < _flow_error_budget(x, num_timesteps, schedule) + 10 / num_timesteps), (schedule, num_timesteps, error)
        errors[schedule, num_timesteps] = error.max()
    assert errors["cosine", 10] > 4 * errors["cosine", 100] > 16 * errors["cosine", 1000], errors


class _MixtureDenoiser(torch.nn.Module):
    """The optimal noise predictor of 1-D data from a two-component Gaussian mixture (not affine
    in x_t): ε*(x_t, t) = −√(1 − ᾱ_t) ∂/∂x log p_t(x_t), p_t the mixture of
    N(√ᾱ_t μ_k, ᾱ_t s_k² + 1 − ᾱ_t)."""

    def __init__(self, weights, means, scales, num_timesteps, schedule):
        super().__init__()
        self.weights, self.means, self.scales = (torch.tensor(v, dtype=torch.float64) for v in (weights, means, scales))
        self.alphas_cumprod = NoisingProcess(num_timesteps, schedule).alphas_cumprod

    def log_density(self, x, t):
        a = self.alphas_cumprod[t]
        variance = a * self.scales**2 + 1 - a
        terms = torch.log(self.weights) - 0.5 * (x - a.sqrt() * self.means) ** 2 / variance - 0.5 * torch.log(2 * math.pi * variance)
        return torch.logsumexp(terms, -1)

    def forward(self, x_t, t, y=None):
        a = self.alphas_cumprod[torch.as_tensor(t).long()][..., None]
        variance = a * self.scales**2 + 1 - a
        terms = torch.log(self.weights) - 0.5 * (x_t - a.sqrt() * self.means) ** 2 / variance - 0.5 * torch.log(variance)
        responsibilities = torch.softmax(terms, -1)
        score = -(responsibilities * (x_t - a.sqrt() * self.means) / variance).sum(-1, keepdim=True)
        return -(1 - a).sqrt() * score


def test_probability_flow_likelihood_of_a_mixture_denoiser_is_the_exact_mixture_log_density():
    """A non-affine denoiser (the exact one of a bimodal 1-D mixture), cosine schedule, T = 1000:
    the ODE's value is log p_0(x) within |log p_1 − log p_0| (the start at t = 1, closed form)
    plus the 10/T discretisation allowance of the Gaussian test; the prior gap is negligible
    (√ᾱ_T ≈ 5e-5) and bounded by 1e-3."""
    T_flow = 1000
    network = _MixtureDenoiser([0.3, 0.7], [-2.0, 1.5], [0.4, 0.8], T_flow, "cosine")
    x = torch.tensor([[-2.5], [-1.0], [0.2], [1.4], [3.0]], dtype=torch.float64)
    value = probability_flow_log_prob(network, x, T_flow, "cosine", rtol=1e-5, atol=1e-5)
    exact, once_noised = network.log_density(x, 0), network.log_density(x, 1)
    error = (value - exact).abs()
    assert torch.all(error < (once_noised - exact).abs() + 10 / T_flow + 1e-3), (value, exact)


# ---- classifier-free guidance ---------------------------------------------------------------------


class _AffineByLabel(torch.nn.Module):
    """A conditional denoiser with known outputs: ε(x_t, t, y) = w_y x_t + t/100 + y (labels
    y ≥ 0), ε(x_t, t) = w_null x_t + t/100 for the unconditional call."""

    def __init__(self, num_classes):
        super().__init__()
        self.weights = torch.linspace(0.2, 0.9, num_classes + 1, dtype=torch.float64)

    def forward(self, x_t, t, y=None):
        base = t.to(x_t.dtype)[..., None] / 100
        if y is None:
            return self.weights[-1] * x_t + base
        y = torch.as_tensor(y).long().expand(x_t.shape[:-1])
        return self.weights[y][..., None] * x_t + base + y.to(x_t.dtype)[..., None]


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_guided_noise_is_the_classifier_free_combination_in_both_programs(scale):
    """ε = ε_uncond + s (ε_cond − ε_uncond) as written (s = 0: unconditional, 1: conditional), on the
    sites of a DDPM and a DDIM run: each step's mean is recomputed from the traced x_t."""
    from ppgen.models.diffusion import ddim_step

    labels = torch.tensor([0, 2, 1, 2])
    network = _AffineByLabel(3)
    x_t = torch.as_tensor(np.random.default_rng(8).normal(size=(4, 2)))
    steps = torch.full((4,), 7, dtype=torch.long)
    unconditional, conditional = network(x_t, steps), network(x_t, steps, labels)
    expected = unconditional + scale * (conditional - unconditional)
    torch.testing.assert_close(predict_noise(network, x_t, 7, labels, scale), expected)
    process = NoisingProcess(4)
    with use_backend("pyro"), torch.no_grad():
        trace = poutine.trace(ddpm).get_trace(num_data=4, num_timesteps=4, denoiser=network, y=labels, guidance_scale=scale)
        x_2, x_1 = trace.nodes["x_2"]["value"], trace.nodes["x_1"]["value"]
        steps = torch.full((4,), 2, dtype=torch.long)
        u, c = network(x_2, steps), network(x_2, steps, labels)
        epsilon = u + scale * (c - u)
        beta, a_t = process.betas[1], process.alphas_cumprod[2]
        mean = (x_2 - beta / (1 - a_t).sqrt() * epsilon) / (1 - beta).sqrt()
        torch.testing.assert_close(trace.nodes["x_1"]["fn"].base_dist.loc, mean)
        trace = poutine.trace(ddim).get_trace(num_data=4, num_timesteps=20, num_sampling_steps=2, denoiser=network, y=labels, guidance_scale=scale)
        start = trace.nodes["x_11"]["value"]
        steps = torch.full((4,), 11, dtype=torch.long)
        u, c = network(start, steps), network(start, steps, labels)
        epsilon = u + scale * (c - u)
        a = NoisingProcess(20).alphas_cumprod
        expected_next, _ = ddim_step(epsilon, start, a[11], a[1], 0.0)
        torch.testing.assert_close(trace.nodes["x_1"]["value"], expected_next)


class _LabelRecorder(torch.nn.Module):
    """Wraps a conditional Denoiser and records the class indices its embedding sees."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []
        inner.classes.register_forward_hook(lambda module, inputs, output: self.seen.append((torch.is_grad_enabled(), inputs[0].clone())))

    def forward(self, x_t, t, y=None):
        return self.inner(x_t, t, y)


def test_svi_training_drops_labels_at_the_denoisers_rate_and_generation_does_not():
    """Through svi's chain ELBO, labels reach the network as the null class with probability 0.1
    during gradient steps (binomial, within 4 standard errors), never when generating."""
    num_classes, n = 4, 60
    rng = np.random.default_rng(9)
    labels = rng.integers(0, num_classes, size=n)
    x = rng.normal(size=(n, 3)) + labels[:, None]
    recorder = _LabelRecorder(make_denoiser(3, num_classes=num_classes, hidden=16, num_layers=2, seed=2))
    ppgen.learn(ddpm, x=x, y=labels, num_timesteps=8, denoiser=recorder, engine="svi", guide=forward_process(8), num_steps=60, num_elbo_evaluations=1)
    trained = torch.cat([seen.reshape(-1) for grad, seen in recorder.seen if grad])
    dropped = float((trained == num_classes).double().mean())
    assert len(trained) >= 60 * n
    assert abs(dropped - 0.1) < 4 * math.sqrt(0.1 * 0.9 / len(trained)), dropped
    recorder.seen.clear()
    ppgen.generate(ddpm, num_data=n, dim=3, num_timesteps=8, denoiser=recorder, y=labels, guidance_scale=2.0, num_samples=1)
    conditional = torch.cat([seen.reshape(-1) for _, seen in recorder.seen])
    # one conditional and one unconditional call per step (per run of the program): the null
    # class is exactly the unconditional half
    assert len(conditional) > 0 and len(conditional) % (2 * 8 * n) == 0
    assert int((conditional == num_classes).sum()) == len(conditional) // 2


# ---- latent diffusion -------------------------------------------------------------------------


def test_latent_diffusion_is_one_program_with_the_chain_over_latents_and_the_decoder():
    """The composed program's structure: the chain z_T → … → z over latents (θ feeding every
    step), then x | z through the decoder ψ; ancestral draws decode the chain's end z."""
    from ppgen.models.diffusion import latent_diffusion
    from ppgen.models.vae import Decoder

    images = np.random.default_rng(13).integers(0, 2, size=(7, 64)).astype(float)
    denoiser, decoder = make_denoiser(5, hidden=8, seed=3), Decoder(5, hidden=16, seed=4)
    structure = ppgen.inspect(latent_diffusion, x=images, latent_dim=5, num_timesteps=6, denoiser=denoiser, decoder=decoder)
    assert set(structure.latent) == {"z"} | {f"z_{t}" for t in range(1, 7)}
    assert set(structure.observed) == {"x"}
    assert set(structure.sites["x"].parents) == {"psi", "z"}
    assert set(structure.sites["z"].parents) == {"theta", "z_1"}
    assert structure.sites["z_6"].parents == ()
    with use_backend("pyro"), torch.no_grad():
        trace = poutine.trace(latent_diffusion).get_trace(num_data=7, latent_dim=5, num_timesteps=6, denoiser=denoiser, decoder=decoder)
    torch.testing.assert_close(trace.nodes["x"]["fn"].base_dist.logits, decoder(trace.nodes["z"]["value"]))
    with pytest.raises(ValueError, match="pass the trained denoiser= and decoder="):
        ppgen.inspect(latent_diffusion, x=images, latent_dim=5)


def _digit_classifier():
    """The independent judge: scikit-learn's logistic regression on the real binarised digits."""
    from sklearn.linear_model import LogisticRegression

    from ppgen.models.vae import load_digits_binary

    x_train, y_train, x_test, y_test = load_digits_binary()
    classifier = LogisticRegression(max_iter=3000).fit(x_train, y_train)
    assert classifier.score(x_test, y_test) > 0.9
    return classifier, x_train, y_train


@pytest.mark.slow
def test_latent_diffusion_samples_decode_to_digits_of_the_asked_class():
    """Two stages (VAE, then a class-conditional ddpm on its latents); the composed program's
    draws for each class are recognised by the independent classifier far above chance (0.1)."""
    from ppgen.models.diffusion import fit_latent_diffusion, latent_diffusion

    classifier, x_train, y_train = _digit_classifier()
    fit = fit_latent_diffusion(x_train, y_train, latent_dim=8, num_timesteps=100, num_classes=10, vae_steps=1500, diffusion_steps=1500)
    labels = np.repeat(np.arange(10), 30)
    draws = ppgen.generate(
        latent_diffusion, num_data=len(labels), latent_dim=8, num_timesteps=100, denoiser=fit.denoiser, decoder=fit.decoder, y=labels,
        guidance_scale=3.0, num_samples=1, seed=2,
    )["x"][0]
    accuracy = float((classifier.predict(draws) == labels).mean())
    assert accuracy > 0.5, accuracy


@pytest.mark.slow
def test_guided_digits_are_recognised_and_guidance_trades_diversity_for_accuracy():
    """A class-conditional denoiser trained by svi (labels dropped 10% of the time) on the
    digits scaled to ±1; 40 draws per class at s = 0 (unconditional), 1 (conditional) and 3
    (guided), binarised at 0. The independent classifier recognises the asked class at ≥ 90%
    for s = 3; accuracy rises with s (each step beyond 4 binomial standard errors of the
    difference) while the within-class diversity (mean pairwise distance) falls (a paired
    difference over the 10 classes beyond 3 standard errors)."""
    classifier, x_train, y_train = _digit_classifier()
    result = ppgen.learn(
        ddpm, x=2 * x_train - 1, y=y_train, num_timesteps=200, denoiser=make_denoiser(64, num_classes=10, hidden=256, seed=0),
        engine="svi", guide=forward_process(200), subsample_size=128, num_steps=3000, learning_rate=1e-3, num_elbo_evaluations=1, seed=0,
    )
    network = result.diagnostics["modules"]["theta"]
    labels = np.repeat(np.arange(10), 40)
    accuracy, diversity = {}, {}
    for scale in (0.0, 1.0, 3.0):
        draws = ppgen.generate(
            ddpm, num_data=len(labels), dim=64, num_timesteps=200, denoiser=network, y=labels, guidance_scale=scale, num_samples=1, seed=1,
        )["x"][0]
        images = (draws > 0).astype(float)
        accuracy[scale] = float((classifier.predict(images) == labels).mean())
        diversity[scale] = np.array([
            np.linalg.norm(images[labels == k][:, None] - images[labels == k][None], axis=-1).mean() for k in range(10)
        ])
    assert accuracy[3.0] >= 0.9, accuracy
    n = len(labels)
    for low, high in ((0.0, 1.0), (1.0, 3.0)):
        stderr = math.sqrt((accuracy[low] * (1 - accuracy[low]) + accuracy[high] * (1 - accuracy[high])) / n)
        assert accuracy[high] - accuracy[low] > 4 * stderr, accuracy
        drop = diversity[low] - diversity[high]
        assert drop.mean() > 3 * drop.std(ddof=1) / math.sqrt(10), {s: d.mean() for s, d in diversity.items()}


def test_latent_diffusion_catalogue_entry_gives_its_structure_without_training(monkeypatch):
    """``ppgen models`` reads the entry's structure from untrained stand-ins: simulate (which
    trains the VAE) is never called, and the row lists the chain over the latents."""
    from ppgen.catalogue import catalogue
    from ppgen.cli import models_table
    from ppgen.models import diffusion

    def refuse(*args, **kwargs):
        raise AssertionError("simulate_latents trains the VAE; the structure must not need it")

    import dataclasses

    entries = [dataclasses.replace(e, simulate=refuse) for e in catalogue(["diffusion"]) if e.name == "latent_diffusion"]
    monkeypatch.setattr(diffusion, "simulate_latents", refuse)
    monkeypatch.setattr("ppgen.catalogue.catalogue", lambda names=None: entries)
    row = [line for line in models_table(markdown=True).splitlines() if "latent_diffusion" in line]
    assert len(row) == 1 and "x_1…x_50" in row[0] and "svi" in row[0], row


@pytest.mark.slow
def test_latent_diffusion_stand_ins_have_the_trained_entrys_structure():
    """The stand-ins give the same sites, kinds, shapes, plates and applicable engines as the
    entry's trained stage-1 data (slow: trains the VAE, ~20 s)."""
    from ppgen.engine import check_all
    from ppgen.models.diffusion import latent_structure_data, simulate_latents

    structures = [ppgen.inspect(ddpm, **data) for data in (latent_structure_data(), simulate_latents().data)]
    summaries = [
        (
            {n: (s.kind, s.distribution, s.support, s.plates, s.parents) for n, s in st.sites.items()},
            {n: p.size for n, p in st.plates.items()},
            sorted(c.name for c in check_all(st) if c.applies),
        )
        for st in structures
    ]
    assert summaries[0] == summaries[1]
