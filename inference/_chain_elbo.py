"""The ELBO of a Markov-chain program whose guide has closed-form Gaussian marginals (a
diffusion program with its noising process), estimated from sampled steps.

The guide q(x_{1:T} | x_0) is a Gaussian chain exposing q(x_t | x_0) (``marginal``) and
q(x_{t−1} | x_t, x_0) (``posterior``); the model's chain is x_T → … → x_1 → x_0 with Gaussian
steps p_θ(x_{t−1} | x_t). The ELBO splits into T + 1 terms (Sohl-Dickstein et al. 2015; Ho et al.
2020),

    ELBO = −KL(q(x_T | x_0) ‖ p(x_T)) + Σ_{t=1}^T L_t,
    L_1 = E_{q(x_1 | x_0)} log p_θ(x_0 | x_1),
    L_t = −E_{q(x_t | x_0)} KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)),   t ≥ 2,

each KL between Gaussians in closed form. A gradient step draws, for each datum x_i of the
minibatch, its own step t_i ~ p (uniform, or importance-weighted by the terms' past sizes) and
x_{t_i} ~ q(x_{t_i} | x_i), and uses Σ_i [L̂_{t_i}(x_i) / p(t_i) − KL_T(x_i)], an unbiased estimate
of the ELBO that costs one step of the model instead of T. How the step is run depends on how the
program writes its chain:

- declared with :func:`ppgen.chain` (``step(x_t, t)`` a function of the state and the step): the
  step is called once, on the whole minibatch, with the tensor of the data's steps t_i
  (:func:`ppgen.primitives.chain_steps`), as a plain training loop calls its network once with a
  per-row t. The data's steps are stratified over 1..T (:meth:`ChainELBO.draw_steps` with one
  level per datum);
- a plain ``for t in ppgen.markov(...)`` loop, whose site names depend on t so it can only run at
  one t at a time: its loop runs one iteration (:func:`ppgen.primitives.markov_window`), with the
  chain's first site x_T set to the drawn x_t, once per distinct t on the data holding it; the
  data's steps are dealt over K levels (``num_step_groups``, default :data:`NUM_STEP_GROUPS`), so
  a step costs K short runs whatever the batch.

Which of the two a program is, is read from its run (verify-then-use): the first estimate runs it
with :func:`~ppgen.primitives.chain_steps` active, and a site marked as the declared chain's step
means the program declared it.
``weighting="simple"`` trains on Ho et al.'s L_simple instead: each KL_t reweighted to
α_t (1 − ᾱ_t) / β_t² · ‖μ̃_t − μ_θ‖², which is ‖ε − ε_θ(x_t, t)‖² for the ε-parametrised mean; the
objective it reports is still the step's ELBO estimate. ``loss`` (the final estimate, and
``score``) sums all T terms, one draw of x_t per term.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from ppgen.primitives import CHAIN_SITE, chain_steps, markov_window

from ._distributed import GlobalBatchNoise, draw_for_batch, flag_local_draws

WEIGHTINGS = ("elbo", "simple")
STEP_SAMPLINGS = ("uniform", "importance")
#: Distinct steps t per gradient step by default for a chain written as a ``markov`` loop: each
#: costs one run of the program's step (a declared :func:`ppgen.chain` draws one t per datum).
NUM_STEP_GROUPS = 8
#: Squared terms kept per step for importance sampling, and the uniform share mixed into p_t
#: (Nichol & Dhariwal 2021's values).
HISTORY = 10
UNIFORM_MIX = 1e-3


def _normal(fn: Any, site: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc, scale) of a Normal site (possibly made Independent)."""
    base = fn
    while hasattr(base, "base_dist"):
        base = base.base_dist
    if type(base).__name__ != "Normal":
        raise ValueError(f"svi: the chain's step {site!r} must be a Normal distribution to use the closed-form ELBO, got {type(base).__name__}")
    return base.loc, base.scale


def _kl_normal(loc_q: torch.Tensor, scale_q: torch.Tensor, loc_p: torch.Tensor, scale_p: torch.Tensor) -> torch.Tensor:
    """KL(N(loc_q, scale_q²) ‖ N(loc_p, scale_p²)) summed over the last (event) dimension."""
    ratio = (scale_q / scale_p) ** 2
    return 0.5 * (ratio + ((loc_q - loc_p) / scale_p) ** 2 - 1 - torch.log(ratio)).sum(-1)


