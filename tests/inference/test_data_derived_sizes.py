"""Programs that compute sizes from their data (``int(np.max(labels)) + 1``, as NumPyro's
annotation example does) run on every engine: NumPyro's samplers bind those arrays as concrete
values (cache key by content), Pyro's engines give NumPy functions the data's values."""

from __future__ import annotations

import numpy as np
import pytest

import ppgen
from ppgen import dist, ops, plate, sample

from ._mcmc_reference import assert_within

FAST = dict(num_warmup=300, num_samples=600, num_chains=2, progress=False)


def two_class_annotation(annotator, labels, accuracy):
    """Items of two classes, each labelled by several annotators of known accuracy; the class
    prevalence is unknown. Sizes come from the data."""
    num_annotators = int(np.max(annotator)) + 1
    num_classes = int(np.max(labels)) + 1
    num_items, num_labels = labels.shape
    eye = ops.eye(num_classes)
    right = accuracy[:num_annotators, None, None]
    confusion = right * eye + (1 - right) / (num_classes - 1) * (1 - eye)
    prevalence = sample("prevalence", dist.Beta(2.0, 2.0))
    with plate("items", num_items, dim=-2):
        true_class = sample("true_class", dist.Categorical(ops.stack([1 - prevalence, prevalence], -1)))
        with plate("labels", num_labels):
            sample("label", dist.Categorical(confusion[annotator, true_class]), obs=labels)


