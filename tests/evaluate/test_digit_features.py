"""The digit feature network: deterministic retraining, both pixel scales, a useful feature space."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from ppgen.evaluate import digit_classifier, digit_features, frechet_distance


def test_retrains_identically_and_classifies_both_scales():
    first = [p.clone() for p in digit_classifier().parameters()]
    digit_classifier.cache_clear()
    second = list(digit_classifier().parameters())
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    digits = load_digits()
    for images in (digits.data / 16.0, (digits.data > 8).astype(float)):
        logits = digit_classifier()(torch.as_tensor(images, dtype=torch.float32))
        assert np.mean(logits.argmax(1).numpy() == digits.target) > 0.97


def test_feature_space_tells_digits_from_scrambled_digits():
    digits = load_digits().data / 16.0
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits))
    half_a, half_b = digits[order[:800]], digits[order[800:1600]]
    scrambled = np.array([row[rng.permutation(64)] for row in half_b])
    features_a = digit_features(half_a.reshape(-1, 8, 8))
    assert features_a.shape == (800, 32) and features_a.dtype == np.float64
    same = frechet_distance(half_a, half_b, features=digit_features)
    different = frechet_distance(half_a, scrambled, features=digit_features)
    assert different > 10 * same


def test_bad_images():
    with pytest.raises(ValueError, match=r"pixels must lie in \[0, 1\].*got values in \[0, 16\].*divide by 16"):
        digit_features(load_digits().data[:3])
    with pytest.raises(ValueError, match=r"images must have shape \(N, 64\) or \(N, 8, 8\), got shape \(3, 28, 28\)"):
        digit_features(np.zeros((3, 28, 28)))
    with pytest.raises(ValueError, match="non-finite"):
        digit_features(np.full((2, 64), np.nan))
