"""Adversarial learning: the losses against their formulas, the gradient penalty in the critic's
update, which programs the engine takes, and learning on user-written implicit programs."""

import math

import numpy as np
import pytest
import torch

import ppgen
from ppgen import dist, param, plate, sample
from ppgen.errors import EngineNotApplicable
from ppgen.inference.adversarial import Adversarial, critic_loss, generator_loss


class Linear(torch.nn.Module):
    """The critic D(x) = w·x + b, whose input gradient is w everywhere."""

    def __init__(self, weight, bias=0.0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(weight, dtype=torch.float64))
        self.bias = torch.nn.Parameter(torch.tensor(bias, dtype=torch.float64))

    def forward(self, x):
        return x @ self.weight + self.bias


def shifted_noise(readings, spread=0.3):
    """A user's implicit program: 3-D readings = offset + spread · ε, offset learned."""
    offset = param("offset", torch.zeros(3, dtype=torch.float64))
    with plate("readings", len(readings)):
        noise = sample("noise", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        sample("reading", dist.Delta(offset + spread * noise, event_dim=1), obs=readings)


def readings_data(n=200, seed=5):
    return np.random.default_rng(seed).normal([2.0, -1.0, 0.5], 0.3, size=(n, 3))


# ---- the losses ----------------------------------------------------------------------------


@pytest.mark.parametrize("logit", [-12.0, -3.0, 0.0, 2.5])
def test_minimax_and_non_saturating_generator_gradients_follow_the_logistic_formulas(logit):
    """d = D(G(z)) a logit: ∂/∂d of the minimax loss E log(1 − σ(d)) is −σ(d), of the
    non-saturating −E log σ(d) is −(1 − σ(d)); so at D(G(z)) ≈ 0 the first vanishes and the
    second does not."""
    for loss, expected in (("minimax", -1 / (1 + math.exp(-logit))), ("non-saturating", -1 / (1 + math.exp(logit)))):
        d = torch.tensor([logit], dtype=torch.float64, requires_grad=True)
        (gradient,) = torch.autograd.grad(generator_loss(loss, d), d)
        assert gradient.item() == pytest.approx(expected, rel=1e-12, abs=1e-300)
    if logit < -10:  # D(G(z)) < 1e-5: minimax saturates, non-saturating keeps a unit gradient
        d = torch.tensor([logit], dtype=torch.float64, requires_grad=True)
        (minimax,) = torch.autograd.grad(generator_loss("minimax", d), d)
        d = torch.tensor([logit], dtype=torch.float64, requires_grad=True)
        (non_saturating,) = torch.autograd.grad(generator_loss("non-saturating", d), d)
        assert abs(minimax.item()) < 1e-5 < 0.99 < abs(non_saturating.item())


def test_wgan_gp_critic_gradient_holds_the_penalty_closed_form():
    """For a linear critic the input gradient is w, so the penalty is λ(‖w‖ − 1)² and the
    critic loss's gradient is mean(x̃) − mean(x) + 2λ(‖w‖ − 1) w / ‖w‖, whatever ε is."""
    rng = np.random.default_rng(2)
    real, fake = (torch.as_tensor(rng.normal(m, 1.0, size=(37, 4))) for m in (1.0, -0.5))
    w = torch.tensor([0.5, -2.0, 1.5, 0.25], dtype=torch.float64)
    for penalty in (10.0, 0.0):
        critic = Linear(w.tolist())
        critic_loss("wgan-gp", critic, real, fake, penalty).backward()
        expected = fake.mean(0) - real.mean(0) + 2 * penalty * (w.norm() - 1) * w / w.norm()
        np.testing.assert_allclose(critic.weight.grad.numpy(), expected.numpy(), rtol=1e-10)
    assert (2 * 10.0 * (w.norm() - 1) * w / w.norm()).abs().min() > 1  # the two cases differ


def test_the_engine_applies_the_gradient_penalty_in_its_critic_step():
    """One critic step of Adam moves each weight by −lr · sign(gradient). The data sit at +5 and
    the draws near 0, so without the penalty w grows; with ‖w‖ = 3 the penalty's gradient
    2λ(‖w‖ − 1) w/‖w‖ = (32, 24) outweighs the data's (≈ −5) and w shrinks."""
    data = np.random.default_rng(0).normal(5.0, 0.1, size=(64, 2))

    def point_cloud(cloud):
        centre = param("centre", torch.zeros(2, dtype=torch.float64))
        with plate("points", len(cloud)):
            jitter = sample("jitter", dist.Normal(0.0, 0.1).expand([2]).to_event(1))
            sample("cloud", dist.Delta(centre + jitter, event_dim=1), obs=cloud)

    moves = {}
    for penalty in (10.0, 0.0):
        critic = Linear([2.4, 1.8])
        fit = ppgen.learn(point_cloud, data, engine="adversarial", loss="wgan-gp", penalty=penalty, critic=critic,
                          num_steps=1, num_critic_steps=1, critic_learning_rate=0.01)
        trained = fit.diagnostics["modules"]["critic"]
        moves[penalty] = (trained.weight - critic.weight).detach().numpy()
        np.testing.assert_array_equal(critic.weight.detach().numpy(), [2.4, 1.8])  # the given critic is untouched
    np.testing.assert_allclose(moves[10.0], [-0.01, -0.01], rtol=1e-6)
    np.testing.assert_allclose(moves[0.0], [0.01, 0.01], rtol=1e-6)


# ---- which programs it takes ---------------------------------------------------------------


def test_density_engines_refuse_an_implicit_program_naming_its_observed_site():
    checks = {c.name: c for c in ppgen.engines_for(shifted_noise, readings_data(20))}
    assert checks["adversarial"].applies
    for name in ("svi", "nuts", "importance", "mle", "advi"):
        assert not checks[name].applies
        assert "'reading' is a Delta observation" in checks[name].reason
    with pytest.raises(EngineNotApplicable, match="'reading' is a Delta observation.*Engines that apply: adversarial"):
        ppgen.learn(shifted_noise, readings_data(20), engine="svi")


def test_a_gaussian_decoder_applies_and_a_bernoulli_one_is_refused_naming_the_site():
    net = torch.nn.Linear(2, 5, dtype=torch.float64)

    def noisy_decoder(pixels, decoder, bernoulli=False):
        ppgen.module("decoder", decoder)
        with plate("images", pixels.shape[0]):
            code = sample("code", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            if bernoulli:
                sample("pixels", dist.Bernoulli(logits=decoder(code)).to_event(1), obs=pixels)
            else:
                sample("pixels", dist.Normal(decoder(code), 0.1).to_event(1), obs=pixels)

    pixels = (np.random.default_rng(1).uniform(size=(30, 5)) < 0.5).astype(float)
    assert Adversarial().check(ppgen.inspect(noisy_decoder, pixels, net)) is None
    reason = Adversarial().check(ppgen.inspect(noisy_decoder, pixels, net, bernoulli=True))
    assert reason.startswith("observed site 'pixels' (Bernoulli) has no reparameterised sampler")

    def discrete_code(pixels, decoder):
        ppgen.module("decoder", decoder)
        with plate("images", pixels.shape[0]):
            k = sample("k", dist.Categorical(torch.ones(2, dtype=torch.float64) / 2))
            sample("pixels", dist.Normal(decoder(torch.nn.functional.one_hot(k, 2).double()), 0.1).to_event(1), obs=pixels)

    assert Adversarial().check(ppgen.inspect(discrete_code, pixels, net)).startswith("latent site 'k' (Categorical)")

    def nothing_to_learn(pixels):
        with plate("images", pixels.shape[0]):
            sample("pixels", dist.Normal(0.0, 1.0).expand([5]).to_event(1), obs=pixels)

    assert Adversarial().check(ppgen.inspect(nothing_to_learn, pixels)) == "the program has no param site or module to learn"


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"loss": "wasserstein"}, ValueError, "loss must be one of ('minimax', 'non-saturating', 'wgan-gp'), got 'wasserstein'"),
        ({"loss": "minimax", "penalty": 5.0}, ValueError, "penalty is the gradient penalty's weight of loss='wgan-gp'"),
        ({"loss": "wgan-gp", "penalty": -1.0}, ValueError, "penalty must be a non-negative number, got -1.0"),
        ({"critic": "mlp"}, TypeError, "critic must be a torch.nn.Module or None, got str"),
        ({"num_critic_steps": 0}, ValueError, "num_critic_steps must be a positive integer or None, got 0"),
        ({"subsample_size": 0}, ValueError, "subsample_size must be a positive integer or None, got 0"),
        ({"learning_rate": 0.0}, ValueError, "learning_rate must be a positive number, got 0.0"),
        ({"betas": (0.5, 1.0)}, ValueError, "betas must be two numbers in [0, 1), got (0.5, 1.0)"),
    ],
)
def test_bad_options_are_named(options, error, message):
    with pytest.raises(error) as caught:
        Adversarial(**options)
    assert message in str(caught.value)


