"""Log-densities and samples of continuous-time flows: the instantaneous change of variables.

A dynamics v(t, x) defines the ODE dx/dt = v(t, x) on [t0, t1]. With x(t1) = x and z = x(t0)
(z ~ p₀, the base), the log-density of x follows the augmented ODE (Chen et al. 2018, FFJORD:
Grathwohl et al. 2019)

    d/dt [x, ℓ] = [v(t, x), −tr ∂v/∂x],    ℓ(t1) = 0,
    log p(x) = log p₀(x(t0)) − ℓ(t0)  =  log p₀(z) − ∫_{t0}^{t1} tr ∂v/∂x (t, x(t)) dt,

solved backwards from t1 to t0 with ``torchdiffeq.odeint``. The trace is exact (one
vector-Jacobian product per dimension) for dim ≤ ``EXACT_TRACE_MAX_DIM`` and otherwise estimated
by Hutchinson's identity tr A = E[εᵀ A ε] for probes with E[ε εᵀ] = I (Rademacher ±1 or standard
Gaussian), with the probes drawn once per solve, as FFJORD does, so the solver sees a smooth ODE.

The functions take the dynamics as a plain callable ``dynamics(t, x) -> dx/dt`` (a tensor of the
shape of x, t a scalar tensor), so any vector field can use them: the flows family's CNF (an MLP
in (x, t)) and, reused as is, a diffusion model's probability-flow ODE,
v(t, x) = f(t) x − ½ g(t)² ∇ₓ log p_t(x), whose exact log-likelihood is ``ode_log_prob`` of that
v from t0 = ε to t1 = T with the Gaussian prior as ``base_log_prob`` (pass the time interval in
the direction the data flow: x at ``t1`` is the data point, the base at ``t0``).
"""

from __future__ import annotations

from typing import Callable, Literal, Optional

import torch
from torchdiffeq import odeint

__all__ = ["EXACT_TRACE_MAX_DIM", "divergence", "ode_log_prob", "ode_sample"]

#: Up to this dimension the divergence is computed exactly (dim vector-Jacobian products).
EXACT_TRACE_MAX_DIM = 4

Dynamics = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Trace = Literal["auto", "exact", "hutchinson"]


def divergence(
    dynamics: Dynamics,
    t: torch.Tensor,
    x: torch.Tensor,
    trace: Trace = "auto",
    probes: Optional[torch.Tensor] = None,
    create_graph: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(v(t, x), tr ∂v/∂x) for a batch x of shape (batch, dim).

    Parameters
    ----------
    dynamics : v(t, x), acting row-wise on x.
    trace : ``"exact"`` (Σ_i ∂v_i/∂x_i, dim backward passes), ``"hutchinson"`` (the mean over the
        probes of εᵀ (∂v/∂x) ε, one backward pass per probe), or ``"auto"`` (exact for
        dim ≤ ``EXACT_TRACE_MAX_DIM``).
    probes : tensor of shape (num_probes, batch, dim), needed for ``"hutchinson"``.
    create_graph : keep the graph of the trace so it can be differentiated (training).

    Returns
    -------
    (velocity of shape (batch, dim), divergence of shape (batch,))
    """
    with torch.enable_grad():
        x = x if x.requires_grad else x.detach().requires_grad_(True)
        velocity = dynamics(t, x)
        dim = x.shape[-1]
        if _exact(trace, dim):
            rows = [
                torch.autograd.grad(velocity[:, i].sum(), x, create_graph=create_graph, retain_graph=True)[0][:, i]
                for i in range(dim)
            ]
            return velocity, torch.stack(rows, -1).sum(-1)
        if probes is None:
            raise ValueError("divergence: trace='hutchinson' needs probes of shape (num_probes, batch, dim)")
        estimates = [
            (torch.autograd.grad(velocity, x, probe, create_graph=create_graph, retain_graph=True)[0] * probe).sum(-1)
            for probe in probes
        ]
        return velocity, torch.stack(estimates).mean(0)


def _exact(trace: Trace, dim: int) -> bool:
    if trace not in ("auto", "exact", "hutchinson"):
        raise ValueError(f"trace must be 'auto', 'exact' or 'hutchinson', got {trace!r}")
    return trace == "exact" or (trace == "auto" and dim <= EXACT_TRACE_MAX_DIM)


def draw_probes(shape: tuple[int, ...], kind: str, generator: Optional[torch.Generator], dtype: torch.dtype) -> torch.Tensor:
    """Probes ε with E[ε εᵀ] = I: ``"rademacher"`` (±1, the lower-variance choice) or ``"gaussian"``."""
    if kind == "rademacher":
        return torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype)
    raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {kind!r}")


def ode_log_prob(
    dynamics: Dynamics,
    x: torch.Tensor,
    base_log_prob: Callable[[torch.Tensor], torch.Tensor],
    t0: float = 0.0,
    t1: float = 1.0,
    trace: Trace = "auto",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_probes: int = 1,
    probe: str = "rademacher",
    generator: Optional[torch.Generator] = None,
    method: str = "dopri5",
) -> torch.Tensor:
    """log p(x) of the points x (shape (batch, dim)) under the flow dx/dt = v(t, x), x(t0) ~ p₀.

    Integrates [x, ℓ] from t1 back to t0 (see the module docstring):
    log p(x) = log p₀(x(t0)) − ∫_{t0}^{t1} tr ∂v/∂x dt. Differentiable in x and in the
    parameters of ``dynamics`` (backpropagation through the solver's steps).

    Parameters
    ----------
    dynamics : v(t, x).
    x : data points at time t1, shape (batch, dim).
    base_log_prob : log p₀ of points of shape (batch, dim), returning shape (batch,).
    t0, t1 : the base's time and the data's time (t1 > t0 or t1 < t0).
    trace : ``"auto"``, ``"exact"`` or ``"hutchinson"`` (see :func:`divergence`).
    rtol, atol : the adaptive solver's tolerances.
    num_probes, probe, generator : Hutchinson's probes (drawn once per call).
    method : a ``torchdiffeq`` solver name.

    Returns
    -------
    tensor of shape (batch,): log p(x), exact up to the solver's tolerance when the trace is exact,
    an unbiased estimate of the integral otherwise.
    """
    probes = None
    if not _exact(trace, x.shape[-1]):
        probes = draw_probes((num_probes, *x.shape), probe, generator, x.dtype)
    training = torch.is_grad_enabled()

    def augmented(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        velocity, div = divergence(dynamics, t, state[0], trace, probes, create_graph=training)
        return velocity, -div

    times = torch.tensor([t1, t0], dtype=x.dtype)
    zeros = torch.zeros(x.shape[0], dtype=x.dtype)
    xs, ells = odeint(augmented, (x, zeros), times, rtol=rtol, atol=atol, method=method)
    z, ell = xs[-1], ells[-1]
    if not training:
        z, ell = z.detach(), ell.detach()
    return base_log_prob(z) - ell


def ode_sample(
    dynamics: Dynamics,
    z: torch.Tensor,
    t0: float = 0.0,
    t1: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
) -> torch.Tensor:
    """x(t1) from base points z = x(t0) (shape (batch, dim)): the flow run forward. Running it
    with t0 and t1 swapped inverts it (data x → base z: the flow's encoder)."""
    times = torch.tensor([t0, t1], dtype=z.dtype)
    return odeint(dynamics, z, times, rtol=rtol, atol=atol, method=method)[-1]
