"""Label switching: MCMC draws of exchangeable mixture components are put in one labelling
before R-hat and ESS (``inference/_relabel.py``, applied in ``_mcmc.assemble_result``)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.stats import norm

import ppgen
from ppgen import dist, ops, plate, sample
from ppgen.errors import ReliabilityWarning
from ppgen.inference._mcmc import chain_diagnostics, max_over
from ppgen.inference._relabel import exchangeable_groups, relabel_components


def clusters(readings=None, n_groups: int = 3, n_readings: int = 90):
    """A user's mixture: other names, plate and sizes than the catalogue's."""
    n = n_readings if readings is None else len(readings)
    share = sample("share", dist.Dirichlet(2.0 * ops.ones(n_groups)))
    with plate("groups", n_groups):
        centre = sample("centre", dist.Normal(0.0, 8.0))
        width = sample("width", dist.LogNormal(0.0, 0.5))
    with plate("readings", n):
        member = sample("member", dist.Categorical(share))
        sample("reading", dist.Normal(centre[member], width[member]), obs=readings)


def ordered_prior_clusters(readings=None):
    """Components with different priors (centres near −5, 0, 5): not exchangeable."""
    n = 30 if readings is None else len(readings)
    share = sample("share", dist.Dirichlet(ops.ones(3)))
    with plate("groups", 3):
        centre = sample("centre", dist.Normal(torch.tensor([-5.0, 0.0, 5.0]), 1.0))
    with plate("readings", n):
        member = sample("member", dist.Categorical(share))
        sample("reading", dist.Normal(centre[member], 1.0), obs=readings)


def regression_with_outlier_flags(y=None):
    """Three regression coefficients and a three-valued flag per datum that never indexes them."""
    n = 20 if y is None else len(y)
    with plate("coef", 3):
        beta = sample("beta", dist.Normal(0.0, 1.0))
    with plate("data", n):
        flag = sample("flag", dist.Categorical(torch.tensor([0.2, 0.3, 0.5])))
        sample("y", dist.Normal(beta.sum() + 0.1 * flag, 1.0), obs=y)


def _readings(seed: int, centres=(-6.0, 0.0, 7.0), n: int = 90) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(np.repeat(centres, n // len(centres)), 1.0)


def test_structure_finds_exchangeable_components_only():
    (group,) = exchangeable_groups(ppgen.inspect(clusters, readings=_readings(0)))
    assert group.labels == ("member",) and set(group.axes) == {"share", "centre", "width"} and group.size == 3
    assert exchangeable_groups(ppgen.inspect(ordered_prior_clusters, readings=_readings(0)[:30])) == []
    assert exchangeable_groups(ppgen.inspect(regression_with_outlier_flags, y=np.zeros(20))) == []


def test_chains_in_different_labellings_agree_after_relabelling():
    """Four chains of the same posterior, each stored in another labelling: R-hat is huge
    before; after, every draw is the original draw under one common permutation (the joint
    draw is unchanged: centre[member] is the same value for every reading)."""
    structure = ppgen.inspect(clusters, readings=_readings(1))
    rng = np.random.default_rng(2)
    chains, per_chain, n = 4, 300, 90
    centre = rng.normal([-6.0, 0.0, 7.0], 0.15, size=(chains * per_chain, 3))
    width = rng.lognormal(0.0, 0.1, size=(chains * per_chain, 3))
    share = rng.dirichlet([30.0, 30.0, 30.0], size=chains * per_chain)
    member = np.tile(np.repeat(np.arange(3), n // 3), (chains * per_chain, 1))
    truth = {"share": share, "centre": centre, "width": width, "member": member}
    stored = {k: v.copy() for k, v in truth.items()}
    for c, perm in enumerate([(0, 1, 2), (2, 0, 1), (1, 2, 0), (2, 1, 0)]):
        rows = slice(c * per_chain, (c + 1) * per_chain)
        perm = np.array(perm)
        for name in ("share", "centre", "width"):
            stored[name][rows] = truth[name][rows][:, perm]
        stored["member"][rows] = np.argsort(perm)[truth["member"][rows]]
    before = max_over(chain_diagnostics(stored, chains)["r_hat"])
    relabelled, records = relabel_components(structure, stored, chains)
    after = max_over(chain_diagnostics(relabelled, chains)["r_hat"])
    assert before > 10 and after < 1.05, (before, after)
    assert records == [{"labels": ["member"], "components": ["share", "centre", "width"], "draws_relabelled": 3 * per_chain}]
    common = np.argsort(relabelled["centre"][0])
    np.testing.assert_array_equal(relabelled["centre"], truth["centre"][:, np.argsort(truth["centre"][0])][:, np.argsort(common)])
    values = np.take_along_axis(relabelled["centre"], relabelled["member"], axis=1)
    np.testing.assert_array_equal(values, np.take_along_axis(truth["centre"], truth["member"], axis=1))


def test_nuts_chains_in_different_modes_give_r_hat_near_one():
    """NUTS on a well-separated user mixture: chains started from different points settle in
    different labellings (R-hat before ≫ 1); after relabelling R-hat < 1.05 and the sorted
    posterior means of the centres lie within 4 posterior sd of the sample means of the
    simulated groups (N = 15 per group, separated by ≥ 6 sd: assignments are unambiguous)."""
    readings = _readings(3, n=45)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReliabilityWarning)
        result = ppgen.infer(
            clusters, readings=readings, engine="nuts", num_warmup=100, num_samples=100, num_chains=4, seed=1, progress=False
        )
    relabelling = result.diagnostics["relabelling"]
    assert relabelling["groups"][0]["labels"] == ["member"]
    assert relabelling["max_r_hat_before"] > 1.5, relabelling
    assert result.diagnostics["max_r_hat"] < 1.05
    centre = result.samples["centre"]
    order = np.argsort(centre.mean(0))
    group_means = readings.reshape(3, -1).mean(1)
    assert np.all(np.abs(centre.mean(0)[order] - group_means) < 4 * centre.std(0)[order] + 0.05)
    # the assignments moved with the components: the pointwise log-likelihoods (computed from
    # the draws as sampled) equal those of the relabelled joint draws
    member = result.samples["member"].astype(int)
    loc = np.take_along_axis(centre, member, axis=1)
    scale = np.take_along_axis(result.samples["width"], member, axis=1)
    np.testing.assert_allclose(result.log_likelihood["reading"], norm.logpdf(readings, loc, scale), rtol=1e-9, atol=1e-9)


def test_models_without_exchangeable_components_are_untouched():
    structure = ppgen.inspect(ordered_prior_clusters, readings=_readings(0)[:30])
    draws = {"share": np.full((40, 3), 1 / 3), "centre": np.random.default_rng(0).normal(size=(40, 3))}
    relabelled, records = relabel_components(structure, draws, 2)
    assert records == [] and relabelled is draws
