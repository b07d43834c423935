"""Flows side by side, in one process, medians of repeated runs.

1. Library choice: one Adam step of −log p on a batch, Pyro's neural spline coupling flow (what
   ``ppgen.models.flows`` uses) vs zuko's NSF of the same size (autoregressive, and with
   ``passes=2``, coupling: the same family), and the round-trip error of each spline far outside
   its box.
1b. The training-step anchor, like for like: ``ppgen.learn(spline, x, flow=..., engine="mle")``
   (minibatches of 512, Adam) vs a plain PyTorch loop over the same Pyro transform (same initial
   weights, same batch size, same step count), per step and held-out NLL after equal steps. The
   per-step time of ``learn`` is (t(N₂ steps) − t(N₁ steps)) / (N₂ − N₁), so its one-off setup
   (tracing the program, the final evaluation) cancels.
2. MAF vs IAF: density and sampling times for 10,000 points (the asymmetry of §10.5.2).
3. CNF: ``ode_log_prob`` of 1,000 points vs the same augmented ODE written directly with
   ``torchdiffeq.odeint`` (same dynamics, tolerances and exact trace).

Run: ``python benchmarks/bench_flows.py [--repeats 5]`` on a quiet machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torchdiffeq import odeint

from ppgen.backend import torch_precision
from ppgen.models._continuous_flow import ode_log_prob
from ppgen.models._toy2d import sample_toy2d
from ppgen.models.flows import _standard_normal_log_prob, decode, encode, make_flow


def median_seconds(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_medians(first, second, repeats):
    """Medians of ``first`` and ``second`` timed alternately (after one warm-up each), so that a
    drift of the machine's speed during the run falls on both sides alike."""
    first(), second()
    times = ([], [])
    for _ in range(repeats):
        for fn, out in zip((first, second), times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def library_choice(repeats, batch=512, dim=2):
    import zuko

    x = torch.as_tensor(sample_toy2d("moons", batch, 0))
    pyro_flow = make_flow("spline", dim, num_layers=4, hidden=32, count_bins=8, bound=4.0)
    pyro_optimizer = torch.optim.Adam(pyro_flow.parameters(), lr=1e-3)

    def pyro_step():
        with torch_precision(torch.float64):
            pyro_optimizer.zero_grad()
            loss = -pyro_flow.distribution().log_prob(x.clone()).mean()
            loss.backward()
            pyro_optimizer.step()

    def zuko_step_of(flow):
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)

        def step():
            optimizer.zero_grad()
            loss = -flow().log_prob(x).mean()
            loss.backward()
            optimizer.step()

        return step

    zuko_flow = zuko.flows.NSF(features=dim, transforms=4, bins=8, hidden_features=(32, 32)).to(torch.float64)
    zuko_coupling = zuko.flows.NSF(features=dim, transforms=4, bins=8, hidden_features=(32, 32), passes=2).to(torch.float64)
    pyro_time, zuko_time = median_seconds(pyro_step, repeats), median_seconds(zuko_step_of(zuko_flow), repeats)
    coupling_time = median_seconds(zuko_step_of(zuko_coupling), repeats)
    far = torch.tensor([[9.0, -12.0], [30.0, 0.5], [-50.0, 50.0]], dtype=torch.float64)
    pyro_error = float((encode(pyro_flow, decode(pyro_flow, far)) - far).abs().max())
    with torch.no_grad():
        transform = zuko_flow().transform
        zuko_error = float((transform(transform.inv(far)) - far).abs().max())
    print(f"spline flow training step (batch {batch}): pyro {pyro_time * 1e3:.1f} ms, zuko {zuko_time * 1e3:.1f} ms, "
          f"ratio pyro/zuko {pyro_time / zuko_time:.2f}")
    print(f"spline coupling training step (batch {batch}, same family): pyro {pyro_time * 1e3:.1f} ms, zuko NSF passes=2 "
          f"{coupling_time * 1e3:.1f} ms, ratio pyro/zuko {pyro_time / coupling_time:.2f}")
    print(f"round trip far outside the box: pyro max error {pyro_error:.2e}, zuko {zuko_error:.2e}")


