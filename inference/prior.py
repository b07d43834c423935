"""Ancestral sampling (``engine="prior"``): run the program forwards.

Every latent site is drawn from its conditional given its parents, and so is every observed
site with a drawn site upstream (a replicate of the data: prior predictive; with a posterior
:class:`~ppgen.Result`, latents are fixed to posterior draws first, posterior predictive). Data
with no drawn site upstream, a prompt, are kept as given (:func:`kept_data`): drawing the rest
forwards from them is then exact conditioning, p(z | x) = p(z | x_<) for sites z after them. Sampling warpers (:mod:`ppgen.warpers`: top-k, top-p, min-p, after the
temperature) act on every sampled finite discrete site. Draws are vectorised over an outer plate, with a sequential fallback for programs
whose Python control flow depends on sampled values.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
import pyro
import pyro.distributions as pdist
import torch
from pyro import poutine
from pyro.infer import Predictive
from pyro.poutine.messenger import Messenger

from ppgen.backend import torch_precision, to_backend, to_numpy, use_backend
from ppgen.engine import Engine, register
from ppgen.results import Result
from ppgen.structure import ModelStructure, improper_latent, inspect
from ppgen.structure_cache import call_key
from ppgen.warpers import Warp, warpers

from ._draw_interpreter import AncestralInterpreter, remember_same, shown_same
from ._interpreter import Unsupported


def temper(fn: Any, temperature: float, site: str) -> Any:
    """The distribution ``fn`` at ``temperature``: p^(1/T) for categorical-type sites (logits/T),
    scale * sqrt(T) for Gaussians (which is p^(1/T) renormalised)."""
    if isinstance(fn, pdist.Independent):
        return temper(fn.base_dist, temperature, site).to_event(fn.reinterpreted_batch_ndims)
    if isinstance(fn, (pdist.Categorical, pdist.OneHotCategorical)):
        return type(fn)(logits=fn.logits / temperature)
    if isinstance(fn, pdist.Bernoulli):
        return pdist.Bernoulli(logits=fn.logits / temperature)
    if isinstance(fn, pdist.Normal):
        return pdist.Normal(fn.loc, fn.scale * math.sqrt(temperature))
    if isinstance(fn, pdist.MultivariateNormal):
        return pdist.MultivariateNormal(fn.loc, scale_tril=fn.scale_tril * math.sqrt(temperature))
    raise ValueError(
        f"site {site!r}: temperature is defined for Categorical, Bernoulli, Normal and "
        f"MultivariateNormal sites, not {type(fn).__name__}; use temperature=1.0"
    )


def kept_data(structure: ModelStructure) -> frozenset[str]:
    """The observed sites given data that have no drawn site upstream: a prefix of the program,
    which sampling the other sites forwards conditions on exactly (a prompt). An observed site
    downstream of a latent one is not kept (clamping it would not condition the latent on it)."""
    drawn: set[str] = set()
    kept: set[str] = set()
    for name, site in structure.sites.items():  # program order: parents come first
        upstream = any(parent in drawn for parent in site.parents)
        if site.kind == "observed" and site.has_data and not upstream:
            kept.add(name)
        elif site.kind in ("latent", "observed") or (site.kind == "deterministic" and upstream):
            drawn.add(name)
    return frozenset(kept)


class _Redraw(Messenger):
    """Samples every observed site except the ``kept`` ones (``poutine.uncondition`` for a subset)."""

    def __init__(self, kept: frozenset[str]) -> None:
        super().__init__()
        self.kept = kept

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] and msg["name"] not in self.kept:
            msg["is_observed"] = False
            msg["infer"]["was_observed"] = True
            msg["infer"]["obs"] = msg["value"]
            msg["value"] = None
            msg["done"] = False


def _draws(value: Any, num_samples: int, shape: tuple[int, ...], kept: bool) -> Optional[np.ndarray]:
    """A site's values as an array (num_samples, *shape); a kept site's one value repeated; None
    when the values are not one per draw (the program did not broadcast over the draws)."""
    value = to_numpy(value)
    if kept and value.size == math.prod(shape):
        return np.broadcast_to(value.reshape(shape), (num_samples,) + shape).copy()
    if value.size != num_samples * math.prod(shape):
        return None
    return value.reshape((num_samples,) + shape)


class _Temperature(Messenger):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def _pyro_sample(self, msg: dict) -> None:
        # (a plate's own subsample site is no draw of the program's)
        if msg["is_observed"] or msg["infer"].get("_deterministic") or type(msg["fn"]).__name__ in ("Unit", "_Subsample"):
            return
        msg["fn"] = temper(msg["fn"], self.temperature, msg["name"])


def _same_samples(expected: dict[str, np.ndarray], found: Optional[dict[str, np.ndarray]]) -> bool:
    """Whether two sets of draws are the same sites with equal values, bit for bit."""
    return (
        found is not None
        and found.keys() == expected.keys()
        and all(found[k].dtype == expected[k].dtype and np.array_equal(found[k], expected[k]) for k in expected)
    )


@register
class Prior(Engine):
    """Ancestral sampling from the prior, or posterior-predictive sampling given a Result."""

    name = "prior"
    tasks = frozenset({"generate", "infer"})
    summary = "ancestral sampling (forward simulation)"

    def __init__(
        self,
        num_samples: int = 1000,
        seed: int = 0,
        temperature: float = 1.0,
        posterior: Optional[Result] = None,
        progress: bool = False,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"Prior: num_samples must be a positive integer, got {num_samples}")
        if not temperature > 0:
            raise ValueError(f"Prior: temperature must be > 0, got {temperature}")
        self.num_samples = num_samples
        self.seed = seed
        self.temperature = temperature
        self.posterior = posterior
        # temperature stays with _Temperature (it also tempers continuous sites); the truncating
        # warpers come after it, in Hugging Face's order
        self.warpers = warpers(top_k=top_k, top_p=top_p, min_p=min_p)
        self._warper_options = (top_k, top_p, min_p)

    def check(self, structure: ModelStructure) -> Optional[str]:
        improper = improper_latent(structure) if self.posterior is None else None
        if improper:
            return f"latent site {improper!r} has an improper flat prior (ImproperUniform), which has no draws"
        return None

    def _posterior_draws(self) -> dict[str, torch.Tensor]:
        if self.posterior is None or not self.posterior.samples:
            return {}
        draws = {k: np.asarray(v) for k, v in self.posterior.samples.items()}
        available = next(iter(draws.values())).shape[0]
        index = np.random.default_rng(self.seed).choice(available, self.num_samples, replace=available < self.num_samples)
        return {k: torch.as_tensor(v[index]) for k, v in draws.items()}

    def _program(self, model: Callable, kept: frozenset[str]) -> Callable:
        program = _Redraw(kept)(model)
        if self.posterior is not None:
            params = {
                k: torch.as_tensor(np.asarray(v)) for k, v in self.posterior.params.items() if k not in self.posterior.samples
            }
            if params:
                program = poutine.substitute(program, data=params)
        if self.temperature != 1.0:
            program = _Temperature(self.temperature)(program)
        if self.warpers:
            program = Warp(self.warpers)(program)
        return program

    def _vectorised(
        self, program: Callable, structure: ModelStructure, kept: frozenset[str], args: tuple, kwargs: dict
    ) -> Optional[dict[str, np.ndarray]]:
        """All draws from one run of the program under a plate of ``num_samples`` left of its
        own plates (a program of L sites runs its L sites once, e.g. a sampled sequence keeps
        its network's state from one symbol to the next); None when the program does not
        broadcast over that plate (Python control flow on sampled values)."""
        try:
            with pyro.plate("_num_samples", self.num_samples, dim=-(structure.max_plate_nesting + 1)):
                trace = poutine.trace(program).get_trace(*args, **kwargs)
            samples = {}
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or name not in structure.sites or type(site["fn"]).__name__ == "Unit":
                    continue
                shape = tuple(structure.sites[name].batch_shape) + tuple(structure.sites[name].event_shape)
                draws = _draws(site["value"], self.num_samples, shape, name in kept)
                if draws is None:
                    return None
                samples[name] = draws
            return samples
        except (RuntimeError, ValueError, IndexError):
            return None

    def _interpreted(
        self, model: Callable, structure: ModelStructure, kept: frozenset[str], args: tuple, kwargs: dict
    ) -> Optional[dict[str, np.ndarray]]:
        """What :meth:`_vectorised` draws, by :class:`AncestralInterpreter` (no Pyro message per
        site); None when the program does something it does not model."""
        temperature = self.temperature
        interpreter = AncestralInterpreter(kept, None if temperature == 1.0 else lambda fn, name: temper(fn, temperature, name), self.warpers)
        try:
            values = interpreter.draw(model, args, kwargs, "_num_samples", self.num_samples, -(structure.max_plate_nesting + 1))
        except (Unsupported, RuntimeError, ValueError, IndexError, TypeError):  # Pyro's run says what is wrong
            return None
        samples = {}
        for name, site in structure.sites.items():
            if site.kind in ("param", "factor"):
                continue
            if name not in values:
                return None
            draws = _draws(values[name], self.num_samples, tuple(site.batch_shape) + tuple(site.event_shape), name in kept)
            if draws is None:
                return None
            samples[name] = draws
        return samples

    def run(self, model: Callable, *args: Any, **kwargs: Any) -> Result:
        structure = inspect(model, *args, **kwargs)
        # a call of this signature drawn as Pyro draws it by the handler-free interpreter once
        # (compared bit for bit below) is drawn by the interpreter from then on
        key = call_key(model, args, kwargs) if self.posterior is None else None
        signature = None if key is None else (key, self.num_samples, self.temperature, self._warper_options)
        args, kwargs = to_backend(args, "pyro"), to_backend(kwargs, "pyro")
        kept = kept_data(structure)
        program = self._program(model, kept)
        draws = self._posterior_draws()
        # inspect has checked the program's data and parameters on its own trace: Pyro's
        # per-site argument checks (a third of a Bernoulli's construction) are off here
        with use_backend("pyro"), torch_precision(enabled=structure.float64), torch.random.fork_rng(), pyro.get_param_store().scope(), torch.no_grad(), pyro.validation_enabled(False):
            torch.manual_seed(self.seed)
            if not draws:
                if shown_same(model, signature):
                    interpreted = self._interpreted(model, structure, kept, args, kwargs)
                    if interpreted is not None:
                        return Result(engine=self.name, samples=interpreted, diagnostics={"draws": "interpreted"})
                    torch.manual_seed(self.seed)
                vectorised = self._vectorised(program, structure, kept, args, kwargs)
                if vectorised is not None:
                    if signature is not None and not shown_same(model, signature):
                        torch.manual_seed(self.seed)
                        if _same_samples(vectorised, self._interpreted(model, structure, kept, args, kwargs)):
                            remember_same(model, signature)
                    return Result(engine=self.name, samples=vectorised, diagnostics={"draws": "pyro"})
                torch.manual_seed(self.seed)
            trace = poutine.trace(program).get_trace(*args, **kwargs)
            return_sites = [
                name
                for name, site in trace.nodes.items()
                if site["type"] == "sample" and type(site["fn"]).__name__ != "Unit" and not name.endswith("_subsample")
            ]
            try:
                predictive = Predictive(
                    program, posterior_samples=draws or None, num_samples=self.num_samples,
                    return_sites=return_sites, parallel=True,
                )
                samples = predictive(*args, **kwargs)
            except (RuntimeError, ValueError, IndexError):
                torch.manual_seed(self.seed)
                predictive = Predictive(
                    program, posterior_samples=draws or None, num_samples=self.num_samples,
                    return_sites=return_sites, parallel=False,
                )
                samples = predictive(*args, **kwargs)
        shapes = {name: tuple(trace.nodes[name]["value"].shape) for name in return_sites}
        return Result(
            engine=self.name,
            diagnostics={"draws": "pyro"},
            samples={
                k: _draws(v, self.num_samples, shapes[k], True) if k in kept else to_numpy(v).reshape((self.num_samples,) + shapes[k])
                for k, v in samples.items()
            },
        )