def test_defaults_follow_the_losses():
    assert (Adversarial(loss="wgan-gp").num_critic_steps, Adversarial(loss="wgan-gp").penalty) == (5, 10.0)
    assert (Adversarial(loss="minimax").num_critic_steps, Adversarial(loss="minimax").penalty) == (1, 0.0)


# ---- learning ------------------------------------------------------------------------------


def test_a_user_program_moves_its_offset_to_the_data_mean():
    """The generator's only parameter is the offset; the data mean (2, −1, 0.5) is the game's
    fixed point (the draws then have the data's law). GAN updates circle around it rather than
    settle, so the check is that 200 non-saturating steps bring the offset from 0 (2.3 away) to
    within a fifth of that distance."""
    readings = readings_data()
    fit = ppgen.learn(shifted_noise, readings, engine="adversarial", num_steps=200, learning_rate=0.05,
                      critic_learning_rate=0.01, subsample_size=64, seed=3)
    start = np.linalg.norm(readings.mean(0))
    assert np.linalg.norm(fit.params["offset"] - readings.mean(0)) < 0.2 * start
    assert fit.traces["critic_loss"].shape == fit.traces["generator_loss"].shape == (200,)


def test_runs_are_reproducible_and_leave_the_given_modules_untouched():
    readings = readings_data(48)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8, dtype=torch.float64), torch.nn.Tanh(), torch.nn.Linear(8, 1, dtype=torch.float64))
    before = [p.detach().clone() for p in net.parameters()]
    runs = [ppgen.learn(shifted_noise, readings, engine="adversarial", loss="wgan-gp", critic=net, num_steps=4,
                        subsample_size=16, seed=7) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].params["offset"], runs[1].params["offset"])
    np.testing.assert_array_equal(runs[0].traces["critic_loss"], runs[1].traces["critic_loss"])
    assert not np.array_equal(runs[0].params["offset"], np.zeros(3))
    for p, q in zip(before, net.parameters()):
        assert torch.equal(p, q)


