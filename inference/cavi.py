"""Coordinate-ascent variational inference (variational message passing): ``engine="cavi"``.

For a conjugate-exponential program, the mean-field family q(u) = Π_i q_i(u_i) has closed-form
coordinate updates: the optimal factor for latent u_i given the others is

    log q_i*(u_i) = E_{q_{-i}}[log p(x, u)] + const = <η_i, T(u_i)> + const,

in the same exponential family as u_i's prior (Bishop 2006, §10.4; Winn & Bishop 2005). The
program is compiled once into a factor graph (:mod:`ppgen.inference._conjugate`) whose expected
log joint E_q[log p(x, u)] is an exact, multilinear function of the expected statistics
E_q[T(u_i)] and of the categorical probabilities q(z_n = k); its gradient with respect to them is
η_i (respectively the categorical logits). No update equation is written per model: the
conjugate Gaussian mixture, the Bernoulli mixture and the stochastic block model all run
through the same code.

One sweep updates every continuous node, then every categorical node. Each update maximises the
evidence lower bound

    ELBO(q) = E_q[log p(x, u)] + H[q]   (computed exactly)

over one node with the others fixed, so the ELBO never decreases. The exception is a
categorical latent whose elements interact (block memberships z_i, z_j of an edge): there the
joint update of all elements is a natural-gradient step, damped by backtracking until the ELBO
does not decrease.
"""

from __future__ import annotations

import inspect as pyinspect
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import pyro
import torch
from threadpoolctl import threadpool_limits

from ppgen.backend import torch_precision, to_numpy, use_backend
from ppgen.checkpoint import Checkpoint
from ppgen.checkpoint import check_options as check_checkpoint_options
from ppgen.driver import iterate
from ppgen.engine import Engine, missing_data, register
from ppgen.errors import EngineFailure, EngineNotApplicable
from ppgen.results import Estimate, Result
from ppgen.structure import ModelStructure, bind_arguments, inspect

