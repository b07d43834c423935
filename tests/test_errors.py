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
