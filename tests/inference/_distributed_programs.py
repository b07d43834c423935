"""User programs for the data-parallel adversarial and diffusion tests, and the worker that fits
them on one rank.

Run as a script with torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), it fits every case named on the command line as ``ppgen.learn`` is called in a
single process (ppgen initialises the gloo process group itself) and saves each result's loss
traces and parameters to ``<out>/<case>-rank<r>.npz``. A case name ending in ``+unaveraged``
runs the case with the ranks' gradient average switched off (each rank steps on its own
shard's gradient): the tests use it to show that the comparison catches a missing average. A
case refused with a ``ValueError`` saves its message as ``error``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

import numpy as np
import torch

import ppgen
from ppgen import dist, param, plate, sample
from ppgen.models.diffusion import forward_process, noise_schedule


class Sensor(torch.nn.Module):
    """A small generator: 3-d noise to a 2-d reading."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(3, 8)
        self.out = torch.nn.Linear(8, 2)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(noise)))


def implicit_sensor(readings: torch.Tensor, sensor: torch.nn.Module):
    """An implicit model: each reading a deterministic function of its own 3-d noise."""
    ppgen.module("sensor", sensor)
    with plate("units", readings.shape[0]):
        noise = sample("noise", dist.Normal(torch.zeros(3, dtype=readings.dtype), 1.0).to_event(1))
        sample("readings", dist.Delta(sensor(noise), event_dim=1), obs=readings)


def noisy_shift(heights: torch.Tensor, weights: torch.Tensor):
    """A shifted, scaled latent per person with learned Gaussian observation noise: the
    observation's own noise is drawn too (a Normal observed site, not a Delta)."""
    shift = param("shift", torch.tensor([0.5, -0.5], dtype=heights.dtype))
    spread = param("spread", torch.tensor(0.8, dtype=heights.dtype), constraint=dist.constraints.positive)
    with plate("people", heights.shape[0]):
        build = sample("build", dist.Normal(torch.zeros(2, dtype=heights.dtype), 1.0).to_event(1))
        sample("heights", dist.Normal(shift + spread * build * weights.unsqueeze(-1), 0.2).to_event(1), obs=heights)