from ._conjugate import ConjugateGraph, Factor, NotConjugate, compile_program, structural_reason
from ._cavi_starts import CategoricalStarts
from ._discrete import small_ops
from ._restarts import (
    INITS,
    Restarts,
    StartRecord,
    check_restart_options,
    resolve_restarts,
    start_kinds,
    symmetric_sites,
    warn_symmetric,
    warn_unconverged,
)
from ._vi import Info, pyro_arguments


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run with one thread in torch and in the native thread pools (BLAS, OpenMP) that
    initialisation callables such as ``spectral_init`` use. The sweeps and a spectral start are
    small operations (q(z) is n × K), and when the cores are shared every operation waits for
    the slower thread (measured on two busy cores: sweeps 10-30x, the spectral start 3x slower
    with two threads). The compiler's probe runs over a large site take the threads back
    (``threads_for``): on the 2000-node block model they take 0.35 s on two idle cores
    against 0.6 s on one, and 0.8 s against 0.7 s when the other core is busy."""
    with small_ops(), threadpool_limits(limits=1):
        yield


@dataclass(frozen=True)
class CAVIState:
    """Natural parameters of each continuous node and probabilities of each categorical node."""

    eta: dict[str, torch.Tensor]
    probs: dict[str, torch.Tensor]
    elbo: float = float("-inf")


class _Updater:
    """Coordinate updates and the ELBO for a compiled graph."""

    def __init__(self, graph: ConjugateGraph) -> None:
        self.graph = graph
        self.factors_of: dict[str, list[Factor]] = {name: [] for name in graph.nodes}
        self.coupled: set[str] = set()
        for factor in graph.factors:
            touched = {p.node for p in factor.parents} | {r.node for r in factor.roles}
            for name in touched:
                self.factors_of[name].append(factor)
            role_nodes = [r.node for r in factor.roles]
            self.coupled |= {n for n in role_nodes if role_nodes.count(n) > 1}
        self.continuous = [n for n, node in graph.nodes.items() if not node.is_categorical]
        self.categorical = [n for n, node in graph.nodes.items() if node.is_categorical]

    # ---- quantities of q ------------------------------------------------------------------
    def stats(self, eta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.continuous:
            expected = self.graph.nodes[name].family.expected_stats(eta[name])
            out[name] = torch.cat([expected, torch.ones(expected.shape[0], 1)], -1)
        return out

    def entropy(self, name: str, eta: dict, probs: dict) -> torch.Tensor:
        node = self.graph.nodes[name]
        if node.is_categorical:
            p = probs[name]
            return -(p * torch.log(p.clamp_min(1e-300))).sum()
        return node.family.entropy(eta[name]).sum()

    def elbo(self, eta: dict, probs: dict) -> float:
        with torch.no_grad():
            value = self.graph.expected_log_joint(self.stats(eta), probs)
            value = value + sum(self.entropy(name, eta, probs) for name in self.graph.nodes)
        return float(value)

    def local_objective(self, name: str, eta: dict, probs: dict) -> float:
        """The terms of the ELBO that depend on node ``name``."""
        with torch.no_grad():
            value = self.graph.expected_log_joint(self.stats(eta), probs, self.factors_of[name])
            return float(value + self.entropy(name, eta, probs))

    # ---- messages ---------------------------------------------------------------------------
    def message(self, name: str, eta: dict, probs: dict) -> torch.Tensor:
        """∂ E_q[log p] / ∂ (E T(u) or q(z)) for node ``name``: its natural parameters."""
        stats = self.stats(eta)
        probs = dict(probs)
        node = self.graph.nodes[name]
        if node.is_categorical:
            variable = probs[name].detach().clone().requires_grad_(True)
            probs[name] = variable
        else:
            variable = stats[name].detach().clone().requires_grad_(True)
            stats[name] = variable
        with torch.enable_grad():
            value = self.graph.expected_log_joint(stats, probs, self.factors_of[name])
            (gradient,) = torch.autograd.grad(value, variable, allow_unused=True)
        if gradient is None:
            gradient = torch.zeros_like(variable)
        return gradient if node.is_categorical else gradient[:, :-1]

    def update_continuous(self, name: str, eta: dict, probs: dict) -> dict:
        new = self.message(name, eta, probs)
        family = self.graph.nodes[name].family
        if not bool(family.valid(new).all()):
            raise EngineFailure(
                f"cavi: the update of {self.graph.nodes[name].sites} left the {family.name} family "
                "(an improper complete conditional); check the priors"
            )
        return {**eta, name: new}

    def update_categorical(self, name: str, eta: dict, probs: dict, damped: bool = False) -> dict:
        logits = self.message(name, eta, probs)
        target = torch.log_softmax(logits, -1)
        if not damped:
            return {**probs, name: target.exp()}
        # elements interact: damped natural-gradient step, backtracking until no decrease
        current = torch.log(probs[name].clamp_min(1e-300))
        before = self.local_objective(name, eta, probs)
        step = 0.5
        for _ in range(30):
            candidate = {**probs, name: torch.softmax((1 - step) * current + step * target, -1)}
            if self.local_objective(name, eta, candidate) >= before - 1e-12 * max(1.0, abs(before)):
                return candidate
            step *= 0.5
        return probs

    def sweep(self, state: CAVIState) -> CAVIState:
        """Update every continuous node, then every categorical node. Nodes whose elements
        interact get the full parallel update first; if the sweep then lowered the ELBO, their
        update is redone as a damped step that cannot (see ``update_categorical``)."""
        eta, probs = state.eta, state.probs
        for name in self.continuous:
            eta = self.update_continuous(name, eta, probs)
        after_continuous = probs
        for name in self.categorical:
            probs = self.update_categorical(name, eta, probs)
        elbo = self.elbo(eta, probs)
        if self.coupled and elbo < state.elbo:
            probs = after_continuous
            for name in self.categorical:
                probs = self.update_categorical(name, eta, probs, damped=name in self.coupled)
            elbo = self.elbo(eta, probs)
        return CAVIState(eta, probs, elbo)

    # ---- initialisation -----------------------------------------------------------------------
    def initial_state(self, probs: dict[str, torch.Tensor]) -> CAVIState:
        """q(z) of every categorical node as given (node -> (num_elements, K)); every continuous
        node at its prior given its parents' q."""
        eta: dict[str, torch.Tensor] = {}
        for name in self.continuous:  # program order: a node's prior parents come before it
            eta[name] = self._prior_message(name, eta, probs)
        return CAVIState(eta, probs, self.elbo(eta, probs))

    def _node_stats(self, name: str, eta: Optional[torch.Tensor]) -> torch.Tensor:
        node = self.graph.nodes[name]
        if eta is None:  # not initialised yet: a point mass at the family's first probe point
            point = tuple(v.expand((node.num_elements,) + v.shape[1:]) for v in node.family.probes()[0])
            expected = node.family.stats(point)
        else:
            expected = node.family.expected_stats(eta)
        return torch.cat([expected, torch.ones(expected.shape[0], 1)], -1)

    def _prior_message(self, name: str, eta: dict, probs: dict) -> torch.Tensor:
        """Natural parameters from the node's own prior factors only, with its parents at their
        current q: the initial q of each continuous node is its prior."""
        node = self.graph.nodes[name]
        own = [f for f in self.graph.factors if f.site in node.sites]
        stats = {other: self._node_stats(other, eta.get(other)) for other in self.continuous}
        variable = stats[name].clone().requires_grad_(True)
        stats[name] = variable
        with torch.enable_grad():
            value = self.graph.expected_log_joint(stats, probs, own)
            (gradient,) = torch.autograd.grad(value, variable, allow_unused=True)
        return gradient[:, :-1]