def training_step_anchor(repeats, batch=512, steps=(50, 250), num_data=8192):
    """ppgen's mle training step on the catalogue's spline program vs a plain loop, same transform."""
    import copy

    import ppgen
    from ppgen.models.flows import spline

    x = sample_toy2d("moons", num_data, 0)
    test = torch.as_tensor(sample_toy2d("moons", 4096, 1))
    initial = make_flow("spline", 2, num_layers=4, hidden=32, count_bins=8, bound=4.0, seed=0)

    def held_out_nll(flow):
        with torch_precision(torch.float64), torch.no_grad():
            decode(flow, torch.zeros(1, 2, dtype=torch.float64))  # forget the training's cached pairs
            return float(-flow.distribution().log_prob(test.clone()).mean())

    def ppgen_run(num_steps):
        flow = copy.deepcopy(initial)
        start = time.perf_counter()
        ppgen.learn(spline, x, flow=flow, engine="mle", optimizer="adam", learning_rate=1e-3, subsample_size=batch, num_steps=num_steps,
                    seed=0, tol=0.0)  # mle trains the flow in place
        return time.perf_counter() - start, flow

    def plain_run(num_steps):
        flow = copy.deepcopy(initial)
        data = torch.as_tensor(x)
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        with torch_precision(torch.float64):
            order = torch.randperm(num_data, generator=generator)
            for step in range(num_steps):
                position = step % (num_data // batch)
                if position == 0 and step:
                    order = torch.randperm(num_data, generator=generator)
                optimizer.zero_grad()
                loss = -flow.distribution().log_prob(data[order[position * batch:(position + 1) * batch]]).mean()
                loss.backward()
                optimizer.step()
        return time.perf_counter() - start, flow

    per_step = {"ppgen": [], "plain": []}
    nll = {}
    for _ in range(repeats):  # the two sides alternate, so load changes hit both
        for name, run in (("ppgen", ppgen_run), ("plain", plain_run)):
            short, _ = run(steps[0])
            long, flow = run(steps[1])
            per_step[name].append((long - short) / (steps[1] - steps[0]))
            nll[name] = held_out_nll(flow)
    ours, plain = statistics.median(per_step["ppgen"]), statistics.median(per_step["plain"])
    ratios = [a / b for a, b in zip(per_step["ppgen"], per_step["plain"])]
    print(f"spline coupling training step, batch {batch}: ppgen mle {ours * 1e3:.2f} ms, plain loop {plain * 1e3:.2f} ms, "
          f"ratio {ours / plain:.2f} (per repeat {min(ratios):.2f}-{max(ratios):.2f}); held-out NLL after {steps[1]} steps: "
          f"ppgen {nll['ppgen']:.3f}, plain {nll['plain']:.3f} nats")


def maf_vs_iaf(repeats, num_points=10_000, dim=8):
    x = torch.randn(num_points, dim, dtype=torch.float64)
    for name in ("maf", "iaf"):
        flow = make_flow(name, dim, num_layers=4, hidden=64)

        def density():
            with torch_precision(torch.float64), torch.no_grad():
                decode(flow, torch.zeros(1, dim, dtype=torch.float64))  # forget caches
                flow.distribution().log_prob(x.clone())

        def sampling():
            decode(flow, x)

        print(f"{name} dim {dim}, {num_points} points: density {median_seconds(density, repeats) * 1e3:.1f} ms, "
              f"sampling {median_seconds(sampling, repeats) * 1e3:.1f} ms")


def cnf_vs_plain(repeats, num_points=1000):
    flow = make_flow("cnf", 2, hidden=32)
    x = torch.as_tensor(sample_toy2d("moons", num_points, 0))
    dynamics = flow.dynamics

    def ours():
        with torch.no_grad():
            ode_log_prob(dynamics, x, _standard_normal_log_prob, 0.0, 1.0, rtol=1e-5, atol=1e-5)

    def plain():
        def augmented(t, state):
            with torch.enable_grad():
                y = state[0].detach().requires_grad_(True)
                v = dynamics(t, y)
                div = sum(torch.autograd.grad(v[:, i].sum(), y, retain_graph=True)[0][:, i] for i in range(2))
            return v, -div

        with torch.no_grad():
            times = torch.tensor([1.0, 0.0], dtype=torch.float64)
            zs, ells = odeint(augmented, (x, torch.zeros(num_points, dtype=torch.float64)), times, rtol=1e-5, atol=1e-5)
            return -0.5 * (zs[-1] ** 2).sum(-1) - math.log(2 * math.pi) - ells[-1]

    ours_time, plain_time = paired_medians(ours, plain, 4 * repeats)
    print(f"CNF log p of {num_points} points: ode_log_prob {ours_time * 1e3:.1f} ms, plain torchdiffeq {plain_time * 1e3:.1f} ms, "
          f"ratio {ours_time / plain_time:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=("library", "anchor", "maf_iaf", "cnf"), help="run one part")
    options = parser.parse_args()
    parts = {"library": library_choice, "anchor": training_step_anchor, "maf_iaf": maf_vs_iaf, "cnf": cnf_vs_plain}
    for name, part in parts.items():
        if options.only in (None, name):
            part(options.repeats)
