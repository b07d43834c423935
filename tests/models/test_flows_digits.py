"""Flows on the 8 × 8 digits (17 grey levels), dequantised, in bits per dimension.

Exact check: under the identity flow (density Normal(0, I)) the expected dequantised NLL has a
closed form, E_u[x²] = ((v + ½)² + 1/12) / L² for x = (v + u) / L, u ~ Uniform[0, 1). Slow check:
a MAF fitted to the training digits beats, on held-out digits, the best diagonal Gaussian of the
same dequantised data (its maximum-likelihood fit in closed form), a model inside the MAF's family
that ignores the correlations between pixels; and both beat the uniform density's log₂ 17 bits.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ppgen
from ppgen.models.flows import bits_per_dim, dequantise, maf, make_flow

LEVELS = 17


def _identity_flow(dim):
    flow = make_flow("realnvp", dim, num_layers=2, hidden=4, seed=1)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.zero_()
    return flow


def test_bits_per_dim_of_the_identity_flow_is_the_closed_form():
    counts = np.random.default_rng(3).integers(0, LEVELS, size=(500, 6)).astype(np.float64)
    mean, stderr = bits_per_dim(_identity_flow(6), counts, LEVELS, num_draws=4, seed=2)
    expected_square = ((counts + 0.5) ** 2 + 1 / 12) / LEVELS ** 2
    nll = 0.5 * expected_square.sum(-1) + 0.5 * 6 * math.log(2 * math.pi)  # E_u[−log N(x; 0, I)] per image
    exact = (nll + 6 * math.log(LEVELS)) / (6 * math.log(2.0))
    # the per-image mean over 4 draws of u against its expectation: Monte Carlo error only
    assert mean == pytest.approx(exact.mean(), abs=4 * stderr)
    assert stderr == pytest.approx(exact.std(ddof=1) / math.sqrt(len(exact)), rel=0.05)


def test_dequantise_rejects_values_off_the_grid():
    with pytest.raises(ValueError, match="counts must be integers in \\[0, 16\\]"):
        dequantise(np.array([[0.0, 17.0]]), LEVELS)
    x = dequantise(np.array([[0.0, 16.0]]), LEVELS, seed=0)
    assert np.all((x >= np.array([0.0, 16 / 17])) & (x < np.array([1 / 17, 1.0])))


@pytest.mark.slow
def test_maf_on_digits_beats_the_diagonal_gaussian_in_bits_per_dim():
    from sklearn.datasets import load_digits

    images = load_digits().data  # (1797, 64), integers 0..16
    order = np.random.default_rng(0).permutation(len(images))
    train, test = images[order[:1400]], images[order[1400:]]
    x = dequantise(train, LEVELS, seed=1)
    mean, sd = x.mean(0), x.std(0)
    flow = make_flow("maf", 64, num_layers=4, hidden=64, seed=0)
    # a last, fixed layer x = mean + sd ⊙ y (its log-det counted like any other): the flow starts
    # near the diagonal Gaussian and learns the pixels' dependence, not their scale (blank border
    # pixels spread over [0, 1/17) only)
    flow.transforms.append(torch.distributions.AffineTransform(torch.as_tensor(mean), torch.as_tensor(sd), event_dim=1))
    # 300 steps of 200 (43 epochs): 1,400 images overfit a 64-wide MAF beyond that (held-out bits
    # per dim rise again from ~500 steps while the training ones keep falling)
    ppgen.learn(maf, x, dim=64, flow=flow, engine="mle", optimizer="adam", learning_rate=1e-3, subsample_size=200, num_steps=300, seed=0)
    flow_bits, flow_stderr = bits_per_dim(flow, test, LEVELS, num_draws=4, seed=5)
    # the best diagonal Gaussian of the dequantised training pixels, scored the same way
    gaussian = []
    for draw in range(4):
        y = dequantise(test, LEVELS, seed=5 + draw)
        gaussian.append((0.5 * ((y - mean) / sd) ** 2 + np.log(sd) + 0.5 * math.log(2 * math.pi)).sum(-1))
    gaussian_bits = (np.mean(gaussian, 0) + 64 * math.log(LEVELS)) / (64 * math.log(2.0))
    print(f"held-out digits: MAF {flow_bits:.3f} ± {flow_stderr:.3f} bits/dim, diagonal Gaussian {gaussian_bits.mean():.3f}, "
          f"uniform {math.log2(LEVELS):.3f}")
    assert flow_bits < gaussian_bits.mean() - 3 * flow_stderr
    assert gaussian_bits.mean() < math.log2(LEVELS)
