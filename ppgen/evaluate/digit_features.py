"""A feature space for 8×8 digit images: the penultimate layer of a small classifier trained on
scikit-learn's digits, retrained deterministically from code (never downloaded).

The digit analogue of the Inception network behind FID: :func:`digit_features` maps images to
the classifier's last hidden layer, where Fréchet distance, MMD and the manifold metrics
compare generated digits with real ones.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

#: Layer sizes of the classifier: 64 pixels → 64 → FEATURE_DIM → 10 classes.
FEATURE_DIM = 32
_HIDDEN = 64
_NUM_STEPS = 150
_SEED = 0


@functools.lru_cache(maxsize=1)
def digit_classifier() -> Any:
    """The trained classifier (a ``torch.nn.Sequential``, float32, in eval mode), built once per
    process.

    Trained on all 1,797 digits of ``sklearn.datasets.load_digits``, each both as grey levels
    scaled to [0, 1] (pixel / 16) and binarised at half intensity (pixel > 8, as
    :func:`ppgen.models.vae.load_digits_binary`), so both inputs are in its training
    distribution: full-batch Adam (learning rate 0.02, weight decay 1e-4) for 150 steps on the
    cross-entropy, from seeded weights, single-threaded so the result does not depend on the
    machine's thread count. Takes about a second.
    """
    import torch
    from sklearn.datasets import load_digits

    from ppgen.models._networks import seeded_mlp

    digits = load_digits()
    grey = digits.data / 16.0
    x = torch.as_tensor(np.concatenate([grey, (digits.data > 8).astype(np.float64)]), dtype=torch.float32)
    y = torch.as_tensor(np.concatenate([digits.target, digits.target]), dtype=torch.long)
    network = seeded_mlp(
        [64, _HIDDEN, FEATURE_DIM, 10], torch.Generator().manual_seed(_SEED), activation=torch.nn.ReLU, dtype=torch.float32
    )
    optimiser = torch.optim.Adam(network.parameters(), lr=0.02, weight_decay=1e-4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(_NUM_STEPS):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(network(x), y)
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


def _as_images(images: Any) -> np.ndarray:
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    array = np.asarray(images)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"digit_features: images must be a numeric array of shape (N, 64) or (N, 8, 8), got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[1:] == (8, 8):
        array = array.reshape(len(array), 64)
    if array.ndim != 2 or array.shape[1] != 64:
        raise ValueError(f"digit_features: images must have shape (N, 64) or (N, 8, 8), got shape {array.shape}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError("digit_features: images have non-finite values (NaN or inf)")
    if array.size and (array.min() < 0.0 or array.max() > 1.0):
        raise ValueError(
            f"digit_features: pixels must lie in [0, 1] (grey level / 16, or binarised), got values in "
            f"[{array.min():g}, {array.max():g}]; scikit-learn's raw digits are 0..16: divide by 16"
        )
    return array


def digit_features(images: Any) -> np.ndarray:
    """The digit classifier's penultimate-layer activations (after the ReLU) of ``images``.

    Parameters
    ----------
    images : array of shape (N, 64) or (N, 8, 8), pixels in [0, 1]: scikit-learn digits divided
        by 16, or binarised digits (0/1), or a model's pixel probabilities / samples on that scale.

    Returns
    -------
    float64 array of shape (N, 32).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> digit_features(load_digits().data[:5] / 16).shape
    (5, 32)
    """
    import torch

    array = _as_images(images)
    network = digit_classifier()
    with torch.no_grad():
        hidden = network[:-1](torch.as_tensor(array, dtype=torch.float32))
    return hidden.numpy().astype(np.float64)