_INITS = tuple(kind for kind in INITS if kind != "program")


@register
class CAVI(Engine):
    """Coordinate-ascent mean-field VI for conjugate-exponential programs.

    Parameters
    ----------
    num_steps : maximum number of sweeps (each updates every latent once).
    tol : stop when the ELBO changes by at most ``tol * max(1, |ELBO|)`` between sweeps.
    num_samples : draws from the fitted q returned in ``Result.samples``.
    num_restarts : number of starts; the one with the best final ELBO is kept. ``"auto"``: up to
        4 when the program has a categorical latent, stopping once two starts reach the best
        ELBO (within ``max(tol, 1e-6) * |ELBO|``), else 1.
    init : the first start of the categorical latents. ``"auto"`` (each latent's start read from
        the program, see :mod:`~ppgen.inference._cavi_starts`: spectral clustering for a latent
        indexed in pairs, k-means++ on its data for a mixture latent, random otherwise),
        ``"spectral"``, ``"kmeans++"``, ``"random"`` (random hard assignments), or
        ``{site: array of shape (*site_shape, K)}`` (probabilities) / ``{site: callable}``
        called with the model's arguments it names (``spectral_init(adjacency, K)``). Later
        starts: the program's own starts for half, random hard assignments for the rest.
    blocks : join a Normal latent with the Gamma precision its scale depends on into one
        Normal–Gamma factor q(μ, τ) (the conjugate Normal–Gamma prior); ``False`` factorises them.
    seed, progress : random seed (starts, draws) and progress bar.
    checkpoint, checkpoint_every : a file (path) the run's state is saved to every
        ``checkpoint_every`` sweeps, on SIGINT / SIGTERM (the run then returns the state
        reached with ``interrupted=True``) and at the end; the same call again resumes from it
        (see :mod:`ppgen.checkpoint`).

    Returns a :class:`~ppgen.Result` with ``samples`` drawn from q, ``params`` (the variational
    parameters: ``"mu.loc"``, ``"mu.scale"``, ``"pi.concentration"``, ``"z.probs"``, ...),
    ``marginals`` (q(z) of categorical latents), ``log_evidence`` (the final ELBO, a lower
    bound), ``traces["elbo"]`` (of the kept start), ``diagnostics["restarts"]`` (every start's
    final ELBO), ``diagnostics["starts"]`` (their kinds) and ``diagnostics["symmetric"]`` (the
    categorical latents whose q(z) is the same for every element: a symmetric fixed point,
    reported with a :class:`~ppgen.errors.ConvergenceWarning` and ``converged=False``).

    Examples
    --------
    >>> import ppgen
    >>> from ppgen.models.basics import coin
    >>> result = ppgen.infer(coin, [1, 1, 0, 1], engine="cavi")
    >>> [round(float(result.params[k]), 6) for k in ("rho.concentration1", "rho.concentration0")]
    [5.0, 3.0]

    References
    ----------
    Winn & Bishop (2005), Variational message passing, JMLR 6.
    Blei, Kucukelbir & McAuliffe (2017), Variational inference: a review for statisticians.
    """

    name = "cavi"
    tasks = frozenset({"infer", "learn", "score"})
    summary = "coordinate-ascent mean-field VI (conjugate-exponential programs, exact ELBO)"

    def __init__(
        self,
        num_steps: int = 500,
        tol: float = 1e-6,
        num_samples: int = 1000,
        num_restarts: Restarts = "auto",
        init: Union[str, dict[str, Any]] = "auto",
        blocks: bool = True,
        seed: int = 0,
        progress: bool = False,
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        checkpoint_every: int = 10,
    ) -> None:
        check_checkpoint_options("CAVI", checkpoint, checkpoint_every)
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"CAVI: num_steps must be a positive integer, got {num_steps!r}")
        if not tol >= 0:
            raise ValueError(f"CAVI: tol must be >= 0, got {tol!r}")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"CAVI: num_samples must be a positive integer, got {num_samples!r}")
        check_restart_options("CAVI", num_restarts, init, _INITS, mapping=True)
        self.num_steps = num_steps
        self.tol = tol
        self.num_samples = num_samples
        self.num_restarts = num_restarts
        self.init = dict(init) if isinstance(init, dict) else init
        self.blocks = blocks
        self.seed = seed
        self.progress = progress
        self.checkpoint = checkpoint
        self.checkpoint_every = int(checkpoint_every)

    def check(self, structure: ModelStructure) -> Optional[str]:
        return missing_data(structure) or structural_reason(structure)

    def compile(self, model: Callable, args: tuple, kwargs: dict, structure: ModelStructure) -> ConjugateGraph:
        """The program's conjugate factor graph (raises :class:`NotConjugate` with the reason).
        Call inside the Pyro backend with float64 precision."""
        return compile_program(model, args, kwargs, structure, self.blocks, self.seed)

    def run(self, model: Callable, *args: Any, **kwargs: Any) -> Result:
        start = time.perf_counter()
        structure = inspect(model, *args, **kwargs)
        args, kwargs = pyro_arguments(args, kwargs)
        with use_backend("pyro"), torch_precision(), _one_thread(), torch.random.fork_rng(), pyro.get_param_store().scope():
            torch.manual_seed(self.seed)
            try:
                graph = self.compile(model, args, kwargs, structure)
            except NotConjugate as error:
                raise EngineNotApplicable(f"engine 'cavi' does not apply to {structure.name}: {error}") from None
            compiled = time.perf_counter()
            updater = _Updater(graph)
            checkpoint = Checkpoint.for_engine(self, model, args, kwargs)
            record, starts_seconds, interrupted = self._restarts(graph, updater, model, args, kwargs, checkpoint)
            progress = record.best
            swept = time.perf_counter()
            result = self._result(graph, progress.state, progress, structure)
        symmetric = symmetric_sites(result["marginals"])
        if symmetric:
            warn_symmetric("cavi", symmetric)
        if self.tol > 0 and not progress.converged and not progress.interrupted:
            warn_unconverged("cavi", self.tol, self.num_steps)
        diagnostics = {
            "nodes": Info({name: (node.family.name if node.family else f"Categorical({node.cardinality})") for name, node in graph.nodes.items()}),
            "num_factors": len(graph.factors),
            "program_runs": graph.program_runs,
            "compile_seconds": compiled - start,
            "init_seconds": starts_seconds,
            "sweep_seconds": swept - compiled - starts_seconds,
            **record.diagnostics(),
            "symmetric": symmetric,
        }
        result["converged"] = progress.converged and not symmetric
        result["interrupted"] = interrupted
        return Result(**{**result, "diagnostics": diagnostics, "seconds": time.perf_counter() - start})

    def _restarts(
        self, graph: ConjugateGraph, updater: _Updater, model: Callable, args: tuple, kwargs: dict, checkpoint: Optional[Checkpoint] = None
    ) -> tuple[StartRecord, float, bool]:
        """Run every start to convergence; the record of their final ELBOs, the best run, the
        time spent making starts, and whether the last start was interrupted."""
        count, until_agree = resolve_restarts(self.num_restarts, bool(updater.categorical))
        first = "given" if isinstance(self.init, dict) else self.init
        starts = CategoricalStarts(graph)
        if first in ("spectral", "kmeans++") and not any(first in starts.kinds(n) for n in updater.categorical):
            raise ValueError(f"CAVI: init={first!r} applies to no categorical latent of this program; use 'auto' or 'random'")
        given = self._initial_probabilities(graph, model, args, kwargs) if first == "given" else {}
        record, seconds = StartRecord(), 0.0

        def step(current: CAVIState) -> tuple[CAVIState, float]:
            new = updater.sweep(current)
            return new, new.elbo

        for index, kind in enumerate(start_kinds(first, count)):
            began = time.perf_counter()
            probs = {}
            for name in updater.categorical:
                site = graph.nodes[name].sites[0]
                if kind == "given" and site in given:
                    probs[name] = given[site]
                else:
                    value = starts.probabilities(name, starts.derived(name) if kind in ("auto", "given") else kind, self.seed + index)
                    probs[name] = torch.as_tensor(value, dtype=torch.get_default_dtype())
            state = updater.initial_state(probs)
            seconds += time.perf_counter() - began
            progress = iterate(
                step, state, num_steps=self.num_steps, tol=self.tol, progress=self.progress, name="cavi", objective="elbo", warn=False,
                checkpoint=checkpoint.section(f"start {index}") if checkpoint is not None else None,
            )
            record.add(kind, progress.state.elbo, progress)
            if progress.interrupted or (until_agree and record.agree(max(self.tol, 1e-6) * max(1.0, abs(progress.state.elbo)))):
                break
        return record, seconds, progress.interrupted

    def _initial_probabilities(self, graph: ConjugateGraph, model: Callable, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        """``init`` by site, callables evaluated on the model's arguments (by parameter name),
        as probabilities of shape (num_elements, K)."""
        categorical = {n.sites[0]: n for n in graph.nodes.values() if n.is_categorical}
        unknown = set(self.init) - set(categorical)
        if unknown:
            raise ValueError(f"CAVI: init names {sorted(unknown)}, which are not categorical latent sites ({sorted(categorical)})")
        out = {}
        for site, value in self.init.items():
            if callable(value):
                bound = to_numpy(bind_arguments(model, args, kwargs))
                accepted = pyinspect.signature(value).parameters
                takes_all = any(p.kind == p.VAR_KEYWORD for p in accepted.values())
                value = value(**{k: v for k, v in bound.items() if takes_all or k in accepted})
            node = categorical[site]
            given = torch.as_tensor(np.asarray(to_numpy(value)), dtype=torch.get_default_dtype())
            expected = node.value_shapes[0] + (node.cardinality,)
            if tuple(given.shape) != expected:
                raise ValueError(f"cavi: init[{site!r}] must have shape {expected} (probabilities), got {tuple(given.shape)}")
            out[site] = (given / given.sum(-1, keepdim=True)).reshape(node.num_elements, node.cardinality)
        return out

    def _result(self, graph: ConjugateGraph, state: CAVIState, progress: Any, structure: ModelStructure) -> dict:
        samples, params, marginals = {}, {}, {}
        for name, node in graph.nodes.items():
            if node.is_categorical:
                probs = state.probs[name]
                site = node.sites[0]
                shape = node.value_shapes[0]
                params[f"{site}.probs"] = to_numpy(probs.reshape(shape + (node.cardinality,)))
                marginals[site] = params[f"{site}.probs"]
                draws = torch.distributions.Categorical(probs).sample((self.num_samples,))
                samples[site] = to_numpy(node.support[draws].reshape((self.num_samples,) + shape))
                continue
            family = node.family
            element_shape = node.element_shape
            for key, value in family.readable(state.eta[name]).items():
                params[key] = to_numpy(value.reshape(element_shape + tuple(value.shape[1:])))
            draws = family.sample(state.eta[name], self.num_samples)
            for site, value in node.values(draws).items():
                samples[site] = to_numpy(value)
        return dict(
            engine=self.name,
            samples=samples,
            params=params,
            marginals=marginals,
            log_evidence=Estimate(float(state.elbo), 0.0, "lower-bound"),
            traces={"elbo": np.asarray(progress.objectives)},
            converged=progress.converged,
            num_iterations=progress.num_iterations,
        )
