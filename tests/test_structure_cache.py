"""A program's structure is traced once per call signature and reused, never for a call whose
structure could differ (ppgen.structure.inspect, ppgen.structure_cache)."""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm

import ppgen
from ppgen import dist, plate, sample
from ppgen.structure import inspect, structure_cache


@pytest.fixture(autouse=True)
def empty_cache():
    structure_cache().clear()
    yield
    structure_cache().clear()


def traces() -> int:
    return structure_cache().statistics.traces


def reuses() -> int:
    return structure_cache().statistics.reuses


def thermostat(readings, low=-1.0, high=2.0, spread=0.8):
    """Each hourly reading comes from one of two heating modes (high with probability 3/4)."""
    with plate("hours", readings.shape[0]):
        mode = sample("mode", dist.Bernoulli(0.75))
        sample("reading", dist.Normal(low + (high - low) * mode, spread), obs=readings)


def thermostat_log_likelihood(readings, levels=(-1.0, 2.0), spread=0.8, weights=(0.25, 0.75)) -> float:
    per_mode = np.log(weights) + norm.logpdf(np.asarray(readings)[:, None], np.asarray(levels), spread)
    return float(logsumexp(per_mode, axis=1).sum())


def relay_chain(signal, noise=0.5):
    """A sequence written as a loop of sites, one slice of the data each (as a user would)."""
    state = sample("state_0", dist.Bernoulli(0.5))
    for t in range(signal.shape[0]):
        if t:
            state = sample(f"state_{t}", dist.Bernoulli(0.2 + 0.6 * state))
        sample(f"signal_{t}", dist.Normal(2.0 * state - 1.0, noise), obs=signal[t])


def test_same_shapes_reuse_and_each_dataset_gets_its_own_exact_score():
    rng = np.random.default_rng(7)
    first, second = rng.normal(size=13), rng.normal(1.0, 2.0, size=13)
    score_first = ppgen.score(thermostat, first, engine="enumerate").value
    assert traces() == 1
    score_second = ppgen.score(thermostat, second, engine="enumerate").value
    assert traces() == 1 and reuses() >= 1
    assert score_first != score_second
    assert score_first == pytest.approx(thermostat_log_likelihood(first), rel=1e-10)
    assert score_second == pytest.approx(thermostat_log_likelihood(second), rel=1e-10)
    structure_cache().clear()  # uncached: the same answer as a fresh trace
    assert ppgen.score(thermostat, second, engine="enumerate").value == pytest.approx(score_second, rel=1e-12)


def test_reused_structure_equals_a_fresh_trace():
    rng = np.random.default_rng(3)
    cached = [inspect(relay_chain, rng.normal(size=6)) for _ in range(2)][1]
    assert traces() == 1
    structure_cache().clear()
    fresh = inspect(relay_chain, rng.normal(size=6))
    assert (cached.sites, cached.plates, cached.arguments) == (fresh.sites, fresh.plates, fresh.arguments)


@pytest.mark.parametrize(
    "second_call",
    [
        pytest.param(lambda x: ((x[:7],), {}), id="other shape"),
        pytest.param(lambda x: ((x.astype(np.float32),), {}), id="other dtype"),
        pytest.param(lambda x: ((torch.as_tensor(x),), {}), id="tensor instead of array"),
        pytest.param(lambda x: ((), {"readings": x}), id="keyword instead of positional"),
        pytest.param(lambda x: ((x, -1.0, 2.0, 0.9), {}), id="other float"),
        pytest.param(lambda x: ((x, -1.0, 2.0, np.array(0.8)), {}), id="array instead of float"),
    ],
)
def test_a_changed_signature_traces_again(second_call):
    readings = np.random.default_rng(0).normal(size=9)
    inspect(thermostat, readings)
    args, kwargs = second_call(readings)
    inspect(thermostat, *args, **kwargs)
    assert traces() == 2


def test_a_plain_int_argument_is_part_of_the_key():
    def counts(hits=None, num_days: int = 4):
        rate = sample("rate", dist.Gamma(2.0, 1.0))
        with plate("days", num_days):
            sample("hits", dist.Poisson(rate), obs=hits)

    assert inspect(counts, num_days=4).plates["days"].size == 4
    assert inspect(counts, num_days=6).plates["days"].size == 6
    assert traces() == 2


NUM_SHELVES = 3
SHELF_PRIOR = np.array([2.0, 1.0])


def stocked_shelves():
    """Reads its sizes and prior from globals, as in a notebook."""
    with plate("shelf", NUM_SHELVES):
        sample("stock", dist.Beta(float(SHELF_PRIOR[0]), float(SHELF_PRIOR[1])))


