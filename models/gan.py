"""Generative adversarial networks: implicit models x = G_θ(z) trained by ``engine="adversarial"``.

z_i ~ Normal(0, I_K);  x_i = G_θ(z_i)  (a ``Delta`` observation), i = 1..N,

with G_θ an MLP generator (Goodfellow et al. 2014). The program has no density: every density
engine refuses it naming the observed site ``x`` (the tutorial's "SCORING ××"), and the
adversarial engine learns θ from a critic that compares data with draws. Data: the 2-D toy sets
of :mod:`ppgen.models._toy2d` (eight Gaussians on a circle, the 5 × 5 grid of 25 Gaussians) and
scikit-learn's 8 × 8 digits (grey levels in [0, 1]).

Mode collapse is measured as VEEGAN and PacGAN do on the toy sets (:func:`mode_coverage`): a
draw is *high quality* when it lies within three standard deviations of the nearest mode's
centre, and a mode is *covered* when at least 0.8 % of the draws are high-quality draws nearest
to it (PacGAN's 20 of 2,500).

References
----------
Goodfellow et al. (2014), Generative adversarial nets. NeurIPS.
Srivastava et al. (2017), VEEGAN: reducing mode collapse in GANs using implicit variational learning. NeurIPS.
Lin et al. (2018), PacGAN: the power of two samples in generative adversarial networks. NeurIPS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ppgen import dist, module, plate, sample
from ppgen.catalogue import Example, Simulated
from ppgen.models._figures import image_grid
from ppgen.models._networks import seeded_mlp
from ppgen.models._toy2d import EIGHT_GAUSSIANS_CENTRES, EIGHT_GAUSSIANS_SCALE, GRID_CENTRES, GRID_SCALE, sample_toy2d

#: Mode centres and standard deviation of each toy set :func:`mode_coverage` counts modes on.
TOY_MODES = {
    "8gaussians": (EIGHT_GAUSSIANS_CENTRES, EIGHT_GAUSSIANS_SCALE),
    "25gaussians": (GRID_CENTRES, GRID_SCALE),
}


class Generator(torch.nn.Module):
    """MLP z (K) → hidden → hidden → x (D), with a sigmoid on the output for images in [0, 1]."""

    def __init__(self, latent_dim: int = 2, data_dim: int = 2, hidden: int = 64, seed: int = 0, sigmoid: bool = False) -> None:
        super().__init__()
        self.latent_dim, self.data_dim, self.sigmoid = latent_dim, data_dim, sigmoid
        self.net = seeded_mlp([latent_dim, hidden, hidden, data_dim], torch.Generator().manual_seed(seed), lambda: torch.nn.LeakyReLU(0.2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        return torch.sigmoid(out) if self.sigmoid else out


def make_generator(latent_dim: int = 2, data_dim: int = 2, hidden: int = 64, seed: int = 0, sigmoid: bool = False) -> Generator:
    """A freshly initialised generator, a function of its sizes and ``seed`` only."""
    return Generator(latent_dim, data_dim, hidden, seed, sigmoid)


def gan(x: Optional[Any] = None, num_data: int = 256, generator: Optional[torch.nn.Module] = None) -> None:
    """An implicit model: x_i = G_θ(z_i), z_i ~ N(0, I_K).

    Parameters
    ----------
    x : array of shape (N, D), or None to generate ``num_data`` points.
    generator : the network G_θ (a :class:`Generator`, K = ``generator.latent_dim``); it is
        trained in place of θ, so pass it whenever ``x`` is given. Without one, a fixed seeded
        2-D generator draws.
    """
    if generator is None:
        if x is not None:
            raise ValueError("gan: pass generator=make_generator(latent_dim, data_dim) (the network to train) together with x")
        generator = make_generator()
    n = num_data if x is None else x.shape[0]
    module("generator", generator)
    with plate("N", n):
        z = sample("z", dist.Normal(0.0, 1.0).expand([generator.latent_dim]).to_event(1))
        sample("x", dist.Delta(generator(z), event_dim=1), obs=x)


# --------------------------------------------------------------------------------------------
# mode coverage on the toy sets


@dataclass(frozen=True)
class ModeCoverage:
    """How a sample covers a mixture's modes: ``num_covered`` of ``counts.size`` modes, the
    ``high_quality`` fraction of draws, and ``counts`` of high-quality draws per mode."""

    num_covered: int
    high_quality: float
    counts: np.ndarray


def mode_coverage(samples: np.ndarray, centres: np.ndarray, scale: float, min_fraction: float = 0.008) -> ModeCoverage:
    """Modes covered and fraction of high-quality draws (VEEGAN, Srivastava et al. 2017; PacGAN,
    Lin et al. 2018).

    Parameters
    ----------
    samples : array of shape (num_samples, D).
    centres : array of shape (num_modes, D), the modes' centres.
    scale : the standard deviation σ of each (isotropic) mode.
    min_fraction : a mode is covered when at least ``min_fraction · num_samples`` high-quality
        draws are nearest to it (PacGAN: 20 of 2,500 = 0.8 %).

    A draw is high quality when its distance to the nearest centre is at most 3σ.
    """
    samples, centres = np.asarray(samples, dtype=np.float64), np.asarray(centres, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] != centres.shape[1]:
        raise ValueError(f"mode_coverage: samples must have shape (num_samples, {centres.shape[1]}), got {samples.shape}")
    distances = np.linalg.norm(samples[:, None, :] - centres[None, :, :], axis=-1)
    nearest = distances.argmin(axis=1)
    good = distances[np.arange(len(samples)), nearest] <= 3.0 * scale
    counts = np.bincount(nearest[good], minlength=len(centres))
    covered = int((counts >= min_fraction * len(samples)).sum())
    return ModeCoverage(covered, float(good.mean()), counts)


def toy_coverage(name: str, samples: np.ndarray) -> ModeCoverage:
    """:func:`mode_coverage` of ``samples`` on toy set ``name`` ("8gaussians" or "25gaussians")."""
    if name not in TOY_MODES:
        raise ValueError(f"toy_coverage: modes are known for {sorted(TOY_MODES)}, got {name!r}")
    centres, scale = TOY_MODES[name]
    return mode_coverage(samples, centres, scale)


def draw(generator: torch.nn.Module, num_samples: int, seed: int = 0) -> np.ndarray:
    """``num_samples`` draws G(z), z ~ N(0, I), as an array of shape (num_samples, D)."""
    z = torch.randn(num_samples, generator.latent_dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        return generator(z).numpy()


# --------------------------------------------------------------------------------------------
# data for the tour


def load_digits_grey() -> np.ndarray:
    """scikit-learn's 1797 digits as grey levels in [0, 1] (intensity / 16), float64 (N, 64)."""
    from sklearn.datasets import load_digits

    return load_digits().data / 16.0


