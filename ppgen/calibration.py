"""Simulation-based calibration (Talts et al., 2018): does an engine's posterior have the right
spread and location on data the program itself generated?

For l = 1..L: draw (θ⁽ˡ⁾, x⁽ˡ⁾) from the prior predictive, run the engine on x⁽ˡ⁾, and record the
rank of θ⁽ˡ⁾ among M posterior draws. If the engine samples the exact posterior, every rank is
uniform on {0, …, M}. Under-dispersed posteriors give U-shaped rank histograms, over-dispersed
ones humps, biased ones slopes; a χ² test on binned ranks turns that into a p-value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np

from ppgen.engine import Engine
from ppgen.structure import inspect
from ppgen.verbs import generate, infer


@dataclass(frozen=True)
class Calibration:
    """Ranks of the true values among ``num_draws`` posterior draws, per scalar quantity."""

    ranks: dict[str, np.ndarray]
    num_draws: int

    def p_values(self, num_bins: int = 10) -> dict[str, float]:
        """χ² test of uniform ranks, binned into ``num_bins`` equal bins, per quantity."""
        from scipy.stats import chisquare

        out = {}
        for name, ranks in self.ranks.items():
            counts = np.histogram(ranks, bins=num_bins, range=(-0.5, self.num_draws + 0.5))[0]
            out[name] = float(chisquare(counts).pvalue)
        return out


def simulation_based_calibration(
    model: Callable,
    *args: Any,
    engine: Union[str, Engine],
    sites: Optional[list[str]] = None,
    num_simulations: int = 100,
    num_draws: int = 99,
    seed: int = 0,
    **options: Any,
) -> Calibration:
    """Run SBC of ``engine`` on ``model``: ``num_simulations`` prior-predictive data sets, each
    scored by the rank of the true latent values among ``num_draws`` thinned posterior draws.

    ``sites`` defaults to every latent site; observed sites are passed back to the program as the
    keyword arguments of the same name. ``options`` go to :func:`ppgen.infer`; an engine given
    by name gets a fresh ``seed`` per simulation, an engine instance keeps its own options.
    """
    structure = inspect(model, *args)
    sites = sites or list(structure.latent)
    observed = list(structure.observed)
    truth = generate(model, *args, num_samples=num_simulations, seed=seed)
    ranks: dict[str, list[np.ndarray]] = {}
    for index in range(num_simulations):
        data = {name: truth[name][index] for name in observed}
        engine_seed = {"seed": seed + 1 + index} if isinstance(engine, str) else {}
        result = infer(model, *args, engine=engine, **engine_seed, **data, **options)
        for name in sites:
            draws = np.asarray(result.samples[name])
            thinned = draws[np.linspace(0, len(draws) - 1, num_draws).astype(int)]
            true_value = truth[name][index]
            flat_draws = thinned.reshape(num_draws, -1)
            flat_true = np.asarray(true_value).reshape(-1)
            for element, value in enumerate(flat_true):
                key = name if flat_true.size == 1 else f"{name}[{element}]"
                ranks.setdefault(key, []).append(np.sum(flat_draws[:, element] < value))
    return Calibration({k: np.asarray(v) for k, v in ranks.items()}, num_draws)
