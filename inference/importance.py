"""Importance sampling (``engine="importance"``): log p(x) with a standard error, posterior draws.

Particles z^(s) ~ q are drawn from a proposal q: the prior (default) or a guide program with the
model's signature. Each gets the log weight

    log w_s = log p(x, z^(s)) − log q(z^(s)),

where latents the guide does not sample are drawn from their prior inside the model and cancel
from the ratio. Then

    p̂(x) = (1/S) Σ_s w_s  (unbiased),   log p̂(x) ± se,  se ≈ sd(w) / (√S · mean(w))  (delta method),

the effective sample size ESS = (Σ w)² / Σ w², self-normalised posterior draws by multinomial
resampling, and the Pareto k̂ of the weights' upper tail (PSIS, Vehtari et al. 2024) as a
reliability diagnostic: k̂ > 0.7 warns (:class:`~ppgen.ReliabilityWarning`), and so does an ESS
below min(10, S/2): the posterior draws are then a few repeated particles (``converged=False``).

All particles run at once in one vectorised pass: the model and guide execute inside an extra
outermost plate of size S (checked against an ordinary run; a program that cannot be
vectorised falls back to one particle at a time).

When every latent sits in one data plate (per-datum latents, no latent globals: a mixture with
learned parameters, a VAE with an amortised guide), the weights factorise over the plate,
w_s = Π_i w_si, and each datum gets its own estimate:

    log p̂(x) = Σ_i log (1/S) Σ_s w_si,   se² = Σ_i se_i²,

still unbiased for p(x) in the ratio, with far less variance than the joint product; the
expected value of this estimate is the importance-weighted bound (IWAE, Burda et al. 2016).
ESS and k̂ are then per datum (``diagnostics["ess"]`` their mean, ``"ess_min"``, ``"pareto_k"``
the largest k̂), and posterior draws are resampled datum by datum.

References
----------
A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry (2024), "Pareto smoothed importance
sampling", JMLR 25(72). Y. Burda, R. Grosse, R. Salakhutdinov (2016), "Importance weighted
autoencoders", ICLR.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from typing import Any, Callable, Optional

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from ppgen.backend import to_backend, to_numpy, use_backend
from ppgen.engine import Engine, missing_data, register
from ppgen.errors import ReliabilityWarning, user_stacklevel
from ppgen.inference._discrete import in_precision, quiet_validation
from ppgen.results import Estimate, Result
from ppgen.structure import ModelStructure

PARETO_K_THRESHOLD = 0.7
#: Fewer effective particles than this (or than half the particles, for tiny runs) warns: the
#: resampled posterior is then a handful of repeated points, whatever the Pareto k̂ says (k̂ is
#: not fitted for a few distinct weights, and a degenerate tail can fit a small k̂).
MIN_EFFECTIVE_SAMPLES = 10
_IMPROPER = ("ImproperUniform", "Unit")
_PARTICLES = "_ppgen_particles"


def _sample_sites(trace: Any):
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site["infer"].get("_deterministic"):
            continue
        yield name, site


def _is_latent(site: dict) -> bool:
    return not site["is_observed"]


def _deepest_plate_dim(*traces: Any) -> int:
    dims = [
        f.dim for trace in traces for _, s in _sample_sites(trace) for f in s["cond_indep_stack"]
        if f.vectorized and f.dim is not None and f.name != _PARTICLES
    ]
    return min(dims, default=0)


def _per_particle(log_prob: torch.Tensor, particle_dim: int, num_particles: int) -> torch.Tensor:
    """Sum a site's log-density over every dim but the particle dim: shape (S,)."""
    if log_prob.dim() < -particle_dim:
        return log_prob.sum().expand(num_particles)
    moved = log_prob.movedim(particle_dim, 0)
    return moved.reshape(moved.shape[0], -1).sum(-1).expand(num_particles)


def _site_log_prob(site: dict) -> torch.Tensor:
    return scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])


