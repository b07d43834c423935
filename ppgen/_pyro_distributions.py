"""``ppgen.dist`` on the Pyro backend: ``pyro.distributions``, plus the NumPyro families that
Pyro lacks, so a program written against NumPyro's names runs (and traces: every verb traces
the program on Pyro) unchanged.

Ported, with NumPyro's parameterisation and semantics:

- :class:`GaussianRandomWalk` ``(scale, num_steps)``: x₀ ~ N(0, σ²), x_t − x_{t−1} ~ N(0, σ²).
- :class:`DiscreteUniform` ``(low, high)``: uniform on the integers low, ..., high (inclusive).
- NumPyro's explicitly parameterised names (``BernoulliLogits(logits)``,
  ``CategoricalProbs(probs)``, ``NegativeBinomial2(mean, concentration)``, ...), each the Pyro
  family it names with that parameterisation.

Asking for another NumPyro-only family raises ``NotImplementedError`` naming it and what to
write instead.
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as _pyro_distributions
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions.utils import _standard_normal, broadcast_all

__all__ = ["GaussianRandomWalk", "DiscreteUniform"]


class GaussianRandomWalk(TorchDistribution):
    r"""A Gaussian random walk of ``num_steps`` steps with step scale σ (NumPyro's
    ``GaussianRandomWalk``).

    .. math::

        x_0 \sim \mathcal N(0, \sigma^2), \qquad x_t - x_{t-1} \sim \mathcal N(0, \sigma^2),
        \qquad \log p(x) = \log \mathcal N(x_0; 0, \sigma) + \sum_{t=1}^{n-1} \log \mathcal N(x_t - x_{t-1}; 0, \sigma).

    Parameters
    ----------
    scale : float or tensor of shape batch_shape
        σ > 0, the standard deviation of x₀ and of every increment.
    num_steps : int
        n, the length of the walk: ``event_shape == (num_steps,)``.
    """

    arg_constraints = {"scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, scale: Any = 1.0, num_steps: int = 1, validate_args: Any = None) -> None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"GaussianRandomWalk: num_steps must be a positive integer, got {num_steps!r}")
        (self.scale,) = broadcast_all(scale)
        self.num_steps = num_steps
        super().__init__(self.scale.shape, torch.Size((num_steps,)), validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> "GaussianRandomWalk":
        new = self._get_checked_instance(GaussianRandomWalk, _instance)
        batch_shape = torch.Size(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        new.num_steps = self.num_steps
        super(GaussianRandomWalk, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape: Any = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        increments = _standard_normal(shape, dtype=self.scale.dtype, device=self.scale.device)
        return increments.cumsum(-1) * self.scale.unsqueeze(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        first = _pyro_distributions.Normal(0.0, self.scale).log_prob(value[..., 0])
        increments = value[..., 1:] - value[..., :-1]
        steps = _pyro_distributions.Normal(0.0, self.scale.unsqueeze(-1)).log_prob(increments)
        return first + steps.sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        return self.scale.new_zeros(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> torch.Tensor:
        steps = torch.arange(1, self.num_steps + 1, dtype=self.scale.dtype, device=self.scale.device)
        return (self.scale.unsqueeze(-1) ** 2 * steps).expand(self.batch_shape + self.event_shape)


class DiscreteUniform(TorchDistribution):
    r"""Uniform on the integers ``low, low + 1, ..., high`` (both inclusive; NumPyro's
    ``DiscreteUniform``): :math:`P(X = k) = 1 / (\text{high} - \text{low} + 1)`. Values have
    the bounds' dtype, floating for Python ints (as Pyro's Bernoulli): torch casts a Python
    float to an integer tensor's dtype (``Normal(k, 1.5)`` with integer ``k`` has scale 1).

    Parameters
    ----------
    low, high : int or integer-valued tensors, broadcast to batch_shape
        The inclusive bounds, ``low <= high``.
    """

    arg_constraints = {
        "low": constraints.dependent(is_discrete=True, event_dim=0),
        "high": constraints.dependent(is_discrete=True, event_dim=0),
    }
    has_enumerate_support = True

    def __init__(self, low: Any = 0, high: Any = 1, validate_args: Any = None) -> None:
        self.low, self.high = broadcast_all(low, high)
        if validate_args is not False and bool(torch.any(self.high < self.low)):
            raise ValueError(f"DiscreteUniform: high must be >= low, got low={low!r}, high={high!r}")
        super().__init__(self.low.shape, validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> "DiscreteUniform":
        new = self._get_checked_instance(DiscreteUniform, _instance)
        batch_shape = torch.Size(batch_shape)
        new.low = self.low.expand(batch_shape)
        new.high = self.high.expand(batch_shape)
        super(DiscreteUniform, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.integer_interval(self.low, self.high)

    def sample(self, sample_shape: Any = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            uniform = torch.rand(shape, dtype=torch.get_default_dtype(), device=self.low.device)
            return (self.low + torch.floor(uniform * (self.high - self.low + 1))).to(self.low.dtype)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        count = (self.high - self.low + 1).to(torch.get_default_dtype())
        shape = torch.broadcast_shapes(value.shape, self.batch_shape)
        return (-torch.log(count)).expand(shape)

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        low, high = int(self.low.min()), int(self.high.max())
        if int(self.low.max()) != low or int(self.high.min()) != high:
            raise NotImplementedError("Inhomogeneous `low` or `high` not supported by `enumerate_support`.")
        values = torch.arange(low, high + 1, dtype=self.low.dtype, device=self.low.device)
        values = values.reshape((-1,) + (1,) * len(self.batch_shape))
        if expand:
            values = values.expand((-1,) + self.batch_shape)
        return values

    @property
    def mean(self) -> torch.Tensor:
        return (self.low + self.high) / 2.0

    @property
    def variance(self) -> torch.Tensor:
        return ((self.high - self.low + 1.0) ** 2 - 1.0) / 12.0

    def entropy(self) -> torch.Tensor:
        return torch.log((self.high - self.low + 1.0).to(torch.get_default_dtype()))


def _parameterised(family: str, parameter: str, positional: tuple[str, ...] = ()) -> Any:
    """NumPyro's ``<Family><Parameter>`` (``BinomialLogits``) as Pyro's ``family`` given
    ``parameter``; ``positional`` is NumPyro's order of the arguments, when there are several."""
    cls = getattr(_pyro_distributions, family)
    names = positional or (parameter,)

    def construct(*args: Any, validate_args: Any = None, **kwargs: Any) -> Any:
        if len(args) > len(names):
            raise TypeError(f"{construct.__name__} takes at most {len(names)} positional arguments ({', '.join(names)})")
        kwargs.update(zip(names, args))
        return cls(**kwargs, validate_args=validate_args)

    construct.__name__ = construct.__qualname__ = family + parameter.capitalize()
    construct.__doc__ = f"NumPyro's ``{construct.__name__}({', '.join(names)})``: Pyro's ``{family}`` given ``{parameter}``."
    return construct


