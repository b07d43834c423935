"""The enumeration interpreter (no Pyro handlers, stacked densities) against Pyro's handlers.

Every catalogue program exact enumeration applies to runs both ways; log p(x), every latent's
marginal, the MAP, the enumeration layout and the param values must agree. Programs the
interpreter does not model must fall back to Pyro, not fail.
"""

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from scipy.special import logsumexp
from scipy.stats import norm

import ppgen
from ppgen import dist, factor, markov, ops, plate, sample
from ppgen.backend import to_backend, torch_precision, use_backend
from ppgen.catalogue import catalogue
from ppgen.inference import _discrete
from ppgen.inference._discrete import enumerate_program, exact_posterior, quiet_validation
from ppgen.inference.enumerate import Enumerate
from ppgen.models import sequences

_FAMILIES = ["basics", "mixtures", "factor", "sequences", "graphs"]


def _applicable_examples():
    cases = []
    for example in catalogue(_FAMILIES):
        data = example.simulate().data
        if Enumerate().check(ppgen.inspect(example.model, **data)) is None:
            cases.append(pytest.param(example, data, id=example.name))
    return cases


def _both_ways(model, kwargs, params=None):
    """(interpreted enumeration and posterior, Pyro-traced enumeration and posterior)."""
    kwargs = to_backend(kwargs, "pyro")
    out = []
    for interpreted in (True, False):
        with use_backend("pyro"), torch_precision(), pyro.get_param_store().scope(), torch.no_grad(), quiet_validation():
            if interpreted:
                enumeration = enumerate_program(model, (), kwargs, params=params)
            else:
                program = poutine.substitute(model, data=params) if params else model
                enumeration = _discrete._traced(program, (), kwargs, None, True)
                enumeration.program, enumeration.kwargs = program, kwargs
            out.append((enumeration, exact_posterior(enumeration, marginals=True, map_estimate=True)))
    return out


def _assert_same(fast, slow):
    (fast_enumeration, fast_posterior), (slow_enumeration, slow_posterior) = fast, slow
    assert fast_enumeration.interpreted and not slow_enumeration.interpreted
    assert fast_posterior.method == slow_posterior.method
    assert float(fast_posterior.log_evidence) == pytest.approx(float(slow_posterior.log_evidence), rel=1e-10, abs=1e-10)
    assert fast_posterior.marginals.keys() == slow_posterior.marginals.keys()
    for name, probs in slow_posterior.marginals.items():
        np.testing.assert_allclose(fast_posterior.marginals[name].numpy(), probs.numpy(), atol=1e-10)
    for name, value in slow_posterior.map_values.items():
        np.testing.assert_array_equal(fast_posterior.map_values[name].numpy(), value.numpy())
    assert {n: l.dim for n, l in fast_enumeration.latents.items()} == {n: l.dim for n, l in slow_enumeration.latents.items()}
    slow_factors = {f.site: f for f in slow_enumeration.factors}
    assert [f.site for f in fast_enumeration.factors] == list(slow_factors)
    for fast_factor in fast_enumeration.factors:
        assert fast_factor.latent_dims == slow_factors[fast_factor.site].latent_dims
        assert set(fast_factor.plates) == set(slow_factors[fast_factor.site].plates)
    slow_params = {n: s["value"] for n, s in slow_enumeration.trace.nodes.items() if s["type"] == "param"}
    fast_params = {n: s["value"] for n, s in fast_enumeration.trace.nodes.items() if s["type"] == "param"}
    assert fast_params.keys() == slow_params.keys()
    for name, value in slow_params.items():
        np.testing.assert_allclose(fast_params[name].detach().numpy(), value.detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("example,data", _applicable_examples())
def test_interpreter_matches_pyro_on_the_catalogue(example, data):
    _assert_same(*_both_ways(example.model, data))


def test_interpreter_matches_pyro_at_given_params():
    data = sequences.simulate_hmm_gaussian(num_sequences=4, num_steps=30, K=3, seed=1).data
    params = {
        "initial": torch.tensor([0.2, 0.3, 0.5]),
        "transition": torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]]),
        "locs": torch.tensor([-2.0, 0.5, 3.0]),
        "scales": torch.tensor([0.7, 1.0, 1.5]),
    }
    _assert_same(*_both_ways(sequences.hmm_gaussian, data, params))


