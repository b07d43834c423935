"""User programs for the data-parallel tests, and the worker that fits them on one rank.

Run as a script with torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), it fits every case named on the command line, as ``ppgen.learn`` is called in
a single process (ppgen initialises the gloo process group itself), and saves each result's
objective trace and parameters to ``<out>/<case>-rank<r>.npz``.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

import ppgen
from ppgen import dist, param, plate, sample


class Encoder(torch.nn.Module):
    """q(code_i | x_i): a small network to (loc, scale) of a diagonal Gaussian."""

    def __init__(self, data_dim: int, code_dim: int) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(data_dim, 6)
        self.loc = torch.nn.Linear(6, code_dim)
        self.scale = torch.nn.Linear(6, code_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.hidden(x))
        return self.loc(h), torch.nn.functional.softplus(self.scale(h)) + 1e-3


def autoencoder(pixels: torch.Tensor, decoder: torch.nn.Module):
    """A VAE-like program: a 2-d code per image, decoded to the mean of its 5 pixels."""
    ppgen.module("decoder", decoder)
    with plate("images", pixels.shape[0]):
        code = sample("code", dist.Normal(torch.zeros(2, dtype=pixels.dtype), 1.0).to_event(1))
        sample("pixels", dist.Normal(decoder(code), 0.4).to_event(1), obs=pixels)


def counts_regression(counts: torch.Tensor, exposure: torch.Tensor):
    """Poisson regression of counts on a log exposure, both coefficients learned."""
    slope = param("slope", torch.tensor(0.0, dtype=counts.dtype))
    intercept = param("intercept", torch.tensor(0.5, dtype=counts.dtype))
    with plate("shops", counts.shape[0]):
        sample("counts", dist.Poisson(torch.exp(intercept + slope * exposure)), obs=counts)


def trends(y: torch.Tensor):
    """A per-group latent level (mean-field Gaussian guide) around a shared learned mean."""
    centre = param("centre", torch.tensor(0.0, dtype=y.dtype))
    with plate("groups", y.shape[0]):
        level = sample("level", dist.Normal(centre, 1.0))
        sample("y", dist.Normal(level, 0.5), obs=y)


def _pixels() -> torch.Tensor:
    rng = np.random.default_rng(11)
    codes = rng.normal(size=(36, 2))
    return torch.tensor(codes @ rng.normal(size=(2, 5)) + 0.3 * rng.normal(size=(36, 5)), dtype=torch.float64)


def fit(case: str) -> ppgen.Result:
    """One case, fitted exactly as a user would in a single process."""
    if case == "svi_amortized":
        torch.manual_seed(3)
        decoder, encoder = torch.nn.Linear(2, 5).double(), Encoder(5, 2).double()
        return ppgen.learn(
            autoencoder, _pixels(), decoder=decoder, engine="svi", guide=ppgen.amortize(encoder, latent="code"),
            subsample_size=12, num_steps=9, learning_rate=0.03, num_samples=4, num_elbo_evaluations=2, seed=5,
        )
    if case == "svi_full_batch_autonormal":
        y = torch.tensor(np.random.default_rng(4).normal(1.5, 1.2, size=10))
        return ppgen.learn(trends, y, engine="svi", num_steps=7, learning_rate=0.05, num_samples=4, num_elbo_evaluations=2, seed=2)
    if case == "mle_minibatch":
        rng = np.random.default_rng(8)
        exposure = rng.uniform(-1.0, 1.0, size=30)
        counts = rng.poisson(np.exp(1.0 + 0.7 * exposure)).astype(np.float64)
        return ppgen.learn(
            counts_regression, torch.tensor(counts), torch.tensor(exposure), engine="mle",
            subsample_size=10, num_steps=11, learning_rate=0.1, seed=1,
        )
    raise ValueError(f"unknown case {case!r}")


def saved(result: ppgen.Result) -> dict[str, np.ndarray]:
    """What the test compares: the objective trace and every learned parameter."""
    out = {f"trace:{name}": np.asarray(values) for name, values in result.traces.items()}
    out.update({f"param:{name}": np.asarray(value) for name, value in result.params.items()})
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    out_dir, cases = sys.argv[1], sys.argv[2:]
    rank = int(os.environ["RANK"])
    for name in cases:
        np.savez(os.path.join(out_dir, f"{name}-rank{rank}.npz"), **saved(fit(name)))
    torch.distributed.destroy_process_group()
