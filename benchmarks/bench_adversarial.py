"""Adversarial step: ppgen's ``adversarial`` engine vs a plain PyTorch GAN loop.

The same networks (the catalogue's ``make_generator`` and the engine's default critic, copies of
the same seeded weights), the same Adam optimisers (learning rates, betas), the same minibatch
size and the same losses on both sides. One *step* is ``num_critic_steps`` critic updates and one
generator update. ppgen runs the catalogue program ``gan`` (the generator called inside a
traced program: ``ppgen.module``, a plate, a latent site and a ``Delta`` observation drawn
through the program at every update); the anchor calls the networks directly. Timed: the
engine's training loop (``diagnostics["training_seconds"]``) and ``ppgen.learn`` end to end,
against the plain loop; medians over repeats, ratio = ppgen ÷ plain (target ≤ 1.2).

Cases: the eight Gaussians (2-D, generator 2 → 64 → 64 → 2) and the digits (64-D, generator
8 → 128 → 128 → 64 with a sigmoid), each with the non-saturating loss (1 critic step) and
WGAN-GP (5 critic steps, λ = 10).

    .venv/bin/python benchmarks/bench_adversarial.py [--quick] [--repeats 5] [--threads 1] [--clock cpu]

``--clock cpu`` times both sides by the process's CPU time (``time.process_time``, with one
torch thread) instead of wall time: on a machine shared with other jobs it counts the work
each side does rather than the time the scheduler gave it. The engine's loop is then timed
end to end (``ppgen.learn``), so the two ppgen columns are the same.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

import ppgen
from ppgen.inference.adversarial import critic_loss, default_critic, generator_loss
from ppgen.models._toy2d import sample_toy2d
from ppgen.models.gan import gan, load_digits_grey, make_generator


def plain_loop(x: np.ndarray, generator: torch.nn.Module, loss: str, num_steps: int, num_critic_steps: int,
               batch: int, learning_rate: float, seed: int, clock=time.perf_counter) -> float:
    """The anchor: seconds for ``num_steps`` steps of a hand-written GAN loop."""
    torch.manual_seed(seed)
    data = torch.as_tensor(x)
    generator = copy.deepcopy(generator)
    critic = default_critic(data.shape[1], seed, data.dtype)
    penalty = 10.0 if loss == "wgan-gp" else 0.0
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=learning_rate, betas=(0.5, 0.9))
    generator_optimizer = torch.optim.Adam(generator.parameters(), lr=learning_rate, betas=(0.5, 0.9))
    permutation, position = torch.randperm(len(data)), 0

    def minibatch() -> torch.Tensor:
        nonlocal permutation, position
        if position + batch > len(data):
            permutation, position = torch.randperm(len(data)), 0
        index = permutation[position:position + batch]
        position += batch
        return index

    start = clock()
    for _ in range(num_steps):
        for _ in range(num_critic_steps):
            real = data[minibatch()]
            with torch.no_grad():
                fake = generator(torch.randn(batch, generator.latent_dim, dtype=data.dtype))
            critic_optimizer.zero_grad()
            critic_loss(loss, critic, real, fake, penalty).backward()
            critic_optimizer.step()
        minibatch()
        fake = generator(torch.randn(batch, generator.latent_dim, dtype=data.dtype))
        generator_optimizer.zero_grad()
        generator_loss(loss, critic(fake).reshape(-1)).backward()
        generator_optimizer.step()
    return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 steps per run instead of 500")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time, or the process's CPU time")
    options = parser.parse_args()
    clock = time.process_time if options.clock == "cpu" else time.perf_counter
    if options.threads:
        torch.set_num_threads(options.threads)
    num_steps = 100 if options.quick else 500
    batch, learning_rate, seed = 128, 1e-4, 0
    sets = {
        "8 Gaussians (2-D)": (sample_toy2d("8gaussians", 2048, seed=0), make_generator(seed=0)),
        "digits (64-D)": (load_digits_grey(), make_generator(8, 64, 128, 0, sigmoid=True)),
    }
    print(f"{num_steps} steps per run, minibatch {batch}, {options.repeats} repeats, torch threads {torch.get_num_threads()}, "
          f"{options.clock} clock")
    print(f"{'case':<34} {'plain (ms/step)':>16} {'ppgen loop':>11} {'ratio':>6} {'ppgen.learn':>12} {'ratio':>6}")
    for set_name, (x, generator) in sets.items():
        for loss, num_critic_steps in (("non-saturating", 1), ("wgan-gp", 5)):
            engine_options = dict(engine="adversarial", loss=loss, num_steps=num_steps, subsample_size=batch,
                                  learning_rate=learning_rate, seed=seed)
            plain, loop, end_to_end = [], [], []
            for _ in range(options.repeats):  # interleaved, so load changes hit every row alike
                plain.append(plain_loop(x, generator, loss, num_steps, num_critic_steps, batch, learning_rate, seed, clock))
                start = clock()
                fit = ppgen.learn(gan, x=x, generator=generator, **engine_options)
                end_to_end.append(clock() - start)
                loop.append(fit.diagnostics["training_seconds"] if options.clock == "wall" else end_to_end[-1])
            p, l, e = (1000 * statistics.median(v) / num_steps for v in (plain, loop, end_to_end))
            print(f"{set_name + ', ' + loss:<34} {p:>16.3f} {l:>11.3f} {l / p:>6.2f} {e:>12.3f} {e / p:>6.2f}")


if __name__ == "__main__":
    main()
