"""Expectation–maximisation (``engine="em"``) for programs with discrete latents.

The globals θ are the program's ``param`` sites and its continuous *global* latents (outside
every plate that holds data), which EM treats as point estimates (MAP-EM: their prior is part
of the objective). Each iteration

* **E-step**: exact posterior over the enumerated discrete latents at θ (a mixture: one tensor
  contraction; an HMM: forward–backward), giving for each site the posterior weights of its
  cells (see :mod:`ppgen.inference._discrete`);
* **M-step**: maximises the expected complete-data log joint
  Q(θ) = Σ_sites Σ_cells w · log p(site | parents; θ) + log p(θ). Where the structure is a
  recognised exponential family (a global gathered into Categorical / Bernoulli / Poisson /
  Normal / multivariate normal arguments, with a conjugate prior or none) the update is in
  closed form (:mod:`ppgen.inference._em_closed_form`); the remaining globals take L-BFGS steps on
  Q (generalised EM), accepted only if Q increases.

Stochastic (online) EM, ``subsample_size=B`` (Cappé & Moulines 2009): step k runs the E-step
on a minibatch of B data of the data plate (a fresh permutation every epoch, computed a
minibatch at a time: :mod:`ppgen.inference._epoch_order`) and keeps, for
every closed-form update, a running average of the full-data sufficient statistics,

    s_k = (1 − γ_k) s_{k−1} + γ_k (N / B) S(batch_k; θ_{k−1}),   γ_k = (k + 2)^(−0.6),

(Σ γ_k = ∞, Σ γ_k² < ∞; the first minibatch's statistics start the average) from which the
M-step computes θ_k as batch EM does from the full-data sums. Nothing per step is of size N,
so memory is constant in N; the statistics of a Normal's scale are taken about the location
of the step they were computed at (the locations agree at the fixed point). Globals without a
closed-form update are refused (use ``svi``). The objective trace holds each minibatch's log-likelihood × N / B (at
θ_{k−1}); at the end log p(x; θ̂) is computed in chunks of max(B, 2^16) data. Per-datum
``marginals`` are not returned (they are of size N): run batch EM from
``init_params=result.params`` for them.

So the Gaussian mixture, the Bernoulli mixture and Baum–Welch for an HMM all come out of the
same code, and log p(x; θ) (plus log p(θ) with priors) never decreases. Degenerate components
are regularised (``reg_covar`` added to variances, as scikit-learn does), never NaN: a component
that collapses (less than one datum's responsibility, or a variance at the ``reg_covar`` floor)
is reported with a :class:`~ppgen.errors.ConvergenceWarning` naming the site and component, and
in ``diagnostics["collapsed"]``.

References
----------
A. P. Dempster, N. M. Laird, D. B. Rubin (1977), "Maximum likelihood from incomplete data via
the EM algorithm", JRSS B 39(1). X.-L. Meng, D. B. Rubin (1993), "Maximum likelihood
estimation via the ECM algorithm", Biometrika 80(2). D. Arthur, S. Vassilvitskii (2007),
"k-means++: the advantages of careful seeding", SODA. O. Cappé, E. Moulines (2009), "On-line
expectation–maximization algorithm for latent data models", JRSS B 71(3).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Union

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from torch.distributions import transform_to

from ppgen.backend import to_backend, to_numpy, torch_precision, use_backend
from ppgen.checkpoint import Checkpoint, Section
from ppgen.checkpoint import check_options as check_checkpoint_options
from ppgen.driver import NonFiniteStep, Progress, iterate
from ppgen.engine import Engine, missing_data, register
from ppgen.errors import ConvergenceWarning, EngineFailure, user_stacklevel
from ppgen.inference._discrete import (
    Enumeration,
    Factor,
    Posterior,
    _from_chain_layout,
    enumerate_program,
    exact_posterior,
    quiet_validation,
    site_log_prob,
    small_ops,
    threads_for,
    total,
)
from ppgen.inference._em_closed_form import (
    ORDER,
    Prior,
    SiteModel,
    choose_rule,
    compact,
    given_arguments,
    mvn_features_apply,
    prepare_mvn_features,
    recognise,
    unwrap,
    update,
)
from ppgen.inference._epoch_order import EpochOrder
from ppgen.inference._restarts import (
    INITS,
    Restarts,
    StartRecord,
    check_restart_options,
    kmeans,
    random_labels,
    resolve_restarts,
    start_kinds,
    symmetric_sites,
    warn_symmetric,
    warn_unconverged,
)
from ppgen.inference.enumerate import blocking_latent
from ppgen.results import Estimate, Result
from ppgen.structure import ModelStructure, bind_arguments, inspect

_PROBE_SEED = 20240601
_INITS = tuple(kind for kind in INITS if kind != "spectral")  # EM cannot sum out latents indexed in pairs
#: ``num_restarts="auto"``: at most this many starts, and at least MIN_AGREEING_STARTS before two
#: that reach the best log joint are believed (k-means and random starts in turn). Two k-means
#: starts alone often share a local optimum that merged two clusters and split a third; four
#: starts of two kinds miss an optimum whose basin draws a fraction q of them with probability
#: (1 − q)^4, e.g. 2 % at q = 0.6 (the catalogue's 1-D mixture with single k-means++ seedings).
MAX_STARTS = 8
MIN_AGREEING_STARTS = 4


def _global_latents(structure: ModelStructure) -> list[str]:
    """Continuous latents outside every plate that holds an observed site: EM's point estimates."""
    data_plates = {p for s in structure.observed.values() for p in s.plates}
    return [n for n, s in structure.latent.items() if not s.is_discrete and not set(s.plates) & data_plates]


