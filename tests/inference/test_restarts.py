"""Restarts against symmetric fixed points (cavi, em, svi): the default starts recover planted
structure, every start's bound is recorded, and a run that ends at a symmetric point says so.

The programs are written here, as a user would, with their own site names; truth is the planted
partition (normalised mutual information, scikit-learn), scikit-learn's ``GaussianMixture``
log-likelihood, and single-start runs of the same engine.
"""

import warnings

import numpy as np
import pyro
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score
from sklearn.mixture import GaussianMixture

import ppgen
from ppgen import dist, ops, param, plate, sample
from ppgen.errors import ConvergenceWarning
from ppgen.inference._restarts import StartRecord, information, kmeans, start_kinds, symmetric_sites


def planted(num_nodes, K, p_in, p_out, seed):
    """Adjacency of a planted-partition graph (built here, not with the catalogue's helper)."""
    rng = np.random.default_rng(seed)
    blocks = rng.permutation(np.arange(num_nodes) % K)
    upper = np.triu(rng.random((num_nodes, num_nodes)) < np.where(blocks[:, None] == blocks[None, :], p_in, p_out), 1)
    return (upper | upper.T).astype(np.float64), blocks


def community_model(links, K):
    """A stochastic block model with flat priors, written by hand."""
    n = links.shape[0]
    first, second = np.triu_indices(n, 1)
    first, second = torch.as_tensor(first), torch.as_tensor(second)
    shares = sample("shares", dist.Dirichlet(ops.ones(K)))
    with plate("from_group", K, dim=-2), plate("to_group", K, dim=-1):
        tie = sample("tie", dist.Beta(1.0, 1.0))
    with plate("people", n):
        group = sample("group", dist.Categorical(shares))
    with plate("dyads", len(first)):
        sample("link", dist.Bernoulli(tie[group[first], group[second]]), obs=links[first, second])


def nmi(truth, probs):
    return normalized_mutual_info_score(truth, np.asarray(probs).argmax(-1))