def simulate_toy(name: str = "8gaussians", num_data: int = 512, seed: int = 0) -> Simulated:
    """``num_data`` points of toy set ``name`` and a fresh 2-D generator."""
    return Simulated({"x": sample_toy2d(name, num_data, seed), "generator": make_generator(seed=seed)}, {"toy": name})


def simulate_digits(seed: int = 0) -> Simulated:
    """The digits and a fresh generator with an 8-dimensional latent space and a sigmoid output."""
    return Simulated({"x": load_digits_grey(), "generator": make_generator(8, 64, 128, seed, sigmoid=True)}, {"toy": None})


def report(example: Example, simulated: Simulated, result: Any) -> list[Any]:
    """Figures for the tour: draws over the data (with modes covered) or a grid of digits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modules = result.diagnostics.get("modules", {}) if result is not None else {}
    generator = modules.get("generator")
    if generator is None:
        return []
    x = np.asarray(simulated.data["x"])
    name = simulated.truth.get("toy")
    if name is None:
        figure, axis = plt.subplots(figsize=(6, 4.2))
        image_grid(axis, draw(generator, 48), 6, "digits drawn from the trained generator: G(z), z ~ N(0, I)")
        return [figure]
    fake = draw(generator, 2500)
    coverage = toy_coverage(name, fake)
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.scatter(x[:, 0], x[:, 1], s=3, alpha=0.4, label="data")
    axis.scatter(fake[:1000, 0], fake[:1000, 1], s=3, alpha=0.4, label="generator")
    axis.set_aspect("equal")
    axis.legend(loc="upper right", fontsize=8)
    axis.set_title(
        f"{name}: {coverage.num_covered} of {coverage.counts.size} modes covered, "
        f"{100 * coverage.high_quality:.0f} % high-quality draws (2,500 draws)", fontsize=9,
    )
    return [figure]


EXAMPLES = [
    Example(
        "gan-8gaussians",
        gan,
        simulate_toy,
        "GAN on the eight Gaussians: an implicit program x = G(z) with no density, learned adversarially",
        options={"adversarial": {"loss": "non-saturating", "subsample_size": 128, "learning_rate": 1e-3}},
        report=report,
    ),
    Example(
        "gan-digits",
        gan,
        simulate_digits,
        "GAN on scikit-learn's 8×8 digits (grey levels), generator 8 → 128 → 128 → 64 with a sigmoid",
        options={"adversarial": {"loss": "non-saturating", "subsample_size": 128, "learning_rate": 5e-4}},
        report=report,
    ),
]
