"""The four task verbs: ``generate``, ``score``, ``infer``, ``learn``.

Each takes the program and its arguments, and an engine by name or instance; switching engine
is changing one word. Engine options and model keyword arguments are passed together and split
by name (see :func:`ppgen.engine.split_options`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Optional, Union

import numpy as np

from ppgen.engine import Engine, check_option_types, registered_engines, resolve, running_task
from ppgen.structure import bind_arguments
from ppgen.errors import EngineNotApplicable
from ppgen.results import Estimate, Result
from ppgen.structure import known_structure


def _run(task: str, model: Callable, args: tuple, engine: Union[str, Engine], options: dict) -> Result:
    instance, args, model_kwargs, structure = resolve(engine, model, args, options, task)
    start = time.perf_counter()
    with known_structure(structure, model, args, model_kwargs), running_task(task):
        result = instance.run(model, *args, **model_kwargs)
    return replace(
        result,
        seconds=result.seconds or time.perf_counter() - start,
        task=task,
        model=model,
        model_args=args,
        model_kwargs=model_kwargs,
    )


def infer(model: Callable, *args: Any, engine: Union[str, Engine], **options: Any) -> Result:
    """Posterior over the latents of ``model(*args)`` given its observed sites.

    Examples
    --------
    >>> from ppgen.models.basics import coin
    >>> result = infer(coin, [1, 1, 0, 1], engine="map")
    >>> round(float(result.params["rho"]), 3)
    0.75
    """
    return _run("infer", model, args, engine, options)


def learn(model: Callable, *args: Any, engine: Union[str, Engine], **options: Any) -> Result:
    """Fit the parameters of ``model(*args)`` (MLE, MAP, EM, SVI, ...); see ``Result.params``."""
    return _run("learn", model, args, engine, options)


def score(
    model: Union[Callable, Result],
    *args: Any,
    engine: Optional[Union[str, Engine]] = None,
    pointwise: bool = False,
    **options: Any,
) -> Union[Estimate, np.ndarray]:
    """``log p(x)`` of the observed sites of ``model(*args)``: exact, a lower bound or an
    estimate with standard error, as the engine can.

    Given a fitted :class:`Result` in place of the model, scores new data (``args`` /
    ``options`` replace the fit's data, by position or by name; its other arguments are kept):
    under the learned ``param`` sites and modules for a ``learn`` result, and as the log
    posterior-predictive density log (1/S) Σ_s p(x_new | θ_s) over the posterior draws for an
    ``infer`` result (see :mod:`ppgen.heldout`).

    ``pointwise=True`` returns an array with one log-density per datum of the outer data plate
    instead of an :class:`Estimate` (for a model, one engine run per datum: every latent must
    sit in that plate).

    Examples
    --------
    >>> import numpy as np, ppgen
    >>> def gaussian(x):
    ...     loc = ppgen.param("loc", 0.0)
    ...     with ppgen.plate("data", len(x)):
    ...         ppgen.sample("x", ppgen.dist.Normal(loc, 1.0), obs=x)
    >>> fit = ppgen.learn(gaussian, np.array([1.0, 3.0]), engine="mle")
    >>> round(float(score(fit, np.array([2.0]))), 4)  # log N(2; 2, 1)
    -0.9189
    """
    if not isinstance(pointwise, (bool, np.bool_)):
        raise TypeError(f"score: pointwise must be True or False, got {type(pointwise).__name__} {pointwise!r}")
    if isinstance(model, Result):
        from ppgen.heldout import score_fitted

        return score_fitted(model, args, engine, options, bool(pointwise))
    if engine is None:
        raise TypeError("score: engine= is required when scoring a model (e.g. engine='enumerate' or 'importance')")
    if pointwise:
        from ppgen.heldout import outer_data_plate, score_by_engine

        instance, args, model_kwargs, structure = resolve(engine, model, args, options, "score")
        arguments = bind_arguments(model, args, model_kwargs)
        return score_by_engine(model, arguments, structure, instance, outer_data_plate(structure))
    result = _run("score", model, args, engine, options)
    if result.log_evidence is None:
        raise EngineNotApplicable(f"engine {result.engine!r} does not compute log p(x)")
    return result.log_evidence


def generate(
    model: Union[Callable, Result],
    *args: Any,
    num_samples: int = 1,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    min_p: Optional[float] = None,
    posterior: Optional[Result] = None,
    **kwargs: Any,
) -> dict[str, np.ndarray]:
    """Draw ``num_samples`` runs of the program: ancestral sampling from the prior, or
    posterior-predictive sampling when given a :class:`Result` (as ``posterior=`` or in place of
    the model). ``temperature`` T rescales each sampled site: logits / T for discrete sites,
    scale * sqrt(T) for Gaussian ones. ``top_k`` (k ≥ 1), ``top_p`` (in (0, 1]) and ``min_p``
    (in [0, 1)) truncate every sampled finite discrete site after the temperature, in that
    order (Hugging Face's; see :mod:`ppgen.warpers`); continuous sites are left alone.

    Data passed for observed sites with no drawn site upstream (a prompt: ``prompt=`` of
    ``char_model``, the first days of a chain) are kept as given, and the sites after them are
    drawn given them, which is exact conditioning; data downstream of a latent site are
    replicated instead (prior or posterior predictive; condition on them with ``infer``).

    Returns site -> array of shape (num_samples, *site_shape).
    """
    if isinstance(model, Result):
        posterior, model = model, model.model
        if not args and not kwargs:
            args, kwargs = posterior.model_args, dict(posterior.model_kwargs)
    if model is None:
        raise ValueError("generate: the Result does not carry its model; pass the model too")
    options = dict(num_samples=num_samples, seed=seed, temperature=temperature, posterior=posterior, top_k=top_k, top_p=top_p, min_p=min_p)
    prior = registered_engines()["prior"]
    check_option_types(prior, options)
    prior_engine = prior(**options)
    return prior_engine.run(model, *args, **kwargs).samples
