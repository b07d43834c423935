"""The log joint density of a program at given values, on either backend."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ppgen.backend import to_backend, to_numpy, torch_precision, use_backend
from ppgen.structure import inspect


def log_density(model: Callable, *args: Any, values: dict[str, Any], backend: str = "pyro", **kwargs: Any) -> float:
    """log p(x, z; θ) of ``model(*args, **kwargs)`` with latent sites set to ``values``.

    ``values`` maps latent site names to values and ``param`` site names to parameter values
    (constrained). Observed sites use their data. Computed on ``backend`` ("pyro" or "numpyro").
    """
    if backend == "numpyro":
        from numpyro.infer.util import log_density as numpyro_log_density

        with use_backend("numpyro"):
            args, kwargs = to_backend(args, "numpyro"), to_backend(kwargs, "numpyro")
            value, _ = numpyro_log_density(model, args, kwargs, to_backend(values, "numpyro"))
        return float(np.asarray(value))
    import pyro
    import torch
    from pyro import poutine

    with use_backend("pyro"), torch_precision(), pyro.get_param_store().scope(), torch.no_grad():
        args, kwargs = to_backend(args, "pyro"), to_backend(kwargs, "pyro")
        tensors = to_backend(values, "pyro")
        param_names = set(inspect(model, *args, **kwargs).params)
        params = {k: v for k, v in tensors.items() if k in param_names}
        latents = {k: v for k, v in tensors.items() if k not in param_names}
        conditioned = poutine.substitute(poutine.condition(model, data=latents), data=params)
        trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
        return float(to_numpy(trace.log_prob_sum()))
