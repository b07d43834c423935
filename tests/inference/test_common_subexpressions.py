"""Common-subexpression elimination on traced functions: same values and gradients, fewer
equations, distinct computations and effects kept."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from ppgen.inference._common_subexpressions import merge_common_subexpressions, merged


def per_step_density(params: dict) -> jax.Array:
    """A chain-like sum: every step recomputes the same rows and means from the parameters
    (each time with a fresh NumPy index array), and reads its own data point."""
    y = jnp.linspace(-1.0, 2.0, 24)
    total = 0.0
    for t in range(24):
        states = np.arange(3).reshape(3, 1)  # a new constant at every step, equal in value
        rows = jax.nn.softmax(params["logits"], -1)[states]
        means = params["mu"][states]
        total = total + jnp.sum(jnp.log(rows) * (y[t] - means) ** 2)
    return total


def test_merged_function_has_the_same_value_and_gradient_and_fewer_equations():
    with jax.enable_x64(True):
        params = {"logits": jnp.array([[0.1, -0.3, 0.2], [0.0, 0.5, -1.0], [1.0, 0.0, 0.3]]), "mu": jnp.array([-1.0, 0.5, 2.0])}
        closed = jax.make_jaxpr(per_step_density)(params)
        fewer = merge_common_subexpressions(closed)
        value, grad = jax.value_and_grad(per_step_density)(params)
        merged_value, merged_grad = jax.value_and_grad(merged(per_step_density))(params)
        jitted_value, _ = jax.jit(jax.value_and_grad(merged(per_step_density)))(params)
    # The 24 copies of softmax, the two gathers and their index arithmetic are merged; the 24
    # reads y[t] (different slices) and the 24 step terms are not.
    assert len(fewer.jaxpr.eqns) < len(closed.jaxpr.eqns) / 2
    assert float(merged_value) == float(value)
    np.testing.assert_allclose(jitted_value, value, rtol=1e-12)
    # The merged gradient sums the steps' cotangents before the shared backward pass rather
    # than after: equal up to the order of floating-point additions.
    for name in params:
        np.testing.assert_allclose(merged_grad[name], grad[name], rtol=1e-12)


def test_equations_with_effects_are_kept():
    seen = []

    def noisy(x: jax.Array) -> jax.Array:
        jax.debug.callback(lambda value: seen.append(float(value)), x)
        return x * 2.0

    closed = jax.make_jaxpr(noisy)(jnp.asarray(1.5))
    callback = next(e for e in closed.jaxpr.eqns if e.effects)
    assert not callback.outvars
    twice = closed.replace(jaxpr=closed.jaxpr.replace(eqns=[callback] + list(closed.jaxpr.eqns)))
    (doubled,) = jax_core.jaxpr_as_fun(merge_common_subexpressions(twice))(jnp.asarray(1.5))
    jax.effects_barrier()
    assert float(doubled) == 3.0
    assert seen == [1.5, 1.5]  # the repeated callback ran twice: equations with effects are not merged