@pytest.mark.parametrize(
    "num_nodes, K, p_in, p_out, graph_seed",
    [
        (240, 3, 0.25, 0.03, 0),  # the issue's graph
        (150, 2, 0.05, 0.30, 1),  # disassortative: blocks link to each other, not within
        (300, 4, 0.30, 0.05, 2),
        (100, 2, 0.40, 0.08, 3),
    ],
)
def test_cavi_default_starts_recover_the_planted_partition_with_flat_priors(num_nodes, K, p_in, p_out, graph_seed):
    links, truth = planted(num_nodes, K, p_in, p_out, graph_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result = ppgen.infer(community_model, links, K, engine="cavi", seed=graph_seed)
    assert nmi(truth, result.marginals["group"]) >= 0.95
    assert result.converged and result.diagnostics["symmetric"] == []
    bounds = result.diagnostics["restarts"]
    assert len(bounds) == len(result.diagnostics["starts"]) >= 2
    assert result.log_evidence.value == max(bounds)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cavi_issue_graph_for_every_seed(seed):
    links, truth = planted(240, 3, 0.25, 0.03, 10)
    result = ppgen.infer(community_model, links, 3, engine="cavi", seed=seed)
    assert nmi(truth, result.marginals["group"]) >= 0.95


def test_cavi_uniform_single_start_warns_and_names_the_site():
    links, truth = planted(120, 3, 0.3, 0.03, 4)
    with pytest.warns(ConvergenceWarning, match="symmetric point: every element of 'group'") as caught:
        result = ppgen.infer(community_model, links, 3, engine="cavi", num_restarts=1, init={"group": np.full((120, 3), 1 / 3)})
    assert caught[0].filename == __file__  # raised at the user's call
    assert result.diagnostics["symmetric"] == ["group"]
    assert result.converged is False
    assert len(result.diagnostics["restarts"]) == 1
    assert nmi(truth, result.marginals["group"]) < 0.2
    # the same start among default restarts is outvoted by better ones
    rescued = ppgen.infer(community_model, links, 3, engine="cavi", init={"group": np.full((120, 3), 1 / 3)})
    assert rescued.diagnostics["starts"][0] == "given"
    assert rescued.diagnostics["restarts"][0] < rescued.log_evidence.value
    assert nmi(truth, rescued.marginals["group"]) >= 0.95


def test_cavi_records_every_start_as_a_single_run_would_end():
    links, _ = planted(90, 2, 0.3, 0.05, 5)
    result = ppgen.infer(community_model, links, 2, engine="cavi", num_restarts=3, init="random", seed=7)
    assert result.diagnostics["starts"] == ["random", "auto", "random"]
    bounds = result.diagnostics["restarts"]
    assert len(bounds) == 3 and result.log_evidence.value == max(bounds)
    # the first start alone, from the same seed, ends where the first recorded start ended
    alone = ppgen.infer(community_model, links, 2, engine="cavi", num_restarts=1, init="random", seed=7)
    assert alone.log_evidence.value == pytest.approx(bounds[0], rel=1e-12)


def blob_model(points, K):
    """A conjugate Gaussian mixture with unit-variance clusters in the plane."""
    proportions = sample("proportions", dist.Dirichlet(ops.ones(K)))
    with plate("cluster", K, dim=-2), plate("axis", 2, dim=-1):
        centre = sample("centre", dist.Normal(0.0, 10.0))
    with plate("point", points.shape[0]):
        member = sample("member", dist.Categorical(proportions))
        sample("where", dist.Normal(centre[member], 1.0).to_event(1), obs=points)


def blobs(num_points, seed):
    rng = np.random.default_rng(seed)
    centres = np.array([[-4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [0.0, -4.0]])
    truth = rng.integers(4, size=num_points)
    return centres[truth] + rng.normal(size=(num_points, 2)), truth


def test_cavi_mixture_starts_from_kmeans_on_its_data():
    points, truth = blobs(300, 6)
    result = ppgen.infer(blob_model, points, 4, engine="cavi")
    assert result.diagnostics["starts"][0] == "auto"
    assert nmi(truth, result.marginals["member"]) >= 0.95
    assert result.diagnostics["symmetric"] == []


# --------------------------------------------------------------------------------------------
# EM


def diagonal_mixture(points, K=4):
    """Gaussian mixture with diagonal covariances; every component starts at the same place."""
    share = param("share", ops.ones(K) / K, constraint=dist.constraints.simplex)
    middle = param("middle", ops.zeros((K, points.shape[1])))
    spread = param("spread", ops.ones((K, points.shape[1])), constraint=dist.constraints.positive)
    with plate("rows", points.shape[0]):
        which = sample("which", dist.Categorical(share))
        sample("row", dist.Normal(middle[which], spread[which]).to_event(1), obs=points)


@pytest.fixture(scope="module")
def mixture_reference():
    points, _ = blobs(400, 7)
    sklearn = GaussianMixture(4, covariance_type="diag", n_init=10, tol=1e-10, max_iter=10_000, random_state=0).fit(points)
    return points, sklearn.score(points) * len(points)


@pytest.mark.parametrize(
    "options",
    [{"init": "program"}, {"init_params": {"share": np.ones(4) / 4, "middle": np.zeros((4, 2)), "spread": np.ones((4, 2))}}],
)
def test_em_from_a_symmetric_start_reaches_sklearn_with_default_restarts(mixture_reference, options):
    points, reference = mixture_reference
    result = ppgen.learn(diagonal_mixture, points, engine="em", **options)
    assert result.diagnostics["log_likelihood"] == pytest.approx(reference, rel=1e-6)
    bounds = result.diagnostics["restarts"]
    assert bounds[0] < reference - 100  # the symmetric start itself is far below
    assert result.diagnostics["log_likelihood"] == max(bounds)
    assert result.diagnostics["symmetric"] == [] and result.converged


def test_em_single_symmetric_start_warns_and_names_the_site(mixture_reference):
    points, reference = mixture_reference
    with pytest.warns(ConvergenceWarning, match="'which'"):
        result = ppgen.learn(diagonal_mixture, points, engine="em", init="program", num_restarts=1)
    assert result.diagnostics["symmetric"] == ["which"] and result.converged is False
    assert result.diagnostics["log_likelihood"] < reference - 100


def test_em_random_starts_are_recorded(mixture_reference):
    points, reference = mixture_reference
    result = ppgen.learn(diagonal_mixture, points, engine="em", init="random", num_restarts=3, seed=2)
    assert result.diagnostics["starts"] == ["random", "auto", "random"]
    assert len(result.diagnostics["restarts"]) == 3
    assert result.diagnostics["log_likelihood"] == max(result.diagnostics["restarts"])


def lines_mixture(values, K=3):
    """A 1-D mixture with learned weights, centres and widths (a user's names)."""
    mix = param("mix", ops.ones(K) / K, constraint=dist.constraints.simplex)
    centre = param("centre", ops.linspace(-1.0, 1.0, K))
    width = param("width", ops.ones(K), constraint=dist.constraints.positive)
    with plate("values", len(values)):
        source = sample("source", dist.Categorical(mix))
        sample("value", dist.Normal(centre[source], width[source]), obs=values)


def uneven_lines(num_values, seed):
    """Three groups of unequal size and width: a narrow one beside a wide one, where single
    k-means seedings often split the wide group and merge the other two."""
    rng = np.random.default_rng(seed)
    source = rng.choice(3, size=num_values, p=[0.3, 0.5, 0.2])
    return rng.normal(np.array([-4.0, 0.0, 5.0])[source], np.array([1.0, 0.7, 1.2])[source])


def best_gaussian_mixture(rows, K, covariance_type):
    """scikit-learn's best log-likelihood over many inits (the same reg_covar as EM's default)."""
    fit = GaussianMixture(K, covariance_type=covariance_type, n_init=30, tol=1e-10, max_iter=10_000, random_state=0)
    return fit.fit(rows).score(rows) * len(rows)


@pytest.mark.parametrize("data_seed, em_seed", [(0, 0), (5, 1), (11, 3), (4, 2)])
def test_em_default_restarts_reach_sklearns_best_on_uneven_mixtures(data_seed, em_seed):
    """The default starts (k-means, random in turn; at least four before two agreeing ones are
    believed) reach the maximum that scikit-learn finds with 30 inits. Two agreeing k-means++
    starts alone stopped at a local optimum ~73 nats below it on (0, 0)."""
    values = uneven_lines(300, data_seed)
    reference = best_gaussian_mixture(values[:, None], 3, "full")
    result = ppgen.learn(lines_mixture, values, engine="em", seed=em_seed, progress=False)
    assert result.diagnostics["log_likelihood"] == pytest.approx(reference, rel=1e-6)
    assert len(result.diagnostics["restarts"]) >= 4 and {"auto", "random"} <= set(result.diagnostics["starts"])


def test_em_default_restarts_reach_sklearns_best_in_the_plane():
    points, _ = blobs(250, 12)
    points = points * np.array([1.0, 0.3])  # squeezed: clusters close along the second axis
    reference = best_gaussian_mixture(points, 4, "diag")
    result = ppgen.learn(diagonal_mixture, points, engine="em", seed=4, progress=False)
    assert result.diagnostics["log_likelihood"] == pytest.approx(reference, rel=1e-6)


def test_start_record_believes_agreement_only_after_enough_starts():
    record = StartRecord()
    for bound in (-10.0, -10.0):
        record.add("auto", bound, None)
    assert record.agree(1e-9) and not record.agree(1e-9, min_starts=4)
    for bound in (-12.0, -9.0):
        record.add("random", bound, None)
    assert not record.agree(1e-9, min_starts=4)  # the best (−9) was reached once
    record.add("auto", -9.0, None)
    assert record.agree(1e-9, min_starts=4)


def test_kmeans_keeps_the_seeding_of_least_within_cluster_spread():
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.normal(-4, 1.0, 90), rng.normal(0, 0.7, 150), rng.normal(5, 1.2, 60)])[:, None]
    labels = kmeans(rows, 3, np.random.default_rng(1))
    truth = np.repeat([0, 1, 2], [90, 150, 60])
    assert normalized_mutual_info_score(truth, labels) > 0.8


