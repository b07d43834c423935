"""Bad input gets a clear error naming the site, plate or argument."""

import numpy as np
import pytest

import ppgen
from ppgen import DataError, EngineNotApplicable, ParameterError, dist, plate, sample
from ppgen.models import basics, mixtures


def test_nan_data_names_the_site():
    x = np.array([170.0, np.nan, 180.0])
    with pytest.raises(DataError, match=r"site 'x': observed data contains NaN \(first at index \(1,\)\)"):
        ppgen.infer(basics.heights, x, engine="map")


def test_value_outside_support_names_site_and_value():
    x = np.array([1.0, 0.0, 2.0])
    with pytest.raises(DataError, match=r"site 'x': observed value 2 at index \(2,\) is outside the support of Bernoulli"):
        ppgen.inspect(basics.coin, x)


def test_data_length_disagreeing_with_plate():
    def model(x=None, num_data=5):
        mu = sample("mu", dist.Normal(0.0, 1.0))
        with plate("N", num_data):
            sample("x", dist.Normal(mu, 1.0), obs=x)

    with pytest.raises(DataError, match=r"site 'x': data of shape \(6,\) does not match the site's shape \(5,\); plate 'N' has size 5 but the data has 6"):
        ppgen.inspect(model, np.zeros(6))


def test_hyperparameter_outside_constraint_names_site_and_argument():
    with pytest.raises(
        ParameterError,
        match=r"site 'rho': parameter 'concentration1' of Beta \(computed from argument 'a'\) must satisfy "
        r"GreaterThan\(lower_bound=0.0\), but is -1.0",
    ):
        ppgen.infer(basics.coin, np.ones(3), a=-1.0, engine="map")


def test_invalid_parameter_inside_a_plate_gives_its_index():
    def model(scales):
        with plate("N", 3):
            sample("x", dist.Normal(0.0, scales), obs=np.zeros(3))

    with pytest.raises(ParameterError, match=r"site 'x': parameter 'scale' of Normal \(computed from argument 'scales'\) .* but is -2.0 at index \(1,\)"):
        ppgen.inspect(model, np.array([1.0, -2.0, 3.0]))


def test_unknown_engine_lists_engines():
    with pytest.raises(EngineNotApplicable, match=r"unknown engine 'magic'; registered engines: .*map.*mle"):
        ppgen.infer(basics.coin, np.ones(3), engine="magic")


def test_inapplicable_engine_names_site_and_alternatives():
    data = mixtures.simulate_bernoulli_mixture(num_data=10).data
    with pytest.raises(EngineNotApplicable) as info:
        ppgen.infer(mixtures.bernoulli_mixture, engine="map", **data)
    message = str(info.value)
    assert "latent site 'z' is discrete" in message and "Engines that apply:" in message


def test_missing_data_is_reported():
    with pytest.raises(EngineNotApplicable, match=r"observed site 'x' has no data"):
        ppgen.infer(basics.coin, engine="map")


def test_unknown_option_is_reported():
    with pytest.raises(TypeError, match=r"unknown option 'num_stpes'"):
        ppgen.infer(basics.coin, np.ones(3), engine="map", num_stpes=3)


def test_bad_engine_option_value():
    with pytest.raises(ValueError, match=r"map: optimizer must be 'lbfgs' or 'adam', got 'sgd'"):
        ppgen.infer(basics.coin, np.ones(3), engine="map", optimizer="sgd")


def test_wrong_model_argument():
    with pytest.raises(TypeError, match=r"coin: .*unexpected keyword argument 'y'"):
        ppgen.inspect(basics.coin, y=np.ones(3))


def test_score_needs_an_engine_with_evidence():
    with pytest.raises(EngineNotApplicable, match=r"does not do 'score'|does not compute log p\(x\)"):
        ppgen.score(basics.coin, np.ones(3), engine="map")


def test_samplers_that_sum_out_memberships_refuse_the_block_model():
    """B[z_i, z_j] over pairs couples every membership: nuts, hmc and mh (which enumerate z out) do
    not apply and say why; gibbs (which draws z) does."""
    from ppgen.models.graphs import simulate_sbm, stochastic_block_model

    checks = {c.name: c for c in ppgen.engines_for(stochastic_block_model, **simulate_sbm().data)}
    for name in ("nuts", "hmc", "mh"):
        assert not checks[name].applies
        assert "site 'edge' depends on latent 'z' across its plate(s) ['nodes']" in checks[name].reason
    assert checks["gibbs"].applies


def test_engines_that_draw_from_the_prior_refuse_a_flat_prior():
    from ppgen.models.posteriordb import kidscore_momiq, load_kidiq

    checks = {c.name: c for c in ppgen.engines_for(kidscore_momiq, **load_kidiq().data)}
    for name in ("gibbs", "svi", "prior"):
        assert not checks[name].applies
        assert "latent site 'beta' has an improper flat prior (ImproperUniform)" in checks[name].reason
    assert checks["nuts"].applies and checks["map"].applies


