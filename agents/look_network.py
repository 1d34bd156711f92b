"""The look's network: :class:`LookConfig` (architecture and pyramid), the feature CNN
:class:`LookFeatures` and :class:`MultiScaleLook` (features and a learned softmax temperature)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from matchenv.agents.look_correlation import mean_over_cells
from matchenv.datasets.photos import DEFAULT_MAX_SIDE

#: pixels per feature cell of :class:`LookFeatures` (two stride-2 convolutions).
STRIDE = 4


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

        :param canvas: ``(N, 3, canvas, canvas)`` pixels in 0-255 (:func:`~matchenv.agents.look_images.template_canvas`).
        :param cells: ``(N, K, K)`` float cell mask (1 where the query is), ``K = canvas / 4``.
        :return: ``(N, C, K, K)``: the query's features on its cells divided by the number of
            cells, so that correlating it gives the mean cosine similarity in ``[-1, 1]``.
        """
        return mean_over_cells(self.features(canvas), cells)

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
