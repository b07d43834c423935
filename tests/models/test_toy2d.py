"""The toy sets' entropies (``TOY_ENTROPIES``) against independent computations.

Two checks per set: quadrature of −p log p for the exact density written from the definition
(a mixture over the generating curve or centres), and a Monte Carlo estimate −mean log p(x) over
draws of ``sample_toy2d``, which ties the density to the sampler (a wrong formula on either side
shows as a disagreement of several standard errors).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

from ppgen.models._toy2d import EIGHT_GAUSSIANS_CENTRES, EIGHT_GAUSSIANS_SCALE, GRID_CENTRES, GRID_SCALE, TOY_ENTROPIES, sample_toy2d


def mixture_log_density(points, centres, scale):
    """log of the equal-weight mixture of isotropic Gaussians N(centre, scale² I) at ``points``."""
    squared = ((points[:, None, :] - centres[None]) ** 2).sum(-1)
    return logsumexp(-squared / (2 * scale ** 2), axis=1) - np.log(len(centres)) - np.log(2 * np.pi * scale ** 2)


def moons_centres(num_nodes):
    """Midpoint nodes of the two half circles (angle uniform on (0, π)), scaled and shifted as the
    sampler does; the moons density is the mixture of N(node, 0.2² I) over these nodes."""
    angle = (np.arange(num_nodes) + 0.5) / num_nodes * np.pi
    upper = np.stack([np.cos(angle), np.sin(angle)], 1)
    lower = np.stack([1 - np.cos(angle), 0.5 - np.sin(angle)], 1)
    return np.concatenate([upper, lower]) * 2.0 + np.array([-1.0, -0.2])


DENSITIES = {
    "moons": lambda x: mixture_log_density(x, moons_centres(300), 0.2),
    "8gaussians": lambda x: mixture_log_density(x, EIGHT_GAUSSIANS_CENTRES, EIGHT_GAUSSIANS_SCALE),
}


def grid_entropy(log_density, low, high, step):
    """(−Σ p log p h², Σ p h²) over the midpoint grid of [low, high]² with spacing ``step``."""
    nodes = np.arange(low + step / 2, high, step)
    points = np.stack(np.meshgrid(nodes, nodes), -1).reshape(-1, 2)
    log_p = np.concatenate([log_density(chunk) for chunk in np.array_split(points, len(points) // 4000 + 1)])
    p = np.exp(log_p)
    return float(-(p * log_p).sum() * step ** 2), float(p.sum() * step ** 2)


@pytest.mark.parametrize("name", ["moons", "8gaussians"])
def test_entropy_by_quadrature(name):
    entropy, mass = grid_entropy(DENSITIES[name], -5.0, 5.0, 0.05)
    assert mass == pytest.approx(1.0, abs=1e-4)  # the grid holds the whole density
    assert TOY_ENTROPIES[name] == pytest.approx(entropy, abs=2e-3)


@pytest.mark.parametrize("name", ["moons", "8gaussians"])
def test_entropy_by_monte_carlo_over_the_sampler(name):
    points = sample_toy2d(name, 4000, seed=123)
    log_p = DENSITIES[name](points)
    standard_error = log_p.std() / np.sqrt(len(points))
    assert abs(-log_p.mean() - TOY_ENTROPIES[name]) < 4 * standard_error


def test_checkerboard_is_uniform_on_eight_squares_of_area_four():
    """Uniform on a set of area A has entropy ln A: count the draws in each of the 16 squares of
    side 2 in [-4, 4]²; eight hold none and eight hold 1/8 each (chi-square within 4 sd)."""
    points = sample_toy2d("checkerboard", 16000, seed=4)
    assert np.all(np.abs(points) <= 4.0)
    cells = np.floor(points / 2.0).astype(int) + 2
    counts = np.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16)
    occupied = counts[counts > 0]
    assert len(occupied) == 8
    expected = len(points) / 8
    chi_square = float(((occupied - expected) ** 2 / expected).sum())
    assert abs(chi_square - 7) < 4 * np.sqrt(2 * 7)
    assert TOY_ENTROPIES["checkerboard"] == pytest.approx(np.log(8 * 4.0), abs=1e-12)


def test_25gaussians_entropy_by_monte_carlo():
    points = sample_toy2d("25gaussians", 4000, seed=8)
    log_p = mixture_log_density(points, GRID_CENTRES, GRID_SCALE)
    assert abs(-log_p.mean() - TOY_ENTROPIES["25gaussians"]) < 4 * log_p.std() / np.sqrt(len(points))
