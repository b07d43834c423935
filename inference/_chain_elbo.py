"""The ELBO of a Markov-chain program whose guide has closed-form Gaussian marginals (a
diffusion program with its noising process), estimated from sampled steps.

The guide q(x_{1:T} | x_0) is a Gaussian chain exposing q(x_t | x_0) (``marginal``) and
q(x_{t−1} | x_t, x_0) (``posterior``); the model's chain is x_T → … → x_1 → x_0 with Gaussian
steps p_θ(x_{t−1} | x_t). The ELBO splits into T + 1 terms (Sohl-Dickstein et al. 2015; Ho et al.
2020),

    ELBO = −KL(q(x_T | x_0) ‖ p(x_T)) + Σ_{t=1}^T L_t,
    L_1 = E_{q(x_1 | x_0)} log p_θ(x_0 | x_1),
    L_t = −E_{q(x_t | x_0)} KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)),   t ≥ 2,

each KL between Gaussians in closed form. A gradient step draws one t ~ U{1..T} and x_t ~ q(x_t | x_0)
and uses T · L̂_t − KL_T, an unbiased estimate of the ELBO that costs one step of the model
instead of T: the model's ``markov`` loop runs that one iteration only
(:func:`ppgen.primitives.markov_window`), with the chain's first site x_T set to the drawn x_t.
``weighting="simple"`` trains on Ho et al.'s L_simple instead: each KL_t reweighted to
α_t (1 − ᾱ_t) / β_t² · ‖μ̃_t − μ_θ‖², which is ‖ε − ε_θ(x_t, t)‖² for the ε-parametrised mean; the
objective it reports is still the step's ELBO estimate. ``loss`` (the final estimate, and
``score``) sums all T terms, one draw of x_t per term.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from ppgen.primitives import markov_window

WEIGHTINGS = ("elbo", "simple")


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
    """

    def __init__(self, chain: Any, weighting: str = "elbo", num_particles: int = 1) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"SVI: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.chain = chain
        self.weighting = weighting
        self.num_particles = num_particles

    def _data(self, model: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        import inspect

        # the bound chain's model: ``model`` here may be a wrapper (minibatch scaling)
        arguments = inspect.signature(self.chain.model).bind(*args, **kwargs).arguments
        return torch.as_tensor(arguments[self.chain.data])

    def step_terms(self, model: Callable, t: int, x0: torch.Tensor, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L̂_t, KL_T, simple_t) at step t for one draw x_t ~ q(x_t | x_0), each summed over the
        data with the model site's scale (N / B under minibatches)."""
        T = self.chain.num_timesteps
        names = self.chain.chain
        loc, scale = self.chain.marginal(t, x0)
        x_t = loc + scale * torch.randn_like(x0)
        with markov_window(T - t, T - t + 1), _StartAt(names[T], x_t):
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
        return (weight * term).sum(), (weight * prior_kl).sum(), (weight * simple).sum()

    def _estimate(self, model: Callable, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(ELBO estimate T · L̂_t − KL_T, training loss) averaged over ``num_particles`` steps t."""
        T = self.chain.num_timesteps
        x0 = self._data(model, args, kwargs)
        elbo, loss = 0.0, 0.0
        for _ in range(self.num_particles):
            t = int(torch.randint(1, T + 1, ()))
            term, prior_kl, simple = self.step_terms(model, t, x0, args, kwargs)
            estimate = T * term - prior_kl
            elbo = elbo + estimate.detach() / self.num_particles
            loss = loss + (simple if self.weighting == "simple" else -estimate) / self.num_particles
        return elbo, loss

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
                total += float(term)
            return -(total - float(prior_kl))


def closed_form_chain(guide: Callable) -> Any:
    """The bound guide's closed-form chain (a noising process), or None: a guide qualifies when
    it exposes Gaussian marginals q(x_t | x_0) and posteriors q(x_{t−1} | x_t, x_0)."""
    chain = getattr(guide, "noising", None)
    if chain is not None and callable(getattr(chain, "marginal", None)) and callable(getattr(chain, "posterior", None)):
        return chain
    return None


