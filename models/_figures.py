"""Small drawing helpers shared by the catalogue families' tour reports."""

from __future__ import annotations

from typing import Any

import numpy as np


def image_grid(axis: Any, images: np.ndarray, rows: int, title: str, side: int = 8) -> None:
    """Draw ``images`` (each ``side × side`` pixels, flattened, values in [0, 1]) as a grid with
    ``rows`` rows on ``axis``."""
    columns = int(np.ceil(len(images) / rows))
    step = side + 1
    canvas = np.zeros((rows * step - 1, columns * step - 1))
    for index, image in enumerate(images):
        r, c = divmod(index, columns)
        canvas[r * step:r * step + side, c * step:c * step + side] = np.asarray(image).reshape(side, side)
    axis.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    axis.set_title(title, fontsize=9)
    axis.axis("off")
