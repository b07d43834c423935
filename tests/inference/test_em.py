"""EM against scikit-learn, hmmlearn, fixed-point equations, and its invariants."""

import warnings

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm

import ppgen
from ppgen.errors import EngineNotApplicable
from ppgen.models import basics, factor, mixtures, sequences


@pytest.fixture(scope="module")
def gmm_data():
    return mixtures.simulate_gaussian_mixture(num_data=300, seed=0).data["x"]


def _program_init(K, D):
    weights = np.full(K, 1.0 / K)
    locs = np.sin(np.arange(K * D) + 1.0).reshape(K, D)
    scale_trils = np.tile(np.eye(D), (K, 1, 1))
    return weights, locs, scale_trils


def _sklearn_fit(x, K, num_steps):
    from sklearn.mixture import GaussianMixture

    weights, locs, trils = _program_init(K, x.shape[1])
    model = GaussianMixture(
        K, covariance_type="full", max_iter=num_steps, tol=0.0, reg_covar=1e-6,
        weights_init=weights, means_init=locs, precisions_init=np.linalg.inv(trils @ trils.transpose(0, 2, 1)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x)
    return model


def test_gmm_matches_sklearn_from_identical_init(gmm_data):
    x, K, steps = gmm_data, 3, 30
    result = ppgen.learn(mixtures.gaussian_mixture, x, K=K, engine="em", num_steps=steps, tol=0.0, init="program", num_restarts=1)
    reference = _sklearn_fit(x, K, steps)
    assert result.num_iterations == steps
    assert result.diagnostics["m_step"]["locs"].startswith("closed form")
    assert result.traces["log_likelihood"][-1] / len(x) == pytest.approx(reference.score(x), rel=1e-6)
    assert result.log_evidence.value == pytest.approx(reference.score(x) * len(x), rel=1e-6)
    np.testing.assert_allclose(result.params["weights"], reference.weights_, atol=1e-4)
    np.testing.assert_allclose(result.params["locs"], reference.means_, atol=1e-4)
    trils = result.params["scale_trils"]
    np.testing.assert_allclose(trils @ trils.transpose(0, 2, 1), reference.covariances_, atol=1e-4)
    # engines agree: enumeration at EM's parameters gives EM's final responsibilities (and sklearn's)
    exact = ppgen.infer(mixtures.gaussian_mixture, x, K=K, engine="enumerate", params=result.params)
    np.testing.assert_allclose(exact.marginals["z"], result.marginals["z"], atol=1e-12)
    np.testing.assert_allclose(exact.marginals["z"], reference.predict_proba(x), atol=1e-4)


def test_log_likelihood_never_decreases(gmm_data):
    result = ppgen.learn(mixtures.gaussian_mixture, gmm_data, K=4, engine="em", num_steps=40, tol=0.0, seed=3)
    trace = result.traces["log_likelihood"]
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[:-1]))
    assert np.all(np.isfinite(trace))


def test_collapsing_component_is_regularised():
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(size=(40, 2)), np.tile([[4.0, 4.0]], (5, 1))])  # a cluster of identical points
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ppgen.learn(mixtures.gaussian_mixture, x, K=3, engine="em", num_steps=30, tol=0.0, reg_covar=1e-4, seed=0)
    assert all(np.all(np.isfinite(v)) for v in result.params.values())
    assert np.all(np.isfinite(result.traces["log_likelihood"]))


def test_baum_welch_matches_hmmlearn():
    from hmmlearn.hmm import CategoricalHMM

    y = sequences.simulate_casino(num_sequences=4, num_steps=80, seed=5).data["y"]
    steps = 15
    result = ppgen.learn(sequences.hmm_categorical, y, K=2, V=6, engine="em", num_steps=steps, tol=0.0)
    assert set(result.diagnostics["m_step"].values()) == {"closed form (counts)"}
    trace = result.traces["log_likelihood"]
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[:-1]))
    reference = CategoricalHMM(n_components=2, n_features=6, init_params="", params="ste", n_iter=steps, tol=0.0)
    reference.startprob_ = np.full(2, 0.5)
    reference.transmat_ = sequences._sticky(2)
    reference.emissionprob_ = sequences._spread_rows(2, 6)
    X, lengths = y.reshape(-1, 1), [y.shape[1]] * y.shape[0]
    reference.fit(X, lengths)
    np.testing.assert_allclose(result.params["transition"], reference.transmat_, atol=1e-6)
    np.testing.assert_allclose(result.params["emission"], reference.emissionprob_, atol=1e-6)
    np.testing.assert_allclose(result.params["initial"], reference.startprob_, atol=1e-6)
    assert trace[-1] == pytest.approx(reference.score(X, lengths), rel=1e-9)


