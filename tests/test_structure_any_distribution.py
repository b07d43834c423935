"""Tracing never fails on a distribution Pyro can score: every family, observed and latent;
an observed site's support is never enumerated; a latent's cardinality only when it is one
number; NumPy functions of the data (sizes computed from it) work while tracing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pyro.distributions.torch_distribution import TorchDistribution

import ppgen
from ppgen import dist, ops, plate, sample
from ppgen.backend import torch_precision, use_backend


# torch's Wishart sampler warns when a draw is near-singular; irrelevant to tracing
pytestmark = pytest.mark.filterwarnings("ignore:Singular sample detected")


def t(*values):
    return ops.tensor(values)


#: (family, constructor, support kind of a latent site, its cardinality). Built on Pyro in
#: float64; constructors with inhomogeneous counts or bounds are the cases the issue names.
FAMILIES = [
    ("Normal", lambda: dist.Normal(0.0, 1.0), "continuous", None),
    ("Binomial, total_count per element", lambda: dist.Binomial(t(3.0, 7.0, 12.0), probs=0.3), "infinite-discrete", None),
    ("Binomial, one total_count", lambda: dist.Binomial(5, probs=t(0.3, 0.5)), "finite", 6),
    ("BetaBinomial, total_count per element", lambda: dist.BetaBinomial(2.0, 3.0, total_count=t(3.0, 8.0)), "infinite-discrete", None),
    ("ExtendedBinomial", lambda: dist.ExtendedBinomial(t(3.0, 7.0), probs=0.4), "infinite-discrete", None),
    ("Multinomial", lambda: dist.Multinomial(10, probs=t(0.2, 0.3, 0.5)), "infinite-discrete", None),
    ("DirichletMultinomial", lambda: dist.DirichletMultinomial(t(1.0, 2.0, 3.0), total_count=7), "infinite-discrete", None),
    ("Categorical", lambda: dist.Categorical(probs=t(0.2, 0.3, 0.5)), "finite", 3),
    ("OneHotCategorical", lambda: dist.OneHotCategorical(probs=t(0.2, 0.3, 0.5)), "finite", 3),
    ("Bernoulli expanded", lambda: dist.Bernoulli(0.3).expand([4]), "finite", 2),
    ("Poisson", lambda: dist.Poisson(t(2.0, 3.0)), "infinite-discrete", None),
    ("Geometric", lambda: dist.Geometric(0.3), "infinite-discrete", None),
    ("NegativeBinomial", lambda: dist.NegativeBinomial(3.0, probs=0.4), "infinite-discrete", None),
    ("GammaPoisson", lambda: dist.GammaPoisson(2.0, 1.0), "infinite-discrete", None),
    ("ZeroInflatedPoisson", lambda: dist.ZeroInflatedPoisson(t(2.0), gate=t(0.2)), "infinite-discrete", None),
    ("DiscreteUniform", lambda: dist.DiscreteUniform(1, 4), "finite", 4),
    ("DiscreteUniform, bounds per element", lambda: dist.DiscreteUniform(t(0.0, 1.0), t(3.0, 6.0)), "infinite-discrete", None),
    ("Delta", lambda: dist.Delta(t(1.0, 2.0)), "continuous", None),
    ("Empirical", lambda: dist.Empirical(t(1.0, 2.0, 3.0), torch.zeros(3)), "continuous", None),
    ("MaskedMixture", lambda: dist.MaskedMixture(torch.tensor([True, False]), dist.Normal(0.0, 1.0), dist.Normal(2.0, 1.0)), "continuous", None),
    ("MixtureSameFamily", lambda: dist.MixtureSameFamily(dist.Categorical(t(0.5, 0.5)), dist.Normal(t(0.0, 3.0), 1.0)), "continuous", None),
    ("MultivariateNormal", lambda: dist.MultivariateNormal(torch.zeros(3), torch.eye(3)), "continuous", None),
    ("LowRankMultivariateNormal", lambda: dist.LowRankMultivariateNormal(torch.zeros(3), torch.ones(3, 1), torch.ones(3)), "continuous", None),
    ("MultivariateStudentT", lambda: dist.MultivariateStudentT(4.0, torch.zeros(3), torch.eye(3)), "continuous", None),
    ("LKJCholesky", lambda: dist.LKJCholesky(3, 2.0), "continuous", None),
    ("Wishart", lambda: dist.Wishart(df=t(10.0), covariance_matrix=torch.eye(3)), "continuous", None),
    ("Dirichlet", lambda: dist.Dirichlet(t(1.0, 2.0, 3.0)), "continuous", None),
    ("Beta", lambda: dist.Beta(2.0, 3.0), "continuous", None),
    ("InverseGamma", lambda: dist.InverseGamma(2.0, 3.0), "continuous", None),
    ("HalfCauchy", lambda: dist.HalfCauchy(1.0), "continuous", None),
    ("StudentT", lambda: dist.StudentT(3.0, 0.0, 1.0), "continuous", None),
    ("AsymmetricLaplace", lambda: dist.AsymmetricLaplace(0.0, 1.0, 2.0), "continuous", None),
    ("SkewLogistic", lambda: dist.SkewLogistic(0.0, 1.0, 2.0), "continuous", None),
    ("Weibull", lambda: dist.Weibull(1.0, 2.0), "continuous", None),
    ("Pareto", lambda: dist.Pareto(1.0, 2.0), "continuous", None),
    ("Kumaraswamy", lambda: dist.Kumaraswamy(2.0, 3.0), "continuous", None),
    ("FisherSnedecor", lambda: dist.FisherSnedecor(3.0, 4.0), "continuous", None),
    ("ContinuousBernoulli", lambda: dist.ContinuousBernoulli(probs=0.3), "continuous", None),
    ("VonMises", lambda: dist.VonMises(0.0, 2.0), "continuous", None),
    ("ProjectedNormal", lambda: dist.ProjectedNormal(t(1.0, 0.0, 0.0)), "continuous", None),
    ("SineBivariateVonMises", lambda: dist.SineBivariateVonMises(0.0, 0.0, 1.0, 1.0, 0.5), "continuous", None),
    ("Stable", lambda: dist.Stable(1.5, 0.2), "continuous", None),
    ("OrderedLogistic", lambda: dist.OrderedLogistic(t(0.3), t(-1.0, 0.0, 1.0)), "finite", 4),
    ("RelaxedOneHotCategorical", lambda: dist.RelaxedOneHotCategorical(t(0.5), probs=t(0.2, 0.8)), "continuous", None),
    ("TransformedDistribution", lambda: dist.TransformedDistribution(dist.Normal(0.0, 1.0), [dist.transforms.ExpTransform()]), "continuous", None),
    ("FoldedDistribution", lambda: dist.FoldedDistribution(dist.Normal(0.0, 1.0)), "continuous", None),
    ("Independent", lambda: dist.Normal(torch.zeros(2, 3), 1.0).to_event(2), "continuous", None),
    ("masked", lambda: dist.Normal(t(0.0, 1.0), 1.0).mask(torch.tensor([True, False])), "continuous", None),
    ("GaussianRandomWalk", lambda: dist.GaussianRandomWalk(0.5, num_steps=5), "continuous", None),
    ("NegativeBinomial2", lambda: dist.NegativeBinomial2(3.0, 2.0), "infinite-discrete", None),
    ("SpanningTree", lambda: dist.SpanningTree(torch.zeros(3)), "finite", 3),
]


#: Finite per element, but not one set for every element: a latent is infinite-discrete (not
#: enumerable), an observed site finite.
UNEVEN = {
    "Binomial, total_count per element",
    "BetaBinomial, total_count per element",
    "ExtendedBinomial",
    "DiscreteUniform, bounds per element",
}


@pytest.mark.parametrize("family, build, kind, cardinality", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_inspect_succeeds_on_every_family_latent_and_observed(family, build, kind, cardinality):
    with use_backend("pyro"), torch_precision(), torch.random.fork_rng():
        torch.manual_seed(0)
        data = build().sample()

    def program(observation):
        sample("latent_value", build())
        sample("observed_value", build(), obs=observation)

    structure = ppgen.inspect(program, data)
    latent, observed = structure.sites["latent_value"], structure.sites["observed_value"]
    assert (latent.kind, observed.kind) == ("latent", "observed")
    assert latent.support.kind == kind and latent.support.cardinality == cardinality
    # an observed site's support is classified, never enumerated
    assert observed.support.cardinality is None
    assert observed.support.kind == ("finite" if family in UNEVEN else kind)


def test_a_count_latent_without_one_cardinality_is_sampled_not_summed_out():
    """A latent Binomial whose total_count differs per element has no single support to
    enumerate: infinite-discrete, so exact enumeration refuses it and says why."""

    def trials_model(num_trials, reported, rate=0.4):
        with plate("groups", len(num_trials)):
            successes = sample("successes", dist.Binomial(num_trials, probs=rate))
            sample("reported", dist.Normal(successes, 1.0), obs=reported)

    data = (np.array([4.0, 9.0, 2.0]), np.array([1.2, 3.9, 0.1]))
    site = ppgen.inspect(trials_model, *data).sites["successes"]
    assert site.support.kind == "infinite-discrete" and not site.is_enumerable
    checks = {c.name: c for c in ppgen.engines_for(trials_model, *data)}
    for engine in ("enumerate", "nuts"):
        assert not checks[engine].applies and "latent site 'successes' is discrete" in checks[engine].reason


class _NeverEnumerate(TorchDistribution):
    """Scores like a Bernoulli, but enumerating its support is an error."""

    arg_constraints: dict = {}
    support = torch.distributions.constraints.boolean
    has_enumerate_support = True

    def __init__(self, probs: torch.Tensor) -> None:
        self.probs = probs
        super().__init__(probs.shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return value * self.probs.log() + (1 - value) * (1 - self.probs).log()

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return torch.bernoulli(self.probs.expand(sample_shape + self.batch_shape))

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        raise AssertionError("the support of an observed site was enumerated")


def test_an_observed_sites_support_is_never_enumerated():
    def clicks(clicked):
        rate = sample("rate", dist.Beta(1.0, 1.0))
        with plate("visits", len(clicked)):
            sample("clicked", _NeverEnumerate(rate.expand(len(clicked))), obs=clicked)

    structure = ppgen.inspect(clicks, torch.tensor([1.0, 0.0, 1.0]))
    assert structure.sites["clicked"].support.kind == "finite"


class _Triangular(TorchDistribution):
    """A distribution that declares no support (torch's default raises NotImplementedError)."""

    arg_constraints: dict = {}

    def __init__(self, width: torch.Tensor) -> None:
        self.width = torch.as_tensor(width)
        super().__init__(self.width.shape)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self.width * torch.rand(sample_shape + self.batch_shape).sqrt()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.log(2 * value / self.width**2)


def test_a_distribution_without_a_declared_support_traces():
    def program(heights):
        width = sample("width", dist.Gamma(3.0, 1.0))
        with plate("points", len(heights)):
            sample("height", _Triangular(width), obs=heights)

    structure = ppgen.inspect(program, torch.tensor([0.5, 1.2]))
    assert structure.sites["height"].support.constraint == "undeclared"


def class_counts(labels, annotator_of, pseudo_count=1.0):
    """Sizes computed from the data, as NumPyro's annotation example does."""
    num_classes = int(np.max(labels)) + 1
    num_annotators = len(np.unique(annotator_of))
    with plate("annotators", num_annotators):
        accuracy = sample("accuracy", dist.Beta(2.0, 1.0))
    prevalence = sample("prevalence", dist.Dirichlet(ops.ones(num_classes) * pseudo_count))
    with plate("labels", len(labels)):
        sample("label", dist.Categorical(prevalence), obs=labels)
        sample("agreed", dist.Bernoulli(accuracy[annotator_of]), obs=(labels > 0) * 1.0)


def test_numpy_functions_of_data_arguments_work_while_tracing():
    labels = np.array([0, 3, 1, 1, 2, 3])
    annotator_of = np.array([0, 0, 1, 2, 1, 0])
    structure = ppgen.inspect(class_counts, labels, annotator_of)
    assert structure.plates["annotators"].size == 3
    assert structure.sites["prevalence"].event_shape == (4,)
    assert structure.arguments["labels"].role == "data"
    assert structure.arguments["annotator_of"].role == "covariate"  # provenance still tracked
