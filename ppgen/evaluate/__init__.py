"""Evaluating generative models: sample metrics on arrays or features, and likelihood units.

Likelihoods come from :func:`ppgen.score` (on held-out data, a fitted ``Result`` in place of the
model); :func:`nats`, :func:`bits_per_dim` and :func:`perplexity` convert them. Sample metrics
compare a model's samples with data: :func:`frechet_distance`, :func:`mmd_test`,
:func:`precision_recall`, :func:`density_coverage`, :func:`classifier_two_sample_test`; for
8×8 digits, :func:`digit_features` gives the feature space (a classifier's penultimate layer).
"""

from ppgen.evaluate.classifier_test import ClassifierTest, classifier_two_sample_test
from ppgen.evaluate.digit_features import digit_classifier, digit_features
from ppgen.evaluate.frechet import frechet_distance, frechet_distance_gaussian
from ppgen.evaluate.likelihood import bits_per_dim, nats, perplexity
from ppgen.evaluate.manifold import DensityCoverage, PrecisionRecall, density_coverage, precision_recall
from ppgen.evaluate.mmd import MMDTest, mmd_test

__all__ = [
    "ClassifierTest",
    "DensityCoverage",
    "MMDTest",
    "PrecisionRecall",
    "bits_per_dim",
    "classifier_two_sample_test",
    "density_coverage",
    "digit_classifier",
    "digit_features",
    "frechet_distance",
    "frechet_distance_gaussian",
    "mmd_test",
    "nats",
    "perplexity",
    "precision_recall",
]