class StepPredictor(torch.nn.Module):
    """ε(h_k, k): a small MLP on the state and the step's fraction k / length; with ``jitter`` > 0
    a stochastic layer adds one N(0, jitter²) draw to every output of a call while training (a
    network whose random numbers follow its calls: one per distinct step among a rank's data)."""

    def __init__(self, size: int, length: int, jitter: float = 0.0) -> None:
        super().__init__()
        self.length, self.jitter = length, jitter
        self.net = torch.nn.Sequential(torch.nn.Linear(size + 1, 12), torch.nn.Tanh(), torch.nn.Linear(12, size))

    def forward(self, h: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        fraction = (k.to(h.dtype) / self.length).unsqueeze(-1).expand(*h.shape[:-1], 1)
        out = self.net(torch.cat([h, fraction], -1))
        return out + self.jitter * torch.randn((), dtype=h.dtype) if self.training and self.jitter else out


def growth_chain(sizes: torch.Tensor, drift: torch.Tensor, predictor: torch.nn.Module, length: int = 5):
    """A user's reverse chain h_length → … → h_1 → sizes over 3-d measurements, each plant's
    reverse steps pulled by its own ``drift`` (so its rows must follow the plant's shard)."""
    betas = noise_schedule(length)
    bars = torch.cumprod(1 - betas, 0)
    ppgen.module("predictor", predictor)
    with plate("plants", sizes.shape[0]):
        h = sample(f"h{length}", dist.Normal(torch.zeros(3, dtype=sizes.dtype), 1.0).to_event(1))
        for k in ppgen.markov(range(length, 0, -1)):
            eps = predictor(h, torch.full(h.shape[:-1], k))
            mean = (h - betas[k - 1] / (1 - bars[k - 1]).sqrt() * eps) / (1 - betas[k - 1]).sqrt() + 0.1 * drift[:, None]
            if k > 1:
                h = sample(f"h{k - 1}", dist.Normal(mean, betas[k - 1].sqrt()).to_event(1))
            else:
                sample("sizes", dist.Normal(mean, betas[0].sqrt()).to_event(1), obs=sizes)


def declared_growth_chain(sizes: torch.Tensor, drift: torch.Tensor, predictor: torch.nn.Module, length: int = 5):
    """:func:`growth_chain` declared by its step (``ppgen.chain``): svi's chain ELBO runs the step
    once per gradient step with every plant at its own step k."""
    betas = noise_schedule(length)
    bars = torch.cumprod(1 - betas, 0)
    ppgen.module("predictor", predictor)

    def step(h: torch.Tensor, k: torch.Tensor):
        beta, bar = betas[k - 1][..., None], bars[k - 1][..., None]
        mean = (h - beta / (1 - bar).sqrt() * predictor(h, k)) / (1 - beta).sqrt() + 0.1 * drift[:, None]
        return dist.Normal(mean, beta.sqrt()).to_event(1)

    with plate("plants", sizes.shape[0]):
        ppgen.chain("sizes", length, dist.Normal(torch.zeros(3, dtype=sizes.dtype), 1.0).to_event(1), step, obs=sizes)


def _plants(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    drift = rng.uniform(-1.0, 1.0, size=n)
    return torch.tensor(rng.normal(size=(n, 3)) * 0.5 + drift[:, None]), torch.tensor(drift)


def correlated_sensor(readings: torch.Tensor, sensor: torch.nn.Module):
    """The implicit sensor driven by correlated noise (a full-covariance Gaussian per reading)."""
    ppgen.module("sensor", sensor)
    covariance = torch.tensor([[1.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 1.0]], dtype=readings.dtype)
    with plate("units", readings.shape[0]):
        noise = sample("noise", dist.MultivariateNormal(torch.zeros(3, dtype=readings.dtype), covariance))
        sample("readings", dist.Delta(sensor(noise), event_dim=1), obs=readings)


def panel(scores: torch.Tensor):
    """Test scores of students (rows) on 3 subjects (an inner plate): a global latent offset, a
    latent ability per student, learned subject means and ability scale."""
    offset = sample("offset", dist.Normal(torch.tensor(0.0, dtype=scores.dtype), 1.0))
    means = param("means", torch.zeros(3, dtype=scores.dtype))
    gain = param("gain", torch.tensor(1.0, dtype=scores.dtype), constraint=dist.constraints.positive)
    with plate("students", scores.shape[0], dim=-2):
        ability = sample("ability", dist.Normal(torch.tensor(0.0, dtype=scores.dtype), 1.0))
        with plate("subjects", 3, dim=-1):
            sample("scores", dist.Normal(means + 0.1 * offset + gain * ability, 0.3), obs=scores)


def _critic(features: int = 2) -> torch.nn.Module:
    torch.manual_seed(21)
    return torch.nn.Sequential(torch.nn.Linear(features, 10), torch.nn.LeakyReLU(0.2), torch.nn.Linear(10, 1)).double()


def _readings(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.normal(size=(n, 2)) @ np.array([[1.0, 0.4], [0.0, 0.6]]) + 1.0)


def fit(case: str) -> ppgen.Result:
    """One case, fitted exactly as a user would in a single process."""
    if case == "adversarial_non_saturating":
        torch.manual_seed(7)
        return ppgen.learn(
            implicit_sensor, _readings(36, 3), sensor=Sensor().double(), engine="adversarial", loss="non-saturating",
            critic=_critic(), subsample_size=12, num_steps=8, learning_rate=0.02, seed=4,
        )
    if case == "adversarial_wgan_gp_implicit":
        torch.manual_seed(19)
        return ppgen.learn(
            implicit_sensor, _readings(30, 20), sensor=Sensor().double(), engine="adversarial", loss="wgan-gp",
            critic=_critic(), subsample_size=10, num_critic_steps=3, num_steps=4, learning_rate=0.01, seed=2,
        )
    if case == "adversarial_minimax_nested_plates":
        scores = torch.tensor(np.random.default_rng(22).normal(size=(12, 3)) + np.array([1.0, -1.0, 0.5]))
        return ppgen.learn(
            panel, scores, engine="adversarial", loss="minimax", critic=_critic(3), subsample_size=6, num_steps=5,
            learning_rate=0.05, seed=1,
        )
    if case == "adversarial_rank_seeded_networks":
        # a script that seeds each process by its rank builds different networks on each: the
        # engine starts every rank from rank 0's (as DistributedDataParallel does)
        torch.manual_seed(7 + int(os.environ.get("RANK", "0")))
        sensor, critic = Sensor().double(), torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()
        return ppgen.learn(
            implicit_sensor, _readings(12, 25), sensor=sensor, engine="adversarial", critic=critic, subsample_size=6, num_steps=3,
            learning_rate=0.02, seed=5,
        )
    if case == "adversarial_correlated_noise":
        torch.manual_seed(23)
        return ppgen.learn(
            correlated_sensor, _readings(16, 24), sensor=Sensor().double(), engine="adversarial", critic=_critic(),
            subsample_size=8, num_steps=5, learning_rate=0.02, seed=3,
        )
    if case == "adversarial_wgan_gp":
        weights = torch.tensor(np.random.default_rng(5).uniform(0.5, 1.5, size=20))
        return ppgen.learn(
            noisy_shift, _readings(20, 9), weights, engine="adversarial", loss="wgan-gp", critic=_critic(),
            num_critic_steps=2, num_steps=6, learning_rate=0.02, seed=6,
        )
    if case == "diffusion_minibatch":
        torch.manual_seed(12)
        sizes, drift = _plants(24, 13)
        return ppgen.learn(
            growth_chain, sizes, drift, predictor=StepPredictor(3, 5).double(), engine="svi", guide=forward_process(5),
            subsample_size=8, num_steps=7, learning_rate=0.02, num_elbo_evaluations=2, seed=3,
        )
    if case == "diffusion_declared_minibatch":
        torch.manual_seed(19)
        sizes, drift = _plants(24, 20)
        return ppgen.learn(
            declared_growth_chain, sizes, drift, predictor=StepPredictor(3, 5).double(), engine="svi", guide=forward_process(5),
            subsample_size=8, num_steps=7, learning_rate=0.02, num_elbo_evaluations=2, seed=4,
        )
    if case == "diffusion_full_batch_simple":
        torch.manual_seed(14)
        sizes, drift = _plants(10, 15)
        return ppgen.learn(
            growth_chain, sizes, drift, predictor=StepPredictor(3, 4).double(), length=4, engine="svi", guide=forward_process(4),
            weighting="simple", num_particles=2, num_step_groups=3, num_steps=5, learning_rate=0.02, num_elbo_evaluations=2, seed=8,
        )
    if case == "diffusion_stochastic_layer":
        torch.manual_seed(17)
        sizes, drift = _plants(24, 18)
        return ppgen.learn(
            growth_chain, sizes, drift, predictor=StepPredictor(3, 5, jitter=0.1).double(), engine="svi", guide=forward_process(5),
            subsample_size=12, num_steps=6, learning_rate=0.02, num_elbo_evaluations=3, seed=9,
        )
    if case == "diffusion_importance":
        sizes, drift = _plants(8, 16)
        return ppgen.learn(
            growth_chain, sizes, drift, predictor=StepPredictor(3, 5).double(), engine="svi", guide=forward_process(5),
            step_sampling="importance", num_steps=2, seed=1,
        )
    raise KeyError(f"unknown case {case!r}")


def saved(result: ppgen.Result) -> dict[str, np.ndarray]:
    """What the tests compare: every loss trace, every learned parameter and the critic's weights."""
    out = {f"trace:{name}": np.asarray(values) for name, values in result.traces.items()}
    out.update({f"param:{name}": np.asarray(value) for name, value in result.params.items()})
    if result.log_evidence is not None:
        out["log_evidence"] = np.asarray(result.log_evidence.value)
    critic = result.diagnostics.get("modules", {}).get("critic")
    if critic is not None:
        out.update({f"critic:{name}": value.detach().numpy() for name, value in critic.state_dict().items()})
    return out


@contextlib.contextmanager
def _without_average() -> Iterator[None]:
    """Each rank keeps its own shard's gradients and loss (the bug the tests must catch)."""
    from ppgen.inference._distributed import World

    saved_average, saved_mean = World.average, World.mean
    World.average, World.mean = (lambda self, tensors: None), (lambda self, value: value)
    try:
        yield
    finally:
        World.average, World.mean = saved_average, saved_mean


if __name__ == "__main__":
    torch.set_num_threads(1)
    out_dir, cases = sys.argv[1], sys.argv[2:]
    rank = int(os.environ["RANK"])
    for name in cases:
        base, _, variant = name.partition("+")
        try:
            with _without_average() if variant == "unaveraged" else contextlib.nullcontext():
                out = saved(fit(base))
        except ValueError as refusal:  # (a case the tests expect to be refused, with its message)
            out = {"error": np.asarray(str(refusal))}
        np.savez(os.path.join(out_dir, f"{name}-rank{rank}.npz"), **out)
    torch.distributed.destroy_process_group()