def test_a_generator_step_moves_the_program_through_a_frozen_critic():
    """With the linear critic D(x) = w·x + b and the WGAN generator loss −E D(x̃), the gradient
    of the offset is −w whatever the draws, so Adam's first step moves it by lr · sign(w) (the
    critic step before it moves each weight by ±0.001 only, not its sign). The critic's weights are held
    fixed during the generator step and trainable again afterwards."""
    readings = readings_data(32, seed=9)
    critic = Linear([1.0, 2.0, -1.0])
    fit = ppgen.learn(shifted_noise, readings, engine="adversarial", loss="wgan-gp", penalty=0.0, critic=critic,
                      num_steps=1, num_critic_steps=1, learning_rate=0.05, critic_learning_rate=0.001)
    np.testing.assert_allclose(fit.params["offset"], [0.05, 0.05, -0.05], rtol=1e-6)
    trained = fit.diagnostics["modules"]["critic"]
    assert all(p.requires_grad for p in trained.parameters())
    # the critic's step before: ∂/∂w (E D(x̃) − E D(x)) = E x̃ − E x ≈ (0, 0, 0) − (2, −1, 0.5)
    np.testing.assert_allclose((trained.weight - critic.weight).detach().numpy(), [0.001, -0.001, 0.001], rtol=1e-6)


class RootCritic(torch.nn.Module):
    """D(x) = Σ √(w (x − x)): finite (0) everywhere, but ∂D/∂w = (x − x) / (2√0) is NaN."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def forward(self, x):
        return torch.sqrt(self.weight * (x - x.detach())).sum(-1)


class NaNCritic(Linear):
    def forward(self, x):
        return super().forward(x) * float("nan")


@pytest.mark.parametrize("critic, message", [(RootCritic, "a gradient of the critic loss is not finite"), (NaNCritic, "critic loss became nan")])
def test_a_non_finite_critic_update_is_refused_with_its_cause(critic, message):
    from ppgen.errors import EngineFailure

    made = critic() if critic is RootCritic else critic([1.0, 1.0, 1.0])
    with pytest.raises(EngineFailure, match=message):
        ppgen.learn(shifted_noise, readings_data(32), engine="adversarial", loss="wgan-gp", penalty=0.0, critic=made, num_steps=3)
