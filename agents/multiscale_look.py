"""A learned multi-scale look for photographs: where, and how large, is the query in the reference?

The photograph agents trained from scratch by reinforcement learning did not learn to *match*
(README "Photographs"): their 32x32 thumbnail of the reference does not show where a small,
re-photographed region is. This module is the fully convolutional alternative (the idea of
SiamFC, Bertinetto et al., ECCVW 2016, with a scale pyramid):

* one small CNN (:class:`LookFeatures`, stride 4, unit-length features per cell) embeds the query
  and the reference;
* the query is drawn on a square **canvas** with its aspect kept and its geometric-mean side
  scaled to ``side`` pixels (:func:`template_canvas`); its feature cells that hold the query (the
  **cell mask**) are the correlation kernel;
* the reference is resized once per **level** of a pyramid of target sizes (``smallest`` to
  ``largest`` of its shorter side, ``level_step`` apart; :func:`pyramid`), so that a target of
  that level's size would be ``side`` pixels; the kernel slides over every level's feature map: the score of a
  position is the mean cosine similarity of the query's cells with the reference's cells under it;
* the answer is the best position of the best level, refined between positions and between
  levels by a parabola through the neighbours (:func:`refine_peak`);
* unless one candidate is clearly ahead: then a **second look** compares the few best candidates
  (distinct local maxima) with the same network at twice the resolution
  (:data:`CLOSER_ZOOM`), and the best sum of both scores wins.

Training (``train/multiscale_look.py``) needs no labels: :func:`training_sample` turns any
:class:`~matchenv.datasets.base.SearchPair` (e.g. of
:class:`~matchenv.datasets.self_supervised.SelfSupervisedPhotos`) into the query's canvas and
crops of the reference at the true level and its neighbours, and the loss is a softmax
cross-entropy over every position of every level, so the network learns *where* and *which size*
at once. It is an exhaustive search over a coarse grid (thousands of positions), not a sequential
search; :class:`LookSearcher` is its inference API.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents.model_files import read_model_file, write_model_file
from agents.searcher import SearchResult, prepare_image
from matchenv.datasets.base import SearchPair
from matchenv.datasets.photos import DEFAULT_MAX_SIDE, to_working_size
from matchenv.geometry import iou_of_floats, resize_image

#: pixels per feature cell of :class:`LookFeatures` (two stride-2 convolutions).
STRIDE = 4
#: the second look draws the query and the candidates this many times larger than the first
CLOSER_ZOOM = 2
#: cells of the second look's patches around a candidate's centre, each way (its map is 2 * this + 1 wide)
CLOSER_MARGIN = 2


@dataclass(frozen=True)
class LookConfig:
    """Architecture and pyramid of a :class:`MultiScaleLook` (saved with its weights).

    :param channels: output channels of the four 3x3 convolutions (strides 2, 2, 1, 1).
    :param separable: the last two convolutions depthwise-separable (3x3 per channel, then 1x1):
        with 48 channels, 7.6x fewer multiply-adds in those two layers (the second, strided
        convolution then costs the most).
    :param separable_stem: the second, strided convolution depthwise-separable too (3x3 stride 2
        per channel, then 1x1): with 16 -> 48 channels, 7.6x fewer multiply-adds in that layer.
    :param side: geometric-mean side, in pixels, the query is drawn at on its canvas and a target
        has at its level's scale.
    :param canvas: side of the square query canvas, in pixels (a multiple of :data:`STRIDE`, at
        least ``side * sqrt(2)`` so that queries of aspect up to 2 fit).
    :param level_step: size ratio between neighbouring pyramid levels.
    :param smallest: smallest target side the pyramid looks for, as a fraction of the reference's
        shorter side (geometric mean of width and height).
    :param largest: largest target side, likewise.
    :param max_side: working size: references are shrunk so their longer side is at most this
        (as in training) before the pyramid is built; ``None``: never.
    """

    channels: tuple[int, int, int, int] = (16, 48, 48, 48)
    separable: bool = True
    separable_stem: bool = False
    side: int = 20
    canvas: int = 32
    level_step: float = 2.0 ** (1.0 / 3.0)
    smallest: float = 0.125
    largest: float = 0.8
    max_side: Optional[int] = DEFAULT_MAX_SIDE

    def __post_init__(self) -> None:
        if len(self.channels) != 4 or min(self.channels) < 1:
            raise ValueError(f"channels must be four positive widths, got {self.channels}")
        if self.canvas % STRIDE or self.canvas < self.side:
            raise ValueError(f"canvas must be a multiple of {STRIDE} and >= side, got canvas={self.canvas}, side={self.side}")
        if self.side < STRIDE:
            raise ValueError(f"side must be at least {STRIDE} px (one feature cell), got {self.side}")
        if not self.level_step > 1.0:
            raise ValueError(f"level_step must be > 1, got {self.level_step}")
        if not 0.0 < self.smallest <= self.largest:
            raise ValueError(f"need 0 < smallest <= largest, got smallest={self.smallest}, largest={self.largest}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))

    @property
    def kernel_cells(self) -> int:
        """Side of the query's feature map (the correlation kernel), in cells."""
        return self.canvas // STRIDE

    def level_sides(self, short_side: float) -> np.ndarray:
        """Target sides (pixels of the working reference) of the pyramid's levels, smallest first.

        :param short_side: the working reference's shorter side, in pixels.
        """
        count = int(math.floor(math.log(self.largest / self.smallest) / math.log(self.level_step) + 1e-9)) + 1
        return self.smallest * short_side * self.level_step ** np.arange(count)


