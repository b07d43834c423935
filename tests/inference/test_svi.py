"""SVI: the PPCA subspace from an amortised linear encoder against the closed-form maximum
likelihood, exact minibatch scaling, a hand-written guide against the conjugate posterior,
untouched modules, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

import ppgen
from ppgen import dist, param, plate, sample
from ppgen.models.factor import ppca, ppca_closed_form, simulate_ppca


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


class LinearEncoder(torch.nn.Module):
    """x (D) -> (loc, scale) of q(z | x) (K each): loc linear in x, as the exact PPCA posterior."""

    def __init__(self, D: int, K: int) -> None:
        super().__init__()
        self.loc = torch.nn.Linear(D, K, dtype=torch.float64)
        self.raw_scale = torch.nn.Parameter(torch.zeros(K, dtype=torch.float64))

    def forward(self, x):
        return self.loc(x), torch.nn.functional.softplus(self.raw_scale).expand(x.shape[0], -1)


def test_ppca_loading_subspace_matches_closed_form_mle():
    """With a linear encoder the amortised family holds PPCA's exact posterior q(z | x), so the
    ELBO is tight and its maximiser is the maximum-likelihood W (up to rotation)."""
    sim = simulate_ppca(num_data=400, D=5, K=2, seed=3)
    x = sim.data["x"]
    torch.manual_seed(0)  # the encoder's initial weights
    result = ppgen.learn(
        ppca, x, K=2, engine="svi", guide=ppgen.amortize(LinearEncoder(5, 2)),
        num_steps=2500, learning_rate=0.03, subsample_size=100, num_samples=10,
    )
    closed = ppca_closed_form(x, 2)
    angles = subspace_angles(result.params["W"], closed["W"])
    assert np.all(angles < 0.05), angles
    # the noise scale is read off the last minibatch step: looser than the subspace
    assert float(result.params["sigma"]) == pytest.approx(float(closed["sigma"]), rel=0.2)
    np.testing.assert_allclose(result.params["mu"], closed["mu"], atol=0.05)
    assert result.diagnostics["subsample_plate"] == "N" and result.diagnostics["elbo"] == "TraceMeanField_ELBO"


def gaussian_likelihood(x):
    loc = param("loc", torch.zeros(()))
    with plate("N", len(x)):
        sample("x", dist.Normal(loc, 2.0), obs=x)


def test_minibatch_elbo_is_scaled_to_the_full_data():
    """A program without latents: the ELBO is the log-likelihood. Over one epoch each datum is in
    exactly one minibatch, so the mean of the per-step estimates (each scaled by N / B) equals the
    full-data log-likelihood (the parameter barely moves at this learning rate)."""
    from scipy.stats import norm

    x = np.random.default_rng(0).normal(1.0, 2.0, size=120)
    result = ppgen.learn(gaussian_likelihood, x, engine="svi", subsample_size=30, num_steps=4, learning_rate=1e-12, num_samples=1)
    assert result.traces["elbo"].mean() == pytest.approx(norm.logpdf(x, 0.0, 2.0).sum(), rel=1e-9)
    per_batch = result.traces["elbo"] / 4  # each step: (N / B) * (log-likelihood of B data)
    assert not np.allclose(per_batch, per_batch[0])  # different minibatches


def local_gaussians(x):
    """μ ~ N(0, 10²), z_i ~ N(μ, 1), x_i ~ N(z_i, 0.5²): a latent per datum."""
    mu = sample("mu", dist.Normal(0.0, 10.0))
    with plate("N", len(x)):
        z = sample("z", dist.Normal(mu, 1.0))
        sample("x", dist.Normal(z, 0.5), obs=x)


def test_default_guide_takes_minibatches_of_per_datum_latents():
    """AutoNormal keeps q(z_i) for all N data, its plate picks the step's minibatch, and the
    minibatch's terms count N / B times, once. With the parameters frozen, one epoch's mean
    per-step ELBO equals the full-data ELBO up to Monte Carlo error: per-datum noise makes the
    epoch mean's standard error √(N / B) times that of the full estimate (10 evaluations of
    as many particles as each step). Scaling q twice, or not at all, would be off by
    (N / B − 1) Σ_i E log q(z_i) ≈ 1500 nats here."""
    x = np.random.default_rng(0).normal(3.0, 1.2, size=200)
    result = ppgen.infer(
        local_gaussians, x, engine="svi", subsample_size=20, num_steps=10, learning_rate=1e-12,
        num_particles=20, num_samples=5,
    )
    full, stderr = float(result.log_evidence.value), result.diagnostics["elbo_stderr"]
    assert abs(result.traces["elbo"].mean() - full) < 5 * np.sqrt(1 + 200 / 20) * stderr
    assert result.samples["z"].shape == (5, 200)


def normal_known_variance(x, m0=1.0, s0=2.0, sigma=0.7):
    mu = sample("mu", dist.Normal(m0, s0))
    with plate("N", len(x)):
        sample("x", dist.Normal(mu, sigma), obs=x)


def normal_guide(x, m0=1.0, s0=2.0, sigma=0.7):
    loc = param("q_loc", torch.tensor(0.0))
    scale = param("q_scale", torch.tensor(0.5), constraint=dist.constraints.positive)
    sample("mu", dist.Normal(loc, scale))


def test_guide_program_reaches_the_conjugate_posterior():
    x = np.random.default_rng(1).normal(1.5, 0.7, size=12)
    variance = 1 / (1 / 4.0 + len(x) / 0.49)
    mean = variance * (1.0 / 4.0 + x.sum() / 0.49)
    result = ppgen.infer(normal_known_variance, x, engine="svi", guide=normal_guide, num_steps=2000, learning_rate=0.01, num_particles=4, num_samples=2000)
    assert float(result.params["q_loc"]) == pytest.approx(mean, abs=0.15 * np.sqrt(variance))
    assert float(result.params["q_scale"]) == pytest.approx(np.sqrt(variance), rel=0.15)
    assert result.diagnostics["guide"] == "normal_guide"
    assert result.samples["mu"].shape == (2000,)


def test_default_guide_elbo_bounds_the_evidence():
    """AutoNormal (the default guide) on the coin: the ELBO is below the exact log evidence
    and close to it (the logit-normal is near the Beta posterior)."""
    from ppgen.models.basics import coin, coin_log_evidence

    x = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    estimate = ppgen.score(coin, x, engine="svi", num_steps=600, learning_rate=0.02, num_elbo_evaluations=400)
    exact = coin_log_evidence(x)
    assert estimate.value <= exact + 3 * estimate.stderr
    assert estimate.value >= exact - 0.1
    result = ppgen.infer(coin, x, engine="svi", num_steps=50, num_samples=5)
    assert set(result.params) == {"rho.loc", "rho.scale"}


def test_modules_are_copied_and_returned_trained():
    torch.manual_seed(0)
    encoder = LinearEncoder(5, 2)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    sim = simulate_ppca(num_data=60, D=5, K=2, seed=0)
    result = ppgen.learn(ppca, sim.data["x"], K=2, engine="svi", guide=ppgen.amortize(encoder), num_steps=20, learning_rate=0.05, num_samples=3)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key])
    trained = result.diagnostics["modules"]["phi"]
    assert trained is not encoder
    assert not torch.equal(trained.loc.weight, encoder.loc.weight)
    np.testing.assert_allclose(result.params["phi$$$loc.weight"], trained.loc.weight.detach().numpy())
    assert result.samples["z"].shape == (3, 60, 2)


def test_errors():
    x = np.array([0.5, 1.5])
    with pytest.raises(ValueError, match="does not sample the continuous latent"):
        ppgen.infer(normal_known_variance, x, engine="svi", guide=lambda x, **_: None, num_steps=1)
    with pytest.raises(ValueError, match="SVI: subsample_size must be a positive integer"):
        ppgen.infer(normal_known_variance, x, engine="svi", subsample_size=0)
    with pytest.raises(ValueError, match="SVI: elbo must be one of"):
        ppgen.infer(normal_known_variance, x, engine="svi", elbo="iwae")
    with pytest.raises(TypeError, match="SVI: guide must be a program"):
        ppgen.infer(normal_known_variance, x, engine="svi", guide=3)
