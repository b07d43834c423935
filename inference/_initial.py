"""Where the NumPyro samplers start, and what to say when no start is possible.

Stan's rule: a chain starts at a point u drawn uniformly from [−r, r] on the unconstrained
scale of every continuous latent (r = ``init_radius``, 2 by default), so the constrained
value T(u) lies inside its site's support by construction, whatever the support depends on;
a point where the log density U(u) or its gradient is not finite (an overflowing recursion, a
covariance that is not positive definite) is redrawn, up to :data:`MAX_TRIES` times
(:func:`initial_point`, per chain, from the run's seed). Unlike Stan, a chain does not start at
the first finite point but at the most probable of the first :data:`NUM_CANDIDATES`: where part
of the box holds finite but astronomically improbable points (an ARMA(1,1)'s moving-average
coefficient beyond ±1 makes its 200-step error recursion explode to 10⁶⁰), a chain started there
has gradients so steep that warmup never brings it back, and half of all chains would start
there. Ten candidates still spread the chains over the box, as R-hat needs.

When every draw fails, the run stops with an :class:`~ppgen.errors.EngineFailure` that says
which site is to blame (:func:`no_start`): the program is replayed at a few such points and,
site by site in program order, the first of these is reported: a distribution parameter that
is NaN, infinite or outside its constraint; data outside the support; a log density that is not
finite; a change of variables (log |det J|) that is not finite; a gradient that is not finite.

References
----------
Stan Reference Manual, "Initialization" (random inits on (−2, 2), 100 attempts).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Optional

import numpy as np

from ppgen.errors import EngineFailure

#: Initial points drawn per chain before giving up (Stan's number).
MAX_TRIES = 100

#: Finite initial points a chain compares before starting at the best of them.
NUM_CANDIDATES = 10

#: Points replayed to find the site to blame when no initial point was found.
POINTS_EXPLAINED = 5

_WRAPPERS = ("Independent", "MaskedDistribution", "ExpandedDistribution")


def uniform_point(rng_key: Any, prototype: dict[str, Any], radius: float) -> dict:
    """Every unconstrained latent drawn uniformly from [−radius, radius] (NumPyro's
    ``init_to_uniform``); ``prototype`` gives each one's shape and dtype. Traceable."""
    from jax import random

    names = sorted(prototype)
    keys = random.split(rng_key, max(len(names), 1))
    return {
        name: random.uniform(k, prototype[name].shape, prototype[name].dtype, -radius, radius)
        for k, name in zip(keys, names)
    }


def initial_point(
    rng_key: Any,
    potential_fn: Callable,
    prototype: dict[str, Any],
    radius: float = 2.0,
    max_tries: int = MAX_TRIES,
    num_candidates: int = NUM_CANDIDATES,
) -> dict:
    """The best of the first ``num_candidates`` points drawn by :func:`uniform_point` where U
    and ∇U are finite (lowest U), drawing at most ``max_tries`` points. If none is finite, every
    coordinate is NaN: the chain's log density is then NaN, which
    :func:`ppgen.inference._mcmc.run_chains` reports before sampling (the search runs compiled,
    where it cannot raise). Traceable."""
    import jax
    import jax.numpy as jnp
    from jax import lax, random

    def keep_looking(carry: tuple) -> Any:
        tries, found = carry[0], carry[1]
        return (found < num_candidates) & (tries < max_tries)

    def body(carry: tuple) -> tuple:
        tries, found, key, best, best_energy = carry
        key, subkey = random.split(key)
        z = uniform_point(subkey, prototype, radius)
        energy, grad = jax.value_and_grad(potential_fn)(z)
        finite = jnp.isfinite(energy) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grad)] + [True]))
        better = finite & (energy < best_energy)
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), z, best)
        return tries + 1, found + finite.astype(found.dtype), key, best, jnp.where(better, energy, best_energy)

    start = uniform_point(rng_key, prototype, radius)
    no_energy = jnp.full((), jnp.inf, jax.eval_shape(potential_fn, start).dtype)
    initial = (jnp.int32(0), jnp.int32(0), rng_key, start, no_energy)
    _, found, _, best, _ = lax.while_loop(keep_looking, body, initial)
    return jax.tree.map(lambda value: jnp.where(found > 0, value, jnp.nan), best)


def no_start(who: str, program: Callable, data: dict, *, seed: int, radius: float) -> EngineFailure:
    """The :class:`EngineFailure` for a run that found no finite initial point, naming the site
    to blame at the points :data:`POINTS_EXPLAINED` replays of ``program(**data)`` find."""
    import jax

    float32 = not jax.config.jax_enable_x64
    return EngineFailure(
        f"{who}: no initial point with a finite log density and gradient in {MAX_TRIES} draws "
        f"(uniform on [-{radius:g}, {radius:g}] on the unconstrained scale, as Stan does); "
        f"{explain(program, data, seed=seed, radius=radius)}. Check that the data lie in the support of "
        "their distributions and that the program stays finite over the box (a recursion that can overflow "
        "needs priors that keep it stable; a parameter far from the unit scale, rescaling), or change "
        "init_radius" + (", or run in float64 (precision='float64'), where overflow comes much later" if float32 else "")
    )


