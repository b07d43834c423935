"""VAE on scikit-learn's digits: ppgen ``svi`` + ``amortize`` against a plain PyTorch loop.

Both train the same encoder and decoder (``ppgen.models.vae``, identical initial weights),
with Adam at the same learning rate, the same minibatches of 128 binarised images and the same
objective (analytic KL; Bernoulli log-likelihood scaled by N / B). Reported: seconds per epoch
(medians over repeats), the ratio ppgen ÷ PyTorch, and the training ELBO per image reached by
each after the same number of epochs (equal ELBO: the two implement the same estimator).
Then, for the ppgen model, held-out ELBO and per-image IWAE (K = 1000) via the importance engine.

The machine may be shared, so the two sides alternate (ABAB..., the first side swapping every
repeat, so a load change hits both), ratios are taken per repeat and their median reported, and
process CPU time is reported next to wall time (less sensitive to other processes' load).

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


def plain_pytorch(x: torch.Tensor, encoder: Encoder, decoder: Decoder, epochs: int, seed: int) -> tuple[float, float, float]:
    """The textbook loop; returns (seconds per epoch, CPU seconds per epoch, last-epoch mean
    ELBO per image)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=LEARNING_RATE)
    size = x.shape[0]
    steps = size // BATCH
    elbos = []
    start, cpu_start = time.perf_counter(), time.process_time()
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
    return (time.perf_counter() - start) / epochs, (time.process_time() - cpu_start) / epochs, float(np.mean(elbos))


def ppgen_svi(x: np.ndarray, encoder: Encoder, decoder: Decoder, epochs: int, seed: int) -> tuple[float, float, float, float, ppgen.Result]:
    """One ``ppgen.learn`` call; returns (seconds per epoch of the whole call, of its training
    loop, CPU seconds per epoch of the whole call, last-epoch mean ELBO per image, the result)."""
    steps = epochs * (x.shape[0] // BATCH)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = ppgen.learn(
        vae, x, latent_dim=encoder.latent_dim, decoder=decoder, engine="svi", guide=ppgen.amortize(encoder),
        subsample_size=BATCH, num_steps=steps, learning_rate=LEARNING_RATE, num_samples=1, num_elbo_evaluations=1, seed=seed,
    )
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    last_epoch = result.traces["elbo"][-(x.shape[0] // BATCH):]
    return seconds / epochs, result.diagnostics["training_seconds"] / epochs, cpu / epochs, float(last_epoch.mean() / x.shape[0]), result


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
    rows: dict[str, list[float]] = {key: [] for key in ("plain", "plain_cpu", "whole", "loop", "whole_cpu", "plain_elbo", "ppgen_elbo")}
    result = None
    for repeat in range(args.repeats):
        # identical networks (same seeds) for both sides; the side that goes first alternates
        for side in ("pytorch", "ppgen") if repeat % 2 == 0 else ("ppgen", "pytorch"):
            encoder, decoder = Encoder(args.latent_dim, args.hidden, seed=10 + repeat), Decoder(args.latent_dim, args.hidden, seed=repeat)
            if side == "pytorch":
                measured = dict(zip(("plain", "plain_cpu", "plain_elbo"), plain_pytorch(x_torch, encoder, decoder, args.epochs, repeat)))
            else:
                *timings, result = ppgen_svi(x_train, encoder, decoder, args.epochs, repeat)
                measured = dict(zip(("whole", "loop", "whole_cpu", "ppgen_elbo"), timings))
            for key, value in measured.items():
                rows[key].append(value)
        print(f"repeat {repeat}: pytorch {rows['plain'][-1]:.3f} s/epoch (CPU {rows['plain_cpu'][-1]:.3f}, ELBO {rows['plain_elbo'][-1]:.2f}), "
              f"ppgen {rows['whole'][-1]:.3f} s/epoch whole call (CPU {rows['whole_cpu'][-1]:.3f}), {rows['loop'][-1]:.3f} training loop "
              f"(ELBO {rows['ppgen_elbo'][-1]:.2f}); ratios: loop {rows['loop'][-1] / rows['plain'][-1]:.2f}, whole call {rows['whole'][-1] / rows['plain'][-1]:.2f}")
    median = {key: statistics.median(values) for key, values in rows.items()}
    ratios = {key: statistics.median(a / b for a, b in zip(rows[key], rows[base])) for key, base in (("loop", "plain"), ("whole", "plain"), ("whole_cpu", "plain_cpu"))}
    print(f"median seconds per epoch: pytorch {median['plain']:.3f}, ppgen training loop {median['loop']:.3f}, "
          f"ppgen whole call {median['whole']:.3f} (inspect, training, final ELBO, draws)")
    print(f"ratio ppgen/pytorch (median over repeats of the per-repeat ratio): training loop {ratios['loop']:.2f}, "
          f"whole call {ratios['whole']:.2f}; CPU time, whole call {ratios['whole_cpu']:.2f}")
    print(f"training ELBO per image after {args.epochs} epochs (median): pytorch {median['plain_elbo']:.2f}, ppgen {median['ppgen_elbo']:.2f}")
    elbo, iwae = held_out(result, x_test, args.test_images)
    print(f"held-out ({args.test_images} images, last ppgen model): ELBO {elbo:.2f}, IWAE(K=1000) {iwae:.2f} nats per image")


if __name__ == "__main__":
    main()