def _second_order_hmm(y, K=3):
    """Two markov steps visible (history=2): the enumeration dims cycle over three."""
    probs = ops.tensor([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.1, 0.2, 0.7]])
    with plate("sequences", y.shape[0]):
        previous, state = None, None
        for t in markov(range(y.shape[1]), history=2):
            row = probs[0] if t == 0 else probs[state] if t == 1 else (probs[state] + probs[previous]) / 2
            previous, state = state, sample(f"z_{t}", dist.Categorical(row))
            sample(f"y_{t}", dist.Normal(state * 1.0, 1.0), obs=y[:, t])


def _two_plates(x):
    """A latent per row and one per cell of a nested plate (three plates deep: a retry)."""
    with plate("a", x.shape[0], dim=-3):
        u = sample("u", dist.Bernoulli(0.3))
        with plate("b", x.shape[1], dim=-2), plate("c", x.shape[2], dim=-1):
            z = sample("z", dist.Categorical(ops.tensor([0.5, 0.5])))
            sample("x", dist.Normal(u + 2.0 * z, 1.0), obs=x)


def _global_switch(x):
    """A global latent shared across a plate: not a chain (tensor elimination)."""
    s = sample("s", dist.Categorical(ops.tensor([0.6, 0.4])))
    with plate("N", len(x)):
        z = sample("z", dist.Categorical(ops.tensor([0.2, 0.5, 0.3])))
        sample("x", dist.Normal(z * 1.5 - 1.0 + 2.0 * s, 0.8), obs=x)


def _distributions_in_use(x):
    """Distributions used beyond ``sample``: ``to_event``, ``expand``, a density in a factor."""
    locs = ops.tensor([[-1.0, 0.0], [2.0, 1.0]])
    with plate("N", x.shape[0]):
        z = sample("z", dist.Categorical(ops.tensor([0.4, 0.6])))
        u = sample("u", dist.Bernoulli(ops.tensor(0.3)).expand([x.shape[0]]))
        sample("x", dist.Normal(locs[z], ops.ones(2) + u[..., None]).to_event(1), obs=x)
        factor("penalty", dist.Normal(locs[z][..., 0], ops.tensor(2.0)).log_prob(ops.tensor(0.5)))


def test_interpreter_matches_pyro_beyond_first_order_and_nesting():
    _assert_same(*_both_ways(_global_switch, {"x": np.array([-1.2, 0.4, 2.1, 0.9])}))
    _assert_same(*_both_ways(_distributions_in_use, {"x": np.random.default_rng(2).normal(size=(5, 2))}))
    y = np.random.default_rng(0).normal(size=(2, 6))
    _assert_same(*_both_ways(_second_order_hmm, {"y": y}))
    x = np.random.default_rng(1).normal(size=(2, 3, 2))
    _assert_same(*_both_ways(_two_plates, {"x": x}))


def _scaled_mixture(x):
    """A Pyro handler inside the program: the interpreter cannot see it."""
    with poutine.scale(scale=0.5), plate("N", len(x)):
        z = sample("z", dist.Categorical(ops.tensor([0.3, 0.7])))
        sample("x", dist.Normal(ops.tensor([-1.0, 2.0])[z], 1.0), obs=x)


def _plain_mixture(x):
    """The mixture the two programs above alter."""
    with plate("N", len(x)):
        z = sample("z", dist.Categorical(ops.tensor([0.3, 0.7])))
        sample("x", dist.Normal(ops.tensor([-1.0, 2.0])[z], 1.0), obs=x)