def test_globals_the_program_reads_are_part_of_the_key(monkeypatch):
    assert inspect(stocked_shelves).plates["shelf"].size == 3
    assert inspect(stocked_shelves).plates["shelf"].size == 3 and traces() == 1
    monkeypatch.setitem(stocked_shelves.__globals__, "NUM_SHELVES", 5)
    assert inspect(stocked_shelves).plates["shelf"].size == 5 and traces() == 2
    monkeypatch.setitem(stocked_shelves.__globals__, "SHELF_PRIOR", np.array([1.0, 4.0]))  # same shape, new values
    inspect(stocked_shelves)
    assert traces() == 3


def test_a_new_program_traces_again():
    def make(scale):
        def noisy(y):
            with plate("n", y.shape[0]):
                sample("y", dist.Normal(0.0, scale), obs=y)

        return noisy

    y = np.zeros(3)
    first, second = make(1.0), make(2.0)
    inspect(first, y)
    inspect(second, y)
    inspect(first, y)
    assert (traces(), reuses()) == (2, 1)


def branch_on_total(y):
    with plate("obs", y.shape[0]):
        sample("y", dist.Normal(0.0, 1.0), obs=y)
    if y.sum() > 0:
        sample("surplus", dist.Normal(0.0, 1.0))


def size_from_value(y, n):
    with plate("used", int(n.item())):
        sample("y", dist.Normal(0.0, 1.0), obs=y[: int(n.item())])


def one_site_per_element(y):
    for i, value in enumerate(y):
        sample(f"y_{i}", dist.Normal(0.0, 1.0), obs=value)


def keep_positive(y):
    with plate("obs", y.shape[0]):
        sample("y", dist.Normal(0.0, 1.0), obs=y)
    with plate("kept", y[y > 0].shape[0]):  # a shape computed from the values, read by no Python conversion
        sample("effect", dist.Normal(0.0, 1.0))


def steps_from_tensor(y, n):
    with plate("obs", y.shape[0]):
        sample("y", dist.Normal(0.0, 1.0), obs=y)
    with plate("steps", torch.arange(n).shape[0]):  # a 0-d tensor taken as a number by torch
        sample("effect", dist.Normal(0.0, 1.0))


UP, DOWN = np.array([1.0, 2.0, -0.5]), np.array([-1.0, -2.0, 0.5])


@pytest.mark.parametrize(
    "program, first, second, expect",
    [
        pytest.param(branch_on_total, (UP,), (DOWN,), lambda s1, s2: "surplus" in s1.sites and "surplus" not in s2.sites, id="if y.sum() > 0"),
        pytest.param(
            size_from_value, (np.ones(5), np.array(3)), (np.ones(5), np.array(5)),
            lambda s1, s2: (s1.plates["used"].size, s2.plates["used"].size) == (3, 5), id="int(n.item())",
        ),
        pytest.param(one_site_per_element, (UP,), (DOWN,), lambda s1, s2: len(s1.sites) == len(s2.sites) == 3, id="for v in y"),
        pytest.param(keep_positive, (UP,), (DOWN,), lambda s1, s2: (s1.plates["kept"].size, s2.plates["kept"].size) == (2, 1), id="y[y > 0]"),
        pytest.param(
            steps_from_tensor, (UP, np.array(2)), (UP, np.array(4)),
            lambda s1, s2: (s1.plates["steps"].size, s2.plates["steps"].size) == (2, 4), id="torch.arange(n)",
        ),
    ],
)  # fmt: skip
def test_value_dependent_control_flow_traces_every_call(program, first, second, expect):
    assert expect(inspect(program, *first), inspect(program, *second))
    assert traces() == 2 and reuses() == 0


def test_nan_in_new_data_names_the_site():
    signal = np.random.default_rng(1).normal(size=8)
    inspect(relay_chain, signal)
    broken = signal.copy()
    broken[5] = np.nan
    with pytest.raises(ppgen.DataError, match=r"site 'signal_5': observed data contains NaN"):
        inspect(relay_chain, broken)
    assert traces() == 1  # the check ran on the reused structure


def test_data_outside_the_support_in_new_data_names_the_site():
    def clicks(counts):
        with plate("pages", counts.shape[0]):
            sample("counts", dist.Poisson(3.0), obs=counts)

    inspect(clicks, np.array([1.0, 4.0, 0.0]))
    with pytest.raises(ppgen.DataError, match=r"site 'counts'"):
        inspect(clicks, np.array([1.0, -4.0, 0.0]))
    assert traces() == 1