class _StartAt(Messenger):
    """Fixes the value of site ``name`` (the chain's first site) to ``value``."""

    def __init__(self, name: str, value: torch.Tensor) -> None:
        super().__init__()
        self.name, self.value = name, value

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] == self.name:
            msg["value"] = self.value
            msg["done"] = True


class ChainELBO:
    """Step-sampled ELBO for a guide with closed-form marginals (see the module docstring).

    ``chain`` is the bound noising process (``chain.chain`` lists the site names x_0 … x_T and
    ``chain.data`` the data argument). The interface is a Pyro ELBO's: ``loss`` and
    ``loss_and_grads``.

    Parameters
    ----------
    weighting : ``"elbo"`` (train on the bound) or ``"simple"`` (Ho et al.'s L_simple).
    num_particles : independent draws of the data's steps per gradient estimate.
    step_sampling : ``"uniform"`` (t ~ U{1..T}) or ``"importance"`` (t ~ p_t ∝ √E[L_t²] from the
        last :data:`HISTORY` values of each term, uniform until every t has them; Nichol &
        Dhariwal 2021), each term weighted by 1 / p_t.
    num_step_groups : K, the most distinct steps per gradient step (see :meth:`draw_steps`);
        None (the default): one per datum for a chain declared with :func:`ppgen.chain` (its
        step runs once whatever K), :data:`NUM_STEP_GROUPS` for a ``markov`` loop (one run of
        the program's step per distinct t).
    """

    def __init__(
        self, chain: Any, weighting: str = "elbo", num_particles: int = 1, step_sampling: str = "uniform",
        num_step_groups: Optional[int] = None,
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"SVI: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if step_sampling not in STEP_SAMPLINGS:
            raise ValueError(f"SVI: step_sampling must be one of {STEP_SAMPLINGS}, got {step_sampling!r}")
        if num_step_groups is not None and (isinstance(num_step_groups, bool) or not isinstance(num_step_groups, int) or num_step_groups < 1):
            raise ValueError(f"SVI: num_step_groups must be a positive integer or None, got {num_step_groups!r}")
        self.chain = chain
        self.weighting = weighting
        self.num_particles = num_particles
        self.step_sampling = step_sampling
        self.num_step_groups = num_step_groups
        # under torch.distributed (set by svi): the rank's rows of each step's global batch
        self.noise: Optional[GlobalBatchNoise] = None
        T = chain.num_timesteps
        # the last HISTORY squared terms per step (importance sampling), and how many are filled
        self._squares = torch.zeros(T, HISTORY, dtype=torch.float64)
        self._filled = torch.zeros(T, dtype=torch.long)
        self._signature = None
        self._declared: Optional[bool] = None  # the program declares its chain (ppgen.chain); None: not yet known
        self._coefficients: Optional[torch.Tensor] = None

    # ---- which steps --------------------------------------------------------------------------
    def step_probabilities(self) -> torch.Tensor:
        """p_1, …, p_T (shape (T,)): uniform, or with ``step_sampling="importance"`` and a full
        history p_t ∝ √(mean of the last HISTORY L_t²), mixed with 0.1% uniform so no p_t is 0."""
        T = self.chain.num_timesteps
        uniform = torch.full((T,), 1.0 / T, dtype=torch.float64)
        if self.step_sampling == "uniform" or bool((self._filled < HISTORY).any()):
            return uniform
        weights = self._squares.mean(1).sqrt()
        return (1 - UNIFORM_MIX) * weights / weights.sum() + UNIFORM_MIX * uniform

    def draw_steps(self, num_data: int, num_levels: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step t_i per datum and its probability p(t_i), shapes (num_data,).

        Each datum's level is v_i = (u + k_i / K) mod 1 with one u ~ U[0, 1) and the data dealt
        to K = min(num_levels, T, num_data) levels k_i by a random permutation (``num_levels``
        defaults to ``num_step_groups``, and to :data:`NUM_STEP_GROUPS` when that is None), and t_i is
        v_i through the inverse CDF of p (uniform: t_i = ⌊T v_i⌋ + 1). Every v_i is U[0, 1), so
        every t_i has law p and Σ_i L_{t_i}(x_i) / p(t_i) is unbiased for the data's T-term sum;
        the levels spread the minibatch's steps evenly over 1..T (the low-discrepancy sampler of
        Kingma et al. 2021, on K levels). A ``markov`` loop runs its step once per distinct t.
        """
        probabilities = self.step_probabilities()
        if num_levels is None:
            num_levels = self.num_step_groups if self.num_step_groups is not None else NUM_STEP_GROUPS
        K = min(num_levels, self.chain.num_timesteps, num_data)
        levels = (torch.randperm(num_data) % K).to(torch.float64)
        v = (torch.rand((), dtype=torch.float64) + levels / K) % 1.0
        cdf = torch.cumsum(probabilities, 0)
        steps = torch.searchsorted(cdf, v, right=True).clamp(max=len(cdf) - 1) + 1
        return steps, probabilities[steps - 1]

    def _record(self, t: int, terms: torch.Tensor) -> None:
        """Keep the squares of step t's per-datum terms (the newest HISTORY of them)."""
        values = terms.detach().to(torch.float64).reshape(-1)[-HISTORY:] ** 2
        row = torch.cat([self._squares[t - 1], values])[-HISTORY:]
        self._squares[t - 1] = row
        self._filled[t - 1] = min(int(self._filled[t - 1]) + len(values), HISTORY)

    # ---- the terms ----------------------------------------------------------------------------
    def _arguments(self, model: Callable, args: tuple, kwargs: dict) -> dict:
        import inspect

        # the bound chain's model: ``model`` here may be a wrapper (minibatch scaling)
        if self._signature is None:
            self._signature = inspect.signature(self.chain.model)
        return self._signature.bind(*args, **kwargs).arguments

    def _data(self, model: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        return torch.as_tensor(self._arguments(model, args, kwargs)[self.chain.data])

    def _rows(self, model: Callable, args: tuple, kwargs: dict, rows: torch.Tensor, num_data: int) -> tuple[tuple, dict]:
        """The model's arguments restricted to data ``rows``: every tensor argument whose leading
        dimension is the data plate's size (the data, per-datum labels) is indexed."""
        def pick(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == num_data:
                return value[rows]
            return value

        return tuple(pick(a) for a in args), {k: pick(v) for k, v in kwargs.items()}

    def step_terms(
        self, model: Callable, t: int, x0: torch.Tensor, args: tuple, kwargs: dict, noise: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L̂_t, KL_T, simple_t) at step t for one draw x_t ~ q(x_t | x_0) per datum, each of
        shape (num_data,) and multiplied by the model site's scale (N / B under minibatches);
        ``noise``: the standard normal draws that make x_t (None: drawn here)."""
        T = self.chain.num_timesteps
        names = self.chain.chain
        loc, scale = self.chain.marginal(t, x0)
        x_t = loc + scale * (torch.randn_like(x0) if noise is None else noise)
        # the model's x_{t−1} is never read (only its distribution): set, not drawn, so the step's
        # random numbers are the data's steps and x_t noise alone, whatever the split over ranks
        unread = _StartAt(names[t - 1], x_t) if t > 1 else contextlib.nullcontext()
        with markov_window(T - t, T - t + 1), _StartAt(names[T], x_t), unread, flag_local_draws(self.noise):
            trace = poutine.trace(model).get_trace(*args, **kwargs)
        site = trace.nodes.get(names[t - 1])
        if site is None:
            raise ValueError(
                f"svi: running iteration {T - t} of the program's markov loop did not sample {names[t - 1]!r}; "
                "the closed-form ELBO needs one chain step per iteration of `for t in ppgen.markov(...)`"
            )
        model_loc, model_scale = _normal(site["fn"], names[t - 1])
        weight = site["scale"]
        if t > 1:
            target_loc, target_scale = self.chain.posterior(t, x_t, x0)
            term = -_kl_normal(target_loc, target_scale, model_loc, model_scale)
        else:
            target_loc = x0
            term = site["fn"].log_prob(x0)
        root = trace.nodes[names[T]]
        prior_loc, prior_scale = _normal(root["fn"], names[T])
        marginal_loc, marginal_scale = self.chain.marginal(T, x0)
        prior_kl = _kl_normal(marginal_loc, marginal_scale, prior_loc.expand_as(x0), prior_scale.expand_as(x0))
        beta = self.chain.betas[t - 1].to(x0.dtype)
        a_t = self.chain.alphas_cumprod[t].to(x0.dtype)
        simple = ((target_loc - model_loc) ** 2).sum(-1) * (1 - beta) * (1 - a_t) / beta**2
        return weight * term, weight * prior_kl, weight * simple

    def declares_chain(self, model: Callable, args: tuple, kwargs: dict, x0: torch.Tensor) -> bool:
        """Whether the program declares its chain with :func:`ppgen.chain`: one run with
        :func:`~ppgen.primitives.chain_steps` active (and a one-iteration window, so a
        ``markov``-loop program stays short) samples x_0's site marked as the chain's step."""
        # a markov loop draws its first sites here: the random stream is left as it was
        with torch.random.fork_rng(), torch.no_grad(), markov_window(0, 1), chain_steps(torch.ones(x0.shape[:-1], dtype=torch.long), x0):
            trace = poutine.trace(poutine.block(model, hide_types=["param"])).get_trace(*args, **kwargs)
        site = trace.nodes.get(self.chain.chain[0])
        return site is not None and site["infer"].get(CHAIN_SITE) is not None

    def coefficients(self, dtype: torch.dtype) -> torch.Tensor:
        """Per-step constants of the guide's closed forms, shape (T + 1, 6), row t (row 0 unused):
        q(x_t | x_0) = N(a_t x_0, s_t²) as (a_t, s_t); q(x_{t−1} | x_t, x_0) = N(b_t x_0 + c_t x_t, r_t²)
        as (b_t, c_t, r_t), with r_1 = 1 in place of 0 (the t = 1 term is the likelihood, and a
        unit scale keeps the unused KL and its gradient finite); and the simple loss's weight
        α_t (1 − ᾱ_t) / β_t². Read once from the guide's ``marginal`` and ``posterior`` (affine
        in x_0 and x_t), so a gradient step indexes one table."""
        if self._coefficients is None or self._coefficients.dtype != dtype:
            T = self.chain.num_timesteps
            t = torch.arange(T + 1)
            ones, zeros = torch.ones(T + 1, 1, dtype=dtype), torch.zeros(T + 1, 1, dtype=dtype)
            a, s = self.chain.marginal(t, ones)
            steps = t.clamp(min=1)
            b, r = self.chain.posterior(steps, zeros, ones)
            c, _ = self.chain.posterior(steps, ones, zeros)
            r = torch.where(steps[:, None] == 1, ones, r)
            beta = torch.cat([torch.ones(1, dtype=dtype), self.chain.betas.to(dtype)])[:, None]
            weight = (1 - beta) * (1 - a**2) / beta**2
            self._coefficients = torch.cat([a, s, b, c, r, weight], -1)
        return self._coefficients

    def declared_terms(
        self, model: Callable, steps: torch.Tensor, x0: torch.Tensor, args: tuple, kwargs: dict, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L̂_{t_i}, KL_T, simple_{t_i}) per datum, shapes (num_data,), every datum at its own
        step t_i in one call of the program's declared step (:func:`ppgen.chain`); the same
        terms and site scale as :meth:`step_terms`. Only the training loss carries gradients:
        with ``weighting="simple"`` the ELBO terms (reported, not trained on) are computed
        without, and with ``"elbo"`` the simple terms are not computed (zeros). ``noise``: the
        standard normal draws that make x_{t_i}."""
        names = self.chain.chain
        T = self.chain.num_timesteps
        marginal_loc, marginal_scale, posterior_x0, posterior_xt, posterior_scale, simple_weight = (
            column[..., None] for column in self.coefficients(x0.dtype)[steps].unbind(-1)
        )
        x_t = marginal_loc * x0 + marginal_scale * noise
        with chain_steps(steps, x_t), flag_local_draws(self.noise):
            trace = poutine.trace(model).get_trace(*args, **kwargs)
        site = trace.nodes[names[0]]
        model_loc, model_scale = _normal(site["fn"], names[0])
        weight = site["scale"]
        target_loc = posterior_x0 * x0 + posterior_xt * x_t
        if self.weighting == "simple":
            simple = ((target_loc - model_loc) ** 2).sum(-1) * simple_weight[..., 0]
        else:
            simple = torch.zeros_like(x0[..., 0])
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.weighting == "elbo"):
            kl = _kl_normal(target_loc, posterior_scale, model_loc, model_scale)
            term = torch.where(steps == 1, site["fn"].log_prob(x0), -kl)
            prior_loc, prior_scale = _normal(trace.nodes[names[T]]["fn"], names[T])
            marginal_loc, marginal_scale = self.chain.marginal(T, x0)
            prior_kl = _kl_normal(marginal_loc, marginal_scale, prior_loc.expand_as(x0), prior_scale.expand_as(x0))
        return weight * term, weight * prior_kl, weight * simple

    def _estimate(self, model: Callable, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(ELBO estimate Σ_i L̂_{t_i}(x_i) / p(t_i) − KL_T(x_i), training loss), each datum at its
        own step t_i (:meth:`draw_steps`), averaged over ``num_particles`` draws of the steps."""
        T = self.chain.num_timesteps
        x0 = self._data(model, args, kwargs)
        num_data = x0.shape[0]
        elbo, loss = 0.0, 0.0
        for _ in range(self.num_particles):
            if self._declared is None:
                self._declared = self.declares_chain(model, args, kwargs, x0)
            # each datum's step and the noise of its x_t, drawn for the global batch under torch.distributed
            steps, probabilities, noise = draw_for_batch(
                lambda n: (*self.draw_steps(n, self._levels(n)), torch.randn(n, *x0.shape[1:], dtype=x0.dtype, device=x0.device)),
                num_data, None if self.noise is None else self.noise.shard,
            )
            if self._declared:
                term, prior_kl, simple_t = self.declared_terms(model, steps, x0, args, kwargs, noise)
                if self.step_sampling == "importance":
                    for t in torch.unique(steps).tolist():
                        self._record(t, term[steps == t])
                inverse = (1 / probabilities).to(x0.dtype)
                estimate = (inverse * term - prior_kl).sum()
                simple = (inverse / T * simple_t).sum()
            else:
                estimate, simple = self._grouped_estimate(model, args, kwargs, x0, steps, probabilities, noise)
            elbo = elbo + estimate.detach() / self.num_particles
            loss = loss + (simple if self.weighting == "simple" else -estimate) / self.num_particles
        return elbo, loss

    def _levels(self, num_data: int) -> int:
        """K of :meth:`draw_steps`: ``num_step_groups``, else one per datum for a declared chain
        and :data:`NUM_STEP_GROUPS` for a ``markov`` loop."""
        if self.num_step_groups is not None:
            return self.num_step_groups
        return num_data if self._declared else NUM_STEP_GROUPS

    def _grouped_estimate(
        self, model: Callable, args: tuple, kwargs: dict, x0: torch.Tensor, steps: torch.Tensor, probabilities: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One particle of :meth:`_estimate` for a ``markov``-loop chain: the program's step run
        once per distinct t, on the data holding it."""
        T = self.chain.num_timesteps
        num_data = x0.shape[0]
        estimate, simple = 0.0, 0.0
        for t in torch.unique(steps).tolist():
            rows = (steps == t).nonzero().squeeze(-1)
            sub_args, sub_kwargs = self._rows(model, args, kwargs, rows, num_data)
            term, prior_kl, simple_t = self.step_terms(model, t, x0[rows], sub_args, sub_kwargs, noise[rows])
            if self.step_sampling == "importance":
                self._record(t, term)
            inverse = (1 / probabilities[rows]).to(x0.dtype)
            estimate = estimate + (inverse * term - prior_kl).sum()
            simple = simple + (inverse / T * simple_t).sum()  # unbiased for the mean over t of the simple terms
        return estimate, simple

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        elbo, loss = self._estimate(model, args, kwargs)
        if loss.requires_grad:
            loss.backward()
        return -float(elbo.detach())

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._estimate(model, args, kwargs)[1]

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """−ELBO with all T terms (each at one draw of x_t): a stochastic estimate of the exact bound."""
        with torch.no_grad():
            T = self.chain.num_timesteps
            x0 = self._data(model, args, kwargs)
            total = 0.0
            for t in range(1, T + 1):
                term, prior_kl, _ = self.step_terms(model, t, x0, args, kwargs)
                total += float(term.sum())
            return -(total - float(prior_kl.sum()))


def closed_form_chain(guide: Callable) -> Any:
    """The bound guide's closed-form chain (a noising process), or None: a guide qualifies when
    it exposes Gaussian marginals q(x_t | x_0) and posteriors q(x_{t−1} | x_t, x_0)."""
    chain = getattr(guide, "noising", None)
    if chain is not None and callable(getattr(chain, "marginal", None)) and callable(getattr(chain, "posterior", None)):
        return chain
    return None