def _blocking(structure: ModelStructure) -> Optional[str]:
    reason = missing_data(structure)
    if reason:
        return reason
    modules = [n for n, s in structure.params.items() if s.distribution == "module"]
    if modules:
        return f"param {modules[0]!r} is a torch module; neural programs are fitted by gradient engines (svi)"
    globals_ = set(_global_latents(structure))
    for name, site in structure.latent.items():
        if site.is_discrete:
            continue
        if name not in globals_:
            return (
                f"latent site {name!r} is continuous and local (it shares plate(s) {site.plates} with the data); "
                "EM treats continuous latents as global point estimates"
            )
    discrete = {n: s for n, s in structure.latent.items() if s.is_discrete}
    if not discrete:
        return "the program has no discrete latent to take expectations over (for point estimates use 'mle' or 'map')"
    restricted = ModelStructure(structure.name, {n: s for n, s in structure.sites.items() if n not in globals_}, structure.plates, structure.arguments)
    reason = blocking_latent(restricted)
    if reason:
        return reason
    if not structure.params and not globals_:
        return "nothing to learn: the program has no param sites and no continuous global latents"
    return None


@dataclass(frozen=True)
class EMState:
    """θ (constrained values by name), the E-step at θ, and the objective history."""

    values: dict[str, torch.Tensor]
    posterior: Posterior
    log_likelihood: float
    log_joint: float
    history: tuple[tuple[float, float], ...] = ()
    collapsed: dict[str, tuple[list[str], list[tuple[int, ...]], list[float]]] = field(default_factory=dict)


@dataclass
class _Problem:
    """Everything fixed across iterations: the program, its globals, the enumeration layout,
    the recognised site models, and the M-step plan."""

    model: Callable
    args: tuple
    kwargs: dict
    params: list[str]
    latents: list[str]
    constraints: dict[str, Any]
    layout: Enumeration
    site_models: dict[str, SiteModel]
    priors: dict[str, Optional[Prior]]
    prior_fns: dict[str, Any]
    depends: dict[str, set[str]]
    rules: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    uses: dict[str, list[tuple[SiteModel, str]]] = field(default_factory=dict)
    fast: bool = False
    constant_factors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return self.params + self.latents

    def program(self, values: dict[str, torch.Tensor]) -> Callable:
        params = {n: values[n] for n in self.params}
        latents = {n: values[n] for n in self.latents}
        return poutine.condition(poutine.substitute(self.model, data=params), data=latents)


