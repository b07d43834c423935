"""The 2-D toy data sets of the flow, diffusion and GAN literature, generated (never downloaded).

Definitions follow FFJORD's ``toy_data.py`` (Grathwohl et al. 2019) for ``moons``,
``8gaussians`` and ``checkerboard``, and VEEGAN/PacGAN (Srivastava et al. 2017; Lin et al. 2018)
for ``25gaussians``, a 5 × 5 grid of narrow Gaussians used to count the modes a sampler covers.
Each sampler is a function of ``num_samples`` and ``seed`` only.
"""

from __future__ import annotations

import numpy as np

#: Centres of the eight Gaussians (radius 4/1.414) and their standard deviation (0.5/1.414).
EIGHT_GAUSSIANS_CENTRES = (
    4.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1),
                    (2 ** -0.5, 2 ** -0.5), (2 ** -0.5, -(2 ** -0.5)),
                    (-(2 ** -0.5), 2 ** -0.5), (-(2 ** -0.5), -(2 ** -0.5))]) / 1.414
)
EIGHT_GAUSSIANS_SCALE = 0.5 / 1.414

#: Centres of the 5 × 5 grid, {-4, -2, 0, 2, 4}², and the standard deviation of each mode.
GRID_CENTRES = np.array([(i, j) for i in range(-4, 5, 2) for j in range(-4, 5, 2)], dtype=np.float64)
GRID_SCALE = 0.05

#: Differential entropy H = −E log p(x) (nats) of each toy set as :func:`sample_toy2d` defines it,
#: the floor no model's test NLL can go below. ``checkerboard`` is uniform on area 32 (ln 32);
#: ``25gaussians``' modes are 40 standard deviations apart, so H = ln 25 + ln(2πe σ²) to all
#: printed digits. ``moons`` (a Gaussian blur, σ = 0.2, of two half circles) and ``8gaussians``
#: (modes 6.1 σ apart, so slightly below ln 8 + ln(2πe σ²) = 2.8382) come from quadrature of the
#: exact density on a grid (tests/models/test_toy2d.py recomputes them). The literature's 2.390
#: for the moons is 0.004 below this definition's value; its 2.833 for the 8 Gaussians agrees.
TOY_ENTROPIES = {
    "moons": 2.3939,
    "8gaussians": 2.8319,
    "checkerboard": float(np.log(32.0)),
    "25gaussians": float(np.log(25.0) + np.log(2 * np.pi * np.e * GRID_SCALE ** 2)),
}


def sample_toy2d(name: str, num_samples: int, seed: int = 0) -> np.ndarray:
    """``num_samples`` points (float64, shape (num_samples, 2)) of the toy set ``name``: one of
    ``"moons"``, ``"8gaussians"``, ``"checkerboard"``, ``"25gaussians"``."""
    rng = np.random.default_rng(seed)
    if name == "moons":  # sklearn.make_moons(noise=0.1) scaled by 2 and shifted, as FFJORD
        angle = rng.uniform(0.0, np.pi, num_samples)
        upper = rng.random(num_samples) < 0.5
        x = np.where(upper, np.cos(angle), 1.0 - np.cos(angle))
        y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
        points = np.stack([x, y], axis=1) + 0.1 * rng.standard_normal((num_samples, 2))
        return points * 2.0 + np.array([-1.0, -0.2])
    if name == "8gaussians":
        centres = EIGHT_GAUSSIANS_CENTRES[rng.integers(0, 8, num_samples)]
        return centres + EIGHT_GAUSSIANS_SCALE * rng.standard_normal((num_samples, 2))
    if name == "checkerboard":  # uniform on 8 of the 16 squares of side 2 in [-4, 4]²: area 32
        x1 = rng.random(num_samples) * 4 - 2
        x2 = rng.random(num_samples) - rng.integers(0, 2, num_samples) * 2 + np.floor(x1) % 2
        return np.stack([x1, x2], axis=1) * 2.0
    if name == "25gaussians":
        centres = GRID_CENTRES[rng.integers(0, len(GRID_CENTRES), num_samples)]
        return centres + GRID_SCALE * rng.standard_normal((num_samples, 2))
    raise ValueError(f"sample_toy2d: unknown toy set {name!r}; expected one of 'moons', '8gaussians', 'checkerboard', '25gaussians'")