def test_map_em_bernoulli_mixture_is_a_fixed_point():
    """At convergence, θ_kd = (Σ γ x + a − 1) / (Σ γ + a + b − 2) and π ∝ Σ γ + γ0 − 1, with the
    responsibilities γ recomputed here in NumPy from the returned estimate."""
    data = mixtures.simulate_bernoulli_mixture(num_data=150, seed=2).data
    x, a, b, gamma0 = data["x"], 2.0, 3.0, 2.0
    result = ppgen.learn(
        mixtures.bernoulli_mixture, x, K=2, alpha=a, beta=b, gamma=gamma0, engine="em", num_steps=500, tol=1e-12
    )
    assert result.converged and result.log_evidence is None
    pi, theta = result.params["pi"], result.params["theta"]
    log_joint = np.log(pi) + (x[:, None, :] * np.log(theta) + (1 - x[:, None, :]) * np.log1p(-theta)).sum(-1)
    resp = np.exp(log_joint - logsumexp(log_joint, 1, keepdims=True))
    np.testing.assert_allclose(theta, (resp.T @ x + a - 1) / (resp.sum(0)[:, None] + a + b - 2), atol=1e-6)
    np.testing.assert_allclose(pi, (resp.sum(0) + gamma0 - 1) / (len(x) + 2 * (gamma0 - 1)), atol=1e-6)
    joint = result.traces["log_joint"]
    assert np.all(np.diff(joint) >= -1e-9 * np.abs(joint[:-1]))


def test_map_em_with_nonconjugate_prior_is_stationary():
    """HalfNormal priors on the scales have no closed form: gradient M-steps (generalised EM).
    At the returned point the log joint log p(x, π, μ, σ), written here in NumPy, is flat."""
    data = mixtures.simulate_gaussian_mixture_1d(num_data=120, seed=3).data
    x, K = data["x"], 3
    result = ppgen.learn(mixtures.bayesian_gaussian_mixture_1d, x, K=K, engine="em", num_steps=400, tol=1e-13)
    assert result.diagnostics["m_step"]["sigma"] == "gradient steps: no closed form for a normal scale with a prior"
    assert result.diagnostics["m_step"]["mu"] == "closed form (normal_loc)"
    joint = result.traces["log_joint"]
    assert np.all(np.diff(joint) >= -1e-9 * np.abs(joint[:-1]))
    pi, mu, sigma = (result.params[k] for k in ("pi", "mu", "sigma"))

    def log_joint(mu, log_sigma):
        s = np.exp(log_sigma)
        mixture = logsumexp(np.log(pi) + norm.logpdf(x[:, None], mu, s), 1).sum()
        halfnormal = (np.log(2) + norm.logpdf(s, 0, 5.0)).sum()
        return mixture + norm.logpdf(mu, 0, 10.0).sum() + halfnormal

    h = 1e-5
    for k in range(K):
        step = np.eye(K)[k] * h
        d_mu = (log_joint(mu + step, np.log(sigma)) - log_joint(mu - step, np.log(sigma))) / (2 * h)
        d_sigma = (log_joint(mu, np.log(sigma) + step) - log_joint(mu, np.log(sigma) - step)) / (2 * h)
        assert abs(d_mu) < 1e-3 and abs(d_sigma) < 1e-3


def test_kmeans_init_and_restarts_pick_the_best(gmm_data):
    result = ppgen.learn(mixtures.gaussian_mixture, gmm_data, K=3, engine="em", num_restarts=3, num_steps=200, seed=1)
    assert result.diagnostics["log_likelihood"] == pytest.approx(max(result.diagnostics["restarts"]))
    assert result.converged