def explain(program: Callable, data: dict, *, seed: int, radius: float, num_points: int = POINTS_EXPLAINED) -> str:
    """What goes wrong first, at the most points among ``num_points`` initial points drawn as
    a chain draws them: e.g. "site 'y' got a NaN loc parameter (Normal) at 5 of 5 points"."""
    from jax import random

    problems: Counter = Counter()
    for key in random.split(random.PRNGKey(seed), num_points):
        problem = first_problem(program, data, key, radius)
        if problem is not None:
            problems[problem] += 1
    if not problems:
        return (
            f"at {num_points} other points drawn the same way the log density and its gradient were finite, "
            "so the region where they are is small"
        )
    (site, what), count = problems.most_common(1)[0]
    where = f"site {site!r} {what}" if site is not None else what
    return f"{where} at {count} of {num_points} points tried"


def first_problem(program: Callable, data: dict, rng_key: Any, radius: float) -> Optional[tuple[Optional[str], str]]:
    """Replay ``program(**data)`` at one initial point drawn from ``rng_key`` and return the
    first site, in program order, whose parameters, data, log density, change of variables or
    gradient is not valid, with what is wrong; None if everything is finite."""
    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro import handlers
    from numpyro.distributions import biject_to
    from numpyro.infer.initialization import init_to_uniform
    from numpyro.infer.util import potential_energy

    seeded = handlers.seed(program, rng_key)
    with numpyro.validation_enabled(False):
        trace = handlers.trace(handlers.substitute(seeded, substitute_fn=init_to_uniform(radius=radius))).get_trace(**data)
    unconstrained = {}
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        fn, value = site["fn"], site["value"]
        invalid = invalid_parameter(fn)
        if invalid:
            return name, f"got {invalid}"
        if site["is_observed"] and not bool(jnp.all(fn.support(value))):
            return name, f"has data outside the support of its {_family(fn)} ({fn.support})"
        log_prob = fn.log_prob(value)
        if site.get("mask") is not None:  # masked-out elements do not count
            log_prob = jnp.where(site["mask"], log_prob, 0.0)
        if not bool(jnp.all(jnp.isfinite(log_prob))):
            return name, f"has a log density of {_non_finite(log_prob)} ({_family(fn)})"
        if not site["is_observed"] and not fn.support.is_discrete:
            transform = biject_to(fn.support)
            u = transform.inv(value)
            if not bool(jnp.all(jnp.isfinite(transform.log_abs_det_jacobian(u, value)))):
                return name, f"has a change of variables (log |det J| of {type(transform).__name__}) that is not finite"
            unconstrained[name] = u
    energy, grad = jax.value_and_grad(lambda u: potential_energy(seeded, (), data, u))(unconstrained)
    for name, value in grad.items():
        if not bool(jnp.all(jnp.isfinite(value))):
            return name, "has a log density whose gradient with respect to it is not finite"
    if not bool(jnp.isfinite(energy)):
        return None, f"the total log density is {_non_finite(-energy)}"
    return None


def invalid_parameter(fn: Any) -> Optional[str]:
    """A description of the first parameter of distribution ``fn`` outside its constraint,
    e.g. "a NaN loc parameter (Normal)", or None."""
    import jax.numpy as jnp
    from numpyro.distributions import constraints

    base = fn
    while type(base).__name__ in _WRAPPERS:
        base = base.base_dist
    for key, constraint in getattr(base, "arg_constraints", {}).items():
        if constraints.is_dependent(constraint) or key not in vars(base):  # lazily derived: checked through its source
            continue
        value = np.asarray(vars(base)[key])
        if bool(jnp.all(constraint(value))):
            continue
        if np.isnan(value).any():
            return f"a NaN {key} parameter ({_family(fn)})"
        if np.isinf(value).any():
            return f"an infinite {key} parameter ({_family(fn)})"
        return f"a {key} parameter outside {constraint} ({_family(fn)})"
    return None


def _family(fn: Any) -> str:
    base = fn
    while type(base).__name__ in _WRAPPERS:
        base = base.base_dist
    return type(base).__name__


def _non_finite(value: Any) -> str:
    """NaN, +inf or -inf: the first that ``value`` holds."""
    array = np.asarray(value)
    if np.isnan(array).any():
        return "NaN"
    return "+inf" if np.isposinf(array).any() else "-inf"
