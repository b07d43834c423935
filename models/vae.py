"""The variational autoencoder on scikit-learn's handwritten digits (8 × 8, 1797 images).

z_i ~ Normal(0, I_K);  x_i ~ Bernoulli(σ(f_θ(z_i))) over the 64 binarised pixels, i = 1..N,

with f_θ an MLP decoder. Trained with ``engine="svi"`` and the amortised guide
``ppgen.amortize(Encoder(...), latent="z")``, q_φ(z_i | x_i) = Normal(μ_φ(x_i), σ_φ(x_i)) (Kingma &
Welling 2014), or ``ppgen.amortize(Encoder(...), latent="z", flow=make_flow("iaf", K))``, the same
Gaussian pushed through an inverse autoregressive flow (Kingma et al. 2016), a posterior that can
bend. :func:`report` draws what the tour shows: digits generated from the prior,
reconstructions, the 2-D latent space coloured by digit, and the held-out ELBO and IWAE per
image, which the tour gives for both guides side by side (``vae`` and ``vae_iaf``).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ppgen import dist, module, plate, sample
from ppgen.amortize import amortize
from ppgen.backend import torch_precision
from ppgen.catalogue import Example, Simulated
from ppgen.models._figures import image_grid
from ppgen.models._networks import seeded_mlp

NUM_PIXELS = 64


class Decoder(torch.nn.Module):
    """MLP z (K) → hidden → hidden → pixel logits (64)."""

    def __init__(self, latent_dim: int = 2, hidden: int = 128, num_pixels: int = NUM_PIXELS, seed: int = 0) -> None:
        super().__init__()
        self.net = seeded_mlp([latent_dim, hidden, hidden, num_pixels], torch.Generator().manual_seed(seed))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Encoder(torch.nn.Module):
    """MLP pixels (64) → hidden → hidden → (loc, scale) of q(z | x), each (K), and, with
    ``context_dim`` C > 0, a context h (C) for a conditional flow (``make_flow("iaf", K, context_dim=C)``)."""

    def __init__(self, latent_dim: int = 2, hidden: int = 128, num_pixels: int = NUM_PIXELS, seed: int = 1, context_dim: int = 0) -> None:
        super().__init__()
        self.sizes = [latent_dim, latent_dim] + ([context_dim] if context_dim else [])
        self.net = seeded_mlp([num_pixels, hidden, hidden, sum(self.sizes)], torch.Generator().manual_seed(seed))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loc, raw_scale, *context = self.net(x).split(self.sizes, -1)
        return (loc, torch.nn.functional.softplus(raw_scale) + 1e-4, *context)


def vae(x: Optional[Any] = None, num_data: int = 100, latent_dim: int = 2, decoder: Optional[torch.nn.Module] = None) -> None:
    """Variational autoencoder with Bernoulli pixels.

    Parameters
    ----------
    x : array of shape (N, 64) with values in {0, 1}, or None to generate ``num_data`` images.
    latent_dim : K, the dimension of z (2 to 16).
    decoder : the network f_θ (a :class:`Decoder`); it is trained in place of θ, so pass it
        whenever ``x`` is given. Without one, a fixed seeded decoder generates images.
    """
    if decoder is None:
        if x is not None:
            raise ValueError("vae: pass decoder=Decoder(latent_dim) (the network to train) together with x")
        decoder = Decoder(latent_dim)
    n = num_data if x is None else x.shape[0]
    module("theta", decoder)
    with plate("N", n):
        z = sample("z", dist.Normal(0.0, 1.0).expand([latent_dim]).to_event(1))
        logits = decoder(z)
        sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def load_digits_binary(test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits, pixels binarised at half intensity (> 8 of 16), split into
    train and test sets: (x_train, y_train, x_test, y_test), x as float64 (N, 64)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data > 8).astype(np.float64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(round(len(x) * (1 - test_fraction)))
    train, test = order[:cut], order[cut:]
    return x[train], digits.target[train], x[test], digits.target[test]


def simulate_digits(latent_dim: int = 2, seed: int = 0) -> Simulated:
    """The digits training set and a freshly initialised decoder (the tour's data)."""
    x_train, y_train, x_test, y_test = load_digits_binary(seed=seed)
    return Simulated(
        {"x": x_train, "latent_dim": latent_dim, "decoder": Decoder(latent_dim, seed=seed)},
        {"labels": y_train, "x_test": x_test, "labels_test": y_test},
    )


# --------------------------------------------------------------------------------------------
# held-out bounds


def elbo_and_iwae(
    decoder: torch.nn.Module, encoder: torch.nn.Module, x: Any, num_samples: int = 64, seed: int = 0,
    flow: Optional[torch.nn.Module] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image ELBO and IWAE bound (nats) of images ``x`` (N, 64) under a trained decoder and
    guide, with S = ``num_samples`` draws z_s ~ q(z | x): the encoder's Normal(μ_φ(x), σ_φ(x)),
    pushed through ``flow`` when given (the guide ``ppgen.amortize(encoder, flow=flow)``),

        log w_s = log p(x | z_s) + log p(z_s) − log q(z_s | x),
        ELBO = (1/S) Σ_s log w_s  ≤  IWAE_S = log (1/S) Σ_s w_s  ≤  log p(x)

    (Burda, Grosse & Salakhutdinov 2016: IWAE_S increases with S to log p(x)). Returns two
    arrays of shape (N,).
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad(), torch_precision(torch.float64):  # Pyro's flow layers allocate in the default dtype
        q = amortize(encoder, flow=flow).distribution(x)
        base = q.base_dist if flow is not None else q
        loc, scale = base.base_dist.loc, base.base_dist.scale
        noise = torch.randn((num_samples,) + tuple(loc.shape), generator=generator, dtype=torch.float64)
        z = loc + scale * noise  # (S, N, K)
        for transform in getattr(q, "transforms", []):  # each layer caches (input, output): log q needs no inverse
            z = transform(z)
        logits = decoder(z.to(next(decoder.parameters()).dtype)).to(torch.float64)
        log_likelihood = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_w = log_likelihood + log_prior - q.log_prob(z)
        elbo = log_w.mean(0)
        iwae = torch.logsumexp(log_w, 0) - np.log(num_samples)
    return elbo.numpy(), iwae.numpy()


def posterior_centre(encoder: torch.nn.Module, x: Any, flow: Optional[torch.nn.Module] = None) -> torch.Tensor:
    """z = f(μ_φ(x)) for images x (N, 64): the encoder's mean, through the guide's flow if any
    (the point the tour draws for each image and decodes as its reconstruction)."""
    with torch.no_grad(), torch_precision(torch.float64):
        q = amortize(encoder, flow=flow).distribution(torch.as_tensor(np.asarray(x), dtype=torch.float64))
        z = (q.base_dist if flow is not None else q).base_dist.loc
        for transform in getattr(q, "transforms", []):
            z = transform(z)
    return z


# --------------------------------------------------------------------------------------------
# what the tour shows


def report(example: Example, simulated: Simulated, result: Any) -> list[Any]:
    """Figures for the tour: generated digits, reconstructions and the latent space."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modules = result.diagnostics.get("modules", {}) if result is not None else {}
    decoder, encoder, flow = modules.get("theta"), modules.get("phi"), modules.get("phi_flow")
    if decoder is None:
        return []
    latent_dim = int(simulated.data.get("latent_dim", 2))
    generator = torch.Generator().manual_seed(0)
    figures = []
    with torch.no_grad():
        z = torch.randn(48, latent_dim, generator=generator, dtype=torch.float64)
        generated = torch.sigmoid(decoder(z)).numpy()
        figure, axis = plt.subplots(figsize=(6, 4.2))
        image_grid(axis, generated, 6, "digits generated from the prior: E[x | z], z ~ N(0, I)")
        figures.append(figure)
        if encoder is not None:
            x_test = torch.as_tensor(simulated.truth["x_test"][:16])
            reconstructed = torch.sigmoid(decoder(posterior_centre(encoder, x_test, flow))).numpy()
            figure, axes = plt.subplots(1, 2, figsize=(8, 2.6))
            image_grid(axes[0], x_test.numpy(), 2, "held-out digits")
            image_grid(axes[1], reconstructed, 2, "reconstructions E[x | z = μ_φ(x)]" if flow is None else "reconstructions E[x | z = f(μ_φ(x))]")
            figures.append(figure)
            figures.append(_bounds_html(decoder, encoder, simulated.truth["x_test"], flow=flow))
            if latent_dim == 2:
                loc = posterior_centre(encoder, simulated.data["x"], flow)
                figure, axis = plt.subplots(figsize=(5, 4.5))
                points = axis.scatter(loc[:, 0].numpy(), loc[:, 1].numpy(), c=simulated.truth["labels"], cmap="tab10", s=6)
                figure.colorbar(points, ax=axis, label="digit")
                axis.set_xlabel("z₁ (encoder mean)" if flow is None else "z₁ (encoder mean through the flow)")
                axis.set_ylabel("z₂")
                axis.set_title("latent space of the training digits", fontsize=9)
                figures.append(figure)
    return figures


def _bounds_html(
    decoder: torch.nn.Module, encoder: torch.nn.Module, x_test: np.ndarray, num_samples: int = 64, flow: Optional[torch.nn.Module] = None
) -> str:
    """The held-out ELBO and IWAE per image, in nats and bits per pixel, as an HTML table."""
    elbo, iwae = elbo_and_iwae(decoder, encoder, x_test, num_samples, flow=flow)
    guide = "diagonal Gaussian guide" if flow is None else "IAF guide (the encoder's Gaussian through an inverse autoregressive flow)"
    rows = []
    for name, values in ((f"ELBO (S = {num_samples} draws averaged)", elbo), (f"IWAE (S = {num_samples})", iwae)):
        mean, stderr = values.mean(), values.std(ddof=1) / np.sqrt(len(values))
        bits = -mean / (NUM_PIXELS * np.log(2.0))
        rows.append(f"<tr><td>{name}</td><td>{mean:.2f} ± {stderr:.2f}</td><td>{bits:.3f}</td></tr>")
    return (
        f"<p>Held-out bounds on log p(x) with the {guide}, per image (mean ± standard error over {len(x_test)} test images): "
        "ELBO ≤ IWAE ≤ log p(x).</p><table><tr><th>bound</th><th>nats per image</th><th>bound on −log₂ p(x) per pixel (bits)</th></tr>"
        + "".join(rows) + "</table>"
    )


#: The tour's amortised guide (svi trains a copy of this encoder on every run).
TOUR_GUIDE = amortize(Encoder(2), latent="z")
IAF_CONTEXT = 16  # size of the encoder's context h for the flow (Kingma et al. 2016 use an encoder output too)


def make_iaf_guide(latent_dim: int = 2, context_dim: int = IAF_CONTEXT, num_layers: int = 2, hidden: int = 32, seed: int = 1) -> Any:
    """q(z | x): the encoder's Normal(μ_φ(x), σ_φ(x)) through ``num_layers`` inverse autoregressive
    layers conditioned on the encoder's context h_φ(x) (Kingma et al. 2016), a fresh seeded one."""
    from ppgen.models.flows import make_flow

    flow = make_flow("iaf", latent_dim, num_layers=num_layers, hidden=hidden, seed=seed, context_dim=context_dim)
    return amortize(Encoder(latent_dim, seed=seed, context_dim=context_dim), latent="z", flow=flow)


#: The tour's IAF guide, trained like the Gaussian one (same steps, rate and batches).
TOUR_IAF_GUIDE = make_iaf_guide()
_SVI = {"subsample_size": 128, "num_steps": 500, "learning_rate": 3e-3, "num_samples": 10}
_SKIP = ("advi", "map", "mle", "importance", "nuts", "hmc", "gibbs", "mh", "meanfield", "cavi", "enumerate", "em")

EXAMPLES = [
    Example(
        "vae",
        vae,
        simulate_digits,
        "variational autoencoder on scikit-learn's 8×8 digits, MLP encoder/decoder, 2-D latent space",
        options={"svi": {"guide": TOUR_GUIDE, **_SVI}},
        skip=_SKIP,
        report=report,
    ),
    Example(
        "vae_iaf",
        vae,
        simulate_digits,
        "the same VAE with an IAF guide: the encoder's Gaussian through two inverse autoregressive layers conditioned on "
        "an encoder context (Kingma et al. 2016); held-out ELBO per image next to the Gaussian guide's above",
        options={"svi": {"guide": TOUR_IAF_GUIDE, **_SVI}},
        skip=_SKIP,
        report=report,
    ),
]
