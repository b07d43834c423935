"""Exponential families for coordinate-ascent VI, written in one basis each.

Every family here writes its density as ``log q(u) = <η, T(u)> − A(η)`` with base measure 1, in
the basis of sufficient statistics ``T`` chosen below. A conjugate-exponential model's log joint
is affine in ``T(u)`` for every latent ``u``, so the coefficients of ``T(u)`` collected from all
factors touching ``u`` *are* the natural parameters of its optimal mean-field factor, and the
entropy is ``H[q] = A(η) − <η, E T(u)>``.

=============  ====================  ====================================================
family         T(u)                  natural parameters η
=============  ====================  ====================================================
Normal         (u, u²)               (m/s², −1/(2 s²))
Gamma          (u, log u)            (−rate, shape − 1)
Beta           (log u, log(1 − u))   (a − 1, b − 1)
Dirichlet      log u  (K entries)    α − 1
NormalGamma    (τ, τμ, τμ², log τ)   (−λm²/2 − β, λm, −λ/2, α − 1/2)
=============  ====================  ====================================================

``NormalGamma`` is the joint factor q(μ, τ) = Normal(μ | m, (λτ)^(−1/2)) Gamma(τ | α, β) used when
a Normal latent's scale is a function of a Gamma precision (the conjugate Normal–Gamma prior).
Each family also provides ``d + 1`` probe points with affinely independent statistics, which is
how the compiler (:mod:`ppgen.inference._conjugate`) reads the coefficients off a program.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch.special import digamma

Values = tuple[torch.Tensor, ...]


class Family:
    """One latent node's family. ``sites`` are the program sites it covers (two for
    NormalGamma), ``event_size`` the number of entries per element (K for Dirichlet)."""

    name: ClassVar[str] = ""
    num_sites: ClassVar[int] = 1

    def __init__(self, sites: tuple[str, ...], event_size: int = 1) -> None:
        self.sites = sites
        self.event_size = event_size

    @property
    def dim(self) -> int:
        return 2

    # statistics and probes -------------------------------------------------------------
    def stats(self, values: Values) -> torch.Tensor:
        """T(u) for values of shape (n, *event) per site; returns (n, dim)."""
        raise NotImplementedError

    def probes(self) -> list[Values]:
        """``dim + 1`` single-element values whose statistics are affinely independent."""
        raise NotImplementedError

    def random(self, num: int, generator: torch.Generator) -> Values:
        """``num`` random element values well inside the support (for probing)."""
        raise NotImplementedError

    # the variational factor ------------------------------------------------------------
    def valid(self, eta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def expected_stats(self, eta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_normalizer(self, eta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, eta: torch.Tensor, num_samples: int) -> Values:
        raise NotImplementedError

    def readable(self, eta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The factor's parameters under their usual names, keyed ``"site.parameter"``."""
        raise NotImplementedError

    def entropy(self, eta: torch.Tensor) -> torch.Tensor:
        return self.log_normalizer(eta) - (eta * self.expected_stats(eta)).sum(-1)

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(self.sites)})"


def _column(values: Values, index: int = 0) -> torch.Tensor:
    return values[index].reshape(values[index].shape[0])


