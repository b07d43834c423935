"""Train the digits VAE data-parallel: the same script runs in one process or under torchrun.

One process:      python examples/distributed_vae.py
Two processes:    torchrun --standalone --nproc-per-node 2 examples/distributed_vae.py

Under torchrun, ppgen initialises torch.distributed (gloo) from the environment torchrun sets;
every step's global minibatch of ``--batch`` images is split into one shard per process, each
process computes the ELBO's gradient on its shard, and the gradients are averaged, so the
ELBO trace and the trained networks are those of the single process at the same global batch
and seed (up to rounding). Only rank 0 prints and saves the decoder.

Options: [--num-data N] [--batch B] [--num-steps S] [--output decoder.pt]
"""

import argparse

import torch

import ppgen
from ppgen.models.vae import Decoder, Encoder, load_digits_binary, vae


def main(num_data: int = 1437, batch: int = 128, num_steps: int = 300, output: str = "decoder.pt") -> None:
    x_train, _, _, _ = load_digits_binary()
    x = x_train[:num_data]
    result = ppgen.learn(
        vae, x, decoder=Decoder(latent_dim=2), engine="svi", guide=ppgen.amortize(Encoder(latent_dim=2), latent="z"),
        subsample_size=min(batch, len(x)), num_steps=num_steps, learning_rate=1e-3, num_samples=8, progress=True,
    )
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank == 0:
        elbo = result.traces["elbo"]
        print(f"{len(x)} images, {result.diagnostics['processes']} process(es): ELBO {elbo[0]:.1f} -> {elbo[-10:].mean():.1f} "
              f"(per image {result.log_evidence.value / len(x):.2f})")
        torch.save(result.diagnostics["modules"]["theta"].state_dict(), output)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-data", type=int, default=1437)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--num-steps", type=int, default=300)
    parser.add_argument("--output", default="decoder.pt")
    options = parser.parse_args()
    main(options.num_data, options.batch, options.num_steps, options.output)
