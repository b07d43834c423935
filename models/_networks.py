"""Seeded networks shared by the neural families (VAE, autoregressive, flows, diffusion, GAN).

Every ``make_*`` constructor of the catalogue builds its layers here, so that a network is a
function of its sizes and seed only, never of the global random state.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def seeded_mlp(
    sizes: list[int],
    generator: torch.Generator,
    activation: Callable[[], torch.nn.Module] = torch.nn.Softplus,
    dtype: torch.dtype = torch.float64,
) -> torch.nn.Sequential:
    """An MLP ``sizes[0] → … → sizes[-1]`` with ``activation`` between layers (none after the
    last), weights and biases drawn U(−1/√fan_in, 1/√fan_in) from ``generator``."""
    layers: list[torch.nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = torch.nn.Linear(fan_in, fan_out, dtype=dtype)
        with torch.no_grad():
            bound = 1.0 / np.sqrt(fan_in)
            linear.weight.uniform_(-bound, bound, generator=generator)
            linear.bias.uniform_(-bound, bound, generator=generator)
        layers.append(linear)
        if index < len(sizes) - 2:
            layers.append(activation())
    return torch.nn.Sequential(*layers)
