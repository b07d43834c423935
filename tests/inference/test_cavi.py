"""Coordinate-ascent VI: exact on conjugate single-latent models, sklearn's Bayesian GMM, an
exact Gaussian mean, a monotone ELBO, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.special import betaln, gammaln

import ppgen
from ppgen import dist, ops, plate, sample
from ppgen.errors import EngineNotApplicable
from ppgen.models.basics import coin, coin_log_evidence, coin_posterior, heights
from ppgen.models.mixtures import bernoulli_mixture, conjugate_gaussian_mixture, simulate_bernoulli_mixture

RNG = np.random.default_rng(7)


def beta_binomial(x, trials=10, a=2.0, b=3.0):
    rho = sample("rho", dist.Beta(a, b))
    with plate("N", len(x)):
        sample("x", dist.Binomial(trials, rho), obs=x)


def gamma_poisson(x, a=2.0, b=0.5):
    rate = sample("rate", dist.Gamma(a, b))
    with plate("N", len(x)):
        sample("x", dist.Poisson(rate), obs=x)


def normal_known_variance(x, m0=1.0, s0=2.0, sigma=0.7):
    mu = sample("mu", dist.Normal(m0, s0))
    with plate("N", len(x)):
        sample("x", dist.Normal(mu, sigma), obs=x)


def gamma_precision(x, loc=0.5, a=3.0, b=2.0):
    tau = sample("tau", dist.Gamma(a, b))
    with plate("N", len(x)):
        sample("x", dist.Normal(loc, tau**-0.5), obs=x)


def normal_gamma(x, m0=0.0, kappa=0.5, a=2.0, b=1.0):
    tau = sample("tau", dist.Gamma(a, b))
    mu = sample("mu", dist.Normal(m0, (kappa * tau) ** -0.5))
    with plate("N", len(x)):
        sample("x", dist.Normal(mu, tau**-0.5), obs=x)


def dirichlet_categorical(x, K=4, alpha=1.5):
    pi = sample("pi", dist.Dirichlet(alpha * ops.ones(K)))
    with plate("N", len(x)):
        sample("x", dist.Categorical(pi), obs=x)


def dirichlet_multinomial(x, trials=6, alpha=0.7):
    pi = sample("pi", dist.Dirichlet(alpha * ops.ones(x.shape[-1])))
    with plate("N", x.shape[0]):
        sample("x", dist.Multinomial(trials, pi), obs=x)


def _normal_gamma_posterior(x, m0, kappa, a, b):
    n, mean = len(x), x.mean()
    kappa_n = kappa + n
    m_n = (kappa * m0 + n * mean) / kappa_n
    a_n = a + n / 2
    b_n = b + 0.5 * ((x - mean) ** 2).sum() + kappa * n * (mean - m0) ** 2 / (2 * kappa_n)
    log_evidence = (
        gammaln(a_n) - gammaln(a) + a * np.log(b) - a_n * np.log(b_n) + 0.5 * np.log(kappa / kappa_n) - n / 2 * np.log(2 * np.pi)
    )
    return m_n, kappa_n, a_n, b_n, log_evidence


def _conjugate_cases():
    xb = RNG.binomial(10, 0.3, size=15).astype(float)
    xp = RNG.poisson(3.0, size=20).astype(float)
    xn = RNG.normal(1.5, 0.7, size=12)
    xg = RNG.normal(0.5, 1.3, size=25)
    xc = RNG.integers(0, 4, size=30).astype(float)
    xm = RNG.multinomial(6, [0.2, 0.5, 0.3], size=8).astype(float)
    counts_c = np.bincount(xc.astype(int), minlength=4)
    n, s0, sigma = len(xn), 2.0, 0.7
    post_var = 1 / (1 / s0**2 + n / sigma**2)
    post_mean = post_var * (1.0 / s0**2 + xn.sum() / sigma**2)
    cov = sigma**2 * np.eye(n) + s0**2
    return [
        ("beta-bernoulli", coin, (np.array([1, 0, 1, 1, 1, 0, 1.0]),),
         {"rho.concentration1": 2 + 5, "rho.concentration0": 2 + 2}, coin_log_evidence(np.array([1, 0, 1, 1, 1, 0, 1.0]))),
        ("beta-binomial", beta_binomial, (xb,),
         {"rho.concentration1": 2 + xb.sum(), "rho.concentration0": 3 + 10 * len(xb) - xb.sum()},
         float(betaln(2 + xb.sum(), 3 + 10 * len(xb) - xb.sum()) - betaln(2, 3) + np.sum(np.log([__import__("math").comb(10, int(k)) for k in xb])))),
        ("gamma-poisson", gamma_poisson, (xp,),
         {"rate.concentration": 2 + xp.sum(), "rate.rate": 0.5 + len(xp)},
         float(2 * np.log(0.5) - gammaln(2) + gammaln(2 + xp.sum()) - (2 + xp.sum()) * np.log(0.5 + len(xp)) - gammaln(xp + 1).sum())),
        ("normal-normal", normal_known_variance, (xn,),
         {"mu.loc": post_mean, "mu.scale": np.sqrt(post_var)},
         float(stats.multivariate_normal(np.full(n, 1.0), cov).logpdf(xn))),
        ("gamma-normal", gamma_precision, (xg,),
         {"tau.concentration": 3 + len(xg) / 2, "tau.rate": 2 + 0.5 * ((xg - 0.5) ** 2).sum()},
         float(3 * np.log(2.0) - gammaln(3) + gammaln(3 + len(xg) / 2) - (3 + len(xg) / 2) * np.log(2 + 0.5 * ((xg - 0.5) ** 2).sum())
               - len(xg) / 2 * np.log(2 * np.pi))),
        ("dirichlet-categorical", dirichlet_categorical, (xc,),
         {"pi.concentration": 1.5 + counts_c},
         float(gammaln(6.0) - gammaln(6.0 + len(xc)) + (gammaln(1.5 + counts_c) - gammaln(1.5)).sum())),
        ("dirichlet-multinomial", dirichlet_multinomial, (xm,),
         {"pi.concentration": 0.7 + xm.sum(0)},
         float(gammaln(2.1) - gammaln(2.1 + xm.sum()) + (gammaln(0.7 + xm.sum(0)) - gammaln(0.7)).sum()
               + (gammaln(7) - gammaln(xm + 1).sum(1)).sum())),
    ]


@pytest.mark.parametrize("name,model,args,expected,log_evidence", _conjugate_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_exact_on_conjugate_single_latent_models(name, model, args, expected, log_evidence):
    """With one latent, the mean-field family contains the posterior: q is exact and the ELBO
    equals log p(x)."""
    result = ppgen.infer(model, *args, engine="cavi", num_samples=10)
    for key, value in expected.items():
        np.testing.assert_allclose(result.params[key], value, rtol=1e-9, err_msg=f"{name}: {key}")
    assert result.log_evidence.kind == "lower-bound"
    assert result.log_evidence.value == pytest.approx(log_evidence, abs=1e-8)


def test_normal_gamma_block_is_exact_and_factorised_version_is_a_strict_bound():
    x = RNG.normal(2.0, 0.8, size=30)
    m_n, kappa_n, a_n, b_n, log_evidence = _normal_gamma_posterior(x, 0.0, 0.5, 2.0, 1.0)
    joint = ppgen.infer(normal_gamma, x, engine="cavi", num_samples=10)
    assert dict(joint.diagnostics["nodes"]) == {"mu,tau": "NormalGamma"}
    np.testing.assert_allclose(
        [joint.params["mu.loc"], joint.params["mu.precision_scale"], joint.params["tau.concentration"], joint.params["tau.rate"]],
        [m_n, kappa_n, a_n, b_n], rtol=1e-9,
    )
    assert joint.log_evidence.value == pytest.approx(log_evidence, abs=1e-8)
    factorised = ppgen.infer(normal_gamma, x, engine="cavi", blocks=False, num_samples=10)
    assert dict(factorised.diagnostics["nodes"]) == {"tau": "Gamma", "mu": "Normal"}
    assert factorised.log_evidence.value < log_evidence - 1e-3
    assert np.all(np.diff(factorised.traces["elbo"]) >= -1e-9 * np.abs(factorised.traces["elbo"][1:]))
    # mean-field Gaussian factors keep the exact posterior mean of mu
    assert float(factorised.params["mu.loc"]) == pytest.approx(m_n, rel=1e-6)


def hierarchical_normal(y, sigma, mu_scale=5.0, tau=2.0):
    mu = sample("mu", dist.Normal(0.0, mu_scale))
    with plate("J", len(y)):
        theta = sample("theta", dist.Normal(mu, tau))
        sample("y", dist.Normal(theta, sigma), obs=y)


def test_gaussian_hierarchy_recovers_exact_posterior_means():
    """Mean-field VI on a Gaussian model has the exact posterior mean (its fixed point solves the
    same linear system); here with plate-aligned gathers theta_j -> y_j and a shared mu."""
    y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    result = ppgen.infer(hierarchical_normal, y, sigma, engine="cavi", tol=0.0, num_steps=1500, num_samples=10)
    # exact joint Gaussian posterior over (mu, theta)
    J = len(y)
    precision = np.zeros((J + 1, J + 1))
    precision[0, 0] = 1 / 25 + J / 4
    precision[0, 1:] = precision[1:, 0] = -1 / 4
    precision[1:, 1:] = np.diag(1 / 4 + 1 / sigma**2)
    mean = np.linalg.solve(precision, np.concatenate([[0.0], y / sigma**2]))
    np.testing.assert_allclose(result.params["mu.loc"], mean[0], rtol=1e-6)
    np.testing.assert_allclose(result.params["theta.loc"], mean[1:], rtol=1e-6)
    # mean-field variances are the inverse diagonal of the precision (smaller than the marginals)
    np.testing.assert_allclose(result.params["theta.scale"] ** 2, 1 / np.diag(precision)[1:], rtol=1e-9)


def test_bayesian_gmm_matches_sklearn_bayesian_gaussian_mixture():
    from sklearn.cluster import KMeans
    from sklearn.mixture import BayesianGaussianMixture

    from ppgen.models.mixtures import simulate_gaussian_mixture_1d

    x = simulate_gaussian_mixture_1d(num_data=300, seed=1).data["x"]
    K, gamma, m0, beta0, a, b = 3, 1.0, 0.0, 0.1, 1.0, 1.0
    reference = BayesianGaussianMixture(
        n_components=K, weight_concentration_prior_type="dirichlet_distribution", weight_concentration_prior=gamma,
        mean_prior=[m0], mean_precision_prior=beta0, degrees_of_freedom_prior=2 * a, covariance_prior=np.array([[2 * b]]),
        reg_covar=0.0, tol=1e-12, max_iter=10_000, random_state=0, init_params="kmeans",
    ).fit(x[:, None])
    # the same initial responsibilities: k-means labels drawn exactly as sklearn draws them
    labels = KMeans(n_clusters=K, n_init=1, random_state=0).fit(x[:, None]).labels_
    result = ppgen.infer(
        conjugate_gaussian_mixture, x, K=K, weight_concentration=gamma, mean_prior=m0, mean_precision=beta0,
        precision_shape=a, precision_rate=b, engine="cavi", init={"z": np.eye(K)[labels]}, num_restarts=1, tol=1e-13, num_steps=10_000,
    )
    concentration = result.params["pi.concentration"]
    np.testing.assert_allclose(concentration / concentration.sum(), reference.weights_, atol=1e-3)
    np.testing.assert_allclose(result.params["mu.loc"], reference.means_.ravel(), atol=1e-3)
    np.testing.assert_allclose(2 * result.params["tau.concentration"], reference.degrees_of_freedom_, rtol=1e-4)
    elbo = result.traces["elbo"]
    assert np.all(np.diff(elbo) >= -1e-9 * np.abs(elbo[1:]))


def test_elbo_is_monotone_and_bounded_on_bernoulli_mixture():
    sim = simulate_bernoulli_mixture(num_data=150, seed=3)
    result = ppgen.infer(bernoulli_mixture, **sim.data, engine="cavi", seed=2, num_samples=200)
    elbo = result.traces["elbo"]
    assert len(elbo) > 3 and result.converged
    assert np.all(np.diff(elbo) >= -1e-9 * np.abs(elbo[1:]))
    # clusters recovered (up to label switching)
    labels = result.marginals["z"].argmax(-1)
    agreement = max((labels == sim.truth["z"]).mean(), (labels != sim.truth["z"]).mean())
    assert agreement > 0.95
    probs = result.marginals["z"]
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)
    # draws come from q: theta's Monte Carlo mean matches the Beta means within 5 standard errors
    a, b = result.params["theta.concentration1"], result.params["theta.concentration0"]
    mean, sd = a / (a + b), np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    assert np.all(np.abs(result.samples["theta"].mean(0) - mean) < 5 * sd / np.sqrt(200))
    assert result.samples["z"].shape == (200, 150)


def test_same_seed_same_result():
    sim = simulate_bernoulli_mixture(num_data=60, seed=4)
    first = ppgen.infer(bernoulli_mixture, **sim.data, engine="cavi", seed=5, num_samples=20)
    second = ppgen.infer(bernoulli_mixture, **sim.data, engine="cavi", seed=5, num_samples=20)
    np.testing.assert_array_equal(first.traces["elbo"], second.traces["elbo"])
    np.testing.assert_array_equal(first.samples["theta"], second.samples["theta"])


def exp_link(x):
    mu = sample("mu", dist.Normal(0.0, 1.0))
    with plate("N", len(x)):
        sample("x", dist.Normal(ops.exp(mu), 1.0), obs=x)


def test_refusals_name_the_blocking_site():
    with pytest.raises(EngineNotApplicable, match="'sigma' has a HalfNormal prior"):
        ppgen.infer(heights, np.array([170.0, 180.0]), engine="cavi")
    with pytest.raises(EngineNotApplicable, match="site 'x': its log density is not conjugate"):
        ppgen.infer(exp_link, np.array([0.5, 1.0]), engine="cavi")
    with pytest.raises(EngineNotApplicable, match="has no data"):
        ppgen.infer(coin, None, engine="cavi")
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        ppgen.infer(coin, np.array([1.0, 0.0]), engine="cavi", num_steps=0)
    with pytest.raises(ValueError, match="init names"):
        ppgen.infer(coin, np.array([1.0, 0.0]), engine="cavi", init={"rho": np.ones(2)})


def test_coin_posterior_helper_agrees():
    x = np.array([1.0, 1.0, 0.0, 1.0])
    result = ppgen.infer(coin, x, engine="cavi", num_samples=10)
    fitted = (float(result.params["rho.concentration1"]), float(result.params["rho.concentration0"]))
    np.testing.assert_allclose(fitted, coin_posterior(x), rtol=1e-12)


def test_markov_chain_is_exact_and_its_steps_share_program_runs():
    """Given the states, π and the rows of A are independent Dirichlets: q is exact and the
    ELBO equals log p(x). The steps x_t all read A, so they are probed in the same runs: the
    compile's number of program runs does not grow with the chain's length."""
    from ppgen.models import sequences

    runs = []
    for num_steps in (30, 120):
        x = sequences.simulate_markov_chain(num_steps=num_steps, seed=2).data["x"]
        result = ppgen.infer(sequences.markov_chain, x, K=3, engine="cavi", num_samples=10)
        posterior = sequences.markov_chain_posterior(x, K=3)
        np.testing.assert_allclose(result.params["initial.concentration"], posterior["initial"], rtol=1e-9)
        np.testing.assert_allclose(result.params["transition.concentration"], posterior["transition"], rtol=1e-9)
        assert result.log_evidence.value == pytest.approx(sequences.markov_chain_log_evidence(x, K=3), abs=1e-8)
        runs.append(result.diagnostics["program_runs"])
    assert runs[0] == runs[1] < 30