# --------------------------------------------------------------------------------------------
# SVI


def line_mixture(values, K=3):
    weight = sample("weight", dist.Dirichlet(ops.ones(K)))
    with plate("bump", K):
        centre = sample("centre", dist.Normal(0.0, 10.0))
    with plate("value", len(values)):
        source = sample("source", dist.Categorical(weight))
        sample("v", dist.Normal(centre[source], 1.0), obs=values)


def coinciding_guide(values, K=3):
    """Point masses whose components all start at 0: their gradients stay equal forever."""
    weight = pyro.param("weight_point", torch.ones(K) / K, constraint=torch.distributions.constraints.simplex)
    centre = pyro.param("centre_point", torch.zeros(K))
    pyro.sample("weight", pyro.distributions.Delta(weight, event_dim=1))
    with pyro.plate("bump", K):
        pyro.sample("centre", pyro.distributions.Delta(centre))


@pytest.fixture(scope="module")
def line_data():
    rng = np.random.default_rng(8)
    return np.concatenate([rng.normal(-6, 1, 20), rng.normal(0, 1, 20), rng.normal(6, 1, 20)])


def test_svi_collapsed_components_warn_and_name_the_site(line_data):
    with pytest.warns(ConvergenceWarning, match="'source'"):
        result = ppgen.infer(
            line_mixture, line_data, engine="svi", guide=coinciding_guide, num_restarts=2, num_steps=30, learning_rate=0.05, num_samples=10
        )
    assert result.diagnostics["symmetric"] == ["source"] and result.converged is False
    np.testing.assert_allclose(result.params["centre_point"], result.params["centre_point"][0])
    assert len(result.diagnostics["restarts"]) == 2


