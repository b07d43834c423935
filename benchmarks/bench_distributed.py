"""Data-parallel gradient steps under torchrun: seconds per training step with P = 1 and P = 2
processes at the same global batch and seed, and the check that the loss traces agree.

Workloads (catalogue programs and networks, seeded):

* ``adversarial``: ``gan`` on the 8-Gaussians set, WGAN-GP (5 critic steps per generator step),
  N = 4096 points, global batch ``--batch`` (512);
* ``diffusion``: ``ddpm`` with T = 100 steps on the same set, ``forward_process`` guide, global
  batch ``--batch``;
* ``vae``: the digits VAE (``svi`` with an amortised guide), global batch 128.

P = 1 runs in a fresh ``python`` process, P = 2 under ``python -m torch.distributed.run
--standalone --nproc-per-node 2`` (gloo on the loopback interface; one thread per process).
Reported: training seconds per step (``diagnostics["training_seconds"]`` over the steps: the
program's inspection is not timed), the ratio P = 2 / P = 1, and the largest relative difference
between the two loss traces (rounding only). With both cores free the ratio is what
data parallelism buys on one machine; on a loaded machine it means little.

    .venv/bin/python benchmarks/bench_distributed.py [--engines adversarial diffusion vae] [--num-steps 100] [--batch 512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np


def work(engine: str, num_steps: int, batch: int) -> dict:
    """One fit, as a user's script would run it (under torchrun or not)."""
    import torch

    import ppgen
    from ppgen.models._toy2d import sample_toy2d

    torch.set_num_threads(1)
    if engine == "adversarial":
        from ppgen.models.gan import gan, make_generator

        result = ppgen.learn(
            gan, x=sample_toy2d("8gaussians", 4096, seed=0), generator=make_generator(), engine="adversarial", loss="wgan-gp",
            subsample_size=batch, num_steps=num_steps, learning_rate=3e-4,
        )
        trace = result.traces["critic_loss"]
    elif engine == "diffusion":
        from ppgen.models.diffusion import ddpm, forward_process, make_denoiser

        result = ppgen.learn(
            ddpm, x=sample_toy2d("8gaussians", 4096, seed=0), num_timesteps=100, denoiser=make_denoiser(2), engine="svi",
            guide=forward_process(100), subsample_size=batch, num_steps=num_steps, learning_rate=1e-3, num_elbo_evaluations=1,
        )
        trace = result.traces["elbo"]
    elif engine == "vae":
        from ppgen.models.vae import Decoder, Encoder, load_digits_binary, vae

        x = load_digits_binary()[0]
        result = ppgen.learn(
            vae, x, decoder=Decoder(latent_dim=2), engine="svi", guide=ppgen.amortize(Encoder(latent_dim=2), latent="z"),
            subsample_size=128, num_steps=num_steps, learning_rate=1e-3, num_samples=1, num_elbo_evaluations=1,
        )
        trace = result.traces["elbo"]
    else:
        raise ValueError(f"unknown engine {engine!r}")
    return {
        "processes": result.diagnostics["processes"],
        "seconds_per_step": result.diagnostics["training_seconds"] / num_steps,
        "trace": [float(v) for v in trace],
    }


def launch(processes: int, engine: str, num_steps: int, batch: int) -> dict:
    """The fit in fresh processes: plain python for P = 1, torchrun's launcher otherwise."""
    script = [os.path.abspath(__file__), "--worker", engine, "--num-steps", str(num_steps), "--batch", str(batch)]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *script]
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["adversarial", "diffusion", "vae"])
    parser.add_argument("--num-steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        import torch

        record = work(options.worker, options.num_steps, options.batch)
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            print(json.dumps(record), flush=True)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        return
    print("| workload | P = 1 s/step | P = 2 s/step | P = 2 / P = 1 | traces' max relative difference |")
    print("|---|---|---|---|---|")
    for engine in options.engines:
        one, two = (launch(p, engine, options.num_steps, options.batch) for p in (1, 2))
        a, b = np.asarray(one["trace"]), np.asarray(two["trace"])
        difference = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))
        print(
            f"| {engine} | {one['seconds_per_step']:.4f} | {two['seconds_per_step']:.4f} | "
            f"{two['seconds_per_step'] / one['seconds_per_step']:.2f} | {difference:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
