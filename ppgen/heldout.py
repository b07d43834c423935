"""Scoring held-out data under a fitted :class:`~ppgen.Result`: ``score(fit, x_new, ...)``.

Two quantities, by the task that produced the fit:

* a ``learn`` result: log p(x_new; θ̂) with the learned ``param`` sites and torch modules fixed
  at their fitted values, and latents the fit estimated as points (``map`` / ``mle``'s
  ``map_estimate``) fixed there too (the plug-in density). With nothing left to marginalise
  this is one exact evaluation; otherwise an engine that scores under given parameters
  (``enumerate``, ``importance``: those taking ``params=``) marginalises the latents.
* an ``infer`` result: the log posterior-predictive density through the posterior draws θ_s,
  s = 1..S (learned ``param`` sites, if any, fixed):

  .. math::
      \\log p(x_{new} \\mid x) \\approx \\log \\frac{1}{S} \\sum_s p(x_{new} \\mid θ_s)

  returned as an ``estimate`` with the delta-method standard error sd(w) / (mean(w) √S) of
  w_s = p(x_new | θ_s) (draws treated as independent), and a ``ReliabilityWarning`` when a few
  draws carry the mean (effective sample size of w below 1 % of S). Every latent of the program run on
  x_new must be among the draws, with the same shape (global latents); per-datum latents of
  new data are not marginalised here.

``pointwise=True`` returns one value per datum of the outer data plate (the outermost plate of
the observed sites): log p(x_i; θ̂) for a learn result, which sum to the total because the data
are independent given θ̂; for an infer result the per-datum predictive log (1/S) Σ_s p(x_i | θ_s)
(the terms of the expected log pointwise predictive density used by LOO/WAIC), whose sum is
*not* the joint log predictive density of the set, as the data are dependent through θ.

For an infer result no engine is needed: the draws and one evaluation of the program per draw
give the estimate, so ``engine`` may be omitted (an engine given is not used).
"""

from __future__ import annotations

import copy
import inspect as pyinspect
import warnings
from typing import Any, Callable, Optional, Union

import numpy as np

from ppgen.backend import to_backend, torch_precision, use_backend
from ppgen.engine import Engine, check_option_types, registered_engines, split_options
from ppgen.errors import EngineNotApplicable, ReliabilityWarning, user_stacklevel
from ppgen.results import Estimate, Result
from ppgen.structure import ModelStructure, bind_arguments, inspect


def fitted_arguments(fit: Result, args: tuple, model_kwargs: dict) -> dict[str, Any]:
    """The model's arguments for scoring: the fit's, with ``args`` / ``model_kwargs`` (the new
    data, by position or name) in their place and trained torch modules in place of the
    modules the fit started from."""
    model = fit.model
    arguments = bind_arguments(model, fit.model_args, fit.model_kwargs)
    try:
        new = pyinspect.signature(model).bind_partial(*args, **model_kwargs).arguments
    except TypeError as error:
        raise TypeError(f"score: the new data do not fit {getattr(model, '__name__', 'the model')}'s arguments: {error}") from None
    arguments.update(new)
    return _with_trained_modules(model, arguments, fit.params)


