"""Diffusion: ppgen's DDPM program vs plain PyTorch loops with the same denoiser.

1. Training step: ``ppgen.learn(ddpm, engine="svi", guide=forward_process(T))`` (the step-sampled
   ELBO, ``weighting="simple"``) against a plain loop computing ‖ε − ε_θ(x_t, t)‖² for the same
   network, batch size B and Adam; seconds per step (median over repeats).
2. Ancestral sampling of 1,000 points in T steps: ``ppgen.generate(ddpm, ...)`` against a plain
   loop of the same T updates.
3. DDIM with 50 steps (``ppgen.generate(ddim, ...)``) against 1,000-step ancestral sampling, and,
   when ``ppgen.evaluate`` is available (issue 15), the Fréchet distance of both to held-out
   digits in the digit feature network's features.

    .venv/bin/python benchmarks/bench_diffusion.py [--quick] [--repeats 3] [--threads N] [--no-frechet] [--clock cpu]

``--clock cpu`` times the training step by the process's CPU time (``time.process_time``), which a
loaded machine disturbs less than the wall clock; run it with ``--threads 1``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import statistics
import time

import numpy as np
import torch

import ppgen
from ppgen.models._toy2d import sample_toy2d
from ppgen.models.diffusion import NoisingProcess, ddim, ddpm, forward_process, make_denoiser


def plain_training(net: torch.nn.Module, x: torch.Tensor, num_timesteps: int, batch: int, num_steps: int, learning_rate: float, clock=time.perf_counter) -> float:
    """Seconds per step of the textbook DDPM loop (Ho et al. Algorithm 1), t per datum."""
    process = NoisingProcess(num_timesteps)
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    start = clock()
    for _ in range(num_steps):
        index = torch.randint(0, len(x), (batch,))
        x0 = x[index]
        t = torch.randint(1, num_timesteps + 1, (batch,))
        a = process.alphas_cumprod[t][:, None]
        noise = torch.randn_like(x0)
        loss = ((noise - net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t)) ** 2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (clock() - start) / num_steps


def ppgen_training(net: torch.nn.Module, x: np.ndarray, num_timesteps: int, batch: int, num_steps: int, learning_rate: float, num_step_groups, clock=time.perf_counter) -> float:
    """Seconds per step of ``learn(ddpm, engine="svi")``: svi's own training time (its loop only,
    not the setup or the final ELBO), read on ``clock`` (svi's module clock swapped for the run)."""
    import types

    svi_module = importlib.import_module("ppgen.inference.svi")
    saved = svi_module.time
    svi_module.time = types.SimpleNamespace(perf_counter=clock)
    try:
        result = ppgen.learn(
            ddpm, x=x, num_timesteps=num_timesteps, denoiser=copy.deepcopy(net), engine="svi", guide=forward_process(num_timesteps),
            subsample_size=batch, num_steps=num_steps, learning_rate=learning_rate, num_elbo_evaluations=1, num_samples=1,
            num_step_groups=num_step_groups,
        )
    finally:
        svi_module.time = saved
    return result.diagnostics["training_seconds"] / num_steps


@torch.no_grad()
def plain_sampling(net: torch.nn.Module, num_points: int, num_timesteps: int) -> np.ndarray:
    process = NoisingProcess(num_timesteps)
    x = torch.randn(num_points, 2, dtype=torch.float64)
    for t in range(num_timesteps, 0, -1):
        beta, a = process.betas[t - 1], process.alphas_cumprod[t]
        mean = (x - beta / (1 - a).sqrt() * net(x, torch.full((num_points,), t))) / (1 - beta).sqrt()
        x = mean + beta.sqrt() * torch.randn_like(x)
    return x.numpy()


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return time.perf_counter() - start, value


def frechet_part(quick: bool) -> None:
    try:
        from ppgen.evaluate import digit_features, frechet_distance
    except ImportError as error:
        print(f"Fréchet distance: skipped, needs ppgen.evaluate (frechet_distance, digit_features) from issue 15 ({error})")
        return
    from ppgen.models.vae import load_digits_binary

    x_train, _, x_test, _ = load_digits_binary()
    scaled = 2 * x_train - 1
    net = make_denoiser(64, hidden=256)
    result = ppgen.learn(
        ddpm, x=scaled, num_timesteps=1000, denoiser=net, engine="svi", guide=forward_process(1000),
        subsample_size=128, num_steps=2000 if quick else 20000, learning_rate=1e-3, num_elbo_evaluations=1,
    )
    trained = result.diagnostics["modules"]["theta"]
    real = digit_features(x_test)
    for name, program, options in (("ancestral, 1000 steps", ddpm, {}), ("DDIM η=0, 50 steps", ddim, {"num_sampling_steps": 50})):
        seconds, draws = timed(ppgen.generate, program, num_data=len(x_test), dim=64, num_timesteps=1000, denoiser=trained, num_samples=1, **options)
        fake = (np.clip(draws["x"][0], -1, 1) + 1) / 2
        print(f"{name}: {seconds:.2f} s, Fréchet distance {frechet_distance(real, digit_features(fake)):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: library default)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time, or the process's CPU time (training)")
    parser.add_argument("--only", choices=("training", "sampling"), default=None, help="run one part")
    parser.add_argument("--no-frechet", action="store_true", help="skip the Fréchet-distance part (trains a digits denoiser)")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    num_timesteps, batch, learning_rate = 1000, 256, 1e-3
    num_steps = 100 if options.quick else 500
    clock = time.process_time if options.clock == "cpu" else time.perf_counter
    # 2,000 points: svi's final full-data ELBO (T terms) stays short
    x = sample_toy2d("moons", 2_000, seed=0)
    network = make_denoiser(2, hidden=128)

    # ddpm declares its chain (ppgen.chain): every datum its own t, one denoiser call per step
    # (num_step_groups=None); K = 8 levels of t only stratify the draw, the cost is the same
    groups = (None, 8) if options.only != "sampling" else ()
    plain, ours = [], {k: [] for k in groups}
    for _ in range(options.repeats if groups else 0):  # interleaved, same starting network each time
        plain.append(plain_training(copy.deepcopy(network), torch.as_tensor(x), num_timesteps, batch, num_steps, learning_rate, clock))
        for k in groups:
            ours[k].append(ppgen_training(network, x, num_timesteps, batch, num_steps, learning_rate, k, clock))
    for k in groups:
        p = statistics.median(plain)
        o = statistics.median(ours[k])
        label = "t per datum" if k is None else f"K = {k} levels of t"
        print(f"training step (B = {batch}, T = {num_timesteps}, {label}, {options.clock} clock): plain {p * 1e3:.2f} ms, ppgen svi {o * 1e3:.2f} ms, ratio {o / p:.2f} (target <= 1.2)")

    if options.only == "training":
        return
    plain, ours, fast = [], [], []
    for _ in range(options.repeats):
        plain.append(timed(plain_sampling, network, 1000, num_timesteps)[0])
        ours.append(timed(ppgen.generate, ddpm, num_data=1000, num_timesteps=num_timesteps, denoiser=network, num_samples=1)[0])
        fast.append(timed(ppgen.generate, ddim, num_data=1000, num_timesteps=num_timesteps, num_sampling_steps=50, denoiser=network, num_samples=1)[0])
    p, o, f = (statistics.median(v) for v in (plain, ours, fast))
    print(f"ancestral sampling, 1000 points, T = {num_timesteps}: plain {p:.3f} s, ppgen {o:.3f} s, ratio {o / p:.2f} (target <= 1.2)")
    print(f"DDIM 50 steps: {f:.3f} s, {o / f:.1f}x faster than 1000-step ancestral sampling (target >= 15x)")
    if not options.no_frechet:
        frechet_part(options.quick)


if __name__ == "__main__":
    main()
