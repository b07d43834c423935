"""The classifier two-sample test (Lopez-Paz & Oquab 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ppgen.evaluate._samples import FeatureMap, as_sample_pair


@dataclass(frozen=True)
class ClassifierTest:
    """Outcome of :func:`classifier_two_sample_test`: held-out ``accuracy`` of telling the sets
    apart, its one-sided ``p_value`` against chance (1/2), and ``num_test`` held-out points."""

    accuracy: float
    p_value: float
    num_test: int

    @property
    def statistic(self) -> float:
        """The test statistic (the held-out accuracy)."""
        return self.accuracy


def classifier_two_sample_test(
    a: Any,
    b: Any,
    classifier: Any = None,
    test_fraction: float = 0.5,
    seed: int = 0,
    features: Optional[FeatureMap] = None,
) -> ClassifierTest:
    r"""Test P = Q by how well a classifier tells samples of ``a`` from samples of ``b``.

    Both sets are cut to the size n of the smaller (a seeded random subset) and labelled 0 and
    1; from each, ⌈``test_fraction`` · n⌉ points are held out at random (so the held-out set is
    balanced) and the classifier is fitted on the rest. Under P = Q the held-out points are
    exchangeable, so given the predictions (p₀ zeros among n_test = 2h held-out points) the
    number X of held-out zeros predicted zero is hypergeometric (2h points, h of them zeros, p₀
    drawn), and the number right is T = 2X + p₁ − h. The p-value P(T ≥ t) is exact under P = Q
    for any classifier (Binomial(n_test, 1/2) is only its large-sample approximation).

    Parameters
    ----------
    a, b : arrays of shape (num_samples, num_features) (or what ``features`` maps to one).
    classifier : a scikit-learn classifier (cloned before fitting). Default: k-nearest
        neighbours with k = ⌊√n_train⌋ on standardised features.
    test_fraction : in (0, 1).
    seed : seeds the subsetting and the split (and the classifier's ``random_state`` if it has one).
    features : callable, optional, applied to both sets first.

    References
    ----------
    Lopez-Paz & Oquab (2017), Revisiting classifier two-sample tests. ICLR.
    """
    from sklearn.base import clone
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ppgen.engine import check_seed

    a, b = as_sample_pair(a, b, ("a", "b"), "classifier_two_sample_test", features, min_samples=4)
    if isinstance(test_fraction, (bool, np.bool_)) or not isinstance(test_fraction, (int, float, np.floating)) or not 0 < test_fraction < 1:
        raise ValueError(f"classifier_two_sample_test: test_fraction must be a number in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(check_seed(seed, "classifier_two_sample_test"))
    size = min(len(a), len(b))
    a, b = a[rng.permutation(len(a))[:size]], b[rng.permutation(len(b))[:size]]
    points = np.concatenate([a, b])
    labels = np.repeat([0, 1], size)
    held_out = min(size - 1, max(1, int(np.ceil(test_fraction * size))))
    test_a, test_b = rng.permutation(size)[:held_out], size + rng.permutation(size)[:held_out]
    test = np.concatenate([test_a, test_b])
    train = np.setdiff1d(np.arange(2 * size), test)
    num_test = 2 * held_out
    if classifier is None:
        neighbours = max(1, int(np.sqrt(len(train))))
        model = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=neighbours))
    else:
        if not (hasattr(classifier, "fit") and hasattr(classifier, "predict")):
            raise TypeError(f"classifier_two_sample_test: classifier must be a scikit-learn classifier with fit/predict, got {type(classifier).__name__}")
        model = clone(classifier)
        if "random_state" in model.get_params():
            model.set_params(random_state=int(rng.integers(2**31)))
    model.fit(points[train], labels[train])
    predictions = np.asarray(model.predict(points[test]))
    correct = int(np.sum(predictions == labels[test]))
    p_value = held_out_p_value(correct, int(np.sum(predictions == 1)), held_out)
    return ClassifierTest(accuracy=correct / num_test, p_value=p_value, num_test=num_test)


def held_out_p_value(correct: int, predicted_ones: int, half: int) -> float:
    """P(T ≥ ``correct``) under P = Q, for 2·``half`` held-out points (``half`` of each label)
    of which ``predicted_ones`` are predicted 1: T = 2X + p₁ − h with
    X ~ Hypergeometric(2h points, h zeros, p₀ = 2h − p₁ drawn) the zeros predicted zero."""
    from scipy.stats import hypergeom

    threshold = int(np.ceil((correct - predicted_ones + half) / 2))
    return float(min(1.0, hypergeom.sf(threshold - 1, 2 * half, half, 2 * half - predicted_ones)))
