"""Cost of checking every gradient step for a non-finite loss or gradient (svi, advi).

Each step of :class:`ppgen.inference._gradient_steps.GradientSteps` saves the random state and
checks that the loss and every touched parameter's gradient are finite before the update
(``_check_finite``). This times the VAE on scikit-learn's digits (the ``bench_vae.py`` setup:
batches of 128, Adam 1e-3, analytic KL) with the check and with it replaced by a no-op, the two
sides alternating within one process; reported: the training loop's seconds per epoch (median
over repeats) and the median of the per-repeat ratios (checked ÷ unchecked), and whether both
reach the same ELBO trace (the check must not change any update).

    .venv/bin/python benchmarks/bench_nonfinite.py [--epochs 5] [--repeats 5] [--hidden 512]
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

import ppgen
from ppgen.inference._gradient_steps import GradientSteps
from ppgen.models.vae import Decoder, Encoder, load_digits_binary, vae

BATCH = 128
LEARNING_RATE = 1e-3


@contextmanager
def unchecked() -> Iterator[None]:
    original = GradientSteps._check_finite
    GradientSteps._check_finite = lambda self, *args: None
    try:
        yield
    finally:
        GradientSteps._check_finite = original


def train(x: np.ndarray, hidden: int, epochs: int, seed: int) -> tuple[float, np.ndarray]:
    encoder, decoder = Encoder(2, hidden, seed=10 + seed), Decoder(2, hidden, seed=seed)
    result = ppgen.learn(
        vae, x, latent_dim=2, decoder=decoder, engine="svi", guide=ppgen.amortize(encoder), subsample_size=BATCH,
        num_steps=epochs * (x.shape[0] // BATCH), learning_rate=LEARNING_RATE, num_samples=1, num_elbo_evaluations=1, seed=seed,
    )
    return result.diagnostics["training_seconds"] / epochs, result.traces["elbo"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x_train = load_digits_binary()[0]
    train(x_train, args.hidden, 1, seed=99)  # warm-up: the first run in a process pays one-off costs
    seconds: dict[str, list[float]] = {"checked": [], "unchecked": []}
    same = True
    for repeat in range(args.repeats):
        traces = {}
        for side in ("checked", "unchecked") if repeat % 2 == 0 else ("unchecked", "checked"):
            if side == "checked":
                per_epoch, traces[side] = train(x_train, args.hidden, args.epochs, repeat)
            else:
                with unchecked():
                    per_epoch, traces[side] = train(x_train, args.hidden, args.epochs, repeat)
            seconds[side].append(per_epoch)
        same &= bool(np.array_equal(traces["checked"], traces["unchecked"]))
        print(f"repeat {repeat}: checked {seconds['checked'][-1]:.4f} s/epoch, unchecked {seconds['unchecked'][-1]:.4f} s/epoch")
    ratio = statistics.median(a / b for a, b in zip(seconds["checked"], seconds["unchecked"]))
    print(f"VAE digits, hidden {args.hidden}, {args.epochs} epochs, {args.threads} thread(s): training loop "
          f"{statistics.median(seconds['checked']):.4f} s/epoch checked, {statistics.median(seconds['unchecked']):.4f} unchecked; "
          f"ratio {ratio:.3f} (median of per-repeat ratios); identical ELBO traces: {same}")


if __name__ == "__main__":
    main()
