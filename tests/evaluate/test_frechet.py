"""Fréchet distance against closed forms, scipy's matrix square root and torchmetrics' FID."""

import numpy as np
import pytest
import scipy.linalg
import torch

from ppgen.evaluate import frechet_distance, frechet_distance_gaussian


def _random_covariance(rng, size):
    factor = rng.normal(size=(size, size))
    return factor @ factor.T / size + 0.1 * np.eye(size)


def _samples_with_moments(rng, num_samples, mean, cov):
    """Samples whose sample mean and unbiased sample covariance are exactly ``mean`` and ``cov``."""
    raw = rng.normal(size=(num_samples, len(mean)))
    raw -= raw.mean(axis=0)
    whitened = raw @ np.linalg.inv(np.linalg.cholesky(np.cov(raw, rowvar=False))).T
    return whitened @ np.linalg.cholesky(cov).T + mean


def test_one_dimensional_closed_form():
    # W2² between N(m1, s1²) and N(m2, s2²) is (m1 − m2)² + (s1 − s2)²
    assert frechet_distance_gaussian([1.5], [[4.0]], [-0.5], [[0.25]]) == pytest.approx(2.0**2 + 1.5**2, rel=1e-12)


def test_commuting_covariances_closed_form():
    variances_a, variances_b = np.array([1.0, 2.0, 9.0]), np.array([4.0, 0.5, 1.0])
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(variances_a) - np.sqrt(variances_b)) ** 2)
    assert frechet_distance_gaussian(mean_a, np.diag(variances_a), mean_b, np.diag(variances_b)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("size", [2, 7, 30])
def test_general_covariances_match_scipy_sqrtm(size):
    rng = np.random.default_rng(size)
    cov_a, cov_b = _random_covariance(rng, size), _random_covariance(rng, size)
    mean_a, mean_b = rng.normal(size=size), rng.normal(size=size)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root)
    assert frechet_distance_gaussian(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-9)


def test_samples_with_known_moments_give_the_closed_form():
    rng = np.random.default_rng(3)
    cov_a, cov_b = _random_covariance(rng, 5), _random_covariance(rng, 5)
    mean_a, mean_b = rng.normal(size=5), rng.normal(size=5)
    a = _samples_with_moments(rng, 300, mean_a, cov_a)
    b = _samples_with_moments(rng, 450, mean_b, cov_b)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance_gaussian(mean_a, cov_a, mean_b, cov_b), rel=1e-9)


def test_singular_covariance_is_stable():
    # fewer samples than features, and a constant feature: covariances of low rank
    rng = np.random.default_rng(4)
    a = rng.normal(size=(10, 40))
    a[:, 0] = 3.0
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9 * np.trace(np.cov(a, rowvar=False)))
    value = frechet_distance(a, rng.normal(size=(12, 40)))
    assert np.isfinite(value) and value > 0


def test_matches_torchmetrics_fid_with_identity_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 6

        def forward(self, x):
            return x

    rng = np.random.default_rng(5)
    real = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    fake = rng.standard_t(5, size=(350, 6)) + 0.3
    fid = FrechetInceptionDistance(feature=Identity(), normalize=True)
    fid.update(torch.as_tensor(real), real=True)
    fid.update(torch.as_tensor(fake), real=False)
    assert frechet_distance(real, fake) == pytest.approx(float(fid.compute()), rel=1e-6)


def test_feature_map_and_bad_input():
    rng = np.random.default_rng(6)
    images = rng.uniform(size=(50, 4, 4))
    flat = images.reshape(50, 16)
    assert frechet_distance(images, images[::-1], features=lambda x: x.reshape(len(x), -1)) == pytest.approx(frechet_distance(flat, flat[::-1]))
    with pytest.raises(ValueError, match=r"frechet_distance: a must have shape \(num_samples, num_features\), got shape \(50, 4, 4\); pass features="):
        frechet_distance(images, flat)
    with pytest.raises(ValueError, match="same number of features, got 16 and 15"):
        frechet_distance(flat, flat[:, :15])
    bad = flat.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match="frechet_distance: b has non-finite values .* first at row 7"):
        frechet_distance(flat, bad)
    with pytest.raises(TypeError, match="numeric array"):
        frechet_distance(flat, [["x"] * 16] * 3)