class NormalFamily(Family):
    name = "Normal"

    def stats(self, values: Values) -> torch.Tensor:
        u = _column(values)
        return torch.stack([u, u * u], -1)

    def probes(self) -> list[Values]:
        return [(torch.tensor([v]),) for v in (-1.0, 0.5, 2.0)]

    def random(self, num: int, generator: torch.Generator) -> Values:
        return (torch.rand(num, generator=generator) * 4.0 - 2.0,)

    def _moments(self, eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        variance = -0.5 / eta[..., 1]
        return eta[..., 0] * variance, variance

    def valid(self, eta: torch.Tensor) -> torch.Tensor:
        return eta[..., 1] < 0

    def expected_stats(self, eta: torch.Tensor) -> torch.Tensor:
        mean, variance = self._moments(eta)
        return torch.stack([mean, mean * mean + variance], -1)

    def log_normalizer(self, eta: torch.Tensor) -> torch.Tensor:
        mean, variance = self._moments(eta)
        return 0.5 * mean * mean / variance + 0.5 * torch.log(2 * math.pi * variance)

    def sample(self, eta: torch.Tensor, num_samples: int) -> Values:
        mean, variance = self._moments(eta)
        return (mean + variance.sqrt() * torch.randn((num_samples,) + mean.shape),)

    def readable(self, eta: torch.Tensor) -> dict[str, torch.Tensor]:
        mean, variance = self._moments(eta)
        return {f"{self.sites[0]}.loc": mean, f"{self.sites[0]}.scale": variance.sqrt()}


class GammaFamily(Family):
    name = "Gamma"

    def stats(self, values: Values) -> torch.Tensor:
        u = _column(values)
        return torch.stack([u, torch.log(u)], -1)

    def probes(self) -> list[Values]:
        return [(torch.tensor([v]),) for v in (0.5, 1.0, 2.5)]

    def random(self, num: int, generator: torch.Generator) -> Values:
        return (0.3 + 2.7 * torch.rand(num, generator=generator),)

    @staticmethod
    def _shape_rate(eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return eta[..., 1] + 1.0, -eta[..., 0]

    def valid(self, eta: torch.Tensor) -> torch.Tensor:
        shape, rate = self._shape_rate(eta)
        return (shape > 0) & (rate > 0)

    def expected_stats(self, eta: torch.Tensor) -> torch.Tensor:
        shape, rate = self._shape_rate(eta)
        return torch.stack([shape / rate, digamma(shape) - torch.log(rate)], -1)

    def log_normalizer(self, eta: torch.Tensor) -> torch.Tensor:
        shape, rate = self._shape_rate(eta)
        return torch.lgamma(shape) - shape * torch.log(rate)

    def sample(self, eta: torch.Tensor, num_samples: int) -> Values:
        shape, rate = self._shape_rate(eta)
        return (torch.distributions.Gamma(shape, rate).sample((num_samples,)),)

    def readable(self, eta: torch.Tensor) -> dict[str, torch.Tensor]:
        shape, rate = self._shape_rate(eta)
        return {f"{self.sites[0]}.concentration": shape, f"{self.sites[0]}.rate": rate}


class BetaFamily(Family):
    name = "Beta"

    def stats(self, values: Values) -> torch.Tensor:
        u = _column(values)
        return torch.stack([torch.log(u), torch.log1p(-u)], -1)

    def probes(self) -> list[Values]:
        return [(torch.tensor([v]),) for v in (0.2, 0.5, 0.75)]

    def random(self, num: int, generator: torch.Generator) -> Values:
        return (0.1 + 0.8 * torch.rand(num, generator=generator),)

    def valid(self, eta: torch.Tensor) -> torch.Tensor:
        return (eta > -1).all(-1)

    def expected_stats(self, eta: torch.Tensor) -> torch.Tensor:
        a, b = eta[..., 0] + 1, eta[..., 1] + 1
        total = digamma(a + b)
        return torch.stack([digamma(a) - total, digamma(b) - total], -1)

    def log_normalizer(self, eta: torch.Tensor) -> torch.Tensor:
        a, b = eta[..., 0] + 1, eta[..., 1] + 1
        return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)

    def sample(self, eta: torch.Tensor, num_samples: int) -> Values:
        return (torch.distributions.Beta(eta[..., 0] + 1, eta[..., 1] + 1).sample((num_samples,)),)

    def readable(self, eta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"{self.sites[0]}.concentration1": eta[..., 0] + 1, f"{self.sites[0]}.concentration0": eta[..., 1] + 1}


class DirichletFamily(Family):
    name = "Dirichlet"

    @property
    def dim(self) -> int:
        return self.event_size

    def stats(self, values: Values) -> torch.Tensor:
        return torch.log(values[0].reshape(values[0].shape[0], self.event_size))

    def probes(self) -> list[Values]:
        size = self.event_size
        points = [torch.full((size,), 1.0 / size)] + [torch.softmax(torch.eye(size)[k], 0) for k in range(size)]
        return [(p[None],) for p in points]

    def random(self, num: int, generator: torch.Generator) -> Values:
        gamma = -torch.log(torch.rand(num, self.event_size, generator=generator).clamp_min(1e-3))
        return (gamma / gamma.sum(-1, keepdim=True),)

    def valid(self, eta: torch.Tensor) -> torch.Tensor:
        return (eta > -1).all(-1)

    def expected_stats(self, eta: torch.Tensor) -> torch.Tensor:
        alpha = eta + 1
        return digamma(alpha) - digamma(alpha.sum(-1, keepdim=True))

    def log_normalizer(self, eta: torch.Tensor) -> torch.Tensor:
        alpha = eta + 1
        return torch.lgamma(alpha).sum(-1) - torch.lgamma(alpha.sum(-1))

    def sample(self, eta: torch.Tensor, num_samples: int) -> Values:
        return (torch.distributions.Dirichlet(eta + 1).sample((num_samples,)),)

    def readable(self, eta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"{self.sites[0]}.concentration": eta + 1}


class NormalGammaFamily(Family):
    """q(μ, τ) = Normal(μ | m, (λτ)^(−1/2)) Gamma(τ | α, β); ``sites = (μ, τ)``."""

    name = "NormalGamma"
    num_sites = 2

    @property
    def dim(self) -> int:
        return 4

    def stats(self, values: Values) -> torch.Tensor:
        mu, tau = _column(values, 0), _column(values, 1)
        return torch.stack([tau, tau * mu, tau * mu * mu, torch.log(tau)], -1)

    def probes(self) -> list[Values]:
        points = [(0.0, 1.0), (1.0, 1.0), (-1.0, 2.0), (2.0, 0.5), (0.5, 3.0)]
        return [(torch.tensor([m]), torch.tensor([t])) for m, t in points]

    def random(self, num: int, generator: torch.Generator) -> Values:
        return (torch.rand(num, generator=generator) * 4.0 - 2.0, 0.3 + 2.7 * torch.rand(num, generator=generator))

    @staticmethod
    def _parameters(eta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        precision_scale = -2.0 * eta[..., 2]
        loc = eta[..., 1] / precision_scale
        shape = eta[..., 3] + 0.5
        rate = -eta[..., 0] - 0.5 * precision_scale * loc * loc
        return loc, precision_scale, shape, rate

    def valid(self, eta: torch.Tensor) -> torch.Tensor:
        _, precision_scale, shape, rate = self._parameters(eta)
        return (precision_scale > 0) & (shape > 0) & (rate > 0)

    def expected_stats(self, eta: torch.Tensor) -> torch.Tensor:
        loc, precision_scale, shape, rate = self._parameters(eta)
        mean_tau = shape / rate
        return torch.stack(
            [mean_tau, loc * mean_tau, 1.0 / precision_scale + loc * loc * mean_tau, digamma(shape) - torch.log(rate)], -1
        )

    def log_normalizer(self, eta: torch.Tensor) -> torch.Tensor:
        _, precision_scale, shape, rate = self._parameters(eta)
        return -0.5 * torch.log(precision_scale) + 0.5 * math.log(2 * math.pi) - shape * torch.log(rate) + torch.lgamma(shape)

    def sample(self, eta: torch.Tensor, num_samples: int) -> Values:
        loc, precision_scale, shape, rate = self._parameters(eta)
        tau = torch.distributions.Gamma(shape, rate).sample((num_samples,))
        mu = loc + torch.randn_like(tau) / torch.sqrt(precision_scale * tau)
        return mu, tau

    def readable(self, eta: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, precision_scale, shape, rate = self._parameters(eta)
        mu, tau = self.sites
        return {
            f"{mu}.loc": loc,
            f"{mu}.precision_scale": precision_scale,
            f"{tau}.concentration": shape,
            f"{tau}.rate": rate,
        }


#: Prior distribution class -> the family of its optimal mean-field factor.
FAMILY_OF_DISTRIBUTION: dict[str, type[Family]] = {
    "Normal": NormalFamily,
    "Gamma": GammaFamily,
    "Exponential": GammaFamily,
    "Beta": BetaFamily,
    "Dirichlet": DirichletFamily,
}


def design_matrix(family: Family) -> torch.Tensor:
    """Rows (T(p), 1) for the family's probe points p: a (dim + 1) square, invertible matrix."""
    rows = [torch.cat([family.stats(p)[0], torch.ones(1)]) for p in family.probes()]
    matrix = torch.stack(rows)
    if abs(float(np.linalg.cond(matrix.numpy()))) > 1e8:
        raise RuntimeError(f"{family}: probe points are degenerate")
    return matrix
