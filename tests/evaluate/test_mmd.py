"""MMD²: the statistic against a brute-force double sum, the permutation test's level and power,
and the polynomial kernel against torchmetrics' KID."""

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import binom

from ppgen.evaluate import mmd_test


def _brute_force_mmd2(a, b, kernel):
    def mean_off_diagonal(x):
        total = sum(kernel(x[i], x[j]) for i in range(len(x)) for j in range(len(x)) if i != j)
        return total / (len(x) * (len(x) - 1))

    cross = sum(kernel(x, y) for x in a for y in b) / (len(a) * len(b))
    return mean_off_diagonal(a) + mean_off_diagonal(b) - 2 * cross


def test_gaussian_statistic_matches_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(23, 3)), rng.normal(0.4, 1.3, size=(31, 3))
    test = mmd_test(a, b, bandwidth=1.7, num_permutations=5)
    expected = _brute_force_mmd2(a, b, lambda x, y: np.exp(-np.sum((x - y) ** 2) / (2 * 1.7**2)))
    assert test.statistic == pytest.approx(expected, rel=1e-10)


def test_median_heuristic_bandwidth():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 2)), rng.normal(size=(25, 2))
    pooled = np.concatenate([a, b])
    distances = [np.linalg.norm(pooled[i] - pooled[j]) for i in range(45) for j in range(i + 1, 45)]
    assert mmd_test(a, b, num_permutations=1).bandwidth == pytest.approx(np.median(distances), rel=1e-12)


def test_polynomial_statistic_matches_torchmetrics_kid():
    from torchmetrics.image.kid import KernelInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 4

        def forward(self, x):
            return x

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(60, 4)), rng.gamma(2.0, size=(60, 4))
    # one subset of the full size is a permutation of each set: KID is then the unbiased MMD²
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "will save all extracted features in buffer"
        kid = KernelInceptionDistance(feature=Identity(), subsets=1, subset_size=60, normalize=True)
    kid.update(torch.as_tensor(a), real=True)
    kid.update(torch.as_tensor(b), real=False)
    kid_mean, _ = kid.compute()
    assert mmd_test(a, b, kernel="polynomial", num_permutations=1).statistic == pytest.approx(float(kid_mean), rel=1e-6)


def test_rejection_rate_under_the_null_is_alpha():
    # permutation p-values with 99 permutations: P(p <= 0.05) = 5/100 exactly for continuous data
    repeats, alpha = 300, 0.05
    rejections = 0
    for seed in range(repeats):
        rng = np.random.default_rng(1000 + seed)
        a, b = rng.standard_t(4, size=(15, 2)), rng.standard_t(4, size=(18, 2))
        rejections += mmd_test(a, b, num_permutations=99, seed=seed).p_value <= alpha
    low, high = binom.ppf(1e-4, repeats, alpha), binom.isf(1e-4, repeats, alpha)
    assert low <= rejections <= high


def test_power_against_a_small_shift():
    repeats, rejections = 40, 0
    for seed in range(repeats):
        rng = np.random.default_rng(2000 + seed)
        a = rng.normal(size=(150, 5))
        b = rng.normal(size=(150, 5))
        b[:, 0] += 0.5  # half a standard deviation in one of five coordinates
        rejections += mmd_test(a, b, num_permutations=99, seed=seed).p_value <= 0.05
    assert rejections >= 0.8 * repeats


def test_bad_input():
    a = np.zeros((5, 2))
    with pytest.raises(ValueError, match="kernel must be 'gaussian' or 'polynomial', got 'rbf'"):
        mmd_test(a, a, kernel="rbf")
    with pytest.raises(ValueError, match="bandwidth must be a positive finite number, got -1.0"):
        mmd_test(a, a, bandwidth=-1.0)
    with pytest.raises(TypeError, match="num_permutations must be an integer >= 1, got float 10.0"):
        mmd_test(a, a, num_permutations=10.0)
    with pytest.raises(ValueError, match="mmd_test: a needs at least 2 samples, got 1"):
        mmd_test(a[:1], a)
