"""The look's training examples (no labels needed): a query's canvas and crops of its reference at
the target's pyramid level and its neighbours, with the target's position as the label."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from matchenv.agents.look_images import fill_colour, template_canvas
from matchenv.agents.look_network import STRIDE, LookConfig
from matchenv.datasets.base import SearchPair
from matchenv.geometry import resize_image


@dataclass(frozen=True)
class TrainingSample:
    """One training example for :meth:`~matchenv.agents.look_network.MultiScaleLook.forward` (uint8
    arrays, channel-last).

    :param canvas: ``(canvas, canvas, 3)`` query canvas. :param cells: ``(K, K)`` cell mask.
    :param crops: ``(L, crop, crop, 3)`` reference crops at levels ``offsets`` around the truth.
    :param label: index of the target's position in the flattened ``(L, P, Q)`` logits.
    """

    canvas: np.ndarray
    cells: np.ndarray
    crops: np.ndarray
    label: int


def training_sample(pair: SearchPair, config: LookConfig, rng: np.random.Generator, crop: int = 80,
                    offsets: Sequence[int] = (-2, -1, 0, 1, 2)) -> TrainingSample:
    """Crops of ``pair.reference`` at the target's level (offset 0) and at ``offsets`` levels
    around it, all centred on one point, with the target centre at a uniform random position.

    The true level is the target's size times a uniform ``level_step ** u``, ``|u| <= 1/2``:
    the pyramid's levels do not line up with targets, and the network must score a target between
    two levels highest at the nearer one. Outside the reference the crops are its mean colour.

    :param pair: a pair with ``template`` (the query at its natural size) and ``target_box``.
    :param crop: side of the square crops, in level pixels.
    """
    if pair.template is None:
        raise ValueError("training_sample needs pairs with a template (photograph datasets)")
    if 0 not in offsets:
        raise ValueError(f"offsets must include 0 (the target's level), got {offsets}")
    canvas, cells = template_canvas(pair.template, config)
    x0, y0, x1, y1 = (float(v) for v in pair.target_box)
    target_side = math.sqrt(max(x1 - x0, 1e-6) * max(y1 - y0, 1e-6))
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    factor = config.side / target_side * config.level_step ** rng.uniform(-0.5, 0.5)
    half = config.canvas / 2
    positions = (crop - config.canvas) // STRIDE + 1
    # where the target centre lands in the true level's crop: anywhere a kernel can be centred
    at_x, at_y = rng.uniform(half, half + (positions - 1) * STRIDE, size=2)
    look_x, look_y = centre_x + (crop / 2 - at_x) / factor, centre_y + (crop / 2 - at_y) / factor
    fill = fill_colour(pair.reference)
    crops = np.empty((len(offsets), crop, crop, 3), np.uint8)
    for n, offset in enumerate(offsets):
        scale = factor * config.level_step ** offset
        crops[n] = _crop_scaled(pair.reference, scale, look_x, look_y, crop, fill)
    left, top = int(round(look_x * factor - crop / 2)), int(round(look_y * factor - crop / 2))
    col = int(np.clip(round((centre_x * factor - left - half) / STRIDE), 0, positions - 1))
    row = int(np.clip(round((centre_y * factor - top - half) / STRIDE), 0, positions - 1))
    label = (list(offsets).index(0) * positions + row) * positions + col
    return TrainingSample(canvas, cells, crops, label)


def _crop_scaled(image: np.ndarray, scale: float, centre_x: float, centre_y: float, crop: int,
                 fill: np.ndarray) -> np.ndarray:
    """The ``crop`` x ``crop`` square of ``image`` resized by ``scale``, centred on the point
    ``(centre_x, centre_y)`` of ``image``; ``fill`` outside it."""
    height, width = image.shape[:2]
    scaled = resize_image(image, (max(int(round(height * scale)), 1), max(int(round(width * scale)), 1)))
    left, top = int(round(centre_x * scale - crop / 2)), int(round(centre_y * scale - crop / 2))
    out = np.empty((crop, crop, 3), np.uint8)
    out[:] = fill
    sx0, sy0 = max(left, 0), max(top, 0)
    sx1, sy1 = min(left + crop, scaled.shape[1]), min(top + crop, scaled.shape[0])
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = scaled[sy0:sy1, sx0:sx1]
    return out