def test_parameter_checks_see_new_values_of_parameter_arguments():
    readings = np.zeros(4)
    inspect(thermostat, readings, -1.0, 2.0, np.array(0.8))
    inspect(thermostat, readings, -1.0, 2.0, np.array(0.9))
    assert traces() == 2  # the values of an array that sets a distribution's parameter are keyed
    with pytest.raises(ppgen.ParameterError, match=r"site 'reading': parameter 'scale' .*argument 'spread'"):
        inspect(thermostat, readings, -1.0, 2.0, np.array(-0.8))


def test_data_read_by_other_sites_is_part_of_the_key():
    def random_walk(path):
        previous = 0.0
        for t in range(path.shape[0]):
            previous = sample(f"x_{t}", dist.Normal(previous, 1.0), obs=path[t])

    inspect(random_walk, np.zeros(4))
    inspect(random_walk, np.ones(4))
    assert traces() == 2
    inspect(random_walk, np.ones(4))
    assert traces() == 2


def test_an_observed_value_that_is_no_view_of_the_data_is_not_reused():
    def rounded(y):
        with plate("n", y.shape[0]):
            sample("y", dist.Poisson(2.0), obs=y.round())

    inspect(rounded, np.array([1.0, 2.0]))
    with pytest.raises(ppgen.DataError, match="site 'y'"):
        inspect(rounded, np.array([1.0, -2.0]))
    assert traces() == 2


def test_a_module_trained_in_place_traces_again():
    network = torch.nn.Linear(2, 1).double()

    def regression(x, y, net=network):
        with plate("rows", x.shape[0]):
            sample("y", dist.Normal(net(x).squeeze(-1), 1.0), obs=y)

    x, y = np.ones((5, 2)), np.zeros(5)
    inspect(regression, x, y)
    inspect(regression, x, y)
    assert traces() == 1
    with torch.no_grad():
        network.bias.fill_(3.0)
    inspect(regression, x, y)
    assert traces() == 2


def test_learn_hands_its_structure_to_the_trained_module():
    """``learn`` trains with one traced structure; a ``score`` or ``learn`` of the trained module
    reuses it, and the score is the trained model's (against the closed form), while weights
    changed outside ``learn`` still trace again."""
    from ppgen import module

    rng = np.random.default_rng(8)
    x = rng.normal(size=(40, 3))
    y = x @ np.array([0.5, -1.0, 2.0]) + 0.3 + rng.normal(scale=0.7, size=40)
    line = torch.nn.Linear(3, 1).double()

    def calibration(inputs, outputs, fit=line):
        module("fit", fit)
        with plate("samples", inputs.shape[0]):
            sample("out", dist.Normal(fit(inputs).squeeze(-1), 0.7), obs=outputs)

    ppgen.learn(calibration, x, y, engine="mle", num_steps=400, optimizer="adam", learning_rate=0.05)
    assert traces() == 1
    score = ppgen.score(calibration, x, y, engine="enumerate").value
    with torch.no_grad():
        prediction = line(torch.as_tensor(x)).squeeze(-1).numpy()
    assert score == pytest.approx(norm.logpdf(y, prediction, 0.7).sum(), rel=1e-10)
    ppgen.learn(calibration, x, y, engine="mle", num_steps=2, optimizer="adam", learning_rate=0.05)
    assert traces() == 1
    with torch.no_grad():
        line.bias.add_(1.0)
    ppgen.score(calibration, x, y, engine="enumerate")
    assert traces() == 2


def test_scalar_data_value_is_rebound():
    def one_reading(y):
        with plate("n", 1):
            sample("y", dist.Normal(0.0, 1.0), obs=y)

    assert inspect(one_reading, np.array([0.5])).arguments["y"].value == 0.5
    assert inspect(one_reading, np.array([-1.5])).arguments["y"].value == -1.5
    assert traces() == 1


def test_data_given_as_a_list_is_keyed_by_its_values():
    def votes(ballots):  # a list reaches the program as it is, untracked: a constant of the trace
        ballots = torch.as_tensor(ballots, dtype=torch.float64)
        share = sample("share", dist.Beta(1.0, 1.0))
        with plate("ballots", ballots.shape[0]):
            sample("ballot", dist.Bernoulli(share), obs=ballots)

    inspect(votes, [1, 0, 1])
    inspect(votes, [1, 0, 1])
    assert (traces(), reuses()) == (1, 1)
    with pytest.raises(ppgen.DataError, match="site 'ballot'"):
        inspect(votes, [1, 0, 2])