@pytest.mark.parametrize(
    "model, data, message",
    [
        (basics.coin, {"x": np.array([1.0, 0.0])}, "no discrete latent"),
        (factor.ppca, {"x": np.zeros((5, 3)), "K": 1}, "latent site 'z' is continuous and local"),
    ],
)
def test_not_applicable_names_the_reason(model, data, message):
    with pytest.raises(EngineNotApplicable, match=message):
        ppgen.learn(model, engine="em", **data)


@pytest.mark.parametrize(
    "option, value, message",
    [("num_steps", 0, "num_steps must be a positive integer"), ("init", "spectral", "init must be one of"), ("tol", -1.0, "tol must be >= 0")],
)
def test_rejects_bad_options(option, value, message):
    with pytest.raises(ValueError, match=message):
        ppgen.learn(mixtures.gaussian_mixture_1d, np.zeros(4), engine="em", **{option: value})


def shifted_mixture(x, K=3):
    """gaussian_mixture_1d with the means behind an affine map: not a gather, so generalised EM."""
    from ppgen import dist, ops, param, plate, sample

    weights = param("weights", ops.ones(K) / K, constraint=dist.constraints.simplex)
    offsets = param("offsets", (ops.linspace(-1.0, 1.0, K) - 1.0) / 2.0)
    scales = param("scales", ops.ones(K), constraint=dist.constraints.positive)
    with plate("N", len(x)):
        z = sample("z", dist.Categorical(weights))
        sample("x", dist.Normal(2.0 * offsets[z] + 1.0, scales[z]), obs=x)


def test_generalised_em_agrees_with_closed_form():
    x = mixtures.simulate_gaussian_mixture_1d(num_data=100, seed=6).data["x"]
    # one start each, the program's own: the same start gives the same fixed point
    closed = ppgen.learn(mixtures.gaussian_mixture_1d, x, K=3, engine="em", init="program", num_restarts=1, num_steps=300, tol=1e-10)
    general = ppgen.learn(shifted_mixture, x, K=3, engine="em", init="program", num_restarts=1, num_steps=300, tol=1e-10)
    assert general.diagnostics["evaluator"] == "traced"
    assert general.diagnostics["m_step"]["offsets"].startswith("gradient steps")
    assert general.diagnostics["m_step"]["scales"].startswith("gradient steps")  # shares the opaque site
    assert general.diagnostics["m_step"]["weights"] == "closed form (counts)"
    trace = general.traces["log_likelihood"]
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[:-1]))
    assert general.log_evidence.value == pytest.approx(closed.log_evidence.value, rel=1e-7)
    np.testing.assert_allclose(2 * general.params["offsets"] + 1, closed.params["locs"], atol=1e-4)


# --------------------------------------------------------------------------------------------
# a component collapsing onto one datum: regularised by reg_covar (as scikit-learn), reported


def _with_outlier(rng, clusters, dim, per_cluster, outlier):
    centres = 4.0 * rng.normal(size=(clusters, dim))
    points = [c + rng.normal(size=(per_cluster, dim)) for c in centres]
    return np.vstack(points + [np.asarray(outlier, dtype=float)[None]])