def test_svi_keeps_the_best_of_its_starts_and_records_all(line_data):
    result = ppgen.infer(line_mixture, line_data, engine="svi", num_restarts=2, init="random", num_steps=30, learning_rate=0.05, num_samples=10)
    bounds = result.diagnostics["restarts"]
    assert result.diagnostics["starts"] == ["random", "random"] and len(bounds) == 2
    assert result.log_evidence.value == max(bounds)
    assert result.marginals["source"].shape == (60, 3)
    assert result.diagnostics["symmetric"] == []


def shifted(readings):
    offset = sample("offset", dist.Normal(0.0, 1.0))
    with plate("reading", len(readings)):
        sample("r", dist.Normal(offset, 1.0), obs=readings)


def test_svi_without_discrete_latents_runs_once():
    result = ppgen.infer(shifted, np.array([0.5, 1.0]), engine="svi", num_steps=5, num_samples=5)
    assert len(result.diagnostics["restarts"]) == 1 and result.diagnostics["symmetric"] == []


# --------------------------------------------------------------------------------------------
# pieces


def test_information_closed_forms():
    assert information(np.tile([0.2, 0.5, 0.3], (7, 1))) == pytest.approx(0.0, abs=1e-15)
    assert information(np.eye(3)) == pytest.approx(1.0)
    # two elements, rows (1, 0) and (1/2, 1/2): I = H(3/4, 1/4) − H(1/2, 1/2) / 2, over log 2
    expected = (-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)) - 0.5 * np.log(2)) / np.log(2)
    assert information(np.array([[1.0, 0.0], [0.5, 0.5]])) == pytest.approx(expected)
    same = {"a": np.full((5, 2), 0.5), "b": np.eye(2), "single": np.full((1, 2), 0.5), "all_in_one": np.tile([0.995, 0.005], (4, 1))}
    assert symmetric_sites(same) == ["a"]


def test_start_order():
    assert start_kinds("auto", 4) == ["auto", "auto", "random", "auto"]
    assert start_kinds("program", 1) == ["program"]
    assert start_kinds("random", 3, derived="random") == ["random"] * 3


@pytest.mark.parametrize(
    "engine, options, message",
    [
        ("cavi", {"num_restarts": 0}, "CAVI: num_restarts must be a positive integer or 'auto', got 0"),
        ("cavi", {"init": "program"}, "CAVI: init must be one of"),
        ("cavi", {"init": "kmeans++"}, "CAVI: init='kmeans++' applies to no categorical latent"),
        ("em", {"num_restarts": "many"}, "EM: num_restarts must be a positive integer or 'auto'"),
        ("svi", {"num_restarts": 2, "copy_modules": False}, "SVI: num_restarts=2 needs copy_modules=True"),
        ("svi", {"init": "random", "guide": coinciding_guide}, "SVI: init='random' sets the start of the automatic guide"),
    ],
)
def test_bad_restart_options_are_named(engine, options, message):
    links, _ = planted(12, 2, 0.5, 0.1, 0)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        if engine == "cavi":
            ppgen.infer(community_model, links, 2, engine="cavi", **options)
        elif engine == "em":
            ppgen.learn(diagonal_mixture, np.zeros((6, 2)), engine="em", **options)
        else:
            ppgen.infer(line_mixture, np.zeros(6), engine="svi", num_steps=1, **options)
