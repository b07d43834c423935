"""Train a WGAN-GP on the 8-Gaussians toy set data-parallel: the same script runs in one process or
under torchrun.

One process:      python examples/distributed_gan.py
Two processes:    torchrun --standalone --nproc-per-node 2 examples/distributed_gan.py

Under torchrun, ppgen initialises torch.distributed (gloo) from the environment torchrun sets;
every step's global minibatch of ``--batch`` points is split into one shard per process. The
generator's noise and the gradient penalty's interpolation weights are drawn for the global batch
from the shared seed, each process scores its shard, and the critic's and the generator's
gradients are averaged over the processes, so the loss traces and the trained networks are those
of the single process at the same global batch and seed (up to rounding). Only rank 0 prints and
saves the generator.

Options: [--num-data N] [--batch B] [--num-steps S] [--output generator.pt]
"""

import argparse

import torch

import ppgen
from ppgen.models._toy2d import sample_toy2d
from ppgen.models.gan import gan, make_generator


def main(num_data: int = 2048, batch: int = 256, num_steps: int = 500, output: str = "generator.pt") -> None:
    x = sample_toy2d("8gaussians", num_data, seed=0)
    result = ppgen.learn(
        gan, x=x, generator=make_generator(), engine="adversarial", loss="wgan-gp",
        subsample_size=min(batch, num_data), num_steps=num_steps, learning_rate=3e-4, progress=True,
    )
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank == 0:
        critic = result.traces["critic_loss"]
        print(f"{num_data} points, {result.diagnostics['processes']} process(es): critic loss {critic[0]:.3f} -> {critic[-10:].mean():.3f}")
        torch.save(result.diagnostics["modules"]["generator"].state_dict(), output)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-data", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--num-steps", type=int, default=500)
    parser.add_argument("--output", default="generator.pt")
    options = parser.parse_args()
    main(options.num_data, options.batch, options.num_steps, options.output)
