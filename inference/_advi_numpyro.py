"""ADVI on NumPyro: the same mean-field Gaussian guide (``AutoNormal``), with the SVI update
compiled by JAX, so a step costs microseconds rather than Pyro's milliseconds.

The update, the ELBO estimate and the draws from q are compiled once per program, argument
shapes and options and kept in the in-process cache the MCMC engines use
(:func:`ppgen.inference._mcmc.cached`): a second run on new data of the same shapes (a
simulation-based calibration, a bootstrap) skips tracing and compilation. Each run still
initialises the guide afresh from its own seed, so a run's result does not depend on the runs
before it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ppgen.backend import to_backend, to_numpy, use_backend
from ppgen.checkpoint import Checkpoint
from ppgen.driver import iterate
from ppgen.results import Estimate, Result
from ppgen.structure import ModelStructure

from ._mcmc import concretization_errors
from ._vi import _as_array


def _split_arrays(args: tuple, kwargs: dict) -> tuple[dict, Callable[[dict], tuple[tuple, dict]]]:
    """Array-valued arguments (traced by jit) apart from the rest (closed over as constants)."""
    import jax

    arrays = {}
    for index, value in enumerate(args):
        if isinstance(value, jax.Array):
            arrays[f"arg{index}"] = value
    for key, value in kwargs.items():
        if isinstance(value, jax.Array):
            arrays[key] = value

    def rebuild(values: dict) -> tuple[tuple, dict]:
        new_args = tuple(values.get(f"arg{i}", v) for i, v in enumerate(args))
        new_kwargs = {k: values.get(k, v) for k, v in kwargs.items()}
        return new_args, new_kwargs

    return arrays, rebuild


def _readable(params: dict) -> dict[str, np.ndarray]:
    out = {}
    for name, value in params.items():
        value = to_numpy(value)
        if name.endswith("_auto_loc"):
            out[name[: -len("_auto_loc")] + ".loc"] = value
        elif name.endswith("_auto_scale"):
            out[name[: -len("_auto_scale")] + ".scale"] = value
        else:
            out[name] = value
    return out


@dataclass
class _Compiled:
    """One program's SVI pieces, compiled for one set of argument shapes: ``update(state,
    arrays)``, ``elbo(keys, params, arrays)`` (one ELBO estimate per key) and
    ``draw(key, params, arrays)`` (``num_samples`` joint draws of q)."""

    program: Callable
    guide: Any
    loss: Any
    svi: Any
    update: Callable
    elbo: Callable
    draw: Callable


def _compile(engine: Any, model: Callable, structure: ModelStructure, args: tuple, kwargs: dict) -> _Compiled:
    import jax
    import numpyro
    from numpyro.handlers import block
    from numpyro.infer import SVI, Predictive, Trace_ELBO, TraceEnum_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.infer.initialization import init_to_median

    discrete = [name for name, site in structure.latent.items() if site.is_discrete]
    if discrete:
        from numpyro.contrib.funsor import config_enumerate

        program = config_enumerate(model)
        loss = TraceEnum_ELBO(num_particles=engine.num_particles, max_plate_nesting=structure.max_plate_nesting)
    else:
        program = model
        loss = Trace_ELBO(num_particles=engine.num_particles)
    guide = AutoNormal(block(model, hide=discrete), init_loc_fn=init_to_median, init_scale=engine.init_scale)
    if engine.optimizer == "clipped_adam":
        optimizer = numpyro.optim.ClippedAdam(engine.learning_rate, clip_norm=10.0)
    else:
        optimizer = numpyro.optim.Adam(engine.learning_rate)
    svi = SVI(program, guide, optimizer, loss)
    _, rebuild = _split_arrays(args, kwargs)

    @jax.jit
    def update(state: Any, values: dict) -> tuple[Any, Any]:
        call_args, call_kwargs = rebuild(values)
        return svi.update(state, *call_args, **call_kwargs)

    def single_elbo(key: Any, params: dict, values: dict) -> Any:
        call_args, call_kwargs = rebuild(values)
        return -loss.loss(key, params, program, guide, *call_args, **call_kwargs)

    vectorised_elbo = jax.jit(jax.vmap(single_elbo, in_axes=(0, None, None)))

    def elbo(keys: Any, params: dict, values: dict) -> np.ndarray:
        try:
            return np.asarray(vectorised_elbo(keys, params, values))
        except Exception:  # enumeration under vmap: evaluate one at a time
            return np.asarray([float(single_elbo(k, params, values)) for k in keys])

    @jax.jit
    def draw(key: Any, params: dict, values: dict) -> dict:
        call_args, call_kwargs = rebuild(values)
        return Predictive(guide, params=params, num_samples=engine.num_samples)(key, *call_args, **call_kwargs)

    return _Compiled(program, guide, loss, svi, update, elbo, draw)


def _cache_key(engine: Any, model: Callable, args: tuple, kwargs: dict) -> tuple:
    """What the compiled pieces depend on: the program, its non-array arguments, the shapes and
    dtypes of its array arguments, and the options that enter the compiled code. An unhashable
    argument makes the key unhashable, and the run compiles without caching."""
    arrays, _ = _split_arrays(args, kwargs)
    shapes = tuple(sorted((name, tuple(value.shape), str(value.dtype)) for name, value in arrays.items()))
    fixed = tuple(None if f"arg{i}" in arrays else value for i, value in enumerate(args))
    fixed_kwargs = tuple(sorted((k, None if k in arrays else v) for k, v in kwargs.items()))
    options = (engine.num_particles, engine.optimizer, engine.learning_rate, engine.init_scale, engine.num_samples)
    return ("advi", model, fixed, fixed_kwargs, shapes, options)


def run_numpyro(engine: Any, model: Callable, structure: ModelStructure, args: tuple, kwargs: dict) -> Result:
    """:class:`ppgen.inference.advi.ADVI` on NumPyro (see its docstring)."""
    import jax
    from numpyro.infer import Predictive

    from ._mcmc import cached

    start = time.perf_counter()
    discrete = [name for name, site in structure.latent.items() if site.is_discrete]
    deterministic = [name for name, site in structure.sites.items() if site.kind == "deterministic"]
    args = to_backend(tuple(_as_array(a) for a in args), "numpyro")
    kwargs = to_backend({k: _as_array(v) for k, v in kwargs.items()}, "numpyro")
    with use_backend("numpyro"):
        compiled, _ = cached(_cache_key(engine, model, args, kwargs), lambda: _compile(engine, model, structure, args, kwargs))
        program, guide, svi = compiled.program, compiled.guide, compiled.svi
        key, init_key, elbo_key, draw_key, discrete_key = jax.random.split(jax.random.PRNGKey(engine.seed), 5)
        arrays, _ = _split_arrays(args, kwargs)
        guide.prototype_trace = None  # initialise q from this run's seed, as a fresh guide would
        state = svi.init(init_key, *args, **kwargs)

        try:
            compiled.update(state, arrays)  # compiles the step (kept for the run); this new state is not used
        except concretization_errors():
            # the program computes a size from its data (int(np.max(x)) + 1): the arrays enter as
            # NumPy constants, as NumPyro does, in pieces compiled for this data only
            args, kwargs = to_numpy(args), to_numpy(kwargs)
            compiled, arrays = _compile(engine, model, structure, args, kwargs), {}
            program, guide, svi = compiled.program, compiled.guide, compiled.svi
            state = svi.init(init_key, *args, **kwargs)

        def step(current: Any) -> tuple[Any, float]:
            new, loss_value = compiled.update(current, arrays)
            return new, -float(loss_value)

        checkpoint = Checkpoint.for_engine(engine, model, args, kwargs)
        progress = iterate(
            step, state, num_steps=engine.num_steps, tol=engine.tol, progress=engine.progress, name=engine.name,
            objective="elbo", warn=engine.tol > 0, checkpoint=checkpoint.section("start 0", jax_state=True) if checkpoint is not None else None,
        )
        params = svi.get_params(progress.state)

        values = compiled.elbo(jax.random.split(elbo_key, engine.num_elbo_evaluations), params, arrays)
        stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
        estimate = Estimate(float(values.mean()), stderr, "lower-bound")

        continuous = [name for name, site in structure.latent.items() if not site.is_discrete]
        latent_draws = {}
        if continuous:
            draws = compiled.draw(draw_key, params, arrays)
            latent_draws = {k: v for k, v in draws.items() if k in structure.latent}
        extra_sites = deterministic + discrete
        discrete_note = None
        if extra_sites:
            def complete(sites: list[str], with_discrete: bool) -> None:
                completed = Predictive(
                    program, posterior_samples=latent_draws or None, params=params, num_samples=None if latent_draws else engine.num_samples,
                    return_sites=sites, infer_discrete=with_discrete,
                )(discrete_key, *args, **kwargs)
                latent_draws.update({k: v for k, v in completed.items() if k in sites})

            try:
                complete(extra_sites, bool(discrete))
            except Exception as error:  # NumPyro's infer_discrete fails on some programs (markov chains)
                if not discrete:
                    raise
                discrete_note = f"discrete latents not drawn: NumPyro's infer_discrete failed ({type(error).__name__}: {error})"
                if deterministic:
                    complete(deterministic, False)
    return Result(
        engine=engine.name,
        samples={k: to_numpy(v) for k, v in latent_draws.items()},
        params=_readable(params),
        log_evidence=estimate,
        traces={"elbo": np.asarray(progress.objectives)},
        converged=progress.converged if engine.tol > 0 else None,
        num_iterations=progress.num_iterations,
        interrupted=progress.interrupted,
        diagnostics={
            "guide": "AutoNormal", "backend": "numpyro", "enumerated": discrete, "elbo_stderr": stderr,
            **({"discrete_draws": discrete_note} if discrete_note else {}),
        },
        seconds=time.perf_counter() - start,
    )
