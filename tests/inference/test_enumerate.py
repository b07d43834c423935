"""Exact enumeration against brute-force sums, hmmlearn, and its own error messages."""

import itertools

import numpy as np
import pytest
from scipy.special import logsumexp

import ppgen
from ppgen import dist, ops, plate, sample
from ppgen.density import log_density
from ppgen.errors import EngineNotApplicable
from ppgen.models import basics, mixtures, sequences


def brute_force(model, latent_shapes, cardinalities, *args, **kwargs):
    """log p(x), marginals and the MAP by summing log p(x, z) over every joint configuration."""
    names = list(latent_shapes)
    sizes = [int(np.prod(latent_shapes[n], dtype=int)) for n in names]
    cells = [(n, i) for n, size in zip(names, sizes) for i in range(size)]
    configurations, log_joint = [], []
    for assignment in itertools.product(*[range(cardinalities[n]) for n, _ in cells]):
        values, position = {}, 0
        for n, size in zip(names, sizes):
            values[n] = np.array(assignment[position : position + size], dtype=np.int64).reshape(latent_shapes[n])
            position += size
        configurations.append(values)
        log_joint.append(log_density(model, *args, values=values, **kwargs))
    log_joint = np.array(log_joint)
    log_z = logsumexp(log_joint)
    posterior = np.exp(log_joint - log_z)
    marginals = {}
    for n in names:
        probs = np.zeros(latent_shapes[n] + (cardinalities[n],))
        for values, p in zip(configurations, posterior):
            for index in np.ndindex(latent_shapes[n]):
                probs[index + (int(values[n][index]),)] += p
        marginals[n] = probs
    return log_z, marginals, configurations[int(np.argmax(log_joint))]


def switching_model(x):
    """A global discrete switch shared by every datum: not a chain (tensor elimination)."""
    s = sample("s", dist.Categorical(ops.tensor([0.6, 0.4])))
    with plate("N", len(x)):
        z = sample("z", dist.Categorical(ops.tensor([0.2, 0.5, 0.3])))
        sample("x", dist.Normal(z * 1.5 - 1.0 + 2.0 * s, 0.8), obs=x)


def check_against_brute_force(result, truth, atol=1e-6):
    log_z, marginals, best = truth
    assert result.log_evidence.kind == "exact"
    assert result.log_evidence.value == pytest.approx(log_z, abs=atol)
    for name, probs in marginals.items():
        np.testing.assert_allclose(result.marginals[name], probs, atol=atol)
        np.testing.assert_array_equal(np.asarray(result.map_estimate[name]).astype(int), best[name])


def test_mixture_matches_brute_force():
    x = np.array([-1.2, 0.4, 2.1, 0.9, -0.3])
    result = ppgen.infer(mixtures.gaussian_mixture_1d, x, K=3, engine="enumerate")
    assert result.diagnostics["method"] == "chain"
    check_against_brute_force(result, brute_force(mixtures.gaussian_mixture_1d, {"z": (5,)}, {"z": 3}, x, K=3))


def test_global_switch_matches_brute_force():
    x = np.array([0.3, 1.9, -0.4, 2.6])
    result = ppgen.infer(switching_model, x, engine="enumerate")
    assert result.diagnostics["method"] == "tensor-elimination"
    check_against_brute_force(result, brute_force(switching_model, {"s": (), "z": (4,)}, {"s": 2, "z": 3}, x))


def test_hmm_matches_brute_force():
    y = np.array([[0.2, -1.5, 0.9, 1.4]])
    result = ppgen.infer(sequences.hmm_gaussian, y, K=3, engine="enumerate")
    assert result.diagnostics["method"] == "chain"
    shapes = {f"z_{t}": (1,) for t in range(4)}
    check_against_brute_force(result, brute_force(sequences.hmm_gaussian, shapes, {n: 3 for n in shapes}, y, K=3))


def _hmmlearn_categorical():
    from hmmlearn.hmm import CategoricalHMM

    model = CategoricalHMM(n_components=2, n_features=6, init_params="", params="")
    model.startprob_ = np.full(2, 0.5)
    model.transmat_ = sequences._sticky(2)
    model.emissionprob_ = sequences._spread_rows(2, 6)
    return model


def test_hmm_against_hmmlearn():
    y = sequences.simulate_casino(num_sequences=3, num_steps=60, seed=2).data["y"]
    result = ppgen.infer(sequences.hmm_categorical, y, K=2, V=6, engine="enumerate")
    reference = _hmmlearn_categorical()
    X, lengths = y.reshape(-1, 1), [y.shape[1]] * y.shape[0]
    assert result.log_evidence.value == pytest.approx(reference.score(X, lengths), rel=1e-10)
    marginals = np.stack([result.marginals[f"z_{t}"] for t in range(y.shape[1])], 1)
    np.testing.assert_allclose(marginals, reference.predict_proba(X, lengths).reshape(marginals.shape), atol=1e-9)
    path = np.stack([result.map_estimate[f"z_{t}"] for t in range(y.shape[1])], 1)
    np.testing.assert_array_equal(path, reference.predict(X, lengths).reshape(path.shape))


def test_evaluates_at_given_params():
    x = mixtures.simulate_gaussian_mixture_1d(num_data=40, seed=4).data["x"]
    params = {"weights": np.array([0.2, 0.5, 0.3]), "locs": np.array([-4.0, 0.0, 5.0]), "scales": np.array([1.0, 0.7, 1.2])}
    result = ppgen.infer(mixtures.gaussian_mixture_1d, x, K=3, engine="enumerate", params=params)
    from scipy.stats import norm

    log_joint = np.log(params["weights"]) + norm.logpdf(x[:, None], params["locs"], params["scales"])
    assert result.log_evidence.value == pytest.approx(logsumexp(log_joint, 1).sum(), rel=1e-12)
    np.testing.assert_allclose(result.marginals["z"], np.exp(log_joint - logsumexp(log_joint, 1, keepdims=True)), atol=1e-12)
    np.testing.assert_allclose(result.params["locs"], params["locs"])


def test_large_mixture_is_one_contraction():
    x = np.random.default_rng(0).normal(size=20000)
    result = ppgen.score(mixtures.gaussian_mixture_1d, x, K=4, engine="enumerate")
    from scipy.stats import norm

    log_joint = np.log(0.25) + norm.logpdf(x[:, None], np.linspace(-1, 1, 4), 1.0)
    assert result.value == pytest.approx(logsumexp(log_joint, 1).sum(), rel=1e-12)


def test_continuous_latent_is_named():
    with pytest.raises(EngineNotApplicable, match=r"latent site 'rho' is continuous"):
        ppgen.infer(basics.coin, [1.0, 0.0, 1.0], engine="enumerate")


def test_no_latents_is_the_likelihood():
    def fixed(x):
        with plate("N", len(x)):
            sample("x", dist.Normal(0.0, 2.0), obs=x)

    x = np.array([0.5, -1.0, 2.0])
    from scipy.stats import norm

    assert ppgen.score(fixed, x, engine="enumerate").value == pytest.approx(norm.logpdf(x, 0, 2).sum(), rel=1e-12)


def test_rejects_bad_options():
    with pytest.raises(TypeError, match="params must be a dict"):
        ppgen.infer(mixtures.gaussian_mixture_1d, np.zeros(3), engine="enumerate", params=[1, 2])
