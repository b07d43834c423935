"""Precision/recall and density/coverage: exact cases, known expectations, and prdc."""

import numpy as np
import pytest

from ppgen.evaluate import density_coverage, precision_recall


def test_identical_sets_give_one_and_disjoint_sets_zero():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(80, 3))
    same = precision_recall(points, points.copy(), k=4)
    assert (same.precision, same.recall) == (1.0, 1.0)
    far = precision_recall(points, points + 50.0, k=4)
    assert (far.precision, far.recall) == (0.0, 0.0)
    cover = density_coverage(points, points + 50.0, k=4)
    assert (cover.density, cover.coverage) == (0.0, 0.0)
    assert density_coverage(points, points.copy(), k=4).coverage == 1.0


def test_precision_and_recall_are_not_symmetric():
    # a generator that drops half the modes: its samples are all realistic (precision ≈ 1) but
    # cover half the data (recall ≈ 1/2); swapping the arguments swaps the two
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    real = centres[rng.integers(4, size=400)] + rng.normal(size=(400, 2))
    fake = centres[rng.integers(2, size=400)] + rng.normal(size=(400, 2))
    forward, backward = precision_recall(real, fake, k=3), precision_recall(fake, real, k=3)
    assert forward.precision > 0.95 and 0.4 < forward.recall < 0.6
    assert (backward.precision, backward.recall) == (forward.recall, forward.precision)


def test_coverage_and_density_expectations_for_one_distribution():
    # E[coverage] = 1 − C(N−1, k) / C(N+M−1, k) (0.969 at k = 5, N = M large); E[density] = 1
    num_real, num_fake, k, repeats = 150, 150, 5, 40
    expected_coverage = 1 - np.prod([(num_real - i) / (num_real + num_fake - i) for i in range(1, k + 1)])
    coverages, densities = [], []
    for seed in range(repeats):
        rng = np.random.default_rng(seed)
        result = density_coverage(rng.normal(size=(num_real, 4)), rng.normal(size=(num_fake, 4)), k=k)
        coverages.append(result.coverage)
        densities.append(result.density)
    for values, expected in ((coverages, expected_coverage), (densities, 1.0)):
        stderr = np.std(values, ddof=1) / np.sqrt(repeats)
        assert abs(np.mean(values) - expected) < 4 * stderr


def test_matches_prdc():
    import prdc

    rng = np.random.default_rng(2)
    real = rng.normal(size=(200, 6))
    fake = rng.normal(0.3, 1.2, size=(170, 6))
    reference = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    ours_pr = precision_recall(real, fake, k=5)
    ours_dc = density_coverage(real, fake, k=5)
    assert ours_pr.precision == pytest.approx(reference["precision"], abs=1e-12)
    assert ours_pr.recall == pytest.approx(reference["recall"], abs=1e-12)
    assert ours_dc.density == pytest.approx(reference["density"], abs=1e-12)
    assert ours_dc.coverage == pytest.approx(reference["coverage"], abs=1e-12)


def test_bad_input():
    points = np.zeros((5, 2)) + np.arange(5)[:, None]
    with pytest.raises(ValueError, match="precision_recall: real needs more than k = 5 samples for k-nearest-neighbour radii, got 5"):
        precision_recall(points, np.ones((9, 2)), k=5)
    with pytest.raises(TypeError, match="density_coverage: k must be an integer >= 1, got float 2.0"):
        density_coverage(points, points, k=2.0)
    with pytest.raises(ValueError, match="density_coverage: real and fake must have the same number of features, got 2 and 3"):
        density_coverage(points, np.ones((6, 3)))
