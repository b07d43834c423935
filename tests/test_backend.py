"""Backend parity: one program, the same structure and the same log joint on Pyro and NumPyro.

The NumPyro side is read with NumPyro's own tracer and its own dependency analysis
(``numpyro.infer.inspect.get_model_relations``), independently of ppgen's provenance tracing.
"""

import jax
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer.inspect import get_model_relations

import ppgen
from ppgen.backend import to_backend, to_numpy, use_backend
from ppgen.catalogue import catalogue
from ppgen.density import log_density

EXAMPLES = [e for e in catalogue(["basics", "mixtures", "factor"])]


def _unwrap(fn):
    while type(fn).__name__ in ("Independent", "MaskedDistribution", "ExpandedDistribution"):
        fn = fn.base_dist
    return fn


def _numpyro_trace(model, data):
    with use_backend("numpyro"), jax.enable_x64(True):
        return handlers.trace(handlers.seed(model, 0)).get_trace(**to_backend(data, "numpyro"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_same_structure_on_both_backends(example):
    data = example.simulate().data
    structure = ppgen.inspect(example.model, **data)
    trace = _numpyro_trace(example.model, data)
    sites = {name: site for name, site in trace.items() if site["type"] in ("sample", "param", "deterministic")}
    assert list(sites) == list(structure.sites)
    with use_backend("numpyro"), jax.enable_x64(True):
        relations = get_model_relations(example.model, model_kwargs=to_backend(data, "numpyro"))
    for name, ours in structure.sites.items():
        theirs = sites[name]
        if ours.kind == "param":
            assert theirs["type"] == "param"
            continue
        assert (ours.kind == "observed") == bool(theirs["is_observed"]), name
        # NumPyro names its classes BernoulliProbs, CategoricalLogits, ...
        assert ours.distribution == type(_unwrap(theirs["fn"])).__name__.removesuffix("Probs").removesuffix("Logits"), name
        assert ours.batch_shape == tuple(theirs["fn"].batch_shape), name
        assert ours.event_shape == tuple(theirs["fn"].event_shape), name
        assert set(ours.plates) == {frame.name for frame in theirs["cond_indep_stack"]}, name
        upstream = set(relations["sample_sample"].get(name, [])) | set(relations["sample_param"].get(name, []))
        assert set(ours.parents) == upstream, name


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_same_log_joint_on_both_backends(example):
    data = example.simulate().data
    trace = _numpyro_trace(example.model, data)
    values = {
        name: to_numpy(site["value"])
        for name, site in trace.items()
        if (site["type"] == "sample" and not site["is_observed"]) or site["type"] == "param"
    }
    with jax.enable_x64(True):
        on_numpyro = log_density(example.model, values=values, backend="numpyro", **data)
    on_pyro = log_density(example.model, values=values, backend="pyro", **data)
    assert np.isfinite(on_pyro)
    assert on_pyro == pytest.approx(on_numpyro, abs=1e-5, rel=1e-9)