def log_weights_of(model_trace: Any, guide_trace: Optional[Any], reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """log p(x, z) − log q(z) from a model trace replayed against a guide trace.

    Observed and factor sites count; latent sites count when the guide proposed them (their
    prior density against the guide's); latents sampled from their prior cancel.
    """
    total = 0.0
    for name, site in _sample_sites(model_trace):
        proposed = guide_trace is not None and name in guide_trace.nodes
        if _is_latent(site) and not proposed:
            continue
        total = total + reduce(_site_log_prob(site))
    if guide_trace is not None:
        for name, site in _sample_sites(guide_trace):
            if _is_latent(site):
                total = total - reduce(_site_log_prob(site))
    return total


def _plates_of(site: dict) -> dict[str, Any]:
    return {f.name: f for f in site["cond_indep_stack"] if f.vectorized and f.name != _PARTICLES}


def factorised_log_weights(model_trace: Any, guide_trace: Optional[Any], particle_dim: int, num: int):
    """Per-datum log weights (S, N) over the one plate holding every latent, plus the
    particle-independent rest; None when the weights do not factorise over a plate."""
    counted = []
    for name, site in _sample_sites(model_trace):
        if not _is_latent(site) or (guide_trace is not None and name in guide_trace.nodes):
            counted.append((site, 1.0))
    if guide_trace is not None:
        counted += [(site, -1.0) for _, site in _sample_sites(guide_trace) if _is_latent(site)]
    latents = [site for trace in filter(None, (model_trace, guide_trace)) for _, site in _sample_sites(trace) if _is_latent(site)]
    if not latents:
        return None
    shared = set.intersection(*(set(_plates_of(site)) for site in latents))
    frames = [_plates_of(latents[0])[name] for name in shared]
    frames = [f for f in frames if f.dim is not None and (f.full_size is None or f.full_size == f.size)]
    if not frames:
        return None
    frame = min(frames, key=lambda f: f.dim)  # the outermost shared plate
    per_datum = torch.zeros((num, frame.size))
    constant = torch.zeros(())
    for site, sign in counted:
        log_prob = _site_log_prob(site)
        rank = max(log_prob.dim(), -particle_dim, -frame.dim)
        log_prob = log_prob.reshape((1,) * (rank - log_prob.dim()) + tuple(log_prob.shape))
        if frame.name in _plates_of(site):
            moved = log_prob.movedim((particle_dim, frame.dim), (0, 1))
            per_datum = per_datum + sign * moved.reshape(moved.shape[0], moved.shape[1], -1).sum(-1)
        elif log_prob.shape[particle_dim] == 1:
            constant = constant + sign * log_prob.sum()
        else:
            return None  # a site outside the plate that varies with the particles couples the data
    return per_datum, constant, frame


def summarise_log_weights(log_weights: np.ndarray) -> dict[str, float]:
    """log p̂(x), its delta-method standard error and the ESS from S log weights."""
    num = log_weights.shape[0]
    top = np.max(log_weights)
    if not np.isfinite(top):
        return {"log_evidence": -math.inf, "stderr": math.inf, "ess": 0.0}
    weights = np.exp(log_weights - top)
    mean = weights.mean()
    log_evidence = float(top + np.log(mean))
    stderr = float(weights.std(ddof=1) / (np.sqrt(num) * mean)) if num > 1 else math.inf
    ess = float(weights.sum() ** 2 / np.square(weights).sum())
    return {"log_evidence": log_evidence, "stderr": stderr, "ess": ess}


def summarise_per_datum(log_weights: np.ndarray, constant: float) -> dict[str, float]:
    """log p̂(x) = Σ_i log mean_s w_si + constant, its standard error and per-datum ESS, from
    log weights of shape (S, N)."""
    num = log_weights.shape[0]
    top = log_weights.max(0)
    weights = np.exp(log_weights - top)
    mean = weights.mean(0)
    log_evidence = float((top + np.log(mean)).sum() + constant)
    stderr = float(np.sqrt(np.sum((weights.std(0, ddof=1) / (np.sqrt(num) * mean)) ** 2))) if num > 1 else math.inf
    ess = weights.sum(0) ** 2 / np.square(weights).sum(0)
    return {"log_evidence": log_evidence, "stderr": stderr, "ess": float(ess.mean()), "ess_min": float(ess.min())}


def pareto_k(log_weights: np.ndarray) -> float:
    """PSIS Pareto k̂ of the weights' upper tail (ArviZ ``psislw``); nan when undefined. For
    per-datum weights (S, N), the largest k̂ over the data."""
    import arviz as az

    if log_weights.ndim == 2:
        return max((pareto_k(column) for column in log_weights.T), default=float("nan"))
    finite = log_weights[np.isfinite(log_weights)]
    if finite.size < 5:
        return float("nan")
    if np.ptp(finite) < 1e-8:  # equal weights (the proposal is the posterior): no tail at all
        return float("-inf")
    if np.unique(finite).size <= 16:  # a few distinct weights (a discrete proposal): bounded, no tail to fit
        return float("-inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, k = az.psislw(finite.copy())
    return float(np.asarray(k))


def _resample(log_w: torch.Tensor, values: dict[str, torch.Tensor], factorised) -> dict[str, torch.Tensor]:
    """Self-normalised posterior draws: S particles resampled by weight, jointly, or datum by
    datum when the weights factorise over a plate (each draw's i-th element from particle
    s_i ~ w_{·i})."""
    num = log_w.shape[0]
    if factorised is None:
        probs = torch.softmax(log_w, 0) if torch.isfinite(log_w).any() else torch.full_like(log_w, 1.0 / num)
        index = torch.multinomial(probs, num, replacement=True)
        return {name: value[index] for name, value in values.items()}
    probs = torch.softmax(log_w, 0).T.contiguous()  # (N, S)
    probs = torch.where(torch.isfinite(probs).all(-1, keepdim=True), probs, torch.full_like(probs, 1.0 / num))
    index = torch.multinomial(probs, num, replacement=True).T  # (S, N): particle for each draw and datum
    out = {}
    for name, value in values.items():
        moved = value.movedim(factorised[1][name], 1)
        picked = moved[index, torch.arange(index.shape[1]).unsqueeze(0)]
        out[name] = picked.movedim(1, factorised[1][name])
    return out


@register
class Importance(Engine):
    """Importance sampling from the prior or a guide.

    Parameters
    ----------
    num_samples : int
        Number of particles S (and of resampled posterior draws).
    guide : callable, optional
        A proposal program with the model's signature that samples (some of) the model's
        latent sites by name. Its ``param`` sites and torch modules are read from the current
        Pyro parameter store (trained values are used as they are). Default: the prior.
    params : dict, optional
        Values for the model's ``param`` sites; otherwise their initial values (without a guide)
        or the parameter store's values (with one).
    batch_size : int, optional
        Particles per vectorised pass (bounds memory); default all at once.
    seed : int
        Seed of the proposal and of the resampling.

    Returns a :class:`~ppgen.Result` with ``log_evidence`` = Estimate(log p̂(x), stderr,
    "estimate"), ``samples`` (S draws resampled by weight), ``diagnostics`` with ``ess``,
    ``pareto_k``, ``log_weights`` and ``vectorized``.

    Examples
    --------
    >>> import ppgen
    >>> from ppgen.models.basics import coin
    >>> estimate = ppgen.score(coin, [1, 0, 1, 1], engine="importance", num_samples=2000)
    >>> estimate.kind
    'estimate'
    """

    name = "importance"
    tasks = frozenset({"infer", "score"})
    summary = "importance sampling (prior or guide proposal): log p(x) ± stderr, ESS, Pareto k"

    def __init__(
        self,
        num_samples: int = 1000,
        guide: Optional[Callable] = None,
        params: Optional[dict[str, Any]] = None,
        batch_size: Optional[int] = None,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if not isinstance(num_samples, (int, np.integer)) or isinstance(num_samples, bool) or num_samples < 2:
            raise ValueError(f"Importance: num_samples must be an integer >= 2, got {num_samples!r}")
        if guide is not None and not callable(guide):
            raise TypeError(f"Importance: guide must be a program (callable) or None, got {type(guide).__name__}")
        if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
            raise ValueError(f"Importance: batch_size must be a positive integer or None, got {batch_size!r}")
        if params is not None and not isinstance(params, dict):
            raise TypeError(f"Importance: params must be a dict of param-site values, got {type(params).__name__}")
        self.num_samples = int(num_samples)
        self.guide = guide
        self.params = params
        self.batch_size = int(batch_size) if batch_size else None
        self.seed = seed
        self.progress = progress

    def check(self, structure: ModelStructure) -> Optional[str]:
        reason = missing_data(structure)
        if reason or self.guide is not None:
            return reason
        for site in structure.latent.values():
            if site.distribution in _IMPROPER:
                return (
                    f"latent site {site.name!r} has an improper prior ({site.distribution}), which cannot be "
                    "sampled: importance sampling from the prior needs proper priors (or pass guide=...)"
                )
        return None

    # ----------------------------------------------------------------------------------------

    def _program(self, model: Callable) -> Callable:
        if not self.params:
            return model
        values = {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for k, v in self.params.items()}
        return poutine.substitute(model, data=values)

    def _vectorised(self, model: Callable, guide: Optional[Callable], args: tuple, kwargs: dict, reference: Any, nesting: int, num: int):
        """One pass over ``num`` particles in an outer plate; None if the program is not
        vectorisable (its site shapes differ from the ordinary run)."""
        particle_dim = -nesting - 1

        def in_particles(fn: Callable) -> Callable:
            def wrapped(*a: Any, **k: Any) -> Any:
                with pyro.plate(_PARTICLES, num, dim=particle_dim):
                    return fn(*a, **k)
            return wrapped

        guide_trace = poutine.trace(in_particles(guide)).get_trace(*args, **kwargs) if guide else None
        replayed = poutine.replay(in_particles(model), trace=guide_trace) if guide_trace is not None else in_particles(model)
        model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
        if _deepest_plate_dim(model_trace, *( [guide_trace] if guide_trace else [])) <= particle_dim:
            return None
        values = {}
        for name, site in _sample_sites(model_trace):
            if name not in reference.nodes:
                return None
            reference_batch = tuple(reference.nodes[name]["fn"].batch_shape)
            batch = tuple(site["fn"].batch_shape)
            if len(reference_batch) > nesting or batch != (num,) + (1,) * (nesting - len(reference_batch)) + reference_batch:
                return None  # indexing that mixed the particle dim into the program's own dims
            expected = tuple(reference.nodes[name]["value"].shape)
            value = site["value"]
            if value.dim() < len(expected) or tuple(value.shape[value.dim() - len(expected):]) != expected:
                return None
            lead = value.shape[: value.dim() - len(expected)]
            if math.prod(lead) not in (1, num) or (len(lead) and lead[0] not in (1, num)):
                return None
            if _is_latent(site):
                values[name] = value.reshape((-1,) + expected).expand((num,) + expected)
        factorised = factorised_log_weights(model_trace, guide_trace, particle_dim, num)
        if factorised is not None:
            per_datum, constant, frame = factorised
            axes = {}
            for name in values:
                batch = len(reference.nodes[name]["fn"].batch_shape)
                axes[name] = 1 + batch + frame.dim
            return per_datum, values, (frame.name, axes, float(constant))
        log_w = log_weights_of(model_trace, guide_trace, lambda lp: _per_particle(lp, particle_dim, num))
        return log_w, values, None

    def _sequential(self, model: Callable, guide: Optional[Callable], args: tuple, kwargs: dict, num: int):
        """One particle at a time (programs whose control flow depends on sampled values)."""
        log_w, draws = [], []
        for _ in tqdm(range(num), desc=self.name, disable=not self.progress, leave=False):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs) if guide else None
            replayed = poutine.replay(model, trace=guide_trace) if guide_trace is not None else model
            model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
            log_w.append(log_weights_of(model_trace, guide_trace, lambda lp: lp.sum()))
            draws.append({name: site["value"] for name, site in _sample_sites(model_trace) if _is_latent(site)})
        values = {name: torch.stack([d[name] for d in draws]) for name in draws[0]} if draws else {}
        return torch.stack([torch.as_tensor(w) for w in log_w]), values, None

    def _particles(self, model: Callable, guide: Optional[Callable], args: tuple, kwargs: dict):
        guide_reference = poutine.trace(guide).get_trace(*args, **kwargs) if guide else None
        replayed = poutine.replay(model, trace=guide_reference) if guide_reference is not None else model
        reference = poutine.trace(replayed).get_trace(*args, **kwargs)
        nesting = -_deepest_plate_dim(reference, *([guide_reference] if guide_reference else []))
        batch = self.batch_size or self.num_samples
        chunks, vectorized = [], True
        remaining = self.num_samples
        while remaining > 0:
            num = min(batch, remaining)
            outcome = None
            try:
                outcome = self._vectorised(model, guide, args, kwargs, reference, nesting, num)
            except (RuntimeError, ValueError, IndexError, TypeError):
                outcome = None
            if outcome is None:
                vectorized = False
                outcome = self._sequential(model, guide, args, kwargs, remaining)
                num = remaining
            chunks.append(outcome)
            remaining -= num
        factorisations = {c[2][0] if c[2] else None for c in chunks}
        if len(factorisations) == 1 and None not in factorisations:
            log_w, factorised = torch.cat([c[0] for c in chunks]), chunks[0][2]
        else:  # joint weights: fold per-datum chunks back into one weight per particle
            log_w = torch.cat([c[0] if c[2] is None else c[0].sum(-1) + c[2][2] for c in chunks])
            factorised = None
        values = {name: torch.cat([c[1][name] for c in chunks]) for name in chunks[0][1]}
        params = {n: to_numpy(s["value"]) for n, s in reference.nodes.items() if s["type"] == "param" and "$$$" not in n}
        observed = {
            n: to_numpy(s["value"]) for n, s in _sample_sites(reference)
            if s["is_observed"] and type(s["fn"]).__name__ != "Unit"
        }
        return log_w, values, vectorized, params, observed, factorised

    def run(self, model: Callable, *args: Any, **kwargs: Any) -> Result:
        start = time.perf_counter()
        args, kwargs = to_backend(args, "pyro"), to_backend(kwargs, "pyro")
        program = self._program(model)
        guide = self.guide
        if guide is not None and hasattr(guide, "bind"):  # an amortised guide (ppgen.amortize): give it the model's signature
            guide = guide.bind(model).program
        # Without a guide the run is self-contained; with one, its trained parameters live in
        # the parameter store and must be read from there, not re-initialised.
        store_scope = pyro.get_param_store().scope if guide is None else nullcontext

        def sample_particles():
            with use_backend("pyro"), torch.random.fork_rng(), store_scope(), torch.no_grad(), quiet_validation():
                torch.manual_seed(self.seed)
                log_w, values, vectorized, params, observed, factorised = self._particles(program, guide, args, kwargs)
                draws = {name: to_numpy(v) for name, v in _resample(log_w.detach(), values, factorised).items()}
                return to_numpy(log_w.detach()), draws, vectorized, params, observed, factorised

        log_w, draws, vectorized, params, observed, factorised = in_precision(sample_particles)
        log_w = np.asarray(log_w, dtype=np.float64)
        summary = summarise_log_weights(log_w) if factorised is None else summarise_per_datum(log_w, factorised[2])
        k_hat = pareto_k(log_w)
        if k_hat > PARETO_K_THRESHOLD:
            where = "" if factorised is None else f", largest over the {log_w.shape[1]} elements of plate {factorised[0]!r}"
            warnings.warn(
                f"importance: Pareto k = {k_hat:.2f} > {PARETO_K_THRESHOLD} (ESS {summary['ess']:.1f} of "
                f"{self.num_samples}{where}); the estimate of log p(x) and the draws are unreliable. Use a "
                "proposal closer to the posterior (guide=...) or more samples",
                ReliabilityWarning,
                stacklevel=user_stacklevel(),
            )
        degenerate = summary["ess"] < min(MIN_EFFECTIVE_SAMPLES, 0.5 * self.num_samples)
        if degenerate:
            warnings.warn(
                f"importance: effective sample size {summary['ess']:.1f} of {self.num_samples} particles "
                f"(< {MIN_EFFECTIVE_SAMPLES}): the posterior draws are a few repeated particles and log p(x) "
                "is unreliable. Use a proposal closer to the posterior (guide=...) or more samples",
                ReliabilityWarning,
                stacklevel=user_stacklevel(),
            )
        return Result(
            engine=self.name,
            converged=False if degenerate else None,
            samples=draws,
            params=params,
            log_evidence=Estimate(summary["log_evidence"], summary["stderr"], "estimate"),
            diagnostics={
                "ess": summary["ess"],
                "ess_min": summary.get("ess_min", summary["ess"]),
                "per_datum_plate": None if factorised is None else factorised[0],
                "pareto_k": k_hat,
                "num_samples": self.num_samples,
                "log_weights": log_w,
                "proposal": "guide" if self.guide is not None else "prior",
                "vectorized": vectorized,
            },
            observed=observed,
            seconds=time.perf_counter() - start,
        )
