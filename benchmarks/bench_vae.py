"""VAE on scikit-learn's digits: ppgen ``svi`` + ``amortize`` against a plain PyTorch loop.

Both train the same encoder and decoder (``ppgen.models.vae``, identical initial weights),
with Adam at the same learning rate, the same minibatches of 128 binarised images and the same
objective (analytic KL; Bernoulli log-likelihood scaled by N / B). Reported: seconds per epoch
(medians over repeats), the ratio ppgen ÷ PyTorch, and the training ELBO per image reached by
each after the same number of epochs (equal ELBO: the two implement the same estimator).
Then, for the ppgen model, held-out ELBO and per-image IWAE (K = 1000) via the importance engine.

Run: ``.venv/bin/python benchmarks/bench_vae.py [--epochs 10] [--repeats 3] [--hidden 512]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import ppgen
from ppgen.models.vae import Decoder, Encoder, load_digits_binary, vae

BATCH = 128
LEARNING_RATE = 1e-3


def plain_pytorch(x: torch.Tensor, encoder: Encoder, decoder: Decoder, epochs: int, seed: int) -> tuple[float, float]:
    """The textbook loop; returns (seconds per epoch, last-epoch mean ELBO per image)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=LEARNING_RATE)
    size = x.shape[0]
    steps = size // BATCH
    elbos = []
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(size)
        elbos = []
        for step in range(steps):
            batch = x[order[step * BATCH:(step + 1) * BATCH]]
            loc, scale = encoder(batch)
            z = loc + scale * torch.randn_like(loc)
            logits = decoder(z)
            log_likelihood = -torch.nn.functional.binary_cross_entropy_with_logits(logits, batch, reduction="sum")
            kl = (0.5 * (loc**2 + scale**2 - 1.0) - torch.log(scale)).sum()
            elbo = (size / BATCH) * (log_likelihood - kl)
            optimizer.zero_grad()
            (-elbo).backward()
            optimizer.step()
            elbos.append(float(elbo.detach()) / size)
    return (time.perf_counter() - start) / epochs, float(np.mean(elbos))


def ppgen_svi(x: np.ndarray, encoder: Encoder, decoder: Decoder, epochs: int, seed: int) -> tuple[float, float, ppgen.Result]:
    steps = epochs * (x.shape[0] // BATCH)
    start = time.perf_counter()
    result = ppgen.learn(
        vae, x, latent_dim=encoder.latent_dim, decoder=decoder, engine="svi", guide=ppgen.amortize(encoder),
        subsample_size=BATCH, num_steps=steps, learning_rate=LEARNING_RATE, num_samples=1, num_elbo_evaluations=1, seed=seed,
    )
    seconds = time.perf_counter() - start
    last_epoch = result.traces["elbo"][-(x.shape[0] // BATCH):]
    return seconds / epochs, result.diagnostics["training_seconds"] / epochs, float(last_epoch.mean() / x.shape[0]), result


def held_out(result: ppgen.Result, x_test: np.ndarray, num_images: int) -> tuple[float, float]:
    """Per-image held-out ELBO (Monte Carlo, 100 draws) and IWAE (K = 1000, importance engine)."""
    from pyro.infer import TraceMeanField_ELBO

    from ppgen.backend import torch_precision, use_backend

    decoder, encoder = result.diagnostics["modules"]["theta"], result.diagnostics["modules"]["phi"]
    images = x_test[:num_images]
    with use_backend("pyro"), torch_precision(), torch.no_grad():
        guide = ppgen.amortize(encoder)
        elbo = np.mean([-TraceMeanField_ELBO().loss(vae, guide, torch.as_tensor(images), decoder=decoder) for _ in range(100)])
    iwae = [ppgen.score(vae, image[None], decoder=decoder, engine="importance", guide=ppgen.amortize(encoder), num_samples=1000).value for image in images]
    return float(elbo / len(images)), float(np.mean(iwae))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--latent-dim", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test-images", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x_train, _, x_test, _ = load_digits_binary()
    x_torch = torch.as_tensor(x_train)
    print(f"digits: {len(x_train)} train / {len(x_test)} test images, batch {BATCH}, hidden {args.hidden}, "
          f"latent {args.latent_dim}, {args.epochs} epochs, float64, {args.threads} thread(s)")
    plain_times, ppgen_times, loop_times, plain_elbos, ppgen_elbos = [], [], [], [], []
    result = None
    for repeat in range(args.repeats):
        # identical networks (same seeds) for both sides
        seconds, elbo = plain_pytorch(x_torch, Encoder(args.latent_dim, args.hidden, seed=10 + repeat), Decoder(args.latent_dim, args.hidden, seed=repeat), args.epochs, repeat)
        plain_times.append(seconds)
        plain_elbos.append(elbo)
        seconds, loop, elbo, result = ppgen_svi(x_train, Encoder(args.latent_dim, args.hidden, seed=10 + repeat), Decoder(args.latent_dim, args.hidden, seed=repeat), args.epochs, repeat)
        ppgen_times.append(seconds)
        loop_times.append(loop)
        ppgen_elbos.append(elbo)
        print(f"repeat {repeat}: pytorch {plain_times[-1]:.3f} s/epoch (ELBO {plain_elbos[-1]:.2f}), "
              f"ppgen {ppgen_times[-1]:.3f} s/epoch incl. setup, {loop_times[-1]:.3f} training loop (ELBO {ppgen_elbos[-1]:.2f})")
    plain, ours, loop = statistics.median(plain_times), statistics.median(ppgen_times), statistics.median(loop_times)
    print(f"median seconds per epoch: pytorch {plain:.3f}, ppgen {ours:.3f} (whole call: inspect, training, final ELBO, draws), "
          f"ppgen training loop {loop:.3f}")
    print(f"ratio ppgen/pytorch: whole call {ours / plain:.2f}, training loop {loop / plain:.2f}")
    print(f"training ELBO per image after {args.epochs} epochs (median): pytorch {statistics.median(plain_elbos):.2f}, "
          f"ppgen {statistics.median(ppgen_elbos):.2f}")
    elbo, iwae = held_out(result, x_test, args.test_images)
    print(f"held-out ({args.test_images} images, last ppgen model): ELBO {elbo:.2f}, IWAE(K=1000) {iwae:.2f} nats per image")


if __name__ == "__main__":
    main()
