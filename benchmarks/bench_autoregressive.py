"""Autoregressive family: ppgen against plain PyTorch loops with the same networks.

1. NADE training on the binarised digits: ``learn(nade, engine="mle", subsample_size=100)``
   against a textbook loop (same NADENetwork, same initial weights, Adam, batch 100, the
   log-likelihood scaled by N / B); seconds per epoch, and held-out NLL (nats/digit) after the
   same number of epochs.
2. Sampling: 1,000 NADE digits (one vectorised run of the program) and 1,000 characters of the
   character GRU (one run of a 1,000-site program), against plain loops that keep the hidden
   state between steps.
   Each repeat trains a new network object, whose structure ``learn`` would trace first (a new
   call signature): that trace is made and timed apart, once per repeat, so the epoch times are
   the training steps' (a ``learn`` or ``score`` of the trained network reuses it).
3. Beam search, B = 5, 100 characters after a prompt: ``infer(char_model, prompt=..., engine="beam")``
   (the carried path: one run of the program, its GRU state passed through ``ppgen.carry``, plus
   the check re-running its first 8 decisions) against a plain beam loop that reorders the GRU
   state between steps.

Both NADE trainings of a repeat start from the same weights and draw the same minibatches
(``torch.manual_seed(repeat)`` for the plain loop, ``seed=repeat`` for ``learn``), so their
held-out NLLs agree to rounding.

Each ppgen call is made once before the timed repeats: the first call on a program and its
arguments traces its structure (``ppgen.inspect``, cached afterwards; ``learn`` hands it on to
the trained network), and the first ``generate`` / beam search of a call signature also runs
the handler-free interpreter next to Pyro once and keeps it when the two agree bit for bit;
all this is reported apart ("first call"). ``learn`` compares its interpreter with Pyro on its
first minibatch, inside the timed run. The paths taken are printed (``diagnostics``).

The machine may be shared: the sides alternate within each repeat (the sampling and beam tasks
``--pairs`` times), ratios are taken per pair and their median reported; torch runs on one
thread (tiny ops on a loaded machine otherwise wait on OpenMP's spinning threads).

Run: ``.venv/bin/python benchmarks/bench_autoregressive.py [--repeats 3] [--epochs 2] [--pairs 5]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

import ppgen
from ppgen.models.autoregressive import char_model, encode, make_network, nade
from ppgen.models.vae import load_digits_binary

BATCH = 100
LEARNING_RATE = 0.01


def nade_log_likelihood(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    state = network.initial((x.shape[0],))
    total = x.new_zeros(())
    for i in range(x.shape[1]):
        logits = network.logits(state, i)
        total = total - torch.nn.functional.binary_cross_entropy_with_logits(logits, x[:, i], reduction="sum")
        state = network.update(state, i, x[:, i])
    return total


def plain_nade_training(network: torch.nn.Module, x: torch.Tensor, epochs: int) -> float:
    optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    size, steps = x.shape[0], x.shape[0] // BATCH
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(size)
        for step in range(steps):
            loss = -(size / BATCH) * nade_log_likelihood(network, x[order[step * BATCH:(step + 1) * BATCH]])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return (time.perf_counter() - start) / epochs


def ppgen_nade_training(network: torch.nn.Module, x: np.ndarray, epochs: int, seed: int = 0) -> float:
    start = time.perf_counter()
    result = ppgen.learn(nade, x, network=network, engine="mle", subsample_size=BATCH, num_steps=epochs * (len(x) // BATCH), learning_rate=LEARNING_RATE, seed=seed)
    paths["learn"] = result.diagnostics.get("log_density")
    return (time.perf_counter() - start) / epochs


paths: dict[str, object] = {}


@torch.no_grad()
def plain_nade_sampling(network: torch.nn.Module, n: int) -> float:
    start = time.perf_counter()
    state = network.initial((n,))
    for i in range(network.D):
        x = torch.bernoulli(torch.sigmoid(network.logits(state, i)))
        state = network.update(state, i, x)
    return time.perf_counter() - start


@torch.no_grad()
def plain_char_sampling(network: torch.nn.Module, length: int) -> float:
    start = time.perf_counter()
    state = network.initial((1,))
    for t in range(length):
        x = torch.distributions.Categorical(logits=network.logits(state, t)).sample()
        state = network.update(state, t, x)
    return time.perf_counter() - start


@torch.no_grad()
def plain_beam(network: torch.nn.Module, prompt: np.ndarray, new: int, beams: int) -> tuple[float, list[int]]:
    start = time.perf_counter()
    state = network.initial((1,))
    for t, code in enumerate(prompt):
        state = network.update(state, t, torch.tensor([code]))
    scores = torch.zeros(1, dtype=torch.float64)
    history = torch.zeros(1, 0, dtype=torch.long)
    for t in range(len(prompt), len(prompt) + new):
        candidates = scores[:, None] + network.logits(state, t).log_softmax(-1)
        best = torch.topk(candidates.reshape(-1), min(beams, candidates.numel())).indices
        parents, values = best // candidates.shape[1], best % candidates.shape[1]
        scores = candidates.reshape(-1)[best]
        history = torch.cat([history[parents], values[:, None]], 1)
        state = network.update(state[parents], t, values)
    return time.perf_counter() - start, history[0].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=5, help="alternating pairs per repeat of the sampling and beam tasks")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    x_train, _, x_test, _ = load_digits_binary()
    rows: dict[str, list[tuple[float, float]]] = {"NADE epoch": [], "1,000 NADE digits": [], "1,000 characters": [], "beam B=5, 100 chars": []}
    nll = {}
    char_net = make_network("char", seed=0)
    prompt = encode("The ")
    first = {}
    new_network_trace: list[float] = []
    start = time.perf_counter()
    ppgen_nade_training(copy.deepcopy(make_network("nade", 64, seed=0)), x_train[:BATCH * 2], 1)
    first["NADE learn (2 steps)"] = time.perf_counter() - start
    warm_net = make_network("nade", 64, seed=0)
    ppgen.learn(nade, x_train, network=warm_net, engine="mle", subsample_size=BATCH, num_steps=1, learning_rate=LEARNING_RATE)
    for name, call in (
        ("1,000 NADE digits", lambda: ppgen.generate(nade, num_data=1000, D=64, network=warm_net, seed=0)),
        ("1,000 characters", lambda: ppgen.generate(char_model, num_data=1, length=1000, network=char_net, seed=0)),
        ("beam B=5, 100 chars", lambda: ppgen.infer(char_model, prompt=prompt[None], length=len(prompt) + 100, network=char_net, engine="beam", num_beams=5)),
    ):
        start = time.perf_counter()
        call()
        first[name] = time.perf_counter() - start
    for repeat in range(options.repeats):
        torch.manual_seed(repeat)
        plain_net, ppgen_net = make_network("nade", 64, seed=0), make_network("nade", 64, seed=0)
        # a new network object is a new call signature: its structure is traced once (timed apart)
        start = time.perf_counter()
        ppgen.inspect(nade, x_train, network=ppgen_net)
        new_network_trace.append(time.perf_counter() - start)
        plain = plain_nade_training(plain_net, torch.as_tensor(x_train), options.epochs)
        ours = ppgen_nade_training(ppgen_net, x_train, options.epochs, seed=repeat)
        rows["NADE epoch"].append((ours, plain))
        with torch.no_grad():
            nll = {name: -float(nade_log_likelihood(net, torch.as_tensor(x_test))) / len(x_test) for name, net in (("ppgen", ppgen_net), ("plain", plain_net))}
        for pair in range(options.pairs):  # the short tasks: several alternating pairs per repeat
            seed = repeat * options.pairs + pair
            plain = plain_nade_sampling(warm_net, 1000)
            start = time.perf_counter()
            ppgen.generate(nade, num_data=1000, D=64, network=warm_net, seed=seed + 1)
            rows["1,000 NADE digits"].append((time.perf_counter() - start, plain))
            plain = plain_char_sampling(char_net, 1000)
            start = time.perf_counter()
            ppgen.generate(char_model, num_data=1, length=1000, network=char_net, seed=seed)
            rows["1,000 characters"].append((time.perf_counter() - start, plain))
            plain, plain_best = plain_beam(char_net, prompt, 100, 5)
            start = time.perf_counter()
            result = ppgen.infer(char_model, prompt=prompt[None], length=len(prompt) + 100, network=char_net, engine="beam", num_beams=5)
            rows["beam B=5, 100 chars"].append((time.perf_counter() - start, plain))
        paths["beam"] = f"{result.diagnostics['path']}, {result.diagnostics['search']}"
        ours_best = [int(result.map_estimate[f"x_{t}"]) for t in range(len(prompt), len(prompt) + 100)]
        assert ours_best == plain_best, "the two beam searches disagree"
    print(f"torch threads {torch.get_num_threads()}; medians of {options.repeats} repeats (sampling, beam: {options.repeats * options.pairs} pairs); NADE: {options.epochs} epochs, batch {BATCH}, Adam {LEARNING_RATE}")
    print(f"{'task':<22} {'ppgen s':>9} {'plain s':>9} {'ratio':>7}")
    for task, pairs in rows.items():
        ratio = statistics.median(a / b for a, b in pairs)
        print(f"{task:<22} {statistics.median(a for a, _ in pairs):9.3f} {statistics.median(b for _, b in pairs):9.3f} {ratio:7.2f}")
    print("first calls (structure traced, then cached), seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in first.items()))
    print(f"structure trace of each repeat's new NADE network (not in the epoch times), median s: {statistics.median(new_network_trace):.3f}")
    print(f"paths: learn's log density {paths['learn']}; beam search {paths['beam']}")
    print(f"held-out NLL after {options.epochs} epochs (last repeat), nats/digit: ppgen {nll['ppgen']:.2f}, plain {nll['plain']:.2f}")


if __name__ == "__main__":
    main()
