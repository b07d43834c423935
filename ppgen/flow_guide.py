"""Flow guides: a normalizing flow as the variational family over a program's continuous latents.

``flow_guide("iaf")`` (or ``"spline"``) is a global guide for ``engine="svi"``: every continuous
latent is mapped to unconstrained space, u = T⁻¹(z) (T = ``biject_to(support)``), the vector u
of all of them is drawn from a flow,

    u = f_φ(ε),   ε ~ Normal(μ, diag σ²)   (the flow's base, learned too),
    log q(u) = log Normal(f_φ⁻¹(u); μ, σ) − log |det ∂f_φ/∂ε|,

and z = T(u) (Pyro's ``AutoContinuous`` guides; Rezende & Mohamed 2015, Kingma et al. 2016).
Unlike the mean-field Gaussian (svi's default ``AutoNormal``) it can represent correlated and
curved (banana-shaped) posteriors, at the cost of a few small networks. Kinds:

- ``"iaf"``: inverse autoregressive flow (``AutoIAFNormal``): the guide's draws and their density
  in one pass each, which is what the ELBO needs (it scores its own draws).
- ``"spline"``: rational-quadratic spline autoregressive layers (Durkan et al. 2019) in
  ``AutoNormalizingFlow``: more flexible per layer, identity outside [−bound, bound].

Finite discrete latents stay outside the guide (svi sums them out). The guide is global: a
latent inside a subsampled data plate would need a per-datum flow (``ppgen.amortize``).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional

import pyro.distributions.transforms as pyro_transforms
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoIAFNormal, AutoNormalizingFlow

__all__ = ["FlowGuide", "flow_guide", "FLOW_GUIDES"]

FLOW_GUIDES = ("iaf", "spline")


def _spline_flow(latent_dim: int, num_layers: int, hidden: list[int], count_bins: int, bound: float) -> Any:
    """K spline layers on R^latent_dim, the coordinates reversed between autoregressive layers
    (each layer's first coordinate is otherwise transformed unconditionally)."""
    layers: list[Any] = []
    for layer in range(num_layers):
        if latent_dim == 1:
            layers.append(pyro_transforms.Spline(1, count_bins=count_bins, bound=bound))
            continue
        if layer:
            layers.append(pyro_transforms.Permute(torch.arange(latent_dim - 1, -1, -1)))
        layers.append(pyro_transforms.spline_autoregressive(latent_dim, hidden, count_bins, bound))
    return pyro_transforms.ComposeTransformModule(layers)


class FlowGuide:
    """A global flow guide over the continuous latents; see :func:`flow_guide`."""

    def __init__(self, kind: str = "iaf", num_layers: int = 2, hidden: Optional[int] = None, count_bins: int = 8, bound: float = 5.0) -> None:
        if kind not in FLOW_GUIDES:
            raise ValueError(f"flow_guide: kind must be one of {FLOW_GUIDES}, got {kind!r}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"flow_guide: num_layers must be a positive integer, got {num_layers!r}")
        if hidden is not None and (not isinstance(hidden, int) or hidden < 1):
            raise ValueError(f"flow_guide: hidden must be a positive integer or None, got {hidden!r}")
        self.kind, self.num_layers, self.hidden, self.count_bins, self.bound = kind, num_layers, hidden, count_bins, bound
        self._program: Optional[Callable] = None

    def __repr__(self) -> str:
        return f"flow_guide({self.kind!r}, num_layers={self.num_layers})"

    def bind(self, model: Callable, structure: Any = None, copy_encoder: bool = False) -> "FlowGuide":
        """This guide built for ``model`` (its structure tells the discrete latents, which the
        guide leaves to svi's enumeration, and the subsampled plates, which it cannot serve)."""
        if structure is None:
            raise ValueError("flow_guide: bind needs the model's structure (ppgen.inspect(model, ...))")
        for site in structure.latent.values():
            subsampled = [p for p in site.plates if structure.plates[p].subsample_size not in (None, structure.plates[p].size)]
            if subsampled and not site.is_discrete:
                raise ValueError(
                    f"flow_guide: latent {site.name!r} sits in the subsampled plate {subsampled[0]!r}; a global flow guide "
                    "needs every datum's latent at each step (drop subsample_size, or use ppgen.amortize for local latents)"
                )
        discrete = [name for name, site in structure.latent.items() if site.is_discrete]
        target = poutine.block(model, hide=discrete) if discrete else model
        bound = FlowGuide(self.kind, self.num_layers, self.hidden, self.count_bins, self.bound)
        latent_size = sum(max(1, _numel(site)) for site in structure.latent.values() if not site.is_discrete)
        hidden = self.hidden or max(8, 3 * latent_size + 1)
        if self.kind == "iaf":
            if latent_size < 2:
                raise ValueError("flow_guide('iaf'): an autoregressive flow needs at least 2 latent dimensions; use flow_guide('spline')")
            bound._program = AutoIAFNormal(target, hidden_dim=[hidden, hidden], num_transforms=self.num_layers)
        else:
            transform = partial(_spline_flow, num_layers=self.num_layers, hidden=[hidden, hidden], count_bins=self.count_bins, bound=self.bound)
            bound._program = AutoNormalizingFlow(target, transform)
        return bound

    @property
    def program(self) -> Callable:
        """The bound guide (a Pyro autoguide with the model's signature), after :meth:`bind`."""
        if self._program is None:
            raise ValueError("flow_guide: bind the guide to its model first (svi does: engine='svi', guide=flow_guide(...))")
        return self._program

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.program(*args, **kwargs)


def _numel(site: Any) -> int:
    size = 1
    for extent in tuple(site.batch_shape) + tuple(site.event_shape):
        size *= int(extent)
    return size


def flow_guide(kind: str = "iaf", num_layers: int = 2, hidden: Optional[int] = None, count_bins: int = 8, bound: float = 5.0) -> FlowGuide:
    """A normalizing-flow guide q_φ(z) over all continuous latents, for ``engine="svi"``.

    Parameters
    ----------
    kind : ``"iaf"`` (affine inverse autoregressive layers) or ``"spline"`` (rational-quadratic
        spline autoregressive layers).
    num_layers : flow layers K.
    hidden : width of the two hidden layers of each conditioner (default 3·D + 1 for D latent
        dimensions, at least 8).
    count_bins, bound : the spline's knots and the half-width of its box (``"spline"`` only).

    Examples
    --------
    >>> import ppgen
    >>> guide = ppgen.flow_guide("iaf", num_layers=2)
    >>> # ppgen.infer(model, data, engine="svi", guide=guide)
    """
    return FlowGuide(kind, num_layers, hidden, count_bins, bound)
