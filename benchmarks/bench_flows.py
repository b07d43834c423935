"""Flows side by side, in one process, medians of repeated runs.

1. Library choice: one Adam step of −log p on a batch, Pyro's neural spline coupling flow (what
   ``ppgen.models.flows`` uses) vs zuko's NSF of the same size, and the round-trip error of each
   spline far outside its box.
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

    zuko_flow = zuko.flows.NSF(features=dim, transforms=4, bins=8, hidden_features=(32, 32)).to(torch.float64)
    zuko_optimizer = torch.optim.Adam(zuko_flow.parameters(), lr=1e-3)

    def zuko_step():
        zuko_optimizer.zero_grad()
        loss = -zuko_flow().log_prob(x).mean()
        loss.backward()
        zuko_optimizer.step()

    pyro_time, zuko_time = median_seconds(pyro_step, repeats), median_seconds(zuko_step, repeats)
    far = torch.tensor([[9.0, -12.0], [30.0, 0.5], [-50.0, 50.0]], dtype=torch.float64)
    pyro_error = float((encode(pyro_flow, decode(pyro_flow, far)) - far).abs().max())
    with torch.no_grad():
        transform = zuko_flow().transform
        zuko_error = float((transform(transform.inv(far)) - far).abs().max())
    print(f"spline flow training step (batch {batch}): pyro {pyro_time * 1e3:.1f} ms, zuko {zuko_time * 1e3:.1f} ms, "
          f"ratio pyro/zuko {pyro_time / zuko_time:.2f}")
    print(f"round trip far outside the box: pyro max error {pyro_error:.2e}, zuko {zuko_error:.2e}")


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

    ours_time, plain_time = median_seconds(ours, repeats), median_seconds(plain, repeats)
    print(f"CNF log p of {num_points} points: ode_log_prob {ours_time * 1e3:.1f} ms, plain torchdiffeq {plain_time * 1e3:.1f} ms, "
          f"ratio {ours_time / plain_time:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    library_choice(options.repeats)
    maf_vs_iaf(options.repeats)
    cnf_vs_plain(options.repeats)