def _with_trained_modules(model: Callable, arguments: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``arguments`` with each torch module the program registers as ``ppgen.module(name, m)``
    replaced by a copy holding the fitted values ``params["name$$$<parameter>"]``."""
    import torch

    if not any(isinstance(value, torch.nn.Module) for value in arguments.values()):
        return arguments
    names = _module_names(model, arguments)
    out = dict(arguments)
    for key, value in arguments.items():
        name = names.get(id(value))
        if name is None or not any(p.startswith(f"{name}$$$") for p in params):
            continue
        trained = copy.deepcopy(value)
        with torch.no_grad():
            for parameter_name, parameter in trained.named_parameters():
                fitted = params.get(f"{name}$$${parameter_name}")
                if fitted is not None:
                    parameter.copy_(torch.as_tensor(np.asarray(fitted), dtype=parameter.dtype))
        out[key] = trained
    return out


def _module_names(model: Callable, arguments: dict[str, Any]) -> dict[int, str]:
    """id(module) -> the name the program registers it under (one run of the program)."""
    import pyro
    import torch
    from pyro import poutine
    from pyro.poutine.messenger import Messenger

    class _ModuleNames(Messenger):
        def __init__(self) -> None:
            super().__init__()
            self.names: dict[int, str] = {}

        def register_module(self, name: str, nn_module: Any) -> None:
            self.names[id(nn_module)] = name

    recorder = _ModuleNames()
    with use_backend("pyro"), pyro.get_param_store().scope(), torch.no_grad(), recorder:
        poutine.trace(model).get_trace(**to_backend(arguments, "pyro"))
    return recorder.names


def outer_data_plate(structure: ModelStructure) -> str:
    """The outermost plate holding every observed site (``ValueError`` if there is none)."""
    observed = list(structure.observed.values())
    if not observed or not observed[0].plates:
        name = observed[0].name if observed else None
        raise ValueError(f"score(pointwise=True): observed site {name!r} is in no plate; pointwise scores need a data plate (ppgen.plate)")
    plate = observed[0].plates[0]
    for site in observed[1:]:
        if plate not in site.plates:
            raise ValueError(
                f"score(pointwise=True): observed site {site.name!r} is outside plate {plate!r} of site {observed[0].name!r}; "
                "pointwise scores need every observed site in one data plate"
            )
    return plate


def observed_log_likelihood(
    model: Callable,
    arguments: dict[str, Any],
    structure: ModelStructure,
    params: dict[str, Any],
    draws: dict[str, np.ndarray],
    plate: Optional[str],
) -> np.ndarray:
    """log p(x | θ_s) of the observed sites for each draw s, with the latents set to
    ``draws`` (site -> (S, *shape)) and ``param`` sites to ``params``.

    Returns shape (S,) when ``plate`` is None, else (S, plate size): summed over everything but
    the plate's dimension.
    """
    import pyro
    import torch
    from pyro import poutine

    has_modules = any(site.distribution == "module" for site in structure.params.values())
    num_draws = len(next(iter(draws.values()))) if draws else 1
    rows = []
    with use_backend("pyro"), torch_precision(enabled=not has_modules), pyro.get_param_store().scope(), torch.no_grad():
        kwargs = to_backend(arguments, "pyro")
        fixed = {name: torch.as_tensor(np.asarray(value)) for name, value in params.items()}
        for index in range(num_draws):
            values = {name: torch.as_tensor(np.asarray(value[index])) for name, value in draws.items()}
            program = poutine.substitute(poutine.condition(model, data=values), data=fixed)
            trace = poutine.trace(program).get_trace(**kwargs)
            rows.append(_site_sums(trace, structure, plate))
    return np.stack(rows)


def _site_sums(trace: Any, structure: ModelStructure, plate: Optional[str]) -> np.ndarray:
    total: Any = 0.0
    for name in structure.observed:
        site = trace.nodes[name]
        log_prob = site["fn"].log_prob(site["value"])
        if plate is None:
            total = total + float(log_prob.sum())
            continue
        dim = next(frame.dim for frame in site["cond_indep_stack"] if frame.name == plate)
        axis = log_prob.dim() + dim
        other = [a for a in range(log_prob.dim()) if a != axis]
        per_datum = log_prob.sum(dim=other) if other else log_prob
        total = total + per_datum.double().numpy()
    return np.asarray(total, dtype=np.float64)


#: Below this share of the draws as effective sample size, a posterior-predictive estimate warns.
_MIN_ESS_FRACTION = 0.01


def _warn_if_few_draws_count(weights: np.ndarray) -> None:
    """Warn when p(x_new | θ_s) is dominated by a few draws (ESS = (Σw)² / Σw² < 1 % of S, at
    least 2): the mean over draws is then a poor estimate of the predictive density."""
    if len(weights) < 2:
        return
    ess = float(weights.sum() ** 2 / np.sum(weights**2))
    if ess < max(2.0, _MIN_ESS_FRACTION * len(weights)):
        warnings.warn(
            f"score(fit, ...): the posterior-predictive density of the new data is carried by {ess:.1f} of "
            f"{len(weights)} posterior draws (effective sample size); the estimate is unreliable: use more draws, "
            "or pointwise=True for per-datum predictive densities, which depend far less on single draws",
            ReliabilityWarning,
            stacklevel=user_stacklevel(),
        )


def _log_mean_exp(values: np.ndarray, axis: int = 0) -> np.ndarray:
    top = np.max(values, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.mean(np.exp(values - top), axis=axis))


def _engine_instance(engine: Union[str, Engine], model: Callable, options: dict) -> tuple[Engine, dict]:
    """The engine (built from its name and the engine options among ``options``) and the
    remaining model options."""
    if isinstance(engine, str):
        engines = registered_engines()
        if engine not in engines:
            raise EngineNotApplicable(f"unknown engine {engine!r}; registered engines: {', '.join(sorted(engines))}")
        engine_kwargs, model_kwargs = split_options(model, engines[engine], options)
        check_option_types(engines[engine], engine_kwargs)
        return engines[engine](**engine_kwargs), model_kwargs
    if isinstance(engine, Engine):
        return copy.copy(engine), dict(options)
    raise TypeError(f"engine must be a name or an Engine instance, got {type(engine).__name__}")


def _with_params(instance: Engine, params: dict) -> Engine:
    """``instance`` scoring under ``params``, if it is an engine that takes given parameters."""
    if "params" not in pyinspect.signature(type(instance).__init__).parameters or "score" not in instance.tasks:
        takes_params = sorted(
            n for n, c in registered_engines().items() if "params" in pyinspect.signature(c.__init__).parameters and "score" in c.tasks
        )
        raise EngineNotApplicable(
            f"score(fit, ...): engine {instance.name!r} cannot score under the fitted parameters (it would fit them "
            f"again); engines that score under given parameters: {', '.join(takes_params)}"
        )
    instance.params = {**(instance.params or {}), **params}
    return instance


def _model_params(fit: Result, structure: ModelStructure) -> dict[str, Any]:
    return {name: fit.params[name] for name, site in structure.params.items() if site.distribution != "module" and name in fit.params}


def _per_datum_latents(structure: ModelStructure) -> set[str]:
    """Latent sites inside the outer data plate: one per datum, so the fit's values belong to
    the training data and never carry over to new data (even of the same size)."""
    try:
        plate = outer_data_plate(structure)
    except ValueError:
        return set()
    return {name for name, site in structure.latent.items() if plate in site.plates}


def _point_estimates(fit: Result, structure: ModelStructure) -> dict[str, np.ndarray]:
    """Latents the fit estimated as points (MAP / MLE ``map_estimate``) with the shape they have
    on the new data, as one "draw" each (site -> array (1, *shape))."""
    out = {}
    per_datum = _per_datum_latents(structure)
    for name, site in structure.latent.items():
        if name in per_datum:  # estimated for the training data, not for the new data
            continue
        value = fit.map_estimate.get(name)
        if value is not None and np.shape(value) == tuple(site.batch_shape) + tuple(site.event_shape):
            out[name] = np.asarray(value)[None]
    return out


def _slice_datum(arguments: dict[str, Any], structure: ModelStructure, plate: str, index: int) -> dict[str, Any]:
    """The arguments with the observed data (and per-datum covariates) cut to datum ``index`` of
    ``plate`` (kept as a plate of size 1)."""
    out = dict(arguments)
    size = structure.plates[plate].size
    dim = structure.plates[plate].dim if structure.plates[plate].dim is not None else -1
    for site in structure.observed.values():
        if site.data_argument is None:
            raise ValueError(f"score(pointwise=True): observed site {site.name!r} does not take its data from an argument")
        value = np.asarray(arguments[site.data_argument])
        axis = value.ndim - len(site.event_shape) + dim
        out[site.data_argument] = np.take(value, [index], axis=axis)
    for name in structure.covariates:
        value = arguments.get(name)
        if value is not None and np.ndim(value) > 0 and np.shape(value)[0] == size:
            out[name] = np.take(np.asarray(value), [index], axis=0)
    return out


def score_fitted(
    fit: Result, args: tuple, engine: Optional[Union[str, Engine]], options: dict, pointwise: bool
) -> Union[Estimate, np.ndarray]:
    """``ppgen.score(fit, *args, engine=..., pointwise=...)``: see the module docstring."""
    if fit.model is None:
        raise ValueError("score: the Result does not carry its model (was it built by hand?); score the model instead")
    model = fit.model
    if fit.task not in ("learn", "infer"):
        raise ValueError(f"score: a Result from {fit.task or 'an unknown task'!r} cannot be scored; pass the Result of ppgen.learn or ppgen.infer")
    instance, model_kwargs = _engine_instance(engine, model, options) if engine is not None else (None, dict(options))
    arguments = fitted_arguments(fit, args, model_kwargs)
    structure = inspect(model, **arguments)
    params = _model_params(fit, structure)
    plate = outer_data_plate(structure) if pointwise else None

    if fit.task == "infer":
        draws = {}
        per_datum = _per_datum_latents(structure)
        for name, site in structure.latent.items():
            value = fit.samples.get(name)
            if name in per_datum:
                raise EngineNotApplicable(
                    f"score(fit, ...): latent site {name!r} is a per-datum latent (in the data plate): its draws belong to "
                    "the training data; the posterior predictive here needs every latent to be global"
                )
            if value is None or np.shape(value)[1:] != tuple(site.batch_shape) + tuple(site.event_shape):
                raise EngineNotApplicable(
                    f"score(fit, ...): latent site {name!r} has no posterior draws of its shape "
                    f"{tuple(site.batch_shape) + tuple(site.event_shape)} on the new data; the posterior predictive here "
                    "needs draws of every (global) latent"
                )
            draws[name] = np.asarray(value)
        per_draw = observed_log_likelihood(model, arguments, structure, params, draws, plate)
        if pointwise:
            return _log_mean_exp(per_draw, axis=0)
        weights = np.exp(per_draw - per_draw.max())
        stderr = float(weights.std(ddof=1) / (weights.mean() * np.sqrt(len(weights)))) if len(weights) > 1 else 0.0
        _warn_if_few_draws_count(weights)
        return Estimate(float(_log_mean_exp(per_draw)), stderr, "estimate" if draws else "exact")

    point = _point_estimates(fit, structure)
    if len(point) == len(structure.latent):  # nothing left to marginalise: one exact evaluation
        values = observed_log_likelihood(model, arguments, structure, params, point, plate)[0]
        return values if pointwise else Estimate(float(values), 0.0, "exact")
    if point:
        rest = next(name for name in structure.latent if name not in point)
        raise EngineNotApplicable(
            f"score(fit, ...): the fit has point estimates of {sorted(point)} but latent site {rest!r} must be "
            "marginalised; scoring with some latents fixed at their estimates and others summed out is not supported"
        )
    if instance is None:
        raise EngineNotApplicable(
            f"score(fit, ...): latent site {next(iter(structure.latent))!r} must be marginalised; pass engine= "
            "('enumerate' for discrete latents, 'importance' otherwise)"
        )
    instance = _with_params(instance, params)
    return score_by_engine(model, arguments, structure, instance, plate)


def score_by_engine(
    model: Callable, arguments: dict[str, Any], structure: ModelStructure, instance: Engine, plate: Optional[str]
) -> Union[Estimate, np.ndarray]:
    """log p(x) by ``instance``; with a ``plate``, one engine run per datum of it (valid when
    every latent sits in that plate, so that log p(x) = Σ_i log p(x_i))."""
    from ppgen.verbs import score

    if plate is None:
        return score(model, engine=instance, **arguments)
    for name, site in structure.latent.items():
        if plate not in site.plates:
            raise ValueError(
                f"score(pointwise=True): latent site {name!r} is shared by all data (outside plate {plate!r}), so "
                "log p(x) does not split into per-datum terms (the posterior predictive of an infer Result does: "
                "score(posterior, x_new, pointwise=True))"
            )
    values = []
    for index in range(structure.plates[plate].size):
        estimate = score(model, engine=instance, **_slice_datum(arguments, structure, plate, index))
        values.append(float(estimate))
    return np.asarray(values)
