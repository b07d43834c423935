"""Common-subexpression elimination on a traced JAX function, before it is differentiated.

A program with a step per site computes the same expression at every step: a hidden Markov
model evaluates ``theta[z]`` (the transition rows of the enumerated previous state) and
``mu[z]`` (the emission means) once per time step, from the same arrays. XLA merges the
repeated forward computations, but not their gradients: reverse mode gives each copy its own
cotangent, and accumulates them one scatter-add at a time, so a gradient costs O(T) kernels
however little work each does. Merging the copies in the traced function first (one equation
per distinct computation) leaves one copy to differentiate.

:func:`merged` traces ``fn`` to a jaxpr, replaces every equation whose primitive, parameters and
inputs equal those of an earlier one (constants compared by value) by that earlier one's
outputs, and evaluates the result. Equations with effects are left alone. The merged function
computes exactly what ``fn`` computes: same operations, each done once.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.extend import core as jax_core

# This module imports JAX: the engines import it on their NumPyro path only.


def _hashable(value: Any) -> Any:
    """``value`` as a dictionary key: itself if hashable, containers element-wise, else its
    identity (two such parameters are then equal only if they are the same object)."""
    try:
        hash(value)
        return value
    except TypeError:
        pass
    if isinstance(value, (tuple, list)):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((key, _hashable(item)) for key, item in value.items()))
    return ("object", id(value))


def _constant_key(value: Any) -> Any:
    """Constants with equal contents share a key (NumPy arrays are captured anew per use);
    traced values (closed over from an enclosing trace) are keyed by identity."""
    if isinstance(value, jax.core.Tracer):
        return ("traced", id(value))
    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001 - an opaque constant: never merged with another
        return ("object", id(value))
    return ("array", array.shape, str(array.dtype), array.tobytes())


def merge_common_subexpressions(closed: Any) -> Any:
    """A :class:`jax.extend.core.ClosedJaxpr` computing what ``closed`` computes, with equal
    constants merged and every equation that repeats an earlier one removed."""
    jaxpr = closed.jaxpr
    replaced: dict[Any, Any] = {}
    constvars, consts, constants = [], [], {}
    for var, value in zip(jaxpr.constvars, closed.consts):
        key = _constant_key(value)
        if key in constants:
            replaced[var] = constants[key]
            continue
        constants[key] = var
        constvars.append(var)
        consts.append(value)

    def current(var: Any) -> Any:
        return var if isinstance(var, jax_core.Literal) else replaced.get(var, var)

    def operand_key(var: Any) -> Any:
        if isinstance(var, jax_core.Literal):
            return ("literal", str(var.aval), repr(var.val))
        return ("var", id(var))

    computed: dict[Any, list] = {}
    equations = []
    for equation in jaxpr.eqns:
        operands = [current(var) for var in equation.invars]
        if not equation.effects:
            key = (equation.primitive, tuple(operand_key(var) for var in operands), _hashable(equation.params))
            earlier = computed.get(key)
            if earlier is not None:
                replaced.update(zip(equation.outvars, earlier))
                continue
            computed[key] = equation.outvars
        equations.append(equation.replace(invars=operands))
    merged_jaxpr = jaxpr.replace(constvars=constvars, eqns=equations, outvars=[current(var) for var in jaxpr.outvars])
    return jax_core.ClosedJaxpr(merged_jaxpr, consts)


def merged(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` evaluated through its jaxpr with common subexpressions merged
    (:func:`merge_common_subexpressions`); traced anew at each call, so it works under ``jit``,
    ``vmap`` and ``grad`` like ``fn``. Arguments and result are pytrees of arrays."""

    def evaluate(*arguments: Any) -> Any:
        leaves, treedef = jax.tree.flatten(arguments)
        closed, shapes = jax.make_jaxpr(lambda *flat: fn(*jax.tree.unflatten(treedef, flat)), return_shape=True)(*leaves)
        results = jax_core.jaxpr_as_fun(merge_common_subexpressions(closed))(*leaves)
        return jax.tree.unflatten(jax.tree.structure(shapes), results)

    return evaluate