def _sklearn_from(x, covariance_type, weights, means, precisions, num_steps, reg_covar):
    from sklearn.mixture import GaussianMixture

    model = GaussianMixture(
        len(weights), covariance_type=covariance_type, max_iter=num_steps, tol=0.0, reg_covar=reg_covar,
        weights_init=weights, means_init=means, precisions_init=precisions,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's own "did not converge" (tol=0 runs all steps)
        return model.fit(x)


# Both runs apply the same EM map, num_steps times, from the same start, in float64: they differ
# by rounding only (scikit-learn adds 10 eps to each component's mass, as ppgen does), so the
# tolerances below are rounding-level, orders of magnitude under any EM-tolerance effect.
_RTOL = 1e-7


def test_a_component_collapsing_onto_an_outlier_is_regularised_as_sklearn_and_warned():
    rng = np.random.default_rng(7)
    x = _with_outlier(rng, clusters=2, dim=2, per_cluster=40, outlier=[30.0, -30.0])
    K, steps = 3, 40
    weights, locs = np.full(K, 1 / K), np.vstack([x[0], x[40], [29.0, -29.0]])
    start = {"weights": weights, "locs": locs, "scale_trils": np.tile(np.eye(2), (K, 1, 1))}

    def fit(reg_covar):
        return ppgen.learn(mixtures.gaussian_mixture, x, K=K, engine="em", num_steps=steps, tol=0.0, reg_covar=reg_covar,
                           init="program", init_params=start, num_restarts=1)

    with pytest.raises(ppgen.errors.EngineFailure, match=r"covariance that is not positive definite for component\(s\) \[2\] of 'scale_trils' at iteration \d+; .*set reg_covar > 0"):
        fit(0.0)  # without the regulariser the collapsed covariance is singular
    with pytest.warns(ppgen.errors.ConvergenceWarning, match=r"em: component\(s\) collapsed .*site 'x': scale_trils\[2\] \(responsibility of 1 data\)"):
        result = fit(1e-6)
    assert result.diagnostics["collapsed"] == {"scale_trils": [(2,)]}
    reference = _sklearn_from(x, "full", weights, locs, np.tile(np.eye(2), (K, 1, 1)), steps, 1e-6)
    assert np.all(np.isfinite(result.traces["log_likelihood"]))
    assert result.log_evidence.value == pytest.approx(reference.score(x) * len(x), rel=_RTOL)
    np.testing.assert_allclose(result.params["weights"], reference.weights_, rtol=_RTOL)
    np.testing.assert_allclose(result.params["locs"], reference.means_, rtol=_RTOL, atol=1e-9)
    trils = result.params["scale_trils"]
    np.testing.assert_allclose(trils @ trils.transpose(0, 2, 1), reference.covariances_, rtol=1e-6, atol=1e-12)
    assert reference.covariances_[2] == pytest.approx(1e-6 * np.eye(2), abs=1e-9)  # the floor, in squared data units


def scattered_parts(points, num_kinds=4):
    """A user's diagonal-covariance mixture, written with its own names."""
    n, dim = points.shape
    share = ppgen.param("share", torch.ones(num_kinds) / num_kinds, constraint=ppgen.dist.constraints.simplex)
    centre = ppgen.param("centre", torch.zeros(num_kinds, dim))
    spread = ppgen.param("spread", torch.ones(num_kinds, dim), constraint=ppgen.dist.constraints.positive)
    with ppgen.plate("parts", n):
        kind = ppgen.sample("kind", ppgen.dist.Categorical(share))
        ppgen.sample("measurement", ppgen.dist.Normal(centre[kind], spread[kind]).to_event(1), obs=points)


def test_a_diagonal_3d_mixture_with_a_collapsing_kind_agrees_with_sklearn():
    rng = np.random.default_rng(11)
    x = _with_outlier(rng, clusters=3, dim=3, per_cluster=30, outlier=[-40.0, 35.0, 50.0])
    K, steps, reg = 4, 30, 1e-5
    share, centre, spread = np.full(K, 1 / K), np.vstack([x[0], x[30], x[60], x[-1] + 0.5]), np.ones((K, 3))
    start = {"share": share, "centre": centre, "spread": spread}

    def fit(reg_covar):
        return ppgen.learn(scattered_parts, x, engine="em", num_steps=steps, tol=0.0, reg_covar=reg_covar,
                           init="program", init_params=start, num_restarts=1)

    with pytest.raises(ppgen.errors.EngineFailure, match=r"a variance of 0 for component\(s\) \[3, 0\], \[3, 1\], \[3, 2\] of 'spread'"):
        fit(0.0)
    with pytest.warns(ppgen.errors.ConvergenceWarning, match=r"site 'measurement': spread\[3, 0\] .*reg_covar=1e-05"):
        result = fit(reg)
    assert result.diagnostics["m_step"]["spread"].startswith("closed form")
    reference = _sklearn_from(x, "diag", share, centre, 1 / spread**2, steps, reg)
    assert result.log_evidence.value == pytest.approx(reference.score(x) * len(x), rel=_RTOL)
    np.testing.assert_allclose(result.params["share"], reference.weights_, rtol=_RTOL)
    np.testing.assert_allclose(result.params["centre"], reference.means_, rtol=_RTOL, atol=1e-9)
    np.testing.assert_allclose(result.params["spread"] ** 2, reference.covariances_, rtol=1e-6, atol=1e-12)
