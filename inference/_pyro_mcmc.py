"""NUTS and HMC on Pyro, for programs that hold torch modules or families NumPyro lacks (or ``backend="pyro"``).

Same treatment as on NumPyro (finite discrete latents enumerated out and drawn afterwards
with ``infer_discrete``, automatic non-centring with ``LocScaleReparam``), run through Pyro's
``MCMC`` one chain after another. Pyro's kernels are interpreted Python, 10–100× slower per
draw than the compiled NumPyro path; torch runs on ``num_threads`` intra-op threads (1 by
default: on a small model a second thread only adds synchronisation).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from ppgen.backend import to_backend, to_numpy, torch_precision, use_backend
from ppgen.inference import _mcmc
from ppgen.results import Result
from ppgen.structure import ModelStructure


def _reparameterised(program: Callable, sites: list[str]) -> Callable:
    if not sites:
        return program
    from pyro import poutine
    from pyro.infer.reparam import LocScaleReparam

    def config(msg: dict) -> Any:
        if msg["name"] not in sites:
            return None
        base = msg["fn"]
        while hasattr(base, "base_dist"):
            base = base.base_dist
        return LocScaleReparam(centered=0.0, shape_params=_mcmc.LOC_SCALE_FAMILIES.get(type(base).__name__, ()))

    return poutine.reparam(program, config=config)


def run_hamiltonian(engine: Any, structure: ModelStructure, model: Callable, args: tuple, kwargs: dict, start: float) -> Result:
    """Run ``engine`` (a ``nuts``/``hmc`` instance) on Pyro and return its :class:`Result`."""
    import pyro
    import torch
    from pyro import poutine
    from pyro.infer import HMC, MCMC, NUTS, config_enumerate, infer_discrete

    args, kwargs = to_backend(args, "pyro"), to_backend(kwargs, "pyro")
    discrete = _mcmc.enumerated_sites(structure)
    noncentred = _mcmc.location_scale_sites(structure) if engine.reparam else []
    keep = _mcmc.latent_and_deterministic(structure)
    observed = list(structure.observed)

    def program(*a: Any, **k: Any) -> Any:
        with use_backend("pyro"):
            return model(*a, **k)

    sampled_program = _reparameterised(program, noncentred)
    if discrete:
        sampled_program = config_enumerate(sampled_program, default="parallel")
    threads = torch.get_num_threads()
    per_chain: list[dict[str, np.ndarray]] = []
    diverging: list[np.ndarray] = []
    first_draw = float("nan")
    try:
        if engine.num_threads is not None:
            torch.set_num_threads(engine.num_threads)
        with torch_precision(getattr(torch, engine.precision)), torch.random.fork_rng(), pyro.get_param_store().scope():
            torch.manual_seed(engine.seed)
            for chain in range(engine.num_chains):
                options = dict(
                    target_accept_prob=engine.target_accept,
                    full_mass=engine.dense_mass,
                    max_plate_nesting=structure.max_plate_nesting,
                    step_size=engine.step_size,
                )
                if engine.algo == "NUTS":
                    kernel = NUTS(sampled_program, max_tree_depth=engine.max_tree_depth, **options)
                else:
                    kernel = HMC(sampled_program, trajectory_length=engine.trajectory_length, num_steps=engine.num_leapfrog, **options)
                mcmc = MCMC(kernel, num_samples=engine.num_samples, warmup_steps=engine.num_warmup, disable_progbar=not engine.progress)
                mcmc.run(*args, **kwargs)
                if chain == 0:
                    first_draw = time.perf_counter() - start
                raw = mcmc.get_samples()
                flags = np.zeros(engine.num_samples, dtype=bool)
                flags[np.asarray(mcmc.diagnostics()["divergences"]["chain 0"], dtype=int)] = True
                diverging.append(flags[:: engine.thinning])
                per_chain.append(_complete_draws(program, sampled_program, raw, keep, discrete, observed, structure, args, kwargs, engine.thinning, infer_discrete, poutine))
    finally:
        torch.set_num_threads(threads)
    samples = {name: np.concatenate([c[name] for c in per_chain]) for name in keep + discrete if name in per_chain[0]}
    log_likelihood = {name: np.concatenate([c["@log_likelihood"][name] for c in per_chain]) for name in observed}
    order = [n for n in structure.sites if n in samples]
    samples = {name: samples[name] for name in order}
    samples, diagnostics = _mcmc.relabelled_diagnostics(structure, samples, engine.num_chains)
    stats = {"diverging": np.concatenate(diverging)}
    diagnostics.update(
        divergences=int(stats["diverging"].sum()),
        max_r_hat=_mcmc.max_over(diagnostics["r_hat"]),
        min_ess_bulk=_mcmc.min_over(diagnostics["ess_bulk"]),
        seconds_to_first_draw=first_draw,
        backend="pyro",
        reparameterised=noncentred,
        enumerated=discrete,
    )
    _mcmc.warn_if_unreliable(engine.name, diagnostics, engine.num_chains)
    observed_data = {}
    for name, site in structure.observed.items():
        value = kwargs.get(site.data_argument) if site.data_argument else None
        if value is not None:
            observed_data[name] = to_numpy(value)
    return Result(
        engine=engine.name,
        samples=samples,
        diagnostics=diagnostics,
        sample_stats=stats,
        log_likelihood=log_likelihood,
        observed=observed_data,
        num_chains=engine.num_chains,
        num_iterations=len(stats["diverging"]) // engine.num_chains,
        seconds=time.perf_counter() - start,
    )


def _complete_draws(
    program: Callable,
    sampled_program: Callable,
    raw: dict,
    keep: list[str],
    discrete: list[str],
    observed: list[str],
    structure: ModelStructure,
    args: tuple,
    kwargs: dict,
    thinning: int,
    infer_discrete: Callable,
    poutine: Any,
) -> dict[str, Any]:
    """For each kept draw: the original sites' values (reparameterised and deterministic ones
    recomputed by replaying the program), the discrete sites from ``infer_discrete``, and each
    observed site's pointwise log-likelihood."""
    import torch

    from pyro.infer import config_enumerate

    num = next(iter(raw.values())).shape[0]
    rows: dict[str, list] = {}
    log_likelihood: dict[str, list] = {name: [] for name in observed}
    with torch.no_grad():
        for index in range(0, num, thinning):
            draw = {name: value[index] for name, value in raw.items()}
            trace = poutine.trace(poutine.condition(sampled_program, data=draw)).get_trace(*args, **kwargs)
            values = {name: trace.nodes[name]["value"] for name in keep if name in trace.nodes}
            if discrete:
                fixed = {name: values[name] for name in _mcmc.continuous_sites(structure) if name in values}
                guided = infer_discrete(
                    poutine.condition(config_enumerate(program, default="parallel"), data=fixed),
                    first_available_dim=-1 - structure.max_plate_nesting,
                    temperature=1,
                )
                discrete_trace = poutine.trace(guided).get_trace(*args, **kwargs)
                values.update({name: discrete_trace.nodes[name]["value"] for name in discrete})
            full = poutine.trace(poutine.condition(program, data=values)).get_trace(*args, **kwargs)
            for name in observed:
                node = full.nodes[name]
                log_likelihood[name].append(to_numpy(node["fn"].log_prob(node["value"])))
            for name, value in values.items():
                rows.setdefault(name, []).append(to_numpy(value))
    out: dict[str, Any] = {name: np.stack(values) for name, values in rows.items()}
    out["@log_likelihood"] = {name: np.stack(values) for name, values in log_likelihood.items()}
    return out