@register
class EM(Engine):
    """Expectation–maximisation over discrete latents; (MAP-)estimates of the globals.

    Parameters
    ----------
    num_steps : int
        Maximum number of EM iterations.
    tol : float
        Stop when the objective changes by at most ``tol * max(1, |objective|)``; 0 runs
        exactly ``num_steps`` iterations.
    num_restarts : int or "auto"
        Number of starts (seeds ``seed``, ``seed + 1``, ...); the best final objective wins and
        every start's is recorded. ``"auto"``: up to :data:`MAX_STARTS` (8) when starts can
        differ (a mixture, or continuous globals drawn from their prior), stopping once at
        least :data:`MIN_AGREEING_STARTS` (4) have run and two of them reach the best objective
        (within ``max(tol, 1e-6) * |objective|``); else 1.
    init : {"auto", "program", "kmeans++", "random"}
        The first start. "program": ``param`` sites at their initial values, continuous latents
        at a prior draw; "kmeans++": for a mixture (one discrete latent per datum), hard
        assignments from k-means (the best of ten k-means++ seedings by within-cluster sum of
        squares) followed by one M-step; "random": random hard assignments followed by one
        M-step; "auto": k-means++ where it applies. Later starts: the "auto" start and
        "random" in turn (the program's start for a program that is not a mixture).
    init_params : dict, optional
        Starting values by site name for the first start (overriding ``init`` for those sites).
    reg_covar : float
        Added to every variance and covariance diagonal in the M-step (scikit-learn's
        ``reg_covar``, same default), in the data's squared units: σ² = Σ w (x − μ)² / Σ w +
        ``reg_covar``. It keeps a component collapsing onto one datum finite (its likelihood
        would grow without bound); such a component (less than one datum's responsibility, or
        a variance at most ``reg_covar`` before it is added) is reported with a
        :class:`~ppgen.errors.ConvergenceWarning`. Rescale data whose variances are near it.
    gradient_steps : int
        L-BFGS iterations per M-step for globals without a closed form.
    subsample_size : int, optional
        Minibatch size B over the data plate: stochastic (online) EM with step sizes
        γ_k = (k + 2)^(−0.6), ``num_steps`` minibatch steps (an epoch is N / B steps; ``tol``
        is not used), memory constant in N (see the module docstring). None: batch EM.
    seed, progress : as everywhere.
    checkpoint, checkpoint_every : a file (path) the run's state is saved to every
        ``checkpoint_every`` iterations, on SIGINT / SIGTERM (the run then returns the state
        reached with ``interrupted=True``) and at the end; the same call again resumes from it
        (see :mod:`ppgen.checkpoint`).

    Returns a :class:`~ppgen.Result` with ``params`` (every global), ``marginals`` and
    ``map_estimate`` of the discrete latents at the estimate, ``traces["log_likelihood"]``
    (log p(x; θ) after each iteration; ``traces["log_joint"]`` adds log p(θ) when there are
    priors), ``log_evidence`` = Estimate(log p(x; θ̂), kind="exact") for programs without
    priors, ``diagnostics["m_step"]`` saying how each global was updated, and
    ``diagnostics["collapsed"]`` (global -> indices of its collapsed components at the estimate).

    Examples
    --------
    >>> import ppgen
    >>> from ppgen.models.mixtures import gaussian_mixture, simulate_gaussian_mixture
    >>> data = simulate_gaussian_mixture(num_data=200).data
    >>> result = ppgen.learn(gaussian_mixture, engine="em", **data)
    >>> result.params["locs"].shape
    (3, 2)
    """

    name = "em"
    tasks = frozenset({"learn", "infer", "score"})
    summary = "expectation-maximisation: exact E-step, closed-form / gradient M-step (MAP with priors)"

    def __init__(
        self,
        num_steps: int = 100,
        tol: float = 1e-6,
        num_restarts: Restarts = "auto",
        init: str = "auto",
        init_params: Optional[dict[str, Any]] = None,
        reg_covar: float = 1e-6,
        gradient_steps: int = 20,
        subsample_size: Optional[int] = None,
        seed: int = 0,
        progress: bool = False,
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        checkpoint_every: int = 10,
    ) -> None:
        check_checkpoint_options("EM", checkpoint, checkpoint_every)
        if subsample_size is not None and (isinstance(subsample_size, bool) or not isinstance(subsample_size, (int, np.integer)) or subsample_size < 1):
            raise ValueError(f"EM: subsample_size must be a positive integer or None, got {subsample_size!r}")
        if subsample_size is not None and checkpoint is not None:
            raise ValueError("EM: checkpoint is not available with subsample_size; pass one of them")
        self.subsample_size = None if subsample_size is None else int(subsample_size)
        if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
            raise ValueError(f"EM: num_steps must be a positive integer, got {num_steps!r}")
        if not tol >= 0:
            raise ValueError(f"EM: tol must be >= 0, got {tol!r}")
        check_restart_options("EM", num_restarts, init, _INITS)
        if init_params is not None and not isinstance(init_params, dict):
            raise TypeError(f"EM: init_params must be a dict of site values, got {type(init_params).__name__}")
        if not reg_covar >= 0:
            raise ValueError(f"EM: reg_covar must be >= 0, got {reg_covar!r}")
        if not isinstance(gradient_steps, (int, np.integer)) or gradient_steps < 1:
            raise ValueError(f"EM: gradient_steps must be a positive integer, got {gradient_steps!r}")
        self.num_steps = int(num_steps)
        self.tol = float(tol)
        self.num_restarts = num_restarts
        self.init = init
        self.init_params = init_params
        self.reg_covar = float(reg_covar)
        self.gradient_steps = int(gradient_steps)
        self.seed = seed
        self.progress = progress
        self.checkpoint = checkpoint
        self.checkpoint_every = int(checkpoint_every)

    def check(self, structure: ModelStructure) -> Optional[str]:
        self._checked = structure  # the verbs check, then run the same call: reuse the trace
        return _blocking(structure)

    def _structure(self, model: Callable, args: tuple, kwargs: dict) -> ModelStructure:
        checked, self._checked = getattr(self, "_checked", None), None
        if checked is not None and checked.name == getattr(model, "__name__", None):
            bound = bind_arguments(model, args, kwargs)
            if all(name in bound and tuple(np.shape(bound[name])) == a.shape for name, a in checked.arguments.items()):
                return checked
        return inspect(model, *args, **kwargs)

    # ---------------------------------------------------------------------------------------
    # set-up

    def _setup(
        self, model: Callable, args: tuple, kwargs: dict, structure: ModelStructure, centres: Optional[dict[str, torch.Tensor]] = None
    ) -> tuple[_Problem, dict]:
        """Globals, their constraints and program values; two random probes to recognise gathers.
        ``centres``: the centre of each multivariate normal site's design (default: its data mean)."""
        params = [n for n, s in structure.params.items() if s.distribution != "module"]
        latents = _global_latents(structure)
        plain = poutine.trace(model).get_trace(*args, **kwargs)
        store = pyro.get_param_store()
        constraints_ = {n: store._constraints.get(n, constraints.real) for n in params}
        constraints_.update({n: plain.nodes[n]["fn"].support for n in latents})
        program_values = {n: plain.nodes[n]["value"].detach() for n in params}
        program_values.update({n: plain.nodes[n]["value"].detach() for n in latents})
        names = params + latents
        generator = torch.Generator().manual_seed(_PROBE_SEED)
        probes = []
        for _ in range(2):
            probe = {}
            for n in names:
                transform = transform_to(constraints_[n])
                shape = transform.inv(program_values[n]).shape
                probe[n] = transform(torch.randn(shape, generator=generator, dtype=program_values[n].dtype))
            probes.append(probe)
        depends = _dependencies(structure, set(names))
        problem = _Problem(model, args, kwargs, params, latents, constraints_, None, {}, {}, {}, depends)  # type: ignore[arg-type]
        first = enumerate_program(problem.program(probes[0]), args, kwargs, log_probs=False)
        second = enumerate_program(problem.program(probes[1]), args, kwargs, max_plate_nesting=first.max_plate_nesting, log_probs=False)
        site_models, opaque = recognise(first, second, (probes[0], probes[1]), depends)
        problem.layout = enumerate_program(
            problem.program(program_values), args, kwargs, max_plate_nesting=first.max_plate_nesting, log_probs=False
        )
        for n in latents:
            site_models.pop(n, None)
            fn = first.trace.nodes[n]["fn"]
            base, _ = unwrap(fn)
            fixed = n in first.trace.nodes and all(
                torch.equal(compact(a), compact(b)) for a, b in zip(given_arguments(base).values(), given_arguments(unwrap(second.trace.nodes[n]["fn"])[0]).values())
            )
            problem.prior_fns[n] = fn if fixed else None
            problem.priors[n] = (
                Prior(type(base).__name__, {k: compact(v) for k, v in given_arguments(base).items()}) if fixed else None
            )
        problem.site_models = site_models
        for name, centre in (centres or {}).items():
            if name in site_models:
                site_models[name].cache["centre"] = centre
        self._plan(problem, opaque)
        return problem, program_values

    def _plan(self, problem: _Problem, opaque: dict[str, str]) -> None:
        uses: dict[str, list[tuple[SiteModel, str]]] = {n: [] for n in problem.names}
        for site in problem.site_models.values():
            for key, gather in site.gathers().items():
                uses[gather.name].append((site, key))
        blocked = {g for site in opaque for g in problem.depends.get(site, ())}
        in_priors = {g for n in problem.latents for g in problem.depends.get(n, ())}  # hierarchical priors
        for name in problem.names:
            if name in blocked:
                problem.rules[name], problem.reasons[name] = "gradient", "gradient steps: feeds a site whose arguments are not gathers"
            elif name in in_priors:
                problem.rules[name], problem.reasons[name] = "gradient", "gradient steps: feeds the prior of another global"
            else:
                rule, why = choose_rule(name, uses[name], problem.priors.get(name), name in problem.latents)
                problem.rules[name] = rule
                problem.reasons[name] = why if rule != "gradient" else f"gradient steps: {why}"
        problem.uses = uses
        # Fast path: every factor is a recognised site, a global's prior with fixed arguments, or
        # a site that no global feeds; then no iteration needs to run the program.
        fast = True
        for factor in problem.layout.factors:
            name = factor.site
            if name in problem.site_models or (name in problem.latents and problem.prior_fns.get(name) is not None):
                continue
            if problem.depends.get(name):
                fast = False
            else:
                problem.constant_factors[name] = site_log_prob(problem.layout.trace.nodes[name])
        problem.fast = fast
        for site in problem.site_models.values():
            if mvn_features_apply(site):
                prepare_mvn_features(site)
                site.cache["natural"] = True

    # ---------------------------------------------------------------------------------------
    # E-step

    def _factors(self, problem: _Problem, values: dict[str, torch.Tensor], only: Optional[set[str]] = None) -> list[Factor]:
        """Every site's factor at ``values`` (only the sites depending on ``only``, if given)."""
        layout = problem.layout
        if not problem.fast:
            enumeration = enumerate_program(problem.program(values), problem.args, problem.kwargs, max_plate_nesting=layout.max_plate_nesting)
            return [f for f in enumeration.factors if only is None or problem.depends.get(f.site, set()) & only or f.site in only]
        out = []
        for factor in layout.factors:
            name = factor.site
            if only is not None and not (problem.depends.get(name, set()) & only or name in only):
                continue
            if name in problem.site_models:
                with threads_for(factor.log_prob.numel()):
                    log_prob = problem.site_models[name].log_prob(values)
            elif name in problem.latents:
                log_prob = problem.prior_fns[name].log_prob(values[name])
            else:
                log_prob = problem.constant_factors[name]
            out.append(Factor(name, log_prob, factor.latent_dims, factor.plates))
        return out

    def _e_step(self, problem: _Problem, values: dict[str, torch.Tensor], history: tuple = ()) -> EMState:
        factors = self._factors(problem, values)
        posterior = exact_posterior(problem.layout.with_factors(factors), marginals=False, weights=True)
        log_joint = float(posterior.log_evidence)
        log_prior = sum(float(total(f, problem.layout.plates)) for f in factors if f.site in problem.latents)
        return EMState(values, posterior, log_joint - log_prior, log_joint, history + ((log_joint - log_prior, log_joint),))

    # ---------------------------------------------------------------------------------------
    # M-step

    def _m_step(
        self, problem: _Problem, values: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], collapsed: Optional[dict] = None,
        running: Optional["_RunningStatistics"] = None,
    ) -> dict[str, torch.Tensor]:
        """The closed-form updates, then gradient steps on the rest; the collapsed components
        the closed forms found are added to ``collapsed``. With ``running`` (stochastic EM) the
        closed forms use its running averages of the sufficient statistics."""
        values = dict(values)
        cache: dict = {} if running is None else {"running": running}
        for rule in ORDER:
            for name in problem.names:
                if problem.rules[name] == rule:
                    values[name] = update(rule, name, problem.uses[name], values, weights, problem.priors.get(name), self.reg_covar, cache)
        if collapsed is not None:
            collapsed.update(cache.get("collapsed", {}))
        gradient = [n for n in problem.names if problem.rules[n] == "gradient"]
        if gradient:
            values = self._gradient_m_step(problem, values, weights, gradient)
        return values

    def _expected_log_joint(self, problem: _Problem, values: dict, weights: dict, names: set[str]) -> torch.Tensor:
        out = torch.zeros(())
        for factor in self._factors(problem, values, only=names):
            weight = weights[factor.site]
            if not factor.scope:
                out = out + total(factor, problem.layout.plates)
                continue
            term = torch.where(weight > 0, weight * factor.log_prob, torch.zeros(()))
            out = out + term.sum()
        return out

    def _gradient_m_step(self, problem: _Problem, values: dict, weights: dict, names: list[str]) -> dict:
        """Generalised EM: L-BFGS on Q over the unconstrained globals ``names``; kept only if Q
        increased."""
        transforms = {n: transform_to(problem.constraints[n]) for n in names}
        free = {n: transforms[n].inv(values[n]).detach().clone().requires_grad_(True) for n in names}
        names_set = set(names)

        def objective() -> torch.Tensor:
            current = dict(values)
            current.update({n: transforms[n](u) for n, u in free.items()})
            return self._expected_log_joint(problem, current, weights, names_set)

        with torch.enable_grad():
            before = float(objective().detach())
            optimizer = torch.optim.LBFGS(
                list(free.values()), lr=1.0, max_iter=self.gradient_steps, line_search_fn="strong_wolfe",
                tolerance_grad=1e-10, tolerance_change=1e-12, history_size=10,
            )

            def closure() -> torch.Tensor:
                optimizer.zero_grad()
                loss = -objective()
                loss.backward()
                return loss

            optimizer.step(closure)
            after = float(objective().detach())
        if not (after >= before) or not math.isfinite(after):
            return values
        out = dict(values)
        out.update({n: transforms[n](u).detach() for n, u in free.items()})
        return out

    # ---------------------------------------------------------------------------------------
    # initialisation

    def _initial_values(self, problem: _Problem, program_values: dict, restart: int, mode: str) -> dict[str, torch.Tensor]:
        """Start ``restart`` of kind ``mode``; ``init_params`` apply to the first start only."""
        values = dict(program_values)
        for name in problem.latents:  # a prior draw breaks the symmetry of exchangeable components
            fn = problem.layout.trace.nodes[name]["fn"]
            torch.manual_seed(int(self.seed) + restart)
            values[name] = fn.sample().detach()
        given = self.init_params if restart == 0 else None
        if set(given or ()) >= set(problem.names):
            mode = "program"  # every global is given: nothing to seed
        mixture = _mixture_rows(problem) if mode != "program" else None
        if mode == "auto":
            mode = "kmeans++" if mixture is not None else "program"
        if mode in ("kmeans++", "random"):
            if mixture is None:
                if restart > 0:
                    return values  # a later start of a program that is not a mixture: its own start
                raise ValueError(
                    f"EM: init={mode!r} needs a mixture (one discrete latent per datum with observed children); "
                    "use init='program'"
                )
            latent, data = mixture
            rng = np.random.default_rng(int(self.seed) + restart)
            rows = to_numpy(data)
            labels = kmeans(rows, latent.cardinality, rng) if mode == "kmeans++" else random_labels(rows.shape[0], latent.cardinality, rng)
            weights = _hard_weights(problem, latent, torch.as_tensor(labels))
            try:
                values = self._m_step(problem, values, weights)
            except NonFiniteStep as fault:
                raise EngineFailure(f"em: {fault.what} at the {mode} start; {fault.detail}") from None
        for name, value in (given or {}).items():
            if name not in values:
                raise ValueError(f"EM: init_params names {name!r}, which is not a param site or continuous global latent ({sorted(values)})")
            values[name] = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value, dtype=values[name].dtype).reshape(values[name].shape)
        return values

    # ---------------------------------------------------------------------------------------

    def _fit(self, problem: _Problem, values: dict[str, torch.Tensor], checkpoint: Optional[Section] = None) -> Progress[EMState]:
        state = self._e_step(problem, values)
        objective = "log_joint" if problem.latents else "log_likelihood"

        def step(current: EMState) -> tuple[EMState, float]:
            collapsed: dict = {}
            new_values = self._m_step(problem, current.values, current.posterior.weights, collapsed)
            new_state = replace(self._e_step(problem, new_values, current.history), collapsed=collapsed)
            return new_state, new_state.log_joint

        return iterate(
            step, state, num_steps=self.num_steps, tol=self.tol, progress=self.progress, name=self.name, objective=objective, warn=False,
            checkpoint=checkpoint,
        )

    def run(self, model: Callable, *args: Any, **kwargs: Any) -> Result:
        start = time.perf_counter()
        structure = self._structure(model, args, kwargs)
        reason = _blocking(structure)
        if reason:
            from ppgen.errors import EngineNotApplicable

            raise EngineNotApplicable(f"engine 'em' does not apply to {structure.name}: {reason}")
        args, kwargs = to_backend(args, "pyro"), to_backend(kwargs, "pyro")
        if self.subsample_size is not None:
            data_plates = {p for site in structure.observed.values() for p in site.plates}
            if not data_plates:
                raise ValueError("EM: subsample_size needs a plate holding observed data; the program has none")
            plate = max(data_plates, key=lambda name: structure.plates[name].size)
            if self.subsample_size < structure.plates[plate].size:
                return self._run_stochastic(model, args, kwargs, structure, plate, start)
        checkpoint = Checkpoint.for_engine(self, model, args, kwargs)
        with use_backend("pyro"), torch_precision(enabled=structure.float64), torch.random.fork_rng(), pyro.get_param_store().scope(), torch.no_grad(), quiet_validation(), small_ops():
            torch.manual_seed(self.seed)
            problem, program_values = self._setup(model, args, kwargs, structure)
            differ = _mixture_rows(problem) is not None or bool(problem.latents)
            count, until_agree = resolve_restarts(self.num_restarts, differ, MAX_STARTS)
            record = StartRecord()
            for restart, kind in enumerate(start_kinds(self.init, count)):
                section = checkpoint.section(f"start {restart}") if checkpoint is not None else None
                progress = self._fit(problem, self._initial_values(problem, program_values, restart, kind), section)
                bound = progress.state.log_joint
                record.add(kind, bound, progress)
                if progress.interrupted or (until_agree and record.agree(max(self.tol, 1e-6) * max(1.0, abs(bound)), MIN_AGREEING_STARTS)):
                    break
            best: Progress[EMState] = record.best
            estimate = best.state.values
            final = problem.layout.with_factors(self._factors(problem, estimate))
            final.program = problem.program(estimate)
            posterior = exact_posterior(final, marginals=True, map_estimate=True)
        marginals = {n: to_numpy(p) for n, p in posterior.marginals.items()}
        symmetric = symmetric_sites(marginals)
        if symmetric:
            warn_symmetric("em", symmetric)
        collapsed = best.state.collapsed
        if collapsed:
            _warn_collapsed(collapsed, self.reg_covar)
        if self.tol > 0 and not best.converged and not best.interrupted:
            warn_unconverged("em", self.tol, self.num_steps)
        history = np.asarray(best.state.history[1:], dtype=np.float64).reshape(-1, 2)
        traces = {"log_likelihood": history[:, 0]}
        if problem.latents:
            traces["log_joint"] = history[:, 1]
        params = {n: to_numpy(v) for n, v in estimate.items()}
        map_estimate = {n: params[n] for n in problem.latents}
        map_estimate.update({n: to_numpy(v) for n, v in posterior.map_values.items()})
        log_likelihood = best.state.log_likelihood
        return Result(
            engine=self.name,
            params=params,
            marginals=marginals,
            map_estimate=map_estimate,
            log_evidence=None if problem.latents else Estimate(log_likelihood, 0.0, "exact"),
            traces=traces,
            converged=best.converged and not symmetric,
            num_iterations=best.num_iterations,
            interrupted=progress.interrupted,
            diagnostics={
                "m_step": {n: problem.reasons[n] for n in problem.names},
                "e_step": posterior.method,
                "evaluator": "exponential-family" if problem.fast else "traced",
                "log_likelihood": log_likelihood,
                "log_joint": best.state.log_joint,
                **record.diagnostics(),
                "symmetric": symmetric,
                "collapsed": {name: components for name, (_, components, _) in collapsed.items()},
            },
            seconds=time.perf_counter() - start,
        )


    # ---------------------------------------------------------------------------------------
    # stochastic (online) EM

    def _run_stochastic(self, model: Callable, args: tuple, kwargs: dict, structure: ModelStructure, plate: str, start: float) -> Result:
        """``num_steps`` minibatch steps of online EM per start (module docstring); the start
        with the highest full-data log p(x; θ) (or log joint) is kept."""
        size = structure.plates[plate].size
        batch = self.subsample_size
        if not any(isinstance(a, torch.Tensor) and a.dim() >= 1 and a.shape[0] == size for a in list(args) + list(kwargs.values())):
            raise ValueError(f"EM: no argument has plate {plate!r}'s size {size} as its leading dimension to subsample")

        def sliced(index: torch.Tensor) -> tuple[tuple, dict]:
            cut = lambda v: v[index] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == size else v  # noqa: E731
            return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}

        with use_backend("pyro"), torch_precision(enabled=structure.float64), torch.random.fork_rng(), pyro.get_param_store().scope(), torch.no_grad(), quiet_validation(), small_ops():
            torch.manual_seed(self.seed)
            order = EpochOrder(size)  # the epoch's permutation, a minibatch at a time (no array of size N)
            first, program_values = self._setup(model, *sliced(order.batch(0, batch)), structure)
            gradient = [n for n in first.names if first.rules[n] == "gradient"]
            if gradient:
                raise ValueError(
                    f"EM: subsample_size needs closed-form M-steps; {gradient[0]!r} takes gradient steps "
                    f"({first.reasons[gradient[0]]}); use batch EM or svi"
                )
            centres = {name: site.cache["centre"] for name, site in first.site_models.items() if "centre" in site.cache}
            per_epoch = size // batch

            def minibatch(step: int) -> _Problem:
                position = step % per_epoch
                if position == 0 and step > 0:
                    order.new_epoch()
                index = order.batch(position, batch)
                return first if step == 0 else self._setup(model, *sliced(index), structure, centres)[0]

            differ = _mixture_rows(first) is not None or bool(first.latents)
            count, until_agree = resolve_restarts(self.num_restarts, differ, MAX_STARTS)
            record = StartRecord()
            for restart, kind in enumerate(start_kinds(self.init, count)):
                values = self._initial_values(first, program_values, restart, kind)
                running = _RunningStatistics(size / batch)
                objectives: list[float] = []
                collapsed: dict = {}

                def step(current: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
                    problem = minibatch(len(objectives))
                    state = self._e_step(problem, current)
                    running.step_size = (len(objectives) + 2) ** -_STEP_SIZE_EXPONENT
                    collapsed.clear()
                    new = self._m_step(problem, current, state.posterior.weights, collapsed, running)
                    objectives.append(state.log_likelihood * size / batch)
                    return new, objectives[-1]

                training_start = time.perf_counter()
                progress = iterate(step, values, num_steps=self.num_steps, tol=0.0, progress=self.progress, name=self.name, objective="log_likelihood", warn=False)
                pass_start = time.perf_counter()
                log_likelihood, log_prior = self._streamed_log_likelihood(model, structure, progress.state, size, batch, sliced, centres)
                seconds = {"training_seconds": pass_start - training_start, "full_pass_seconds": time.perf_counter() - pass_start}
                record.add(kind, log_likelihood + log_prior, (progress, log_likelihood, log_prior, dict(collapsed), seconds))
                if progress.interrupted or (until_agree and record.agree(1e-3 * max(1.0, abs(log_likelihood)), MIN_AGREEING_STARTS)):
                    break
            progress, log_likelihood, log_prior, collapsed, seconds = record.best
        if collapsed:
            _warn_collapsed(collapsed, self.reg_covar)
        estimate = progress.state
        return Result(
            engine=self.name,
            params={n: to_numpy(v) for n, v in estimate.items()},
            map_estimate={n: to_numpy(estimate[n]) for n in first.latents},
            log_evidence=None if first.latents else Estimate(log_likelihood, 0.0, "exact"),
            traces={"log_likelihood": np.asarray(progress.objectives, dtype=np.float64)},
            converged=None,  # a fixed budget of stochastic steps
            num_iterations=progress.num_iterations,
            interrupted=progress.interrupted,
            diagnostics={
                "m_step": {n: first.reasons[n] for n in first.names},
                "subsample_size": batch,
                "subsample_plate": plate,
                "step_sizes": f"(k + 2)^-{_STEP_SIZE_EXPONENT}",
                "log_likelihood": log_likelihood,
                "log_joint": log_likelihood + log_prior,
                **seconds,  # the steps, and the final streamed pass over the data (in chunks)
                **record.diagnostics(),
                "collapsed": {name: components for name, (_, components, _) in collapsed.items()},
            },
            seconds=time.perf_counter() - start,
        )

    def _streamed_log_likelihood(
        self, model: Callable, structure: ModelStructure, values: dict, size: int, batch: int, sliced: Callable, centres: dict
    ) -> tuple[float, float]:
        """log p(x; θ) summed over consecutive chunks of max(``batch``, 2^16) data (memory
        bounded by the chunk, constant in N; a chunk this size keeps the per-chunk set-up
        small against the work), and log p(θ) of the global latents (once)."""
        log_likelihood, log_prior = 0.0, 0.0
        chunk = max(batch, _PASS_CHUNK)
        for lo in range(0, size, chunk):
            problem = self._setup(model, *sliced(torch.arange(lo, min(lo + chunk, size))), structure, centres)[0]
            state = self._e_step(problem, values)
            log_likelihood += state.log_likelihood
            log_prior = state.log_joint - state.log_likelihood
        return log_likelihood, log_prior


_PASS_CHUNK = 2**16  # data per chunk of the final streamed log-likelihood
_STEP_SIZE_EXPONENT = 0.6  # Cappé & Moulines: γ_k = (k + 2)^-κ, κ in (1/2, 1]


class _RunningStatistics:
    """Online EM's running averages of the full-data sufficient statistics, one per closed-form
    update: s ← s + γ ((N / B) S − s), starting at the first minibatch's (N / B) S."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.step_size = 1.0
        self.sums: dict[tuple, torch.Tensor] = {}

    def __call__(self, key: tuple, sums: torch.Tensor) -> torch.Tensor:
        estimate = sums * self.scale
        previous = self.sums.get(key)
        self.sums[key] = estimate if previous is None else previous + self.step_size * (estimate - previous)
        return self.sums[key]


# --------------------------------------------------------------------------------------------
# helpers


def _warn_collapsed(collapsed: dict[str, tuple[list[str], list[tuple[int, ...]], list[float]]], reg_covar: float) -> None:
    """One :class:`ConvergenceWarning` naming every collapsed component, at the user's call."""
    described = []
    for name, (sites, components, masses) in collapsed.items():
        each = ", ".join(f"{name}{list(c)} (responsibility of {m:.3g} data)" for c, m in zip(components, masses))
        described.append(f"site {', '.join(repr(s) for s in sites)}: {each}")
    warnings.warn(
        f"em: component(s) collapsed (less than one datum's responsibility, or a variance at the reg_covar floor): "
        f"{'; '.join(described)}; they are regularised by reg_covar={reg_covar:g} (in the data's squared units). "
        "Use fewer components, a larger reg_covar, or rescaled data",
        ConvergenceWarning,
        stacklevel=user_stacklevel(),
    )


def _dependencies(structure: ModelStructure, globals_: set[str]) -> dict[str, set[str]]:
    """Site -> the globals it depends on, directly or through deterministic sites."""
    memo: dict[str, set[str]] = {}

    def visit(name: str, seen: frozenset = frozenset()) -> set[str]:
        if name in memo:
            return memo[name]
        out: set[str] = set()
        site = structure.sites.get(name)
        for parent in site.parents if site else ():
            if parent in globals_:
                out.add(parent)
            elif parent in structure.sites and structure.sites[parent].kind == "deterministic" and parent not in seen:
                out |= visit(parent, seen | {name})
        memo[name] = out
        return out

    return {name: visit(name) for name in structure.sites}


def _mixture_rows(problem: _Problem):
    """(latent, data rows (n, d)) when the program is a mixture: exactly one enumerated latent,
    in plates, whose observed children sit in (at least) its plates."""
    layout = problem.layout
    if len(layout.latents) != 1:
        return None
    latent = next(iter(layout.latents.values()))
    if not latent.plates:
        return None
    count = int(np.prod(latent.shape))
    columns = []
    for factor in layout.factors:
        site = layout.trace.nodes[factor.site]
        if factor.scope != (latent.name,) or not site["is_observed"] or factor.site in problem.latents:
            continue
        value = site["value"]
        if value.numel() % count:
            return None
        columns.append(value.reshape(count, -1).to(torch.get_default_dtype()))
    if not columns:
        return None
    return latent, torch.cat(columns, -1)


def _hard_weights(problem: _Problem, latent, assignment: torch.Tensor) -> dict[str, torch.Tensor]:
    """E-step weights of a hard assignment, in every factor's layout."""
    layout = problem.layout
    plates = layout.plates
    batch_dims = sorted(plates[n][0] for n in latent.plates)
    batch_shape = tuple(plates[n][1] for n in sorted(latent.plates, key=lambda n: plates[n][0]))
    onehot = torch.nn.functional.one_hot(assignment, latent.cardinality).to(torch.get_default_dtype())
    onehot = onehot.reshape(batch_shape + (latent.cardinality,))
    weights = {}
    for factor in layout.factors:
        if factor.scope == (latent.name,):
            weights[factor.site] = _from_chain_layout(onehot, factor, [latent.name], batch_dims)
        else:
            weights[factor.site] = torch.ones_like(factor.log_prob)
    return weights
