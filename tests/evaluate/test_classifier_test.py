"""Classifier two-sample test: exact p-value by enumeration, level under the null, power."""

import itertools

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.linear_model import LogisticRegression

from ppgen.evaluate import classifier_two_sample_test
from ppgen.evaluate.classifier_test import held_out_p_value


@pytest.mark.parametrize("predictions", [[1, 1, 0, 0, 0, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 0, 0, 0], [0] * 10])
def test_p_value_matches_enumeration_of_balanced_labellings(predictions):
    predictions = np.array(predictions)
    half = len(predictions) // 2
    labellings = [np.isin(np.arange(2 * half), ones).astype(int) for ones in itertools.combinations(range(2 * half), half)]
    counts = np.array([np.sum(labels == predictions) for labels in labellings])
    for correct in range(2 * half + 1):
        assert held_out_p_value(correct, int(predictions.sum()), half) == pytest.approx(np.mean(counts >= correct), abs=1e-12)


def test_level_under_the_null():
    repeats, alpha = 150, 0.05
    rejections = sum(
        classifier_two_sample_test(rng.normal(size=(40, 3)), rng.normal(size=(55, 3)), seed=seed).p_value <= alpha
        for seed, rng in ((s, np.random.default_rng(500 + s)) for s in range(repeats))
    )
    assert rejections <= binom.isf(1e-4, repeats, alpha)


def test_power_and_a_given_classifier():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(200, 2)), rng.normal(size=(300, 2)) + [1.0, 0.0]
    for classifier in (None, LogisticRegression()):
        test = classifier_two_sample_test(a, b, classifier=classifier, seed=3)
        assert test.accuracy > 0.6 and test.p_value < 1e-3 and test.num_test == 200


def test_bad_input():
    a = np.zeros((10, 2))
    with pytest.raises(ValueError, match=r"test_fraction must be a number in \(0, 1\), got 1.5"):
        classifier_two_sample_test(a, a, test_fraction=1.5)
    with pytest.raises(TypeError, match="classifier must be a scikit-learn classifier with fit/predict, got str"):
        classifier_two_sample_test(a, a, classifier="knn")
    with pytest.raises(ValueError, match="needs at least 4 samples, got 3"):
        classifier_two_sample_test(a[:3], a)