def _raw_pyro_mixture(x):
    """A ``pyro.sample`` called directly."""
    with plate("N", len(x)):
        z = pyro.sample("z", dist.Categorical(ops.tensor([0.3, 0.7])))
        sample("x", dist.Normal(ops.tensor([-1.0, 2.0])[z], 1.0), obs=x)


@pytest.mark.parametrize("model,scale", [(_scaled_mixture, 0.5), (_raw_pyro_mixture, 1.0)])
def test_falls_back_to_pyro(model, scale):
    x = np.array([-1.3, 0.2, 2.5, 1.9])
    kwargs = to_backend({"x": x}, "pyro")
    with use_backend("pyro"), torch_precision(), torch.no_grad(), quiet_validation():
        assert not enumerate_program(model, (), kwargs).interpreted
    result = Enumerate().run(model, x=x)
    log_joint = np.log([0.3, 0.7]) + norm.logpdf(x[:, None], [-1.0, 2.0], 1.0)
    assert result.log_evidence.value == pytest.approx(logsumexp(scale * log_joint, 1).sum(), rel=1e-12)


def test_falls_back_inside_a_pyro_handler():
    kwargs = to_backend({"x": np.array([-1.3, 0.2, 2.5])}, "pyro")
    with use_backend("pyro"), torch_precision(), torch.no_grad(), quiet_validation():
        assert enumerate_program(_plain_mixture, (), kwargs).interpreted
        with poutine.trace():  # a handler around the whole run must see every site
            assert not enumerate_program(_plain_mixture, (), kwargs).interpreted


def test_falls_back_on_subsampled_plate_and_leaves_random_state():
    def subsampled(x):
        with plate("N", len(x), subsample_size=2) as index:
            z = sample("z", dist.Categorical(ops.tensor([0.3, 0.7])))
            sample("x", dist.Normal(ops.tensor([-1.0, 2.0])[z], 1.0), obs=x[index])

    x = torch.tensor([-1.3, 0.2, 2.5, 1.9])
    torch.manual_seed(3)
    expected = torch.rand(())
    torch.manual_seed(3)
    with use_backend("pyro"), quiet_validation():
        assert _discrete._interpreted(subsampled, (x,), {}, None, True, None) is None
    assert torch.rand(()) == expected


def test_layout_without_densities_has_the_factor_shapes():
    data = to_backend(sequences.simulate_casino(num_sequences=2, num_steps=5).data, "pyro")
    with use_backend("pyro"), torch_precision(), torch.no_grad(), quiet_validation():
        full = enumerate_program(sequences.hmm_categorical, (), data)
        layout = enumerate_program(sequences.hmm_categorical, (), data, log_probs=False)
    assert layout.interpreted
    assert [(f.site, f.log_prob.shape, f.latent_dims) for f in layout.factors] == [(f.site, f.log_prob.shape, f.latent_dims) for f in full.factors]
    assert all(float(f.log_prob.abs().sum()) == 0.0 for f in layout.factors)


def test_hmm_is_interpreted_and_matches_the_forward_algorithm():
    data = sequences.simulate_hmm_gaussian(num_sequences=5, num_steps=40, K=4, seed=2).data
    result = Enumerate(marginals=False, map_estimate=False).run(sequences.hmm_gaussian, **data)
    y, K = data["y"], 4
    initial, transition = np.full(K, 1 / K), sequences._sticky(K)
    log_emission = norm.logpdf(y[..., None], np.linspace(-1, 1, K), 1.0)
    alpha = np.log(initial) + log_emission[:, 0]
    for t in range(1, y.shape[1]):
        alpha = logsumexp(alpha[..., None] + np.log(transition), 1) + log_emission[:, t]
    assert result.log_evidence.value == pytest.approx(logsumexp(alpha, 1).sum(), rel=1e-12)
