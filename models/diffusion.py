"""Denoising diffusion as a deep latent-variable program (Ho, Jain & Abbeel 2020).

The generative program (the reverse chain) over latents x_T, …, x_1 and the observed x = x_0:

    x_T ~ N(0, I),
    x_{t−1} | x_t ~ N(μ_θ(x_t, t), β_t I),   t = T, …, 1,
    μ_θ(x_t, t) = (x_t − β_t / √(1 − ᾱ_t) · ε_θ(x_t, t)) / √α_t,

with α_t = 1 − β_t, ᾱ_t = Π_{s≤t} α_s and ε_θ a noise-predicting network (the ``denoiser``).
Its guide is the fixed noising process q(x_{1:T} | x_0) = Π_t N(x_t; √α_t x_{t−1}, β_t I), whose
marginals and posteriors are closed form,

    q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I),
    q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I),  μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) x_t,
                                             β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) β_t,

so the ELBO is a sum of T Gaussian KL terms that ``engine="svi"`` estimates from sampled steps
(see :mod:`ppgen.inference._chain_elbo`). :func:`ddim` is a second program sharing the trained
network (Song, Meng & Ermon 2021). :func:`latent_diffusion` composes the chain (over a VAE's
latents) with the VAE's decoder, trained in two stages by :func:`fit_latent_diffusion` (Rombach et
al. 2022). :func:`probability_flow_log_prob` is the score-SDE view: the
exact log-likelihood of a trained denoiser under the VP-SDE's probability-flow ODE (Song et al.
2021), on the continuous-flow machinery of :mod:`ppgen.models._continuous_flow`.

References
----------
J. Ho, A. Jain, P. Abbeel (2020), "Denoising diffusion probabilistic models", NeurIPS.
J. Song, C. Meng, S. Ermon (2021), "Denoising diffusion implicit models", ICLR.
A. Nichol, P. Dhariwal (2021), "Improved denoising diffusion probabilistic models", ICML.
Y. Song, J. Sohl-Dickstein, D. P. Kingma, A. Kumar, S. Ermon, B. Poole (2021), "Score-based
generative modeling through stochastic differential equations", ICLR.
J. Ho, T. Salimans (2022), "Classifier-free diffusion guidance", arXiv:2207.12598.
R. Rombach, A. Blattmann, D. Lorenz, P. Esser, B. Ommer (2022), "High-resolution image synthesis
with latent diffusion models", CVPR.
"""

from __future__ import annotations

import copy
import functools
import inspect as pyinspect
import math
from typing import Any, Callable, Optional

import numpy as np
import torch

from ppgen import chain, dist, markov, module, plate, sample
from ppgen.catalogue import Example, Simulated
from ppgen.models._networks import seeded_mlp

SCHEDULES = ("linear", "cosine")
_NOT_OBSERVED = object()


# --------------------------------------------------------------------------------------------
# the noise schedule and the noising process


def noise_schedule(num_timesteps: int, kind: str = "linear") -> torch.Tensor:
    """β_1, …, β_T as a float64 tensor of shape (T,).

    ``"linear"``: β_t evenly spaced from 1e-4 · 1000/T to 0.02 · 1000/T (Ho et al.'s schedule at
    T = 1000, rescaled so ᾱ_T ≈ e^{−10} for every T). ``"cosine"``: ᾱ_t = f(t)/f(0) with
    f(t) = cos²((t/T + 0.008)/1.008 · π/2), β_t = min(1 − ᾱ_t/ᾱ_{t−1}, 0.999) (Nichol & Dhariwal).
    """
    if not isinstance(num_timesteps, (int, np.integer)) or isinstance(num_timesteps, bool) or num_timesteps < 1:
        raise ValueError(f"noise_schedule: num_timesteps must be a positive integer, got {num_timesteps!r}")
    if kind == "linear":
        scale = 1000.0 / num_timesteps
        return torch.linspace(1e-4 * scale, min(0.02 * scale, 0.999), num_timesteps, dtype=torch.float64)
    if kind == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        alphas_cumprod = f / f[0]
        return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.999)
    raise ValueError(f"noise_schedule: kind must be one of {SCHEDULES}, got {kind!r}")