def NegativeBinomial2(mean: Any, concentration: Any, validate_args: Any = None) -> Any:  # noqa: N802 (NumPyro's name)
    """NumPyro's ``NegativeBinomial2(mean, concentration)``: counts with mean μ and variance
    μ + μ²/φ, i.e. Pyro's ``GammaPoisson(φ, φ / μ)``."""
    mean, concentration = broadcast_all(mean, concentration)
    return _pyro_distributions.GammaPoisson(concentration, concentration / mean, validate_args=validate_args)


def LogUniform(low: Any, high: Any, validate_args: Any = None) -> Any:  # noqa: N802 (NumPyro's name)
    """NumPyro's ``LogUniform(low, high)``: log X uniform on [log low, log high]."""
    low, high = broadcast_all(low, high)
    return _pyro_distributions.TransformedDistribution(
        _pyro_distributions.Uniform(low.log(), high.log(), validate_args=validate_args),
        [_pyro_distributions.transforms.ExpTransform()],
        validate_args=validate_args,
    )


_PARAMETERISED = {
    f.__name__: f
    for f in (
        _parameterised("Bernoulli", "logits"),
        _parameterised("Bernoulli", "probs"),
        _parameterised("Binomial", "logits", ("logits", "total_count")),
        _parameterised("Binomial", "probs", ("probs", "total_count")),
        _parameterised("Categorical", "logits"),
        _parameterised("Categorical", "probs"),
        _parameterised("Geometric", "logits"),
        _parameterised("Geometric", "probs"),
        _parameterised("Multinomial", "logits", ("logits", "total_count")),
        _parameterised("Multinomial", "probs", ("probs", "total_count")),
        _parameterised("NegativeBinomial", "logits", ("total_count", "logits")),
        _parameterised("NegativeBinomial", "probs", ("total_count", "probs")),
        NegativeBinomial2,
        LogUniform,
    )
}

#: NumPyro-only families without a port, and what to write instead on both backends.
_EQUIVALENTS = {
    "ZeroInflatedProbs": "ZeroInflatedDistribution(base_dist, gate=probs)",
    "ZeroInflatedLogits": "ZeroInflatedDistribution(base_dist, gate_logits=logits)",
    "ZeroInflatedNegativeBinomial2": "ZeroInflatedDistribution(GammaPoisson(concentration, concentration / mean), gate=gate)",
    "RelaxedBernoulliLogits": "RelaxedBernoulli(temperature, logits=logits)",
    "BetaProportion": "Beta(mean * concentration, (1 - mean) * concentration)",
}


def __getattr__(name: str) -> Any:
    try:
        return _PARAMETERISED[name]
    except KeyError:
        pass
    try:
        return getattr(_pyro_distributions, name)
    except AttributeError:
        pass
    import numpyro.distributions as numpyro_distributions

    if not name.startswith("_") and hasattr(numpyro_distributions, name):
        instead = _EQUIVALENTS.get(name)
        hint = f"write ppgen.dist.{instead}" if instead else "ppgen has no equivalent yet"
        raise NotImplementedError(
            f"ppgen.dist.{name}: NumPyro has {name} but Pyro does not, and every ppgen verb traces the "
            f"program on Pyro, so the program cannot use it; {hint}"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(dir(_pyro_distributions)) | set(__all__) | set(_PARAMETERISED))