def simulate_annotation(seed: int, num_items: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    annotator = np.array([0, 1, 1, 2])
    accuracy = np.array([0.9, 0.7, 0.6])
    truth = (rng.random(num_items) < 0.3).astype(np.int64)
    correct = rng.random((num_items, len(annotator))) < accuracy[annotator]
    labels = np.where(correct, truth[:, None], 1 - truth[:, None])
    return annotator, labels, accuracy


def prevalence_posterior(annotator, labels, accuracy) -> tuple[float, float]:
    """Posterior mean and sd of the prevalence π by quadrature of
    p(π | y) ∝ Beta(π; 2, 2) Π_i [(1 − π) Π_l P(y_il | class 0) + π Π_l P(y_il | class 1)]."""
    grid = np.linspace(0.0, 1.0, 20_001)[1:-1]
    right = accuracy[annotator]
    log_like = {c: np.where(labels == c, np.log(right), np.log(1 - right)).sum(1) for c in (0, 1)}
    log_post = np.log(grid * (1 - grid)) + np.sum(
        np.logaddexp(np.log1p(-grid)[:, None] + log_like[0], np.log(grid)[:, None] + log_like[1]), axis=1
    )
    weights = np.exp(log_post - log_post.max())
    weights /= weights.sum()
    mean = float((weights * grid).sum())
    return mean, float(np.sqrt((weights * (grid - mean) ** 2).sum()))


DATA = simulate_annotation(seed=11)


@pytest.mark.parametrize("engine, seed", [("nuts", 0), ("mh", 2), ("gibbs", 3)])
def test_annotation_sizes_from_data_under_numpyro_samplers(engine, seed):
    """Prevalence within 4 MCSE of the quadrature answer; the arrays the program needs as
    values are named in the diagnostics (the others stay traced)."""
    result = ppgen.infer(two_class_annotation, *DATA, engine=engine, seed=seed, **FAST)
    mean, sd = prevalence_posterior(*DATA)
    ess = result.diagnostics["ess_bulk"]["prevalence"]
    assert_within(result.samples["prevalence"].mean(), mean, sd / np.sqrt(ess), what=f"{engine} prevalence")
    assert result.diagnostics["concrete_arguments"] == ["annotator", "labels"]
    assert result.samples["true_class"].shape == (2 * 600, 40, 1)


def test_new_data_of_the_same_shapes_is_not_served_by_the_old_compiled_sampler():
    """The concrete arrays are part of the compiled sampler: the cache key holds their content,
    so other labels of the same shape get a sampler of their own (and its right answer), and
    the same labels again reuse it."""
    first = ppgen.infer(two_class_annotation, *DATA, engine="nuts", seed=0, **FAST)
    other = simulate_annotation(seed=12)
    assert other[1].shape == DATA[1].shape and not np.array_equal(other[1], DATA[1])
    second = ppgen.infer(two_class_annotation, *other, engine="nuts", seed=0, **FAST)
    assert not second.diagnostics["compiled_sampler_reused"]
    mean, sd = prevalence_posterior(*other)
    ess = second.diagnostics["ess_bulk"]["prevalence"]
    assert_within(second.samples["prevalence"].mean(), mean, sd / np.sqrt(ess), what="prevalence on new labels")
    again = ppgen.infer(two_class_annotation, *DATA, engine="nuts", seed=0, **FAST)
    assert again.diagnostics["compiled_sampler_reused"]
    np.testing.assert_array_equal(again.samples["prevalence"], first.samples["prevalence"])


def rater_bias(rater, score, prior_scale=2.0, noise=0.5):
    """One bias per rater, as many raters as the largest id says."""
    num_raters = int(np.max(rater)) + 1
    with plate("raters", num_raters):
        bias = sample("bias", dist.Normal(0.0, prior_scale))
    with plate("scores", len(score)):
        sample("score", dist.Normal(bias[rater], noise), obs=score)


def test_pyro_engines_and_advi_run_programs_with_sizes_from_data():
    """map finds the exact posterior mean (Gaussian, so the mode); advi (NumPyro, compiled)
    and svi (Pyro) run and give one bias per rater."""
    rng = np.random.default_rng(5)
    rater = rng.integers(0, 5, 30)
    score = rng.normal(0.4 * rater, 0.5)
    precision = 1 / 2.0**2 + np.bincount(rater, minlength=5) / 0.5**2
    exact = np.bincount(rater, weights=score, minlength=5) / 0.5**2 / precision
    mode = ppgen.infer(rater_bias, rater, score, engine="map", progress=False)
    np.testing.assert_allclose(np.asarray(mode.params["bias"]), exact, atol=1e-4)
    for engine in ("advi", "svi"):
        result = ppgen.infer(rater_bias, rater, score, engine=engine, num_steps=200, progress=False)
        assert result.samples["bias"].shape[1:] == (5,)


def size_from_a_latent(y):
    count = sample("count", dist.Gamma(4.0, 1.0))
    with plate("parts", int(count) + 1):
        sample("part", dist.Normal(0.0, 1.0))
    with plate("data", len(y)):
        sample("y", dist.Normal(count, 1.0), obs=y)


def test_a_size_computed_from_a_latent_is_a_clear_error():
    with pytest.raises(TypeError, match=r"size_from_a_latent: the program uses the value of a traced quantity as a Python value.*compute sizes and loop bounds from arguments"):
        ppgen.infer(size_from_a_latent, np.array([3.0, 4.5]), engine="nuts", **FAST)


def test_the_arrays_a_program_needs_as_values_are_remembered_for_new_processes(tmp_path, monkeypatch):
    """Kept beside the compiled samplers (keyed by the program's fingerprint), so a new process
    binds them as values from the start instead of failing a first compilation."""
    from ppgen.inference import _mcmc

    monkeypatch.setenv("PPGEN_CACHE_DIR", str(tmp_path))
    rater, score = np.array([0, 2, 1, 2]), np.array([0.1, 0.5, -0.2, 0.7])
    assert _mcmc.bind_program(rater_bias, (rater, score), {}).concrete == []
    _mcmc._remember_concrete(rater_bias, frozenset({"rater"}))
    del _mcmc._CONCRETE[rater_bias]  # as in a new process
    try:
        assert _mcmc.known_concrete(rater_bias) == {"rater"}
        bound = _mcmc.bind_program(rater_bias, (rater, score), {})
        assert bound.concrete == ["rater"] and list(bound.data) == ["score"]
        assert isinstance(bound.static["rater"], np.ndarray)
    finally:
        _mcmc._CONCRETE.pop(rater_bias, None)