def test_map_without_a_mode_fails_keeping_the_last_point():
    """The centred eight schools' joint density is unbounded as τ → 0: no MAP exists. Where
    the optimiser stops (a stalled line search, or NaN) depends on the machine; the error does not."""
    from ppgen.errors import EngineFailure
    from ppgen.models.posteriordb import eight_schools_centered, load_eight_schools

    with pytest.raises(EngineFailure, match=r"map: no mode: the log_joint keeps rising as tau runs to the boundary of its support \(tau -> 0;") as caught:
        ppgen.infer(eight_schools_centered, engine="map", **load_eight_schools().data)
    assert caught.value.partial.num_iterations > 0


# --------------------------------------------------------------------------------------------
# Issue 11: every bad input a ppgen error naming the argument or site, before any engine runs.
# The programs are written as a user would, with their own names and sizes.


def rainfall(mm=None, num_days: int = 6):
    """Daily rainfall (mm): a Normal with unknown mean and a HalfNormal scale."""
    level = sample("level", dist.Normal(10.0, 5.0))
    spread = sample("spread", dist.HalfNormal(5.0))
    with plate("day", num_days if mm is None else len(mm)):
        sample("mm", dist.Normal(level, spread), obs=mm)


def weather_mixture(mm=None, num_regimes: int = 2):
    """Rainfall from one of ``num_regimes`` regimes (a discrete latent per day)."""
    weights = sample("weights", dist.Dirichlet(ppgen.ops.ones(num_regimes)))
    centres = sample("centres", dist.Normal(ppgen.ops.zeros(num_regimes), 10.0).to_event(1))
    with plate("day", len(mm)):
        regime = sample("regime", dist.Categorical(weights))
        sample("mm", dist.Normal(centres[..., regime], 1.0), obs=mm)


def twice_named(reading=None):
    drift = sample("drift", dist.Normal(0.0, 1.0))
    sample("drift", dist.Normal(drift, 1.0), obs=reading)


def three_sensors(reading=None):
    bias = sample("bias", dist.Normal(0.0, 1.0))
    with plate("sensor", 3):
        sample("reading", dist.Normal(bias, 1.0), obs=reading)


ISSUE_CASES = [
    # the issue's six
    pytest.param(lambda: ppgen.infer(rainfall, np.array([]), engine="map"), DataError, r"argument 'mm' is empty", id="empty-data"),
    pytest.param(lambda: ppgen.infer(twice_named, 0.3, engine="nuts"), ValueError, r"two sites of the program are named 'drift'", id="duplicate-site"),
    pytest.param(lambda: ppgen.infer(42, np.ones(3), engine="map"), TypeError, r"model must be a program .* got int 42", id="infer-not-callable"),
    pytest.param(lambda: ppgen.render(42), TypeError, r"model must be a program .* got int 42", id="render-not-callable"),
    pytest.param(lambda: ppgen.infer(rainfall, np.ones(4), engine="nuts", seed="abc"), TypeError, r"NUTS: seed must be an integer .* got str 'abc'", id="seed-string"),
    pytest.param(lambda: ppgen.infer(rainfall, "4.2", engine="map"), DataError, r"site 'mm': observed data \(argument 'mm'\) must be .* got str", id="data-string"),
    pytest.param(lambda: ppgen.infer(weather_mixture, np.array([1.0, np.inf, 3.0]), engine="map"), DataError, r"site 'mm': observed data contains inf \(first at index \(1,\)\)", id="inf-mixture-map"),
    # relatives
    pytest.param(lambda: ppgen.infer(rainfall, [], engine="advi"), DataError, r"argument 'mm' is empty", id="empty-list"),
    pytest.param(lambda: ppgen.infer(three_sensors, np.float64(1.5), engine="map"), DataError, r"site 'reading': .*plate 'sensor' has size 3", id="scalar-for-plate"),
    pytest.param(lambda: ppgen.infer(rainfall, {"mon": 1.0}, engine="map"), DataError, r"site 'mm': observed data \(argument 'mm'\) .* got dict", id="dict"),
    pytest.param(lambda: ppgen.infer(rainfall, np.array([True, False]), engine="map"), DataError, r"site 'mm': observed data are bool", id="bool"),
    pytest.param(lambda: ppgen.infer(rainfall, np.array([1.0 + 2j, 3.0]), engine="map"), DataError, r"argument 'mm' holds complex numbers", id="complex"),
    pytest.param(lambda: ppgen.infer(rainfall, np.array([1.0, "wet"], dtype=object), engine="map"), DataError, r"argument 'mm' holds values of dtype object", id="object-array"),
    pytest.param(lambda: ppgen.infer(three_sensors, [[1.0, 2.0], [3.0]], engine="map"), DataError, r"site 'reading': .*ragged list", id="ragged"),
    pytest.param(lambda: ppgen.score(rainfall, np.array([1.0, -np.inf]), engine="importance"), DataError, r"site 'mm': observed data contains inf", id="minus-inf-score"),
    pytest.param(lambda: ppgen.infer(rainfall, np.ones(3), engine="map", seed=-1), ValueError, r"MAP: seed must be an integer in \[0, 2\*\*32\), got -1", id="seed-negative"),
    pytest.param(lambda: ppgen.infer(rainfall, np.ones(3), engine="importance", seed=2.0), TypeError, r"Importance: seed .* got float 2.0", id="seed-float"),
    pytest.param(lambda: ppgen.infer(rainfall, np.ones(3), engine="nuts", seed=2**40), ValueError, r"NUTS: seed .* got 1099511627776", id="seed-too-big"),
    pytest.param(lambda: ppgen.generate(rainfall, seed=True), TypeError, r"Prior: seed .* got bool True", id="seed-bool-generate"),
    pytest.param(lambda: ppgen.infer(rainfall, np.ones(3), engine="nuts", num_samples="500"), TypeError, r"engine 'nuts': option 'num_samples' must be an integer, got str '500'", id="count-string"),
    pytest.param(lambda: ppgen.infer(rainfall, np.ones(3), engine="svi", num_steps=200.5), TypeError, r"engine 'svi': option 'num_steps' must be an integer, got float 200.5", id="count-float"),
    pytest.param(lambda: ppgen.infer(rainfall, np.ones(3), engine="map", progress="no"), TypeError, r"engine 'map': option 'progress' must be True or False", id="flag-string"),
    pytest.param(lambda: ppgen.generate(rainfall, num_samples="3"), TypeError, r"engine 'prior': option 'num_samples' must be an integer, got str '3'", id="generate-count-string"),
    pytest.param(lambda: ppgen.engines_for("rainfall"), TypeError, r"model must be a program .* got str 'rainfall'", id="model-name-not-program"),
]


