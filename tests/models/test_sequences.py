"""Sequence models: closed forms checked against the program's own density; simulators."""

import numpy as np
import pytest

import ppgen
from ppgen import dist, plate, sample
from ppgen.models import sequences


def test_markov_chain_closed_forms_match_the_program():
    """Importance sampling with the closed-form posterior as proposal has constant weights equal
    to the closed-form evidence; a wrong posterior or evidence would break one of the two."""
    data = sequences.simulate_markov_chain(num_steps=40, seed=1).data
    x, K = data["x"], data["K"]
    posterior = sequences.markov_chain_posterior(x, K)

    def posterior_guide(x, T=100, K=3, concentration=1.0):
        sample("initial", dist.Dirichlet(ppgen.ops.tensor(posterior["initial"])))
        with plate("states", K):
            sample("transition", dist.Dirichlet(ppgen.ops.tensor(posterior["transition"])))

    estimate = ppgen.score(sequences.markov_chain, engine="importance", guide=posterior_guide, num_samples=20, **data)
    assert estimate.value == pytest.approx(sequences.markov_chain_log_evidence(x, K), abs=1e-8)
    assert estimate.stderr < 1e-8


def test_markov_chain_counts():
    x = np.array([0, 1, 1, 2, 0, 1])
    posterior = sequences.markov_chain_posterior(x, K=3, concentration=0.5)
    np.testing.assert_array_equal(posterior["initial"], [1.5, 0.5, 0.5])
    expected = np.full((3, 3), 0.5)
    for previous, current in zip(x[:-1], x[1:]):
        expected[previous, current] += 1
    np.testing.assert_array_equal(posterior["transition"], expected)


@pytest.mark.parametrize(
    "simulate, key, shape, upper",
    [
        (sequences.simulate_markov_chain, "x", (100,), 3),
        (sequences.simulate_casino, "y", (3, 100), 6),
        (sequences.simulate_hmm_gaussian, "y", (3, 100), None),
    ],
)
def test_simulators_are_seeded(simulate, key, shape, upper):
    first, second, other = simulate(seed=0), simulate(seed=0), simulate(seed=1)
    assert first.data[key].shape == shape
    np.testing.assert_array_equal(first.data[key], second.data[key])
    assert not np.array_equal(first.data[key], other.data[key])
    if upper is not None:
        assert first.data[key].min() >= 0 and first.data[key].max() < upper


def test_baum_welch_recovers_the_regimes():
    """Baum–Welch on well-separated regimes finds their levels and persistence."""
    simulated = sequences.simulate_hmm_gaussian(num_sequences=4, num_steps=100, seed=3)
    result = ppgen.learn(sequences.hmm_gaussian, engine="em", num_steps=100, **simulated.data)
    order = np.argsort(result.params["locs"])
    np.testing.assert_allclose(result.params["locs"][order], simulated.truth["locs"], atol=0.2)
    np.testing.assert_allclose(np.diag(result.params["transition"][np.ix_(order, order)]), 0.9, atol=0.08)


@pytest.mark.parametrize("model, kwargs", [(sequences.hmm_gaussian, {"num_sequences": 2, "T": 5}), (sequences.hmm_categorical, {"num_sequences": 2, "T": 5})])
def test_prior_predictive(model, kwargs):
    draws = ppgen.generate(model, num_samples=4, **kwargs)
    assert draws["y_4"].shape == (4, 2) and draws["z_0"].shape == (4, 2)


def test_diagram_draws_each_chain_as_one_node():
    from ppgen.diagram import diagram_spec, to_graphviz

    data = sequences.simulate_casino(num_sequences=2, num_steps=12).data
    spec = diagram_spec(ppgen.inspect(sequences.hmm_categorical, **data))
    assert set(spec["nodes"]) == {"initial", "transition", "emission", "z_t", "y_t"}
    assert spec["nodes"]["z_t"]["chain_length"] == 12 and spec["nodes"]["z_t"]["path"] == ("sequences",)
    edges = {(e["source"], e["target"]): e.get("label") for e in spec["edges"]}
    assert edges[("z_t", "z_t")] == "t−1 → t"
    assert ("z_t", "y_t") in edges and ("y_t", "y_t") not in edges
    assert 'z_t -> z_t [label="t−1 → t"]' in to_graphviz(spec).source
