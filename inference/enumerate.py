"""Exact enumeration (``engine="enumerate"``): log p(x), posterior marginals and the joint MAP.

Every latent must be discrete with finite support; continuous quantities may be ``param``
sites (evaluated at their initial values, or at ``params=``) or fixed arguments. The program
runs once under parallel enumeration (on ppgen's enumeration interpreter, or under Pyro's
handlers when it uses Pyro directly), so a mixture over 1e5 points is one tensor
contraction; a hidden Markov model written with ``ppgen.markov`` is recognised as a chain and
summed by a vectorised forward–backward pass in O(T K²) (Viterbi for its MAP). See
:mod:`ppgen.inference._discrete` for the algorithms.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import numpy as np
import pyro
import torch

from ppgen.backend import to_backend, to_numpy, use_backend
from ppgen.engine import Engine, missing_data, register
from ppgen.inference._discrete import collector_paused, enumerate_program, exact_posterior, in_precision, quiet_validation, small_ops
from ppgen.results import Estimate, Result
from ppgen.structure import ModelStructure, coupled_discrete_latent, site_plates_size


def blocking_latent(structure: ModelStructure) -> Optional[str]:
    """Why the latents of ``structure`` cannot all be enumerated (naming the site), or None."""
    for site in structure.latent.values():
        if not site.is_enumerable:
            what = "continuous" if site.support.kind == "continuous" else (
                "discrete with infinite support" if site.support.kind == "infinite-discrete" else f"vector-valued (event shape {site.event_shape})"
            )
            return (
                f"latent site {site.name!r} is {what} ({site.support}); exact enumeration needs every latent "
                "discrete with finite support"
            )
        if math.prod(site.batch_shape) != site_plates_size(structure, site):
            return (
                f"latent site {site.name!r} has batch shape {site.batch_shape} not covered by its plates "
                f"{site.plates or '()'}; declare its batch dimensions with ppgen.plate"
            )
    coupled = coupled_discrete_latent(structure)
    if coupled:
        return coupled
    for plate in structure.plates.values():
        if plate.subsample_size:
            return f"plate {plate.name!r} is subsampled ({plate.subsample_size} of {plate.size}); exact sums need every datum"
    return None


def _as_tensors(values: Optional[dict]) -> dict[str, torch.Tensor]:
    return {name: torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value) for name, value in (values or {}).items()}


@register
class Enumerate(Engine):
    """Exact inference by enumerating every discrete latent.

    Parameters
    ----------
    params : dict, optional
        Values for ``param`` sites (e.g. ``em_result.params``); the program's initial values otherwise.
    marginals : bool
        Compute every latent's posterior marginal p(z_i = k | x) (``Result.marginals``).
    map_estimate : bool
        Compute the joint MAP assignment argmax_z p(z | x) (``Result.map_estimate``; Viterbi on chains).
    seed : int
        Seed for anything the program samples outside enumeration (nothing, when it applies).

    Returns a :class:`~ppgen.Result` with ``log_evidence`` = Estimate(log p(x), kind="exact"),
    ``marginals`` (site -> array (*site_shape, K)), ``map_estimate``, ``params`` and
    ``diagnostics["method"]`` ("chain" for forward–backward, "tensor-elimination" otherwise).

    Examples
    --------
    >>> import ppgen
    >>> from ppgen.models.mixtures import gaussian_mixture_1d, simulate_gaussian_mixture_1d
    >>> data = simulate_gaussian_mixture_1d(num_data=20).data
    >>> result = ppgen.infer(gaussian_mixture_1d, engine="enumerate", **data)
    >>> result.marginals["z"].shape
    (20, 3)
    """

    name = "enumerate"
    tasks = frozenset({"infer", "score"})
    summary = "exact enumeration of discrete latents: log p(x), marginals, MAP (forward–backward on chains)"

    def __init__(
        self,
        params: Optional[dict[str, Any]] = None,
        marginals: bool = True,
        map_estimate: bool = True,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if params is not None and not isinstance(params, dict):
            raise TypeError(f"Enumerate: params must be a dict of param-site values, got {type(params).__name__}")
        self.params = params
        self.marginals = bool(marginals)
        self.map_estimate = bool(map_estimate)
        self.seed = seed
        self.progress = progress

    def check(self, structure: ModelStructure) -> Optional[str]:
        return missing_data(structure) or blocking_latent(structure)

    def run(self, model: Callable, *args: Any, **kwargs: Any) -> Result:
        start = time.perf_counter()
        args, kwargs = to_backend(args, "pyro"), to_backend(kwargs, "pyro")

        def run_exact():
            with use_backend("pyro"), torch.random.fork_rng(), pyro.get_param_store().scope(), torch.no_grad(), quiet_validation():
                torch.manual_seed(self.seed)
                enumeration = enumerate_program(model, args, kwargs, params=_as_tensors(self.params))
                posterior = exact_posterior(enumeration, marginals=self.marginals, map_estimate=self.map_estimate)
                params = {
                    name: to_numpy(site["value"])
                    for name, site in enumeration.trace.nodes.items()
                    if site["type"] == "param" and "$$$" not in name
                }
                factor_sites = {f.site for f in enumeration.factors}
                observed = {
                    name: to_numpy(site["value"])
                    for name, site in enumeration.trace.nodes.items()
                    if name in factor_sites and site["is_observed"] and type(site["fn"]).__name__ != "Unit"
                }
                return enumeration, posterior, params, observed

        with small_ops(), collector_paused():
            enumeration, posterior, params, observed = in_precision(run_exact)
        return Result(
            engine=self.name,
            params=params,
            marginals={name: to_numpy(p) for name, p in posterior.marginals.items()},
            map_estimate={name: to_numpy(v) for name, v in posterior.map_values.items()},
            log_evidence=Estimate(float(posterior.log_evidence), 0.0, "exact"),
            diagnostics={"method": posterior.method, "num_latent_sites": len(enumeration.latents)},
            observed=observed,
            seconds=time.perf_counter() - start,
        )