@pytest.mark.parametrize("call, error, fragment", ISSUE_CASES)
def test_bad_input_raises_a_ppgen_error_naming_it(call, error, fragment):
    with pytest.raises(error, match=fragment) as caught:
        call()
    assert type(caught.value).__module__.split(".")[0] in ("ppgen", "builtins")
    # no chained Pyro/JAX error dumped after ours
    assert caught.value.__cause__ is None and (caught.value.__context__ is None or caught.value.__suppress_context__)


def test_seeds_accept_python_and_numpy_integers_alike():
    """A NumPy integer seed is the same seed as the Python int: the same draws."""
    data = np.array([4.0, 6.5, 9.0, 12.0])
    as_int = ppgen.infer(rainfall, data, engine="importance", num_samples=50, seed=7)
    as_numpy = ppgen.infer(rainfall, data, engine="importance", num_samples=50, seed=np.uint16(7))
    np.testing.assert_array_equal(as_int.samples["level"], as_numpy.samples["level"])


def test_data_given_as_a_list_is_the_same_data_as_an_array():
    """Lists are data like arrays, whichever engine runs: the Normal–Normal posterior of the
    rainfall level with a known spread, against its closed form (MAP = mean; CAVI exact)."""

    def level_only(mm, spread=2.0):
        level = sample("level", dist.Normal(0.0, 3.0))
        with plate("day", len(mm)):
            sample("mm", dist.Normal(level, spread), obs=mm)

    readings = [1.0, 2.5, 0.5, 3.0, 2.0]
    precision = 1 / 3.0**2 + len(readings) / 2.0**2
    mean = (sum(readings) / 2.0**2) / precision
    assert float(ppgen.infer(level_only, readings, engine="map").params["level"]) == pytest.approx(mean, abs=1e-5)
    coordinate_ascent = ppgen.infer(level_only, readings, engine="cavi").params  # conjugate: exact
    assert float(coordinate_ascent["level.loc"]) == pytest.approx(mean, rel=1e-9)
    assert float(coordinate_ascent["level.scale"]) == pytest.approx(precision**-0.5, rel=1e-9)


def test_data_are_checked_before_the_engine_applies():
    """A data error wins over an engine that would not apply anyway (map on a discrete latent)."""
    with pytest.raises(DataError, match=r"site 'mm': observed data contains NaN"):
        ppgen.infer(weather_mixture, np.array([np.nan, 1.0]), engine="map")
    with pytest.raises(EngineNotApplicable, match=r"latent site 'regime' is discrete"):
        ppgen.infer(weather_mixture, np.array([0.5, 1.0]), engine="map")