class LookFeatures(nn.Module):
    """Four 3x3 convolutions with ReLUs between them: ``(N, 3, H, W)`` pixels in 0-255 ->
    ``(N, C, ceil(H/4), ceil(W/4))`` features of unit length per cell (cosine similarity is then a
    dot product)."""

    def __init__(self, channels: Sequence[int] = (16, 48, 48, 48), separable: bool = True,
                 separable_stem: bool = False) -> None:
        super().__init__()
        c1, c2, c3, c4 = channels
        layers: list[nn.Module] = [nn.Conv2d(3, c1, 3, 2, 1), nn.ReLU()]
        if separable_stem:
            layers += [nn.Conv2d(c1, c1, 3, 2, 1, groups=c1), nn.Conv2d(c1, c2, 1), nn.ReLU()]
        else:
            layers += [nn.Conv2d(c1, c2, 3, 2, 1), nn.ReLU()]
        if separable:
            layers += [nn.Conv2d(c2, c2, 3, 1, 1, groups=c2), nn.Conv2d(c2, c3, 1), nn.ReLU(),
                       nn.Conv2d(c3, c3, 3, 1, 1, groups=c3), nn.Conv2d(c3, c4, 1)]
        else:
            layers += [nn.Conv2d(c2, c3, 3, 1, 1), nn.ReLU(), nn.Conv2d(c3, c4, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(pixels / 255.0 - 0.5), dim=1)


class MultiScaleLook(nn.Module):
    """The look's network: :class:`LookFeatures` and a learned softmax temperature.

    :param config: architecture and pyramid, see :class:`LookConfig`.
    """

    def __init__(self, config: LookConfig = LookConfig()) -> None:
        super().__init__()
        self.config = config
        self.features = LookFeatures(config.channels, config.separable, config.separable_stem)
        #: log of the factor from mean cosine similarity to training logit
        self.log_temperature = nn.Parameter(torch.tensor(math.log(10.0)))

    def kernel(self, canvas: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """The correlation kernels of queries drawn on canvases.

        :param canvas: ``(N, 3, canvas, canvas)`` pixels in 0-255 (:func:`template_canvas`).
        :param cells: ``(N, K, K)`` float cell mask (1 where the query is), ``K = canvas / 4``.
        :return: ``(N, C, K, K)``: the query's features on its cells divided by the number of
            cells, so that correlating it gives the mean cosine similarity in ``[-1, 1]``.
        """
        return _mean_over_cells(self.features(canvas), cells)

    def forward(self, canvas: torch.Tensor, cells: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        """Training logits: each query's kernel over its own crops.

        :param canvas: ``(N, 3, canvas, canvas)`` query canvases. :param cells: ``(N, K, K)`` masks.
        :param crops: ``(N, L, 3, h, w)`` crops of each reference at ``L`` levels.
        :return: ``(N, L * P * Q)`` logits over every position of every level (level-major).
        """
        n, levels = crops.shape[:2]
        kernels = self.kernel(canvas, cells)
        maps = self.features(crops.flatten(0, 1))
        c, h, w = maps.shape[1:]
        # one grouped convolution correlates every query with its own crops (groups = queries)
        maps = maps.view(n, levels, c, h, w).transpose(0, 1).reshape(levels, n * c, h, w)
        scores = F.conv2d(maps, kernels, groups=n)  # (L, N, P, Q)
        return scores.transpose(0, 1).reshape(n, -1) * self.log_temperature.exp()


def _mean_over_cells(features: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """``(N, C, K, K)`` features kept on the ``(N, K, K)`` cell mask and divided by the number of
    cells: a kernel whose correlation is the mean cosine similarity over the query's cells."""
    return features * cells[:, None] / cells.sum((1, 2)).clamp(min=1.0)[:, None, None, None]


class _CentredFeatures(nn.Module):
    """:class:`LookFeatures` for the exported graphs: ``(N, 3, H, W)`` pixels minus 127.5 -> the
    same features.

    Why: ``pixels / 255 - 0.5`` and ``F.normalize``'s expanded divisor are separate passes over
    the largest tensors in ONNX Runtime (their four operations took 0.27 ms of a 3.3 ms level at
    160x256 pixels; ONNX Runtime's profiler, one thread). The 1/255 is folded into the first convolution's weights, the
    centring done in numpy while the uint8 pixels become floats (:func:`_centred_pixels`), and
    the norm divides by broadcasting. The zero padding of the first convolution is the same
    value (pixel 127.5) either way.
    """

    def __init__(self, features: LookFeatures) -> None:
        super().__init__()
        self.net = copy.deepcopy(features.net)  # as agents.cnn_runtime.on_0_255_pixels does for the agents' CNN
        with torch.no_grad():
            self.net[0].weight.div_(255.0)

    def forward(self, centred: torch.Tensor) -> torch.Tensor:
        out = self.net(centred)
        return out / torch.linalg.vector_norm(out, dim=1, keepdim=True).clamp_min(1e-12)


def _centred_pixels(images: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float32 pixels minus 127.5, C-contiguous (the
    input of :class:`_CentredFeatures`)."""
    out = np.empty((images.shape[0], images.shape[3], images.shape[1], images.shape[2]), np.float32)
    np.subtract(images.transpose(0, 3, 1, 2), np.float32(127.5), out=out, dtype=np.float32)
    return out


def _row_filters(features: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` features and a ``(1, C, k, k')`` kernel given at run time -> ``(N, k, H,
    W - k' + 1)``: plane ``dy`` is every position's correlation with kernel row ``dy`` (a ``1 x k'``
    filter). :func:`_sum_rows` of it is ``F.conv2d(features, kernel)``.

    Why: ONNX Runtime runs a convolution whose weights are an input by im2col (a ``C * k * k'`` by
    ``positions`` matrix with one output row: memory-bound, about half of a pyramid level's time);
    ``k`` outputs use its convolution kernels well. Measured against that single convolution (one
    thread, with the row sums as a one-hot convolution): 0.60 vs 2.9 ms on a 40x64-cell map with
    an 8x8 kernel, 0.49 vs 1.4 ms on four 20x20 maps with a 16x16 kernel (the second look).
    """
    return F.conv2d(features, kernel[0].transpose(0, 1).unsqueeze(2))


def _sum_rows(planes: np.ndarray) -> np.ndarray:
    """``(N, k, H, Q)`` row correlations (:func:`_row_filters`) -> ``(N, H - k + 1, Q)``: each
    position's sum of plane ``dy`` read ``dy`` cells down, i.e. the correlation with the whole
    kernel. (A handful of numpy additions: cheaper than a one-hot convolution in the graph, which
    would need the kernel's height fixed.)"""
    rows = planes.shape[1]
    height = planes.shape[2] - rows + 1
    total = planes[:, 0, :height].copy()
    for dy in range(1, rows):
        total += planes[:, dy, dy : dy + height]
    return total


@dataclass(frozen=True)
class _KernelPart:
    """A query's ``(1, C, K, K)`` kernel trimmed to the cells that hold the query (:func:`_trimmed`).

    :param weights: ``(1, C, k, k')`` the nonzero part. :param top: its first row in the kernel.
    :param left: its first column. :param side: ``K``, the whole kernel's side.
    """

    weights: np.ndarray
    top: int
    left: int
    side: int


def _trimmed(kernel: np.ndarray) -> _KernelPart:
    """The smallest part of a ``(1, C, K, K)`` kernel that holds all its nonzero cells.

    Why: the kernel is zero outside the query's cells (:func:`_mean_over_cells`), and a square
    query covers 5x5 of the 8x8 cells; correlating the part and keeping the positions of the whole
    kernel gives the same scores (:meth:`_LookRuntime.scores`) for 25/64 of the correlation's work.
    """
    cells = np.any(kernel[0] != 0.0, axis=0)
    rows, cols = np.flatnonzero(cells.any(axis=1)), np.flatnonzero(cells.any(axis=0))
    if rows.size == 0:  # all zero: any one cell gives the same (zero) scores
        rows = cols = np.zeros(1, np.int64)
    part = kernel[:, :, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return _KernelPart(np.ascontiguousarray(part), int(rows[0]), int(cols[0]), kernel.shape[-1])


class _Kernel(nn.Module):
    """The query's kernel, for export: ``(1, 3, canvas, canvas)`` centred pixels and ``(1, K, K)``
    cell mask -> ``(1, C, K, K)`` (:meth:`MultiScaleLook.kernel`)."""

    def __init__(self, look: MultiScaleLook) -> None:
        super().__init__()
        self.features = _CentredFeatures(look.features)

    def forward(self, canvas: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        return _mean_over_cells(self.features(canvas), cells)


class _RowScores(nn.Module):
    """The look's features and :func:`_row_filters`, for export: ``(N, 3, H, W)`` centred pixels
    (a pyramid level, or the second look's patches) and a ``(1, C, k, k')`` kernel -> ``(N, k, h,
    q)`` row correlations (``h = ceil(H / 4)``), whose :func:`_sum_rows` are the mean cosine
    similarities ``F.conv2d(features(pixels), kernel)``."""

    def __init__(self, look: MultiScaleLook) -> None:
        super().__init__()
        self.features = _CentredFeatures(look.features)

    def forward(self, pixels: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return _row_filters(self.features(pixels), kernel)


# ---------------------------------------------------------------------------------- geometry
def template_canvas(template: np.ndarray, config: LookConfig) -> tuple[np.ndarray, np.ndarray]:
    """The query drawn for the look: aspect kept, geometric-mean side ``config.side``, centred on a
    square canvas filled with its mean colour (a neutral background, not a black frame).

    :param template: ``(h, w, 3)`` uint8 query at any size.
    :return: ``(canvas, canvas, 3)`` uint8 canvas and ``(K, K)`` float32 cell mask: 1 for feature
        cells at least half covered by the query (at least one cell).
    """
    h, w = template.shape[:2]
    factor = config.side / math.sqrt(h * w)
    size = config.canvas
    new_h = min(max(int(round(h * factor)), 1), size)
    new_w = min(max(int(round(w * factor)), 1), size)
    canvas = np.empty((size, size, 3), np.uint8)
    small = resize_image(template, (new_h, new_w))
    canvas[:] = fill_colour(small)
    y0, x0 = (size - new_h) // 2, (size - new_w) // 2
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = small
    covered = np.zeros((size, size), np.float32)
    covered[y0 : y0 + new_h, x0 : x0 + new_w] = 1.0
    k = config.kernel_cells
    cells = covered.reshape(k, STRIDE, k, STRIDE).mean((1, 3)) >= 0.5
    if not cells.any():  # a query thinner than half a cell: its centre cell
        cells[k // 2, k // 2] = True
    return canvas, cells.astype(np.float32)


def _inside(boxes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(..., 4)`` boxes ``(x0, y0, x1, y1)`` clipped to the reference (a query of extreme aspect
    drawn at a large level reaches past its edges; clipping never lowers the IoU with a box
    inside it)."""
    height, width = np.shape(reference)[:2]
    return np.clip(boxes, 0.0, np.array([width, height, width, height], np.float64))


def _box_at(centre_x: float, centre_y: float, side: float, aspect: float) -> np.ndarray:
    """``(x0, y0, x1, y1)`` of geometric-mean side ``side`` and aspect (width / height) ``aspect``."""
    width, height = side * math.sqrt(aspect), side / math.sqrt(aspect)
    return np.array([centre_x - width / 2, centre_y - height / 2, centre_x + width / 2, centre_y + height / 2])


def patch_around(image: np.ndarray, centre_x: float, centre_y: float, scale: float, size: int,
                 fill: np.ndarray) -> np.ndarray:
    """The ``size x size`` patch of ``image`` resized by ``scale`` and centred on ``(centre_x,
    centre_y)`` (pixels of ``image``); what lies outside ``image`` is ``fill``.

    Only the part of the image under the patch is resized (area average when shrinking, as the
    training crops are), so the cost does not grow with the image. (Resizing it as the pyramid's
    levels are, :func:`_level_resize`, was no faster and no better: 0.771 against 0.773 success on
    test pairs 1000-1999, 0.795 either way on 4000-4999; ad hoc, 2026-11-24.)
    """
    height, width = image.shape[:2]
    left, top = centre_x - size / (2 * scale), centre_y - size / (2 * scale)
    x0, y0 = max(int(math.floor(left)), 0), max(int(math.floor(top)), 0)
    x1 = min(int(math.ceil(left + size / scale)), width)
    y1 = min(int(math.ceil(top + size / scale)), height)
    patch = np.empty((size, size, 3), np.uint8)
    patch[:] = fill
    if x1 <= x0 or y1 <= y0:
        return patch
    # where the image part lands in the patch (whole pixels: at most half a patch pixel off)
    px0, py0 = max(int(round((x0 - left) * scale)), 0), max(int(round((y0 - top) * scale)), 0)
    px1 = min(max(int(round((x1 - left) * scale)), px0 + 1), size)
    py1 = min(max(int(round((y1 - top) * scale)), py0 + 1), size)
    px0, py0 = min(px0, px1 - 1), min(py0, py1 - 1)
    part = image[y0:y1, x0:x1]
    shrink = px1 - px0 < part.shape[1] or py1 - py0 < part.shape[0]
    patch[py0:py1, px0:px1] = cv2.resize(part, (px1 - px0, py1 - py0),
                                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return patch


def fill_colour(image: np.ndarray) -> np.ndarray:
    """The mean colour of an image: what the look sees outside it (training crops and padded
    levels alike)."""
    # cv2.mean: numpy's mean over a uint8 axis took 1.4 ms for a 320x213 photograph (0.05 ms here)
    return np.round(cv2.mean(image)[: image.shape[-1]]).astype(np.uint8)


def level_image(reference: np.ndarray, level_side: float, config: LookConfig) -> tuple[np.ndarray, float, float]:
    """The working reference resized so a target of side ``level_side`` is ``config.side`` pixels,
    padded (mean colour) to at least the canvas size.

    :return: the level image and its scale in x and in y (level pixels per reference pixel).
    """
    height, width = reference.shape[:2]
    factor = config.side / level_side
    size = (max(int(round(height * factor)), 1), max(int(round(width * factor)), 1))
    return _padded(_level_resize(reference, size), config), size[1] / width, size[0] / height


def _level_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``size = (height, width)`` for a pyramid level: halved by exact 2x2
    averages while it is at least twice the size, then bilinear (shrinking by less than 2x);
    enlarged bilinearly. An odd last row or column is dropped before a halving (at most one
    pixel of ``image``; the callers' scales ignore it). May return ``image`` itself (levels are
    only read).

    Why: OpenCV's area resize by a factor that is not 1/2 takes its generic path (0.85 ms for a
    320x183 photograph to 280x160), while an exact halving takes its fast path and a bilinear
    resize reads only the 2x2 source pixels around each output pixel, which at factors between
    1/2 and 1 aliases little. Measured with the shipped look (one thread): building the benchmark's
    100 pyramids took 1.54 ms a query with area resizes for the levels that shrink 2x or more,
    0.44 ms this way, 0.93 ms resizing bilinearly to a power-of-two multiple of the size first and
    halving last (closer to an area average: 0.2-0.8 against 3-4 grey levels mean difference on a
    fine texture). Success on FlickrLogos-27-derived test pairs never used before: 0.772 / 0.773 /
    0.774 on test indices 1000-1999 (area / this / bilinear first), 0.799 / 0.801 on 2000-2999
    (this / bilinear first). Earlier, on 400 pairs: 0.758 with bilinear levels under 2x, 0.748
    with area levels throughout (the training crops are area-resized).
    """
    out_h, out_w = size
    while image.shape[0] >= 2 * out_h and image.shape[1] >= 2 * out_w:
        image = _halved(image)
    if image.shape[:2] == (out_h, out_w):
        return image  # possibly the input itself: levels are only read
    return cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)


def _halved(image: np.ndarray) -> np.ndarray:
    """``image`` at half its size by exact 2x2 averages (OpenCV's fast path); an odd last row or
    column is dropped."""
    rows, cols = image.shape[0] // 2, image.shape[1] // 2
    return cv2.resize(image[: 2 * rows, : 2 * cols], (cols, rows), interpolation=cv2.INTER_AREA)


def pyramid(reference: np.ndarray, level_sides: Sequence[float], config: LookConfig) -> list[tuple[np.ndarray, float, float]]:
    """Every level's image and scales, as :func:`level_image` gives them, but a level whose target
    side is twice an earlier level's (every third level at the default ``level_step`` of 2^(1/3))
    is that level's image halved by exact 2x2 averages: nearly the image a direct resize gives
    (an odd last row or column is dropped; the scales account for it), at a small fraction of the
    cost, since a direct resize reads the whole working reference each time (0.1-0.4 ms for a
    320x183 photograph, against 0.02 ms for a halving; measured, one thread).

    :param level_sides: ``(L,)`` target sides in pixels of ``reference``.
    :return: per level, the (padded) level image and its scale in x and in y.
    """
    height, width = reference.shape[:2]
    levels: list[tuple[np.ndarray, float, float]] = []
    unpadded: list[np.ndarray] = []
    for k, side in enumerate(level_sides):
        half_of = next((j for j in range(k) if abs(side / level_sides[j] - 2.0) < 1e-6
                        and min(unpadded[j].shape[:2]) >= 2), None)
        if half_of is None:
            factor = config.side / side
            size = (max(int(round(height * factor)), 1), max(int(round(width * factor)), 1))
            scaled, scale_x, scale_y = _level_resize(reference, size), size[1] / width, size[0] / height
        else:
            _, source_x, source_y = levels[half_of]
            scaled, scale_x, scale_y = _halved(unpadded[half_of]), source_x / 2, source_y / 2
        unpadded.append(scaled)
        levels.append((_padded(scaled, config), scale_x, scale_y))
    return levels


def _padded(scaled: np.ndarray, config: LookConfig) -> np.ndarray:
    """``scaled`` padded with its mean colour to at least the canvas size (the largest levels of
    small references: the kernel must fit)."""
    if min(scaled.shape[:2]) >= config.canvas:
        return scaled
    padded = np.empty((max(scaled.shape[0], config.canvas), max(scaled.shape[1], config.canvas), 3), np.uint8)
    padded[:] = fill_colour(scaled)
    padded[: scaled.shape[0], : scaled.shape[1]] = scaled
    return padded


# ---------------------------------------------------------------------------------- training data
@dataclass(frozen=True)
class TrainingSample:
    """One training example for :meth:`MultiScaleLook.forward` (uint8 arrays, channel-last).

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


def refine_peak(before: float, peak: float, after: float) -> float:
    """Offset in ``[-1/2, 1/2]`` of the vertex of the parabola through three equally spaced
    samples whose middle one is the largest: sub-step precision for a maximum on a grid."""
    curvature = before - 2.0 * peak + after
    if not curvature < 0.0:  # flat or not a maximum: stay on the grid point
        return 0.0
    return float(np.clip(0.5 * (before - after) / curvature, -0.5, 0.5))


# ---------------------------------------------------------------------------------- files
def save_look_file(path: Union[str, Path], look: MultiScaleLook, info: Optional[dict[str, Any]] = None) -> Path:
    """Write a look (weights, :class:`LookConfig`, free-form ``info`` such as the training command
    and its measured success) to ``path`` (``.pt``)."""
    return write_model_file(path, {"kind": "multiscale-look", "state_dict": look.state_dict(),
                                   "config": config_dict(look.config), "info": info or {}})


def config_dict(config: LookConfig) -> dict[str, Any]:
    """``config`` as plain Python values (what :func:`torch.load` with ``weights_only`` reads back)."""
    return asdict(config) | {"channels": list(config.channels)}


def load_look_file(path: Union[str, Path]) -> tuple[MultiScaleLook, dict[str, Any]]:
    """A look and its ``info`` from a file written by :func:`save_look_file`; clear errors for a
    missing or foreign file."""
    saved = read_model_file(path, "look", "train/multiscale_look.py", {"kind", "state_dict", "config", "info"})
    look = MultiScaleLook(LookConfig(**saved["config"]))
    look.load_state_dict(saved["state_dict"])
    return look.eval(), saved["info"]


# ---------------------------------------------------------------------------------- inference
class _LookRuntime:
    """Kernels and score maps for inference: ONNX Runtime when installed (image and kernel sizes
    left free), else PyTorch (the same arithmetic).

    :param onnx: use ONNX Runtime when it is installed; ``False``: PyTorch.
    """

    def __init__(self, look: MultiScaleLook, threads: int, onnx: bool = True) -> None:
        self.look = look.eval()
        self.threads = threads
        #: kernel sessions by query canvas side (the first look's, and the second look's larger one)
        self.kernel_sessions: dict[int, Any] = {}
        #: score sessions by number of images: 1 for the pyramid's levels, and the second look's
        #: batches of patches (ONNX Runtime re-plans a session whenever its input shape changes;
        #: measured: alternating 4 and 3 patches in one session cost 3.5 ms a call, against 2.5 /
        #: 2.1 ms in two)
        self.score_sessions: dict[int, Any] = {}
        self.name = "torch"
        try:
            from agents.cnn_runtime import onnxruntime_available

            if onnx and onnxruntime_available():
                self._score_session(1)
                # The kernel too: a PyTorch call costs about 0.3 ms of overhead even for a 32x32 canvas.
                self._kernel_session(look.config.canvas)
                self.name = "onnxruntime"
        except Exception as err:  # noqa: BLE001  (a speed-up only: PyTorch gives the same scores)
            warnings.warn(f"could not run the look in ONNX Runtime ({err}); using PyTorch", RuntimeWarning, stacklevel=3)
            self.kernel_sessions, self.score_sessions = {}, {}

    def _score_session(self, count: int):
        """The ONNX Runtime session of :class:`_RowScores` for ``count`` images at a time (built once)."""
        if count not in self.score_sessions:
            from agents.cnn_runtime import onnx_session

            cfg, k = self.look.config, self.look.config.kernel_cells
            example = (torch.zeros(count, 3, 4 * cfg.canvas, 4 * cfg.canvas), torch.zeros(1, cfg.channels[3], k, k))
            self.score_sessions[count] = onnx_session(
                _RowScores(self.look), example, ["pixels", "kernel"], ["rows"],
                {"pixels": {2: "height", 3: "width"}, "rows": {2: "cell_rows", 3: "positions_x"}}, self.threads,
                weight_axes={"kernel": {2: "kernel_rows", 3: "kernel_cols"}, "rows": {1: "kernel_rows"}})
        return self.score_sessions[count]

    def _kernel_session(self, side: int):
        """The ONNX Runtime session of :class:`_Kernel` for canvases of ``side`` pixels (built once)."""
        if side not in self.kernel_sessions:
            from agents.cnn_runtime import onnx_session

            k = side // STRIDE
            example = (torch.zeros(1, 3, side, side), torch.zeros(1, k, k))
            self.kernel_sessions[side] = onnx_session(_Kernel(self.look), example, ["canvas", "cells"], ["kernel"],
                                                      {}, self.threads)
        return self.kernel_sessions[side]

    def kernel(self, canvas: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """``(1, C, K, K)`` float32 kernel of one ``(canvas, canvas, 3)`` canvas and its ``(K, K)`` mask."""
        if self.name == "torch":
            with torch.inference_mode():
                return self.look.kernel(_torch_pixels(canvas[None]), torch.from_numpy(cells)[None]).numpy()
        return self._kernel_session(canvas.shape[0]).run(None, {"canvas": _centred_pixels(canvas[None]), "cells": cells[None]})[0]

    def scores(self, images: np.ndarray, kernel: Union[np.ndarray, _KernelPart]) -> np.ndarray:
        """``(N, P, Q)`` mean cosine similarity of a query's kernel at every position of each of
        ``(N, H, W, 3)`` uint8 ``images`` (``P = ceil(H / 4) - K + 1``, likewise ``Q``).

        :param kernel: ``(1, C, K, K)`` (:meth:`kernel`), or its :func:`_trimmed` part (trimmed
            once per query by the searcher). Only the part is correlated, and the positions of the
            whole kernel are kept: the same scores, less work.
        """
        part = kernel if isinstance(kernel, _KernelPart) else _trimmed(kernel)
        weights = part.weights
        if self.name == "torch":
            with torch.inference_mode():
                out = F.conv2d(self.look.features(_torch_pixels(images)), torch.from_numpy(weights))[:, 0].numpy()
        else:
            planes = self._score_session(len(images)).run(None, {"pixels": _centred_pixels(images), "kernel": weights})[0]
            out = _sum_rows(planes)
        rows = out.shape[1] - (part.side - weights.shape[2])
        cols = out.shape[2] - (part.side - weights.shape[3])
        return np.ascontiguousarray(out[:, part.top : part.top + rows, part.left : part.left + cols])


def _torch_pixels(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float32 tensor of pixels 0-255 (the PyTorch path)."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32))


@dataclass
class LookResult(SearchResult):
    """A :class:`~agents.searcher.SearchResult` of the look, plus where it came from.

    ``path`` is the answer alone, its score the mean cosine similarity (clipped to ``[0, 1]``);
    or, where the second look ran, ``(K + 1, 4)``: the ``K`` candidates it compared (grid boxes,
    best first-look score first), then the answer, each scored with the mean of its two looks'
    scores.

    :param level_sides: ``(L,)`` target side of each pyramid level, pixels of the reference as given.
    :param level_scores: ``(L,)`` best first-look score of each level.
    :param positions: positions scored (every level's grid, and the second look's).
    """

    level_sides: np.ndarray = field(default_factory=lambda: np.zeros(0))
    level_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    positions: int = 0


class LookSearcher:
    """Find a query in a photograph with a trained :class:`MultiScaleLook`.

        searcher = LookSearcher.from_pretrained("photo")
        result = searcher.locate(query, reference)      # any sizes; RGB (channel_order="bgr" for cv2)
        x0, y0, x1, y1 = result.box                     # pixels of the reference as given

    :param look: the trained network.
    :param channel_order: ``"rgb"`` or ``"bgr"`` (what ``cv2.imread`` gives).
    :param refine: place the answer between grid positions and between levels by parabolic
        interpolation of the scores (:func:`refine_peak`); ``False``: on the grid.
    :param threads: ONNX Runtime threads (default: ``torch.get_num_threads()``).
    :param smallest: smallest target side searched for, as a fraction of the reference's shorter
        side (default: the look's own, 0.125 for the shipped one). Lower it for targets smaller
        than that; the cost grows about with ``1 / smallest ** 2`` (the largest pyramid level).
    :param largest: largest target side searched for, likewise (default: the look's own, 0.8).
    :param candidates: how many of the first look's best candidates the second look compares
        (local maxima of the score maps whose boxes overlap no better one's by IoU 0.3 or more);
        1: no second look, the answer is the first look's best position.
    :param closer_gap: the second look runs only when the runner-up's first-look score is within
        this of the best's (mean cosine similarities; ``float("inf")``: for every query). When one
        candidate is clearly ahead, looking again did not change the answer's success on the pairs
        this was measured on (README "A learned look for photographs").
    """

    def __init__(self, look: MultiScaleLook, channel_order: str = "rgb", refine: bool = True,
                 threads: Optional[int] = None, smallest: Optional[float] = None,
                 largest: Optional[float] = None, candidates: int = 4, closer_gap: float = 0.05) -> None:
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr' (cv2.imread gives 'bgr'), got {channel_order!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or candidates < 1:
            raise ValueError(f"candidates must be a whole number >= 1 (1: no second look), got {candidates!r}")
        if not closer_gap >= 0.0:  # NaN fails too
            raise ValueError(f"closer_gap must be >= 0 (a difference of mean cosine similarities; float('inf'): "
                             f"always look again), got {closer_gap!r}")
        #: how many of the first look's best candidates the second look compares (1: no second look)
        self.candidates = int(candidates)
        #: the second look runs when the runner-up's score is within this of the best candidate's
        self.closer_gap = float(closer_gap)
        self.look = look.eval()
        #: the look's configuration with this searcher's target range (the network is the same)
        self.config = dataclasses.replace(
            look.config,
            smallest=look.config.smallest if smallest is None else float(smallest),
            largest=look.config.largest if largest is None else float(largest),
        )
        self.channel_order = channel_order
        self.refine = bool(refine)
        self._runtime = _LookRuntime(look, torch.get_num_threads() if threads is None else int(threads))
        batches = self._closer_batches()
        if batches:  # build the second look's usual sessions now, not inside the first queries
            closer = self._closer_config()
            size = closer.canvas + 2 * CLOSER_MARGIN * STRIDE
            kernel = self._runtime.kernel(np.zeros((closer.canvas, closer.canvas, 3), np.uint8),
                                          np.ones((closer.kernel_cells, closer.kernel_cells), np.float32))
            for count in batches:
                self._runtime.scores(np.zeros((count, size, size, 3), np.uint8), kernel)
        self._warned_small = False
        #: where the look runs: "onnxruntime" or "torch"
        self.runtime: str = self._runtime.name

    @classmethod
    def load(cls, path: Union[str, Path], **kwargs) -> "LookSearcher":
        """Load a look file written by ``train/multiscale_look.py``."""
        look, _ = load_look_file(path)
        return cls(look, **kwargs)

    @classmethod
    def from_pretrained(cls, name: str, **kwargs) -> "LookSearcher":
        """Load a look shipped with matchenv: see :data:`agents.pretrained.LOOKS`."""
        from agents.pretrained import look_path

        return cls.load(look_path(name), **kwargs)

    def locate(self, query: np.ndarray, reference: np.ndarray) -> LookResult:
        """Find ``query`` (``(h, w, 3)`` or grayscale uint8, any size) in ``reference``.

        :return: a :class:`LookResult`; its box has the query's aspect, is in pixels of
            ``reference`` as given and is clipped to it (so a box at an edge may be narrower).
        """
        query = prepare_image(query, 3, self.channel_order, "query")
        self._warn_if_smaller_than_searched(query, reference)
        maps, sides, scales, factor, working = self._score_maps(query, reference)
        best = [float(m.max()) for m in maps]
        positions = int(sum(m.size for m in maps))
        level = int(np.argmax(best))  # the best position of the best level
        row, col = np.unravel_index(int(np.argmax(maps[level])), maps[level].shape)
        close = self.candidates > 1 and self._may_have_close_rival(query, maps, sides, scales, best, level, row, col)
        peaks = self._peaks(query, maps, sides, scales) if close else []
        if len(peaks) < 2 or peaks[0][0] - peaks[1][0] > self.closer_gap:  # answer with the best position
            neighbours = (best[level - 1] if level > 0 else None, best[level + 1] if level + 1 < len(maps) else None)
            box = _inside(self._box(query, maps, sides, scales, level, row, col, neighbours) / factor, reference)
            return LookResult(box=box, path=box[None].copy(), scores=np.array([float(np.clip(best[level], 0.0, 1.0))]),
                              level_sides=sides / factor, level_scores=np.array(best), positions=positions)
        # Close runners-up: every candidate looked at again at twice the resolution; the answer is
        # the candidate with the best sum of its two scores.
        kernel = self._closer_kernel(query)
        fill = fill_colour(working)
        closer = self._closer_scores(kernel, working, fill, [(*self._centre(scales, level, row, col), sides[level])
                                                            for _, level, row, col in peaks])
        totals = np.array([p[0] for p in peaks]) + closer.max(axis=(1, 2))
        pick = int(np.argmax(totals))
        _, level, row, col = peaks[pick]
        centre = self._centre(scales, level, row, col)
        neighbours = tuple(self._score_near(maps, scales, other, centre) if 0 <= other < len(maps) else None
                           for other in (level - 1, level + 1))
        box = self._box(query, maps, sides, scales, level, row, col, neighbours)
        box = _inside(self._closer_size(kernel, query.shape[1] / query.shape[0], working, fill, box) / factor, reference)
        grid = _inside(np.stack([self._grid_box(query, sides, scales, p[1], p[2], p[3]) for p in peaks]) / factor, reference)
        scores = np.clip(np.append(totals, totals[pick]) / 2.0, 0.0, 1.0)  # the mean of the two looks' scores
        return LookResult(box=box, path=np.concatenate([grid, box[None]]), scores=scores, level_sides=sides / factor,
                          level_scores=np.array(best), positions=positions + int(closer.size))

    def _centre(self, scales, level: int, row: float, col: float) -> tuple[float, float]:
        """Working-pixel centre of position ``(row, col)`` of ``level``."""
        scale_x, scale_y = scales[level]
        half = self.config.canvas / 2
        return (col * STRIDE + half) / scale_x, (row * STRIDE + half) / scale_y

    def _grid_box(self, query: np.ndarray, sides: np.ndarray, scales, level: int, row: float, col: float) -> np.ndarray:
        """Working-pixel box of the query's aspect at position ``(row, col)`` of ``level``."""
        centre_x, centre_y = self._centre(scales, level, row, col)
        return _box_at(centre_x, centre_y, sides[level], query.shape[1] / query.shape[0])

    def _grid_boxes(self, query: np.ndarray, sides: np.ndarray, scales, levels: np.ndarray, rows: np.ndarray,
                    cols: np.ndarray) -> np.ndarray:
        """:meth:`_grid_box` of many positions at once: ``(N,)`` levels, rows and columns -> ``(N, 4)``."""
        centres = (np.stack([cols, rows], axis=1) * STRIDE + self.config.canvas / 2) / np.asarray(scales, np.float64)[levels]
        aspect = query.shape[1] / query.shape[0]
        extent = sides[levels, None] * np.array([math.sqrt(aspect), 1 / math.sqrt(aspect)]) / 2
        return np.concatenate([centres - extent, centres + extent], axis=1)

    def _box(self, query, maps, sides, scales, level: int, row: int, col: int, neighbours) -> np.ndarray:
        """The answer at ``(row, col)`` of ``level`` (working pixels), placed between positions and
        between levels by :func:`refine_peak` when :attr:`refine` (``neighbours``: the scores of the
        levels below and above, ``None`` where there is none)."""
        score_map = maps[level]
        d_row = d_col = d_level = 0.0
        if self.refine:
            if 0 < row < score_map.shape[0] - 1:
                d_row = refine_peak(score_map[row - 1, col], score_map[row, col], score_map[row + 1, col])
            if 0 < col < score_map.shape[1] - 1:
                d_col = refine_peak(score_map[row, col - 1], score_map[row, col], score_map[row, col + 1])
            if None not in neighbours:
                d_level = refine_peak(neighbours[0], float(score_map[row, col]), neighbours[1])
        centre_x, centre_y = self._centre(scales, level, row + d_row, col + d_col)
        return _box_at(centre_x, centre_y, sides[level] * self.config.level_step ** d_level, query.shape[1] / query.shape[0])

    def _score_near(self, maps, scales, level: int, centre: tuple[float, float]) -> float:
        """The best score of ``level`` within one position of where ``centre`` (working pixels) falls."""
        scale_x, scale_y = scales[level]
        half = self.config.canvas / 2
        col = int(round((centre[0] * scale_x - half) / STRIDE))
        row = int(round((centre[1] * scale_y - half) / STRIDE))
        score_map = maps[level]
        rows = slice(min(max(row - 1, 0), score_map.shape[0] - 1), min(max(row + 2, 1), score_map.shape[0]))
        cols = slice(min(max(col - 1, 0), score_map.shape[1] - 1), min(max(col + 2, 1), score_map.shape[1]))
        return float(score_map[rows, cols].max())

    def _may_have_close_rival(self, query, maps, sides, scales, best: list[float], level: int, row: int, col: int) -> bool:
        """Whether any position scores within :attr:`closer_gap` of the best (``(row, col)`` of
        ``level``) and has a box that overlaps the best's by IoU under 0.3.

        Why: the runner-up :meth:`_peaks` finds is such a position, so where there is none the
        second look cannot run and :meth:`_peaks` (every level's local maxima: 0.3-0.8 ms) is
        skipped. All levels at once: about a third of that (0.09 against 0.30 ms on the
        benchmark's first pairs, one thread).
        """
        top = self._grid_box(query, sides, scales, level, row, col)
        floor = best[level] - self.closer_gap - 1e-9  # the same comparison as locate's, less rounding
        starts = np.cumsum([0] + [m.size for m in maps])
        close = np.flatnonzero(np.concatenate([m.ravel() for m in maps]) >= floor)  # flat indices, level-major
        levels = np.searchsorted(starts, close, side="right") - 1
        rows, cols = np.divmod(close - starts[levels], np.array([m.shape[1] for m in maps])[levels])
        x0, y0, x1, y1 = self._grid_boxes(query, sides, scales, levels, rows, cols).T
        # their IoU with the best's box, written out: geometry.iou's checks cost more than the arithmetic here
        inter = (np.maximum(np.minimum(x1, top[2]) - np.maximum(x0, top[0]), 0.0)
                 * np.maximum(np.minimum(y1, top[3]) - np.maximum(y0, top[1]), 0.0))
        union = (x1 - x0) * (y1 - y0) + (top[2] - top[0]) * (top[3] - top[1]) - inter
        return bool(np.any(inter < (0.3 + 1e-9) * union))

    def _peaks(self, query, maps, sides, scales) -> list[tuple[float, int, int, int]]:
        """Up to :attr:`candidates` ``(score, level, row, col)``, best first: the local maxima of
        every level's scores (3x3), greedily kept when their box overlaps no better one's by IoU
        0.3 or more (neighbouring levels see the same object)."""
        found = []
        for level, score_map in enumerate(maps):
            rows, cols = np.nonzero(score_map >= cv2.dilate(score_map, np.ones((3, 3), np.uint8)))
            found.append(np.stack([score_map[rows, cols], np.full(len(rows), level), rows, cols], axis=1))
        peaks = np.concatenate(found)
        # the best few dozen are plenty to find a few that do not overlap; their boxes at once
        peaks = peaks[np.argsort(-peaks[:, 0], kind="stable")[: 16 * self.candidates]]
        levels = peaks[:, 1].astype(int)
        boxes = self._grid_boxes(query, sides, scales, levels, peaks[:, 2], peaks[:, 3])
        kept: list[int] = []
        corners = boxes.tolist()
        for i, box in enumerate(corners):  # plain floats: a handful of boxes, numpy calls would cost more
            if all(iou_of_floats(*box, *corners[j]) < 0.3 for j in kept):
                kept.append(i)
                if len(kept) == self.candidates:
                    break
        return [(float(peaks[i, 0]), int(levels[i]), int(peaks[i, 2]), int(peaks[i, 3])) for i in kept]

    def _closer_size(self, kernel: _KernelPart, aspect: float, working: np.ndarray,
                     fill: np.ndarray, box: np.ndarray) -> np.ndarray:
        """``box`` (working pixels) resized by the second look: its scores at the box's size and at
        half a level step smaller and larger (same centre), and the parabola through them; a
        half step when the best is at either end.

        :param aspect: the query's width / height. Other parameters: see :meth:`_closer_scores`.
        """
        centre_x, centre_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
        half_step = math.sqrt(self.config.level_step)
        scores = self._closer_scores(kernel, working, fill, [(centre_x, centre_y, side * half_step ** k) for k in (-1, 0, 1)])
        smaller, same, larger = scores.max(axis=(1, 2)).tolist()
        if same >= max(smaller, larger):
            shift = refine_peak(smaller, same, larger)
        else:
            shift = -1.0 if smaller > larger else 1.0
        return _box_at(centre_x, centre_y, side * half_step ** shift, aspect)

    def _closer_batches(self) -> set[int]:
        """How many patches the second look's calls take (each count has its own session, built
        when the searcher is): the candidates, and the three sizes of the answer; none without
        a second look."""
        return {self.candidates, 3} if self.candidates > 1 else set()

    def _closer_config(self) -> LookConfig:
        """The look's configuration for the second look: the query drawn :data:`CLOSER_ZOOM` times larger."""
        return dataclasses.replace(self.config, side=CLOSER_ZOOM * self.config.side, canvas=CLOSER_ZOOM * self.config.canvas)

    def _closer_kernel(self, query: np.ndarray) -> _KernelPart:
        """The (trimmed) kernel of the query drawn for the second look (:meth:`_closer_config`)."""
        return _trimmed(self._runtime.kernel(*template_canvas(query, self._closer_config())))

    def _closer_scores(self, kernel: _KernelPart, working: np.ndarray, fill: np.ndarray,
                       places: Sequence[tuple[float, float, float]]) -> np.ndarray:
        """``(K, m, m)`` scores of the query drawn at twice the look's size against patches of the
        working reference, each centred on a place and scaled so that a target of the place's side
        is drawn at that size too (``m = 5``: the centre and two cells either way, so a candidate
        one coarse position off still meets the query).

        :param kernel: the query's kernel for the second look (:meth:`_closer_kernel`).
        :param fill: the working reference's mean colour (what lies outside it).
        :param places: ``K`` ``(centre x, centre y, target side)`` in working pixels.
        """
        size = CLOSER_ZOOM * self.config.canvas + 2 * CLOSER_MARGIN * STRIDE
        closer_side = CLOSER_ZOOM * self.config.side
        patches = np.stack([patch_around(working, x, y, closer_side / side, size, fill) for x, y, side in places])
        return self._runtime.scores(patches, kernel)

    def _warn_if_smaller_than_searched(self, query: np.ndarray, reference: np.ndarray) -> None:
        """Once per searcher: a query under half the smallest target side searched for most often
        means a target the pyramid cannot size (its answer would be far too large); say so, and
        what to pass. (Not an error: a query may be drawn at another scale than its target.)"""
        if self._warned_small:
            return
        query_side = math.sqrt(query.shape[0] * query.shape[1])
        short_side = min(np.shape(reference)[:2])
        fraction = query_side / max(short_side, 1)
        if fraction < 0.5 * self.config.smallest:
            self._warned_small = True
            warnings.warn(
                f"the query ({query_side:.0f} px) is {fraction:.1%} of the reference's shorter side ({short_side} px), "
                f"but the look searches for targets of {self.config.smallest:.1%} to {self.config.largest:.0%} of it: "
                f"if the target is about the query's size, pass smallest={max(0.5 * fraction, 0.01):.3f} to "
                "LookSearcher (slower: the cost grows about with 1 / smallest ** 2)",
                UserWarning, stacklevel=3)

    def score_maps(self, query: np.ndarray, reference: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Every level's scores, for pictures and analysis.

        :return: one ``(P, Q)`` map of mean cosine similarities per level (position ``(i, j)``:
            the query's canvas centred at level pixel ``(4 j + canvas / 2, 4 i + canvas / 2)``),
            and ``(L,)`` the levels' target sides in pixels of ``reference`` as given.
        """
        maps, sides, _, factor, _ = self._score_maps(prepare_image(query, 3, self.channel_order, "query"), reference)
        return maps, sides / factor

    def _score_maps(self, query: np.ndarray, reference: np.ndarray):
        """Score maps, level sides and scales (working pixels), the working-size factor and the
        working reference."""
        reference = prepare_image(reference, 3, self.channel_order, "reference")
        working, factor = to_working_size(reference, self.config.max_side)
        kernel = _trimmed(self._runtime.kernel(*template_canvas(query, self.config)))
        maps, scales = [], []
        for image, scale_x, scale_y in pyramid(working, self.config.level_sides(min(working.shape[:2])), self.config):
            maps.append(self._runtime.scores(image[None], kernel)[0])
            scales.append((scale_x, scale_y))
        # the target side each level's kernel matches, from the level's actual scales (sizes are rounded)
        sides = self.config.side / np.sqrt(np.prod(scales, axis=1))
        return maps, sides, scales, factor, working

    def locate_batch(self, queries: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> list[LookResult]:
        """:meth:`locate` for each pair (references of any sizes, so one at a time)."""
        if len(queries) != len(references):
            raise ValueError(f"got {len(queries)} queries but {len(references)} references: pass one reference per query")
        return [self.locate(q, r) for q, r in zip(queries, references)]