def _cumulative(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_0 = 1, ᾱ_1, …, ᾱ_T (shape (T + 1,)): index t holds ᾱ_t."""
    return torch.cat([torch.ones(1, dtype=betas.dtype), torch.cumprod(1 - betas, 0)])


class NoisingProcess:
    """The noising process q(x_{1:T} | x_0) as a guide: a Gaussian Markov chain whose marginals
    q(x_t | x_0) and posteriors q(x_{t−1} | x_t, x_0) are closed form (:meth:`marginal`,
    :meth:`posterior`). Engines bind it to a model (:meth:`bind`), which reads the chain's sites
    from the model's structure: the observed site x_0, its latent parent x_1, that one's latent
    parent x_2, …, up to the root x_T."""

    def __init__(self, num_timesteps: int, schedule: str = "linear") -> None:
        self.num_timesteps = int(num_timesteps)
        self.schedule = schedule
        self.betas = noise_schedule(num_timesteps, schedule)
        self.alphas_cumprod = _cumulative(self.betas)
        self.chain: Optional[list[str]] = None  # site names x_0, x_1, …, x_T once bound
        self.data: Optional[str] = None
        self.plate: Optional[str] = None

    def __repr__(self) -> str:
        return f"forward_process({self.num_timesteps}, schedule={self.schedule!r})"

    # ---- closed forms -----------------------------------------------------------------------
    @staticmethod
    def _at(table: torch.Tensor, t: Any, x0: torch.Tensor) -> torch.Tensor:
        """``table[t]`` in x0's dtype, shaped to broadcast against x0: t is an int or an integer
        tensor of steps, one per datum (shape x0.shape[:-1])."""
        value = table[t].to(x0.dtype)
        return value.reshape(value.shape + (1,) * (x0.dim() - value.dim())) if value.dim() else value

    def marginal(self, t: Any, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), t in 0..T (an int, or a
        tensor of per-datum steps)."""
        a = self._at(self.alphas_cumprod, t, x0)
        return a.sqrt() * x0, (1 - a).sqrt().expand_as(x0)

    def posterior(self, t: Any, x_t: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of q(x_{t−1} | x_t, x_0), t in 1..T (an int, or a tensor of per-datum
        steps; scale 0 at t = 1, where x_{t−1} = x_0)."""
        beta = self._at(self.betas, t - 1, x0)
        a_t, a_prev = self._at(self.alphas_cumprod, t, x0), self._at(self.alphas_cumprod, t - 1, x0)
        loc = a_prev.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * x_t
        return loc, ((1 - a_prev) / (1 - a_t) * beta).sqrt().expand_as(x0)

    # ---- binding to a model -------------------------------------------------------------------
    def layout(self, structure: Any) -> tuple[list[str], str, str]:
        """The chain's site names x_0 … x_T, the data argument and the data plate, read from the
        model's structure."""
        for observed in structure.observed.values():
            chain = [observed.name]
            while True:
                parents = [p for p in structure.sites[chain[-1]].parents if p in structure.latent]
                if len(parents) != 1:
                    break
                chain.append(parents[0])
            if len(chain) > 1 and observed.data_argument:
                break
        else:
            raise ValueError("forward_process: the model has no observed site whose latent ancestors form a chain x_T → … → x_1 → x_0")
        if len(chain) - 1 != self.num_timesteps:
            raise ValueError(
                f"forward_process: the model's chain {chain[-1]!r} → … → {chain[0]!r} has {len(chain) - 1} latent steps, "
                f"the noising process {self.num_timesteps}; pass num_timesteps={len(chain) - 1}"
            )
        plates = structure.sites[chain[0]].plates
        if not plates:
            raise ValueError(f"forward_process: the observed site {chain[0]!r} must sit in a data plate")
        return chain, observed.data_argument, plates[0]

    def bind(self, model: Callable, structure: Any = None, copy_encoder: bool = False) -> "NoisingProcess":
        """This noising process with the model's site names, data argument and plate (read from
        ``structure``, or from the model's structure on the first call), and a guide
        :attr:`program` with the model's signature."""
        bound = copy.copy(self)
        bound._model = model
        if structure is not None:
            bound._set_layout(structure)
        signature = pyinspect.signature(model)

        @functools.wraps(model)
        def guide(*args: Any, **kwargs: Any) -> None:
            if bound.chain is None:
                from pyro import poutine

                from ppgen.structure import inspect

                with poutine.block():
                    bound._set_layout(inspect(model, *args, **kwargs))
            arguments = signature.bind(*args, **kwargs)
            arguments.apply_defaults()
            bound._guide(arguments.arguments[bound.data])

        guide.__signature__ = signature  # type: ignore[attr-defined]
        guide.__name__ = f"{getattr(model, '__name__', 'model')}_noising"
        guide.noising = bound  # type: ignore[attr-defined]
        bound._program = guide
        return bound

    def _set_layout(self, structure: Any) -> None:
        self.chain, self.data, self.plate = self.layout(structure)
        info = structure.plates[self.plate]
        self._plate_info = (info.name, info.dim)

    @property
    def model(self) -> Callable:
        """The model this process is bound to (after :meth:`bind`)."""
        return self._model

    @property
    def program(self) -> Callable:
        program = getattr(self, "_program", None)
        if program is None:
            raise ValueError("forward_process: bind the guide to its model first (guide.bind(model, structure))")
        return program

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.program(*args, **kwargs)

    def _guide(self, x0: Any) -> None:
        x0 = torch.as_tensor(x0)
        name, dim = self._plate_info
        with plate(name, x0.shape[0], dim=dim):
            x = x0
            for t in range(1, self.num_timesteps + 1):
                beta = self.betas[t - 1].to(x0.dtype)
                x = sample(self.chain[t], dist.Normal((1 - beta).sqrt() * x, beta.sqrt()).to_event(x0.dim() - 1))


def forward_process(num_timesteps: int = 1000, schedule: str = "linear") -> NoisingProcess:
    """The noising process q(x_{1:T} | x_0) of a diffusion program as a guide, the way
    :func:`ppgen.amortize` returns an encoder guide; ``svi`` estimates the ELBO from sampled
    steps through its closed-form marginals.

    Examples
    --------
    >>> guide = forward_process(100)
    >>> guide
    forward_process(100, schedule='linear')
    >>> round(float(guide.alphas_cumprod[-1]), 6) < 1e-3
    True
    """
    return NoisingProcess(num_timesteps, schedule)


# --------------------------------------------------------------------------------------------
# the denoiser


class Denoiser(torch.nn.Module):
    """ε_θ(x_t, t[, y]): an MLP on [x_t, sinusoidal embedding of t, class embedding].

    ``y`` holds class labels in 0..num_classes−1, or −1 / None for "no label" (the null class of
    classifier-free guidance). While training (``self.training`` and gradients on), labels are
    replaced by the null class with probability ``label_dropout``.
    """

    def __init__(self, dim: int, num_classes: Optional[int] = None, hidden: int = 128, num_layers: int = 3, embedding: int = 32, label_dropout: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.dim, self.num_classes, self.embedding, self.label_dropout = dim, num_classes, embedding, label_dropout
        inputs = dim + embedding + (embedding if num_classes else 0)
        self.net = seeded_mlp([inputs] + [hidden] * num_layers + [dim], generator, activation=torch.nn.SiLU)
        if num_classes:
            self.classes = torch.nn.Embedding(num_classes + 1, embedding, dtype=torch.float64)
            with torch.no_grad():
                self.classes.weight.normal_(0.0, 1.0, generator=generator)
        frequencies = torch.exp(-math.log(10000.0) * torch.arange(embedding // 2, dtype=torch.float64) / (embedding // 2))
        self.register_buffer("frequencies", frequencies)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        angles = torch.as_tensor(t, dtype=x_t.dtype)[..., None] * self.frequencies.to(x_t.dtype)
        angles = angles.expand(*x_t.shape[:-1], -1)
        features = [x_t, torch.sin(angles), torch.cos(angles)]
        if self.num_classes:
            null = self.num_classes
            labels = torch.full(x_t.shape[:-1], null, dtype=torch.long) if y is None else torch.as_tensor(y).long().expand(x_t.shape[:-1])
            labels = torch.where(labels < 0, torch.full_like(labels, null), labels)
            if self.training and torch.is_grad_enabled() and self.label_dropout > 0:
                dropped = torch.rand(labels.shape) < self.label_dropout
                labels = torch.where(dropped, torch.full_like(labels, null), labels)
            features.append(self.classes(labels).to(x_t.dtype))
        return self.net(torch.cat(features, -1))


def make_denoiser(dim: int, num_classes: Optional[int] = None, hidden: int = 128, num_layers: int = 3, embedding: int = 32, label_dropout: float = 0.1, seed: int = 0) -> Denoiser:
    """A fresh seeded noise predictor ε_θ(x_t, t) (with ``num_classes``: ε_θ(x_t, t, y))."""
    return Denoiser(dim, num_classes, hidden, num_layers, embedding, label_dropout, seed)


def predict_noise(denoiser: Callable, x_t: torch.Tensor, t: Any, y: Any = None, guidance_scale: float = 1.0) -> torch.Tensor:
    """ε_θ(x_t, t) for every row of ``x_t`` (``t`` passed as an integer tensor of shape
    x_t.shape[:-1]); with labels ``y`` the classifier-free guided

        ε = ε_θ(x_t, t) + s (ε_θ(x_t, t, y) − ε_θ(x_t, t))

    (Ho & Salimans 2022) at guidance scale s, taken as written: s = 0 is the unconditional
    ε_θ(x_t, t), s = 1 the conditional ε_θ(x_t, t, y) (one network call each), s > 1 pushes
    away from the unconditional prediction (two calls)."""
    steps = torch.as_tensor(t, dtype=torch.long).expand(x_t.shape[:-1])
    if y is None or guidance_scale == 0:
        return denoiser(x_t, steps)
    conditional = denoiser(x_t, steps, y)
    if guidance_scale == 1:
        return conditional
    unconditional = denoiser(x_t, steps, None)
    return unconditional + guidance_scale * (conditional - unconditional)


def _checked(x: Any, dim: int, denoiser: Optional[torch.nn.Module], num_classes: Optional[int], owner: str) -> tuple[Any, int, torch.nn.Module]:
    if x is not None:
        x = torch.as_tensor(x)
        if x.dim() != 2:
            raise ValueError(f"{owner}: x must have shape (num_data, dim), got {tuple(x.shape)}")
        dim = x.shape[1]
    if denoiser is None:
        if x is not None:
            raise ValueError(f"{owner}: pass denoiser=make_denoiser({dim}) (the network to train) together with x")
        denoiser = make_denoiser(dim, num_classes)
    return x, dim, denoiser


def ddpm(
    x: Optional[Any] = None,
    num_data: int = 100,
    dim: int = 2,
    num_timesteps: int = 1000,
    denoiser: Optional[torch.nn.Module] = None,
    y: Optional[Any] = None,
    guidance_scale: float = 1.0,
    schedule: str = "linear",
) -> None:
    """DDPM: the reverse chain x_T → … → x_1 → x as a program.

    Parameters
    ----------
    x : array of shape (N, dim), the data x_0 (used in the scale given), or None to generate
        ``num_data`` points.
    num_timesteps : T, the number of latent steps (sites ``x_T`` … ``x_1``).
    denoiser : the noise predictor ε_θ, called ``denoiser(x_t, t)`` (``denoiser(x_t, t, y)``
        with labels), t an integer tensor in 1..T; trained in place of θ (name ``"theta"``).
    y : class labels of shape (N,) (or one label for all) for a class-conditional denoiser.
    guidance_scale : s of classifier-free guidance with labels, ε = ε_u + s (ε_c − ε_u)
        (:func:`predict_noise`): 1 (the default) is the plain conditional model, the one svi
        trains; 0 ignores the labels (unconditional); s > 1 guides.
    schedule : the β schedule, ``"linear"`` or ``"cosine"`` (:func:`noise_schedule`).

    Examples
    --------
    >>> import ppgen
    >>> draws = ppgen.generate(ddpm, num_data=3, num_timesteps=10, num_samples=2)
    >>> draws["x"].shape
    (2, 3, 2)
    """
    x, dim, denoiser = _checked(x, dim, denoiser, None, "ddpm")
    n = num_data if x is None else x.shape[0]
    module("theta", denoiser)
    with plate("N", n):
        reverse_chain("x", dim, num_timesteps, denoiser, y, guidance_scale, schedule, obs=x)


@functools.lru_cache(maxsize=8)
def _reverse_step_table(num_timesteps: int, schedule: str) -> torch.Tensor:
    """Row t (1..T; row 0 unused) holds the reverse step's constants (β_t / √(1 − ᾱ_t), 1 / √α_t,
    √β_t): μ_θ = (x_t − β_t / √(1 − ᾱ_t) ε) / √α_t and the step's scale. Computed once per
    (T, schedule), so a step indexes one table whether t is one step or one per datum."""
    betas = noise_schedule(num_timesteps, schedule)
    alphas_cumprod = _cumulative(betas)[1:]
    rows = torch.stack([betas / (1 - alphas_cumprod).sqrt(), (1 - betas).rsqrt(), betas.sqrt()], -1)
    return torch.cat([torch.ones(1, 3, dtype=torch.float64), rows])


def reverse_chain(
    name: str, dim: int, num_timesteps: int, denoiser: Callable, y: Any = None, guidance_scale: float = 1.0, schedule: str = "linear",
    obs: Any = _NOT_OBSERVED,
) -> torch.Tensor:
    """The reverse chain's sites inside the caller's data plate: ``{name}_T`` ~ N(0, I), then
    ``{name}_{t−1}`` | ``{name}_t`` ~ N(μ_θ, β_t I) for t = T, …, 2, and the last step's site
    ``name`` (x_0), observed when ``obs`` is given (``obs=None`` declares it data to be drawn).
    Returns the value of ``name``: :func:`ddpm` observes it, :func:`latent_diffusion` decodes it.
    The chain is declared with :func:`ppgen.chain` (its step a function of x_t and t), so svi
    trains it with one denoiser call per gradient step, every datum at its own t."""
    table = _reverse_step_table(num_timesteps, schedule)

    def step(x_t: torch.Tensor, t: torch.Tensor) -> Any:
        epsilon = predict_noise(denoiser, x_t, t, y, guidance_scale)
        row = table[t]
        return dist.Normal((x_t - row[..., 0:1] * epsilon) * row[..., 1:2], row[..., 2:3]).to_event(1)

    init = dist.Normal(torch.zeros(dim, dtype=torch.float64), 1.0).to_event(1)
    return chain(name, num_timesteps, init, step, **({} if obs is _NOT_OBSERVED else {"obs": obs}))


# --------------------------------------------------------------------------------------------
# latent diffusion: the VAE's decoder over a diffusion program's samples


def latent_diffusion(
    x: Optional[Any] = None,
    num_data: int = 100,
    latent_dim: int = 8,
    num_timesteps: int = 100,
    denoiser: Optional[torch.nn.Module] = None,
    decoder: Optional[torch.nn.Module] = None,
    y: Optional[Any] = None,
    guidance_scale: float = 1.0,
    schedule: str = "linear",
) -> None:
    """Latent diffusion (Rombach et al. 2022): a diffusion program over the latents z of the
    digits VAE, whose decoder maps the chain's end to pixels,

        z_T ~ N(0, I),  z_{t−1} | z_t ~ N(μ_θ(z_t, t), β_t I),  x | z_0 ~ Bernoulli(σ(f_ψ(z_0))),

    one program composed of two: :func:`reverse_chain` (``ddpm``'s sites, named ``z_T`` … ``z_1``,
    ``z``) in place of the VAE's N(0, I) prior on ``z``, then the VAE's observation. Trained in
    two stages (:func:`fit_latent_diffusion`): the VAE on the images, then ``ddpm`` on the
    encoder's latents; this program then generates, and its structure shows both parts.

    Parameters
    ----------
    x : binary images (N, 64), or None to generate ``num_data``.
    latent_dim : K, the VAE's latent dimension (the chain's width).
    num_timesteps : T of the latent chain.
    denoiser : ε_θ over latents (``make_denoiser(latent_dim[, num_classes])``), module ``"theta"``.
    decoder : the VAE's decoder f_ψ (:class:`ppgen.models.vae.Decoder`), module ``"psi"``.
    y, guidance_scale, schedule : as in :func:`ddpm`, for the latent chain.

    Examples
    --------
    >>> import ppgen
    >>> draws = ppgen.generate(latent_diffusion, num_data=3, latent_dim=4, num_timesteps=10, num_samples=1)
    >>> draws["x"].shape
    (1, 3, 64)
    """
    from ppgen.models.vae import Decoder

    if denoiser is None or decoder is None:
        if x is not None:
            raise ValueError(
                "latent_diffusion: pass the trained denoiser= and decoder= with x (fit_latent_diffusion trains both, "
                "in two stages)"
            )
        denoiser = denoiser if denoiser is not None else make_denoiser(latent_dim)
        decoder = decoder if decoder is not None else Decoder(latent_dim)
    n = num_data if x is None else torch.as_tensor(x).shape[0]
    module("theta", denoiser)
    module("psi", decoder)
    with plate("N", n):
        z = reverse_chain("z", latent_dim, num_timesteps, denoiser, y, guidance_scale, schedule)
        sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)


class LatentDiffusionFit(dict):
    """What :func:`fit_latent_diffusion` returns: ``encoder``, ``decoder``, ``denoiser`` (trained),
    ``latents`` (the encoded training images), and the two stages' :class:`ppgen.Result`s
    ``vae_result`` and ``diffusion_result``."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as error:
            raise AttributeError(key) from error


def fit_latent_diffusion(
    x: Any,
    y: Optional[Any] = None,
    latent_dim: int = 8,
    num_timesteps: int = 100,
    num_classes: Optional[int] = None,
    vae_steps: int = 2000,
    diffusion_steps: int = 2000,
    hidden: int = 256,
    seed: int = 0,
) -> LatentDiffusionFit:
    """The two training stages of :func:`latent_diffusion`, each a ``learn`` on a program:

    1. the VAE (:func:`ppgen.models.vae.vae`) on the images ``x`` (N, 64), ``engine="svi"`` with
       the amortised encoder guide;
    2. :func:`ddpm` on the latents z_i = μ_φ(x_i) (the trained encoder's means), ``engine="svi"``
       with :func:`forward_process` (labels ``y`` with ``num_classes`` make the denoiser
       class-conditional, for guidance).

    Then ``generate(latent_diffusion, decoder=fit.decoder, denoiser=fit.denoiser, ...)`` samples
    images: the chain draws a latent, the decoder maps it back.
    """
    import ppgen
    from ppgen.models.vae import Decoder, Encoder, vae

    x = torch.as_tensor(x, dtype=torch.float64)
    encoder = Encoder(latent_dim, seed=seed + 1)
    vae_result = ppgen.learn(
        vae, x=x, latent_dim=latent_dim, decoder=Decoder(latent_dim, seed=seed), engine="svi",
        guide=ppgen.amortize(encoder, latent="z"), subsample_size=min(128, len(x)), num_steps=vae_steps, learning_rate=3e-3,
        num_samples=1, num_elbo_evaluations=1, seed=seed,
    )
    modules = vae_result.diagnostics["modules"]
    encoder, decoder = modules["phi"], modules["theta"]
    with torch.no_grad():
        latents = encoder(x)[0]
    diffusion_result = ppgen.learn(
        ddpm, x=latents, y=y, num_timesteps=num_timesteps, denoiser=make_denoiser(latent_dim, num_classes, hidden=hidden, seed=seed),
        engine="svi", guide=forward_process(num_timesteps), subsample_size=min(128, len(x)), num_steps=diffusion_steps,
        learning_rate=1e-3, num_elbo_evaluations=1, seed=seed,
    )
    return LatentDiffusionFit(
        encoder=encoder, decoder=decoder, denoiser=diffusion_result.diagnostics["modules"]["theta"], latents=latents,
        vae_result=vae_result, diffusion_result=diffusion_result,
    )


# --------------------------------------------------------------------------------------------
# DDIM: a second program sharing the denoiser


def sampling_steps(num_timesteps: int, num_sampling_steps: int) -> list[int]:
    """τ_1 < … < τ_S: the DDIM step subsequence of 1..T, evenly spaced with τ_S ≤ T
    (diffusers' "leading" spacing, shifted to 1-based steps)."""
    if not isinstance(num_sampling_steps, (int, np.integer)) or not 1 <= num_sampling_steps <= num_timesteps:
        raise ValueError(f"ddim: num_sampling_steps must be an integer in 1..{num_timesteps}, got {num_sampling_steps!r}")
    ratio = num_timesteps // num_sampling_steps
    return [k * ratio + 1 for k in range(num_sampling_steps)]


def ddim_step(epsilon: torch.Tensor, x_t: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update from x_t to the previous step (Song et al. eq. 12): the mean

        √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε,  x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t,

    and σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)."""
    sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt() if eta > 0 else torch.zeros((), dtype=x_t.dtype)
    x0_hat = (x_t - (1 - a_t).sqrt() * epsilon) / a_t.sqrt()
    return a_prev.sqrt() * x0_hat + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * epsilon, sigma


def ddim(
    x: Optional[Any] = None,
    num_data: int = 100,
    dim: int = 2,
    num_timesteps: int = 1000,
    denoiser: Optional[torch.nn.Module] = None,
    y: Optional[Any] = None,
    guidance_scale: float = 1.0,
    schedule: str = "linear",
    num_sampling_steps: int = 50,
    eta: float = 0.0,
) -> None:
    """DDIM sampling with ``ddpm``'s denoiser over S = ``num_sampling_steps`` steps
    τ_S > … > τ_1 (:func:`sampling_steps`): latents ``x_{τ_S}`` (~ N(0, I)) … ``x_{τ_1}`` and the
    observed ``x``. With η = 0 every step after the first is deterministic (a Delta site),
    η = 1 gives DDPM-like noise. The last step returns x̂_0. It is a sampler: the Delta sites
    give it no useful density, so score and train with :func:`ddpm`.
    """
    x, dim, denoiser = _checked(x, dim, denoiser, None, "ddim")
    if not eta >= 0:
        raise ValueError(f"ddim: eta must be >= 0, got {eta!r}")
    alphas_cumprod = _cumulative(noise_schedule(num_timesteps, schedule))
    steps = sampling_steps(num_timesteps, num_sampling_steps)
    n = num_data if x is None else x.shape[0]
    module("theta", denoiser)
    with plate("N", n):
        x_t = sample(f"x_{steps[-1]}", dist.Normal(torch.zeros(dim, dtype=torch.float64), 1.0).to_event(1))
        for i in markov(range(len(steps) - 1, -1, -1)):
            t, previous = steps[i], (steps[i - 1] if i > 0 else 0)
            epsilon = predict_noise(denoiser, x_t, t, y, guidance_scale)
            loc, sigma = ddim_step(epsilon, x_t, alphas_cumprod[t], alphas_cumprod[previous], eta)
            step = dist.Normal(loc, sigma).to_event(1) if sigma > 0 else dist.Delta(loc, event_dim=1)
            x_t = sample(f"x_{previous}" if previous else "x", step, **({"obs": x} if not previous else {}))


@torch.no_grad()
def ddim_encode(x: Any, denoiser: Callable, num_timesteps: int = 1000, num_sampling_steps: int = 50, schedule: str = "linear", y: Any = None) -> torch.Tensor:
    """The deterministic DDIM (η = 0) map from data x_0 to noise x_{τ_S}: the ODE run forwards,
    x_{τ_{i+1}} = √ᾱ_{τ_{i+1}} x̂_0 + √(1 − ᾱ_{τ_{i+1}}) ε_θ(x_{τ_i}, τ_i)."""
    alphas_cumprod = _cumulative(noise_schedule(num_timesteps, schedule))
    steps = sampling_steps(num_timesteps, num_sampling_steps)
    x_t = torch.as_tensor(x, dtype=torch.float64)
    previous = 0
    for t in steps:
        # ε is evaluated at the current point, as in the reverse step it inverts
        epsilon = predict_noise(denoiser, x_t, max(previous, 1), y)
        x_t, _ = ddim_step(epsilon, x_t, alphas_cumprod[previous], alphas_cumprod[t], 0.0)
        previous = t
    return x_t


@torch.no_grad()
def ddim_decode(x_T: Any, denoiser: Callable, num_timesteps: int = 1000, num_sampling_steps: int = 50, schedule: str = "linear", y: Any = None, guidance_scale: float = 1.0) -> torch.Tensor:
    """The deterministic DDIM (η = 0) map from noise x_{τ_S} back to data (the ``ddim``
    program's steps with ``x_{τ_S}`` given)."""
    alphas_cumprod = _cumulative(noise_schedule(num_timesteps, schedule))
    steps = sampling_steps(num_timesteps, num_sampling_steps)
    x_t = torch.as_tensor(x_T, dtype=torch.float64)
    for i in range(len(steps) - 1, -1, -1):
        t, previous = steps[i], (steps[i - 1] if i > 0 else 0)
        epsilon = predict_noise(denoiser, x_t, t, y, guidance_scale)
        x_t, _ = ddim_step(epsilon, x_t, alphas_cumprod[t], alphas_cumprod[previous], 0.0)
    return x_t


# --------------------------------------------------------------------------------------------
# the score-SDE view: the probability-flow ODE and its exact log-likelihood


def continuous_schedule(num_timesteps: int, schedule: str = "linear") -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """The discrete schedule as a continuous-time VP-SDE: (ᾱ(t), β(t)) for real t in [0, T].

    The mapping: log ᾱ(t) is the piecewise-linear interpolation of the discrete log ᾱ_0, …, log ᾱ_T
    at the integers, so ᾱ(t) equals the discrete ᾱ_t at every step t, and the SDE's rate
    β(t) = −d log ᾱ(t)/dt = −log(1 − β_k) on (k − 1, k] (piecewise constant; ≈ β_k, and equal to
    T β_k times the step dt = 1/T of Song et al.'s time s = t/T in [0, 1]). The forward SDE
    dx = −½ β(t) x dt + √β(t) dW then has the DDPM marginals q(x_t | x_0) = N(√ᾱ(t) x_0, (1 − ᾱ(t)) I)
    at every integer t.
    """
    log_alphas_cumprod = torch.log(_cumulative(noise_schedule(num_timesteps, schedule)))
    rates = -torch.log1p(-noise_schedule(num_timesteps, schedule))

    def alpha_bar(t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, num_timesteps)
        k = t.floor().long().clamp(max=num_timesteps - 1)
        return torch.exp(log_alphas_cumprod[k] - (t - k) * rates[k])

    def beta(t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, num_timesteps)
        return rates[(t.ceil().long() - 1).clamp(0, num_timesteps - 1)]

    return alpha_bar, beta


def interpolated_noise(denoiser: Callable, x_t: torch.Tensor, t: torch.Tensor, num_timesteps: int, y: Any = None, guidance_scale: float = 1.0) -> torch.Tensor:
    """ε_θ(x_t, t) at a real time t in [1, T]: linear in t between the network's integer steps
    ⌊t⌋ and ⌈t⌉ (the network was trained on integer steps only)."""
    t = float(torch.as_tensor(t).clamp(1, num_timesteps))
    lower = int(math.floor(t))
    weight = t - lower
    epsilon = predict_noise(denoiser, x_t, lower, y, guidance_scale)
    if weight == 0.0:
        return epsilon
    return (1 - weight) * epsilon + weight * predict_noise(denoiser, x_t, lower + 1, y, guidance_scale)


def probability_flow_log_prob(
    denoiser: Callable,
    x: Any,
    num_timesteps: int = 1000,
    schedule: str = "linear",
    y: Any = None,
    guidance_scale: float = 1.0,
    trace: str = "auto",
    rtol: float = 1e-6,
    atol: float = 1e-6,
    num_probes: int = 1,
    seed: int = 0,
) -> torch.Tensor:
    """log p(x) of the points ``x`` (N, d) under the probability-flow ODE of a trained denoiser
    (Song et al. 2021, the score-SDE view of DDPM).

    The DDPM chain is the discretisation of the VP-SDE dx = −½ β(t) x dt + √β(t) dW, with the
    schedule mapped to continuous time t in [0, T] by :func:`continuous_schedule`. Its
    probability-flow ODE has the same marginals p_t and is deterministic; with the score
    ∇ log p_t(x) = −ε_θ(x, t) / √(1 − ᾱ(t)) it reads

        dx/dt = −½ β(t) (x − ε_θ(x, t) / √(1 − ᾱ(t))),

    ε_θ linear in t between integer steps (:func:`interpolated_noise`). Its exact log-likelihood
    (instantaneous change of variables, :func:`ppgen.models._continuous_flow.ode_log_prob`) is

        log p(x) = log N(x(T); 0, I) − ∫_1^T tr ∂v/∂x (t, x(t)) dt,   x(1) = x.

    The integration starts at t = 1 (as Song et al. start at a small ε > 0: ε_θ / √(1 − ᾱ(t)) is
    singular at t = 0), so this is the ODE's density of the data noised once,
    p_1 ≈ p_0 up to O(β_1) (β_1 = 1e-4 for the linear schedule at T = 1000); the prior N(0, I)
    stands for p_T, off by O(ᾱ_T) (≈ 4.5e-5). With the exact optimal denoiser of Gaussian data
    the remaining error is the linear interpolation of ε in t, O(1/T²) per unit time.

    Parameters
    ----------
    denoiser : ε_θ, called ``denoiser(x_t, t)`` (``(x_t, t, y)`` with labels) at integer t.
    x : data of shape (N, d), in the scale the denoiser was trained on.
    num_timesteps, schedule : the denoiser's T and β schedule (:func:`noise_schedule`).
    y, guidance_scale : labels and classifier-free guidance scale for a conditional denoiser.
    trace : divergence, ``"auto"`` (exact up to d = 4), ``"exact"`` or ``"hutchinson"``
        (an unbiased estimate, ``num_probes`` Rademacher probes drawn once from ``seed``).
    rtol, atol : the adaptive (dopri5) solver's tolerances.

    Returns
    -------
    tensor of shape (N,): log p(x) in nats.

    Examples
    --------
    >>> import torch
    >>> net = GaussianDenoiser([0.0], [[1.0]], num_timesteps=100)
    >>> value = probability_flow_log_prob(net, torch.zeros(1, 1), num_timesteps=100)
    >>> abs(float(value[0]) - (-0.5 * math.log(2 * math.pi))) < 1e-2
    True
    """
    from ppgen.models._continuous_flow import ode_log_prob

    x = torch.as_tensor(x, dtype=torch.float64)
    if x.dim() != 2:
        raise ValueError(f"probability_flow_log_prob: x must have shape (num_data, dim), got {tuple(x.shape)}")
    if not isinstance(num_timesteps, (int, np.integer)) or isinstance(num_timesteps, bool) or num_timesteps < 2:
        raise ValueError(f"probability_flow_log_prob: num_timesteps must be an integer >= 2, got {num_timesteps!r}")
    alpha_bar, beta = continuous_schedule(num_timesteps, schedule)
    d = x.shape[1]

    def velocity(t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        epsilon = interpolated_noise(denoiser, x_t, t, num_timesteps, y, guidance_scale)
        return -0.5 * beta(t) * (x_t - epsilon / (1 - alpha_bar(t)).sqrt())

    def prior_log_prob(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z**2).sum(-1) - 0.5 * d * math.log(2 * math.pi)

    generator = torch.Generator().manual_seed(seed)
    # evaluation mode: the divergence runs under autograd, where a training-mode denoiser would
    # drop labels (classifier-free guidance's training-time dropout)
    training = isinstance(denoiser, torch.nn.Module) and denoiser.training
    if training:
        denoiser.eval()
    try:
        with torch.no_grad():
            return ode_log_prob(
                velocity, x, prior_log_prob, t0=float(num_timesteps), t1=1.0, trace=trace, rtol=rtol, atol=atol,
                num_probes=num_probes, generator=generator,
            )
    finally:
        if training:
            denoiser.train()


# --------------------------------------------------------------------------------------------
# closed forms for Gaussian data (what the tests compare against)


class GaussianDenoiser(torch.nn.Module):
    """The optimal noise predictor for data x_0 ~ N(μ, Σ): E[ε | x_t] is affine in x_t,

        ε*(x_t, t) = √(1 − ᾱ_t) (ᾱ_t Σ + (1 − ᾱ_t) I)^{-1} (x_t − √ᾱ_t μ).
    """

    def __init__(self, mean: Any, covariance: Any, num_timesteps: int = 1000, schedule: str = "linear") -> None:
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float64)
        covariance = torch.as_tensor(covariance, dtype=torch.float64)
        a = _cumulative(noise_schedule(num_timesteps, schedule))
        eye = torch.eye(len(mean), dtype=torch.float64)
        marginal = a[:, None, None] * covariance + (1 - a)[:, None, None] * eye
        self.register_buffer("gain", (1 - a).sqrt()[:, None, None] * torch.linalg.inv(marginal))  # (T + 1, d, d)
        self.register_buffer("offset", a.sqrt()[:, None] * mean)  # (T + 1, d)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: Any = None) -> torch.Tensor:
        t = torch.as_tensor(t).long()
        centred = x_t - self.offset[t]
        return (self.gain[t] @ centred[..., None])[..., 0]


def gaussian_elbo(x0: Any, mean: Any, covariance: Any, num_timesteps: int, schedule: str = "linear") -> np.ndarray:
    """The ELBO of ``ddpm`` with :class:`GaussianDenoiser` at each datum of ``x0`` (N, d), in
    closed form: −KL(q(x_T | x_0) ‖ N(0, I)) − Σ_{t≥2} E_q KL(q(x_{t−1} | x_t, x_0) ‖ p(x_{t−1} | x_t))
    + E_q log p(x_0 | x_1), every expectation of a quadratic form in the Gaussian x_t ~ q(x_t | x_0)."""
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    d = x0.shape[1]
    process = NoisingProcess(num_timesteps, schedule)
    network = GaussianDenoiser(mean, covariance, num_timesteps, schedule)
    betas, a = process.betas, process.alphas_cumprod
    eye = torch.eye(d, dtype=torch.float64)
    # prior term: KL(N(m, v I) ‖ N(0, I))
    m, v = a[-1].sqrt() * x0, 1 - a[-1]
    total = -0.5 * ((m**2).sum(-1) + d * v - d - d * torch.log(v))
    for t in range(1, num_timesteps + 1):
        beta, a_t, a_prev = betas[t - 1], a[t], a[t - 1]
        # μ_θ(x_t) = P x_t + c, affine in x_t (P: d × d, c: (N, d))
        gain, offset = network.gain[t], network.offset[t]
        coefficient = beta / (1 - a_t).sqrt()
        P = (eye - coefficient * gain) / (1 - beta).sqrt()
        c = (coefficient * (gain @ offset)) / (1 - beta).sqrt()
        c = c.expand_as(x0)
        # target mean: the guide posterior's at t ≥ 2 (affine: A x_0 + B x_t), x_0 itself at t = 1
        if t > 1:
            A, B = a_prev.sqrt() * beta / (1 - a_t), (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)
        else:
            A, B = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
        # difference D = (B I − P) x_t + A x_0 − c with x_t ~ N(√ᾱ_t x_0, (1 − ᾱ_t) I)
        M = B * eye - P
        mean_difference = (a_t.sqrt() * x0) @ M.T + A * x0 - c
        expected_square = (mean_difference**2).sum(-1) + (1 - a_t) * (M**2).sum()
        if t > 1:
            posterior_variance = (1 - a_prev) / (1 - a_t) * beta
            kl = 0.5 * (d * posterior_variance / beta + expected_square / beta - d + d * torch.log(beta / posterior_variance))
            total = total - kl
        else:
            total = total - 0.5 * expected_square / beta - 0.5 * d * torch.log(2 * math.pi * beta)
    return total.numpy()


# --------------------------------------------------------------------------------------------
# the tour's example


def simulate_toy(name: str = "moons", num_data: int = 1000, num_timesteps: int = 50, seed: int = 0) -> Simulated:
    """A 2-D toy set (:func:`ppgen.models._toy2d.sample_toy2d`) and a fresh denoiser."""
    from ppgen.models._toy2d import sample_toy2d

    x = sample_toy2d(name, num_data, seed=seed)
    return Simulated(
        {"x": x, "num_timesteps": num_timesteps, "denoiser": make_denoiser(2, hidden=128, seed=seed)},
        {"dataset": name},
    )


def report(example: Example, simulated: Simulated, result: Any) -> list[Any]:
    """Figures for the tour: the chain x_T → x_0 as strips of scatter plots, DDPM vs DDIM samples."""
    import time

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modules = result.diagnostics.get("modules", {}) if result is not None else {}
    denoiser = modules.get("theta")
    if denoiser is None:
        return []
    num_timesteps = int(simulated.data.get("num_timesteps", 1000))
    data = np.asarray(simulated.data["x"])
    figures = []
    with torch.no_grad():
        torch.manual_seed(0)
        process = NoisingProcess(num_timesteps)
        x_t = torch.randn(1000, 2, dtype=torch.float64)
        shown = sorted({num_timesteps, num_timesteps * 3 // 4, num_timesteps // 2, num_timesteps // 4, num_timesteps // 10, 0}, reverse=True)
        strips = {}
        for t in range(num_timesteps, 0, -1):
            if t in shown:
                strips[t] = x_t.numpy().copy()
            beta, a_t = process.betas[t - 1], process.alphas_cumprod[t]
            loc = (x_t - beta / (1 - a_t).sqrt() * predict_noise(denoiser, x_t, t)) / (1 - beta).sqrt()
            x_t = loc + (beta.sqrt() * torch.randn_like(x_t) if t > 1 else 0)
        strips[0] = x_t.numpy()
        figure, axes = plt.subplots(1, len(shown), figsize=(2.2 * len(shown), 2.4))
        for axis, t in zip(axes, shown):
            axis.scatter(strips[t][:, 0], strips[t][:, 1], s=1, alpha=0.5)
            axis.set_title(f"x_{t}" if t else "x_0 (samples)", fontsize=9)
            axis.set_xticks([])
            axis.set_yticks([])
        figure.suptitle("ancestral sampling along the reverse chain x_T → x_0", fontsize=10, y=1.04)
        figures.append(figure)
        noise = torch.randn(1000, 2, dtype=torch.float64)
        counts = sorted({s for s in (5, 10, 20, num_timesteps) if s <= num_timesteps})
        figure, axes = plt.subplots(1, len(counts) + 1, figsize=(2.4 * (len(counts) + 1), 2.6))
        axes[0].scatter(data[:1000, 0], data[:1000, 1], s=1, alpha=0.5, color="k")
        axes[0].set_title("data", fontsize=9)
        for axis, count in zip(axes[1:], counts):
            start = time.perf_counter()
            samples = ddim_decode(noise, denoiser, num_timesteps, count).numpy()
            seconds = time.perf_counter() - start
            axis.scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.5)
            axis.set_title(f"DDIM η=0, {count} steps ({seconds * 1000:.0f} ms)", fontsize=8)
        for axis in axes:
            axis.set_xticks([])
            axis.set_yticks([])
        figures.append(figure)
    figures.append(_estimates_html(denoiser, num_timesteps, simulated.truth.get("dataset", "moons")))
    return figures


def _estimates_html(denoiser: torch.nn.Module, num_timesteps: int, dataset: str, num_points: int = 100) -> str:
    """log p(x) of held-out points three ways, as an HTML table: the ELBO (``score`` with svi, all
    T terms, the network as trained), the importance estimate with the same noising guide, and
    the probability-flow ODE's exact log-likelihood (score-SDE view)."""
    import time

    import ppgen
    from ppgen.models._toy2d import sample_toy2d

    held_out = sample_toy2d(dataset, num_points, seed=99)
    rows = []
    for name, kind, compute in (
        ("ELBO (score, engine='svi')", "lower bound", lambda: ppgen.score(
            ddpm, x=held_out, num_timesteps=num_timesteps, denoiser=denoiser, engine="svi", guide=forward_process(num_timesteps),
            num_elbo_evaluations=4)),
        ("importance (score, engine='importance')", "estimate ± stderr", lambda: ppgen.score(
            ddpm, x=held_out, num_timesteps=num_timesteps, denoiser=denoiser, engine="importance", guide=forward_process(num_timesteps),
            num_samples=50)),
    ):
        start = time.perf_counter()
        estimate = compute()
        rows.append(
            f"<tr><td>{name}</td><td>{kind}</td><td>{estimate.value / num_points:.3f} ± {estimate.stderr / num_points:.3f}</td>"
            f"<td>{time.perf_counter() - start:.1f} s</td></tr>"
        )
    return (
        f"<p>log p(x) of {num_points} held-out points, per point (nats), by the trained denoiser: the ELBO is a bound, "
        "the importance estimate with the noising process as proposal is tighter (in expectation ≥ the ELBO).</p>"
        "<table><tr><th>estimate</th><th>kind</th><th>nats per point</th><th>time</th></tr>" + "".join(rows) + "</table>"
    )


@functools.lru_cache(maxsize=2)  # stage 1 trains a VAE: once per process (tour, models table)
def simulate_latents(latent_dim: int = 8, num_timesteps: int = 50, vae_steps: int = 300, seed: int = 0) -> Simulated:
    """Stage 1 of latent diffusion on the digits: the VAE trained on the training images, and
    its encoder's latents z_i = μ_φ(x_i) with the digit labels as the data of stage 2 (``ddpm``
    with a class-conditional denoiser). The trained VAE, the held-out images and an independent
    logistic-regression digit classifier are the truth the report composes and judges with."""
    import ppgen
    from sklearn.linear_model import LogisticRegression

    from ppgen.models.vae import Decoder, Encoder, load_digits_binary, vae

    x_train, y_train, x_test, y_test = load_digits_binary(seed=seed)
    stage_one = ppgen.learn(
        vae, x=x_train, latent_dim=latent_dim, decoder=Decoder(latent_dim, seed=seed), engine="svi",
        guide=ppgen.amortize(Encoder(latent_dim, seed=seed + 1), latent="z"), subsample_size=128, num_steps=vae_steps,
        learning_rate=3e-3, num_samples=1, num_elbo_evaluations=1, seed=seed,
    )
    modules = stage_one.diagnostics["modules"]
    with torch.no_grad():
        latents = modules["phi"](torch.as_tensor(x_train))[0].numpy()
    classifier = LogisticRegression(max_iter=3000).fit(x_train, y_train)
    return Simulated(
        {"x": latents, "y": y_train, "num_timesteps": num_timesteps, "denoiser": make_denoiser(latent_dim, num_classes=10, hidden=128, seed=seed)},
        {"decoder": modules["theta"], "encoder": modules["phi"], "latent_dim": latent_dim, "classifier": classifier, "x_test": x_test},
    )


def latent_structure_data(latent_dim: int = 8, num_timesteps: int = 50, seed: int = 0) -> dict[str, Any]:
    """The arguments of the ``latent_diffusion`` catalogue entry's program with stand-ins of the
    right shapes (zero latents, labels 0..9 in turn, an untrained class-conditional denoiser):
    its structure, without training the VAE of stage 1 (:func:`simulate_latents`)."""
    from ppgen.models.vae import load_digits_binary

    num_data = len(load_digits_binary(seed=seed)[0])
    return {
        "x": np.zeros((num_data, latent_dim)), "y": np.arange(num_data) % 10, "num_timesteps": num_timesteps,
        "denoiser": make_denoiser(latent_dim, num_classes=10, hidden=128),
    }


def latent_report(example: Example, simulated: Simulated, result: Any) -> list[Any]:
    """Figures for the tour: guided digits per class at several s, judged by the independent
    classifier, and latent-diffusion draws next to the plain VAE's prior draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import ppgen
    from ppgen.models._figures import image_grid

    modules = result.diagnostics.get("modules", {}) if result is not None else {}
    denoiser = modules.get("theta")
    if denoiser is None:
        return []
    truth = simulated.truth
    decoder, latent_dim, classifier = truth["decoder"], truth["latent_dim"], truth["classifier"]
    num_timesteps = int(simulated.data["num_timesteps"])
    labels = np.repeat(np.arange(10), 8)
    scales = (0.0, 1.0, 3.0)
    figure, axes = plt.subplots(1, len(scales), figsize=(4.2 * len(scales), 3.8))
    rows = []
    with torch.no_grad():
        for axis, scale in zip(axes, scales):
            draws = ppgen.generate(
                latent_diffusion, num_data=len(labels), latent_dim=latent_dim, num_timesteps=num_timesteps, denoiser=denoiser,
                decoder=decoder, y=labels, guidance_scale=scale, num_samples=1, seed=1,
            )
            images = torch.sigmoid(decoder(torch.as_tensor(draws["z"][0]))).numpy()
            # image k·8 + j is class k: show class by column
            image_grid(axis, images.reshape(10, 8, -1).transpose(1, 0, 2).reshape(80, -1), 8, f"s = {scale:g}: columns are classes 0–9")
            accuracy = float((classifier.predict(draws["x"][0]) == labels).mean())
            spread = np.mean([np.linalg.norm(images[labels == k][:, None] - images[labels == k][None], axis=-1).mean() for k in range(10)])
            rows.append(f"<tr><td>{scale:g}</td><td>{accuracy:.2f}</td><td>{spread:.2f}</td></tr>")
        figure.suptitle("latent diffusion with classifier-free guidance ε = ε_u + s (ε_c − ε_u), decoded by the VAE", fontsize=10)
        figures: list[Any] = [figure]
        figures.append(
            "<p>Guided digits judged by an independent classifier (logistic regression on the real digits; chance 0.10), "
            "and the diversity within a class (mean pairwise distance of the decoded images): guidance trades one for the other.</p>"
            "<table><tr><th>s</th><th>classifier accuracy</th><th>within-class diversity</th></tr>" + "".join(rows) + "</table>"
        )
        z = torch.randn(48, latent_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        plain = torch.sigmoid(decoder(z)).numpy()
        draws = ppgen.generate(latent_diffusion, num_data=48, latent_dim=latent_dim, num_timesteps=num_timesteps, denoiser=denoiser, decoder=decoder, guidance_scale=0.0, num_samples=1, seed=2)
        composed = torch.sigmoid(decoder(torch.as_tensor(draws["z"][0]))).numpy()
        figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        image_grid(axes[0], plain, 6, "plain VAE: z ~ N(0, I), E[x | z]")
        image_grid(axes[1], composed, 6, "latent diffusion (s = 0): z from the chain, E[x | z]")
        figures.append(figure)
    return figures


#: The tour's noising-process guide (T = 50 steps on a 2-D toy set).
TOUR_GUIDE = forward_process(50)

EXAMPLES = [
    Example(
        "ddpm",
        ddpm,
        simulate_toy,
        "denoising diffusion (DDPM, T = 50) on the two-moons toy set, noising process as the guide, MLP denoiser",
        options={"svi": {"guide": TOUR_GUIDE, "subsample_size": 256, "num_steps": 800, "learning_rate": 1e-2, "num_step_groups": 2, "num_samples": 10, "num_elbo_evaluations": 2}},
        skip=("advi", "map", "mle", "importance", "nuts", "hmc", "gibbs", "mh", "meanfield", "cavi", "enumerate", "em"),
        report=report,
    ),
    Example(
        "latent_diffusion",
        ddpm,
        simulate_latents,
        "latent diffusion on the 8×8 digits: a VAE (stage 1, in the data step) and a class-conditional DDPM (T = 50) "
        "over its 8-D latents (stage 2, svi), composed by latent_diffusion; guided digits per class",
        options={"svi": {"guide": TOUR_GUIDE, "subsample_size": 128, "num_steps": 400, "learning_rate": 3e-3, "num_step_groups": 4, "num_samples": 1, "num_elbo_evaluations": 1}},
        skip=("advi", "map", "mle", "importance", "nuts", "hmc", "gibbs", "mh", "meanfield", "cavi", "enumerate", "em"),
        report=latent_report,
        structure_data=latent_structure_data,
    ),
]
