"""ppgen.amortize: binding to a model, the guide it runs, and the classic VAE plate diagram."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pyro import poutine

import ppgen
from ppgen.diagram import diagram_spec
from ppgen.models.vae import Decoder, Encoder, vae


@pytest.fixture
def data():
    return (np.random.default_rng(0).random((6, 64)) < 0.3).astype(np.float64)


def test_vae_renders_the_classic_diagram(data):
    """x → z dashed with the encoder's parameters φ, z → x solid with the decoder's θ, both z
    and x inside the N plate (Kingma & Welling 2014, figure 1)."""
    graph = ppgen.render(vae, data, decoder=Decoder(2), guide=ppgen.amortize(Encoder(2)))
    source = graph.source
    assert "theta -> x\n" in source and "z -> x\n" in source
    assert 'x -> z [color="#c0392b" style=dashed]' in source
    assert 'phi -> z [color="#c0392b" style=dashed]' in source
    assert "label=<φ>" in source and "label=<θ>" in source
    cluster = source[source.index("subgraph cluster_N"):]
    assert "z [label=<z>" in cluster and "x [label=<x>" in cluster
    # the same as plain data
    structure = ppgen.inspect(vae, data, decoder=Decoder(2))
    guide = ppgen.amortize(Encoder(2)).bind(vae, structure).program
    spec = diagram_spec(structure, ppgen.inspect(guide, data, decoder=Decoder(2)))
    roles = {(e["source"], e["target"]): e["role"] for e in spec["edges"]}
    assert roles == {("theta", "x"): "model", ("z", "x"): "model", ("phi", "z"): "guide", ("x", "z"): "guide"}
    assert spec["nodes"]["phi"]["role"] == "guide" and spec["nodes"]["z"]["path"] == ("N",)


def test_bound_guide_samples_one_latent_per_datum(data):
    encoder = Encoder(3)
    structure = ppgen.inspect(vae, data, latent_dim=3, decoder=Decoder(3))
    bound = ppgen.amortize(encoder).bind(vae, structure)
    assert bound.layout(structure) == {"plate": "N", "dim": -1, "subsample_size": None, "size": 6, "data": "x", "event_dims": 1}
    x = torch.as_tensor(data)
    trace = poutine.trace(bound.program).get_trace(x, latent_dim=3, decoder=Decoder(3))
    site = trace.nodes["z"]
    assert site["value"].shape == (6, 3) and site["fn"].event_shape == (3,)
    loc, scale = encoder(x)
    torch.testing.assert_close(site["fn"].base_dist.loc, loc)
    torch.testing.assert_close(site["fn"].base_dist.scale, scale)
    # unbound, the data are taken from x= (or the first argument)
    unbound = poutine.trace(ppgen.amortize(encoder)).get_trace(x=x)
    assert unbound.nodes["z"]["value"].shape == (6, 3)


def test_errors(data):
    structure = ppgen.inspect(vae, data, decoder=Decoder(2))
    with pytest.raises(ValueError, match="no latent site 'w'"):
        ppgen.amortize(Encoder(2), latent="w").bind(vae, structure)
    with pytest.raises(TypeError, match="encoder must be a torch.nn.Module"):
        ppgen.amortize(lambda x: x)
    with pytest.raises(ValueError, match="bind the guide to its model first"):
        ppgen.amortize(Encoder(2)).program
