"""Sums, marginals and draws of a discrete Markov chain in JAX, from its factor tables.

A chain z_0, ..., z_{T-1} over K states, repeated over n independent batch elements (the
elements of its plates), is given by two tables of log-factors:

* ``unary`` (T, n, K): log ψ_t(k), the sum of every factor touching z_t alone (its emissions,
  and the initial distribution at t = 0);
* ``pairwise`` (T-1, n or 1, K, K): log φ_t(j, k) for z_{t-1} = j, z_t = k, the sum of every
  factor touching the pair (the transition), shared by the batch when its first size is 1.

The joint is p(z, x) ∝ ψ_0(z_0) Π_{t≥1} φ_t(z_{t-1}, z_t) ψ_t(z_t). Everything runs in log
space as one ``lax.scan`` over the steps (compiled once, differentiable), with
M_t(j, k) = log φ_t(j, k) + log ψ_t(k)::

    log α_0 = log ψ_0,   log α_t(k) = logsumexp_j (log α_{t-1}(j) + M_t(j, k)),
    log Z = logsumexp_k log α_{T-1}(k)                  (forward algorithm)
    log β_{T-1} = 0,     log β_t(j) = logsumexp_k (M_{t+1}(j, k) + log β_{t+1}(k))
    p(z_t = k | x) ∝ α_t(k) β_t(k)                      (forward–backward)
    z_{T-1} ~ α_{T-1},   z_t | z_{t+1} ~ α_t(j) exp M_{t+1}(j, z_{t+1})   (FFBS)

A sequential scan costs O(T n K²) and beat a parallel (log-depth, O(T n K³)) tree of
matrix products on CPU at every size measured (T up to 1000, K up to 10).

References
----------
L. R. Rabiner (1989), "A tutorial on hidden Markov models and selected applications in speech
recognition", Proc. IEEE 77(2). S. Frühwirth-Schnatter (1994), "Data augmentation and dynamic
linear models", J. Time Series Analysis 15(2) (forward filtering, backward sampling).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array, lax, random
from jax.scipy.special import logsumexp

# This module imports JAX when it is imported: import it only on the NumPyro path.


def _transitions(unary: Array, pairwise: Array) -> Array:
    """M_t(j, k) = log φ_t(j, k) + log ψ_t(k) for t = 1..T-1: (T-1, n or 1, K, K)."""
    return pairwise + unary[1:, :, None, :]


def log_partition(unary: Array, pairwise: Array) -> Array:
    """log Z = log Σ_z ψ_0(z_0) Π_t φ_t(z_{t-1}, z_t) ψ_t(z_t) per batch element, shape (n,)."""

    def step(log_alpha: Array, m: Array) -> tuple[Array, None]:
        return logsumexp(log_alpha[..., :, None] + m, axis=-2), None

    last, _ = lax.scan(step, unary[0], _transitions(unary, pairwise))
    return logsumexp(last, axis=-1)


def filtered(unary: Array, pairwise: Array) -> Array:
    """Normalised forward messages log p(z_t = k | x_0..x_t): (T, n, K)."""

    def step(log_alpha: Array, m: Array) -> tuple[Array, Array]:
        a = logsumexp(log_alpha[..., :, None] + m, axis=-2)
        a = a - logsumexp(a, axis=-1, keepdims=True)
        return a, a

    first = unary[0] - logsumexp(unary[0], axis=-1, keepdims=True)
    _, rest = lax.scan(step, first, _transitions(unary, pairwise))
    return jnp.concatenate([first[None], rest])


def marginals(unary: Array, pairwise: Array) -> Array:
    """p(z_t = k | x) by forward–backward: (T, n, K)."""

    def step(log_beta: Array, m: Array) -> tuple[Array, Array]:
        b = logsumexp(m + log_beta[..., None, :], axis=-1)
        b = b - logsumexp(b, axis=-1, keepdims=True)
        return b, b

    last = jnp.zeros_like(unary[0])
    _, earlier = lax.scan(step, last, _transitions(unary, pairwise), reverse=True)
    log_beta = jnp.concatenate([earlier, last[None]])
    return jax.nn.softmax(filtered(unary, pairwise) + log_beta, axis=-1)


def sample(key: Array, unary: Array, pairwise: Array) -> Array:
    """One joint draw z ~ p(z | x) per batch element by forward filtering, backward sampling:
    state indices of shape (T, n)."""
    log_alpha = filtered(unary, pairwise)
    T, n, K = unary.shape
    steps = jnp.broadcast_to(_transitions(unary, pairwise), (T - 1, n, K, K))
    keys = random.split(key, T)
    last = random.categorical(keys[-1], log_alpha[-1], axis=-1)

    def step(following: Array, inputs: tuple[Array, Array, Array]) -> tuple[Array, Array]:
        log_alpha_t, m, k = inputs
        into = jnp.take_along_axis(m, following[:, None, None], axis=-1)[..., 0]  # M_{t+1}(j, z_{t+1}): (n, K)
        z = random.categorical(k, log_alpha_t + into, axis=-1)
        return z, z

    _, earlier = lax.scan(step, last, (log_alpha[:-1], steps, keys[:-1]), reverse=True)
    return jnp.concatenate([earlier, last[None]])
