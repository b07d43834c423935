"""ModelStructure from one trace: kinds, supports, shapes, plates, parents, hyperparameters."""

import numpy as np
import torch

import ppgen
from ppgen import dist, plate, sample
from ppgen.models import basics, mixtures


def test_bernoulli_mixture_structure():
    data = mixtures.simulate_bernoulli_mixture(num_data=30).data
    structure = ppgen.inspect(mixtures.bernoulli_mixture, **data)
    sites = structure.sites
    assert [s for s in sites] == ["theta", "pi", "z", "x"]
    assert sites["theta"].kind == "latent" and sites["theta"].plates == ("K",)
    assert sites["theta"].support.kind == "continuous"
    assert sites["theta"].event_shape == (8,)
    assert sites["z"].support.kind == "finite" and sites["z"].support.cardinality == 2
    assert sites["z"].is_enumerable
    assert sites["x"].kind == "observed" and sites["x"].plates == ("N",)
    assert set(sites["x"].parents) == {"theta", "z"}
    assert sites["z"].parents == ("pi",)
    assert sites["pi"].parents == ()
    assert structure.plates["N"].size == 30 and structure.plates["K"].size == 2
    hyper = structure.hyperparameters
    assert set(hyper) == {"alpha", "beta", "gamma"}
    assert hyper["alpha"].feeds == ("theta",) and hyper["gamma"].feeds == ("pi",)
    assert structure.arguments["x"].role == "data"


def test_param_sites_and_parents():
    structure = ppgen.inspect(mixtures.gaussian_mixture, **mixtures.simulate_gaussian_mixture(num_data=20).data)
    assert set(structure.params) == {"weights", "locs", "scale_trils"}
    assert structure.sites["z"].parents == ("weights",)
    assert set(structure.sites["x"].parents) == {"locs", "scale_trils", "z"}


def test_support_kinds():
    def model():
        sample("count", dist.Poisson(3.0))
        sample("positive", dist.Gamma(2.0, 1.0))
        sample("flag", dist.Bernoulli(0.3))

    sites = ppgen.inspect(model).sites
    assert sites["count"].support.kind == "infinite-discrete"
    assert sites["positive"].support.kind == "continuous" and "GreaterThan" in sites["positive"].support.constraint
    assert sites["flag"].support.kind == "finite" and sites["flag"].support.cardinality == 2


def test_data_slot_without_data_is_observed():
    structure = ppgen.inspect(basics.coin)
    assert structure.sites["x"].kind == "observed"
    assert not structure.sites["x"].has_data
    assert ppgen.inspect(basics.coin, np.ones(3)).sites["x"].has_data


def test_deterministic_and_factor_sites():
    def model(scale=2.0):
        a = sample("a", dist.Normal(0.0, 1.0))
        b = ppgen.deterministic("b", a * scale)
        ppgen.factor("penalty", -(b**2))

    structure = ppgen.inspect(model)
    assert structure.sites["b"].kind == "deterministic" and structure.sites["b"].parents == ("a",)
    assert structure.sites["penalty"].kind == "factor" and structure.sites["penalty"].parents == ("b",)
    assert structure.hyperparameters["scale"].feeds == ("b",)


def test_nested_plates_outer_to_inner():
    def model(x=None):
        with plate("rows", 4, dim=-2):
            with plate("cols", 3, dim=-1):
                sample("x", dist.Normal(0.0, 1.0), obs=x)

    site = ppgen.inspect(model, np.zeros((4, 3))).sites["x"]
    assert site.plates == ("rows", "cols")


def test_covariate_is_not_a_hyperparameter():
    def regression(features, y=None, prior_scale=1.0):
        weights = sample("w", dist.Normal(0.0, prior_scale).expand([features.shape[1]]).to_event(1))
        with plate("N", features.shape[0]):
            sample("y", dist.Normal(features @ weights, 1.0), obs=y)

    structure = ppgen.inspect(regression, np.ones((10, 3)), np.zeros(10))
    assert structure.arguments["features"].role == "covariate"
    assert structure.arguments["prior_scale"].role == "hyperparameter"
    assert structure.arguments["y"].role == "data"


def test_torch_module_is_a_param_node():
    decoder = torch.nn.Linear(2, 3)

    def model(x=None):
        ppgen.module("decoder", decoder)
        with plate("N", 5):
            z = sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)

    structure = ppgen.inspect(model, torch.zeros(5, 3))
    assert structure.sites["decoder"].kind == "param"
    assert set(structure.sites["x"].parents) == {"decoder", "z"}


def test_structure_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ppgen.inspect(basics.coin, np.ones(4))
    assert torch.equal(torch.rand(3), expected)


def test_engines_for_names_blocking_site():
    checks = {c.name: c for c in ppgen.engines_for(mixtures.bernoulli_mixture, **mixtures.simulate_bernoulli_mixture(20).data)}
    assert not checks["map"].applies and "'z'" in checks["map"].reason
    assert checks["prior"].applies


def test_labels_leave_out_parameters_derived_lazily():
    """A distribution built outside ``ppgen.dist`` (no recorded arguments): MultivariateNormal given
    scale_tril has no covariance or precision argument (lazy properties inherited from torch)."""
    import pyro.distributions

    def model(x):
        sample("x", pyro.distributions.MultivariateNormal(torch.zeros(2), scale_tril=torch.eye(2)), obs=x)

    structure = ppgen.inspect(model, np.zeros(2))
    assert [key for key, _ in structure.sites["x"].distribution_args] == ["loc", "scale_tril"]
