"""A learned multi-scale look for photographs: where, and how large, is the query in the reference?

The photograph agents trained from scratch by reinforcement learning did not learn to *match*
(README "Photographs"): their 32x32 thumbnail of the reference does not show where a small,
re-photographed region is. The look is the fully convolutional alternative (the idea of
SiamFC, Bertinetto et al., ECCVW 2016, with a scale pyramid):

* one small CNN (:class:`~matchenv.agents.look_network.LookFeatures`, stride 4, unit-length features per
  cell) embeds the query and the reference;
* the query is drawn on a square **canvas** with its aspect kept and its geometric-mean side
  scaled to ``side`` pixels (:func:`~matchenv.agents.look_images.template_canvas`); its feature cells that
  hold the query (the **cell mask**) are the correlation kernel;
* the reference is resized once per **level** of a pyramid of target sizes (``smallest`` to
  ``largest`` of its shorter side, ``level_step`` apart; :func:`~matchenv.agents.look_images.pyramid`), so
  that a target of that level's size would be ``side`` pixels; the kernel slides over every
  level's feature map: the score of a position is the mean cosine similarity of the query's cells
  with the reference's cells under it;
* the answer is the best position of the best level, refined between positions and between
  levels by a parabola through the neighbours (:func:`~matchenv.agents.look_peaks.refine_peak`);
* unless one candidate is clearly ahead: then a **second look** compares the few best candidates
  (distinct local maxima) with the same network at twice the resolution
  (:data:`CLOSER_ZOOM`), and the best sum of both scores wins.

Training (``train/multiscale_look.py``) needs no labels:
:func:`~matchenv.agents.look_training.training_sample` turns any
:class:`~matchenv.datasets.base.SearchPair` (e.g. of
:class:`~matchenv.datasets.self_supervised.SelfSupervisedPhotos`) into the query's canvas and
crops of the reference at the true level and its neighbours, and the loss is a softmax
cross-entropy over every position of every level, so the network learns *where* and *which size*
at once. It is an exhaustive search over a coarse grid (thousands of positions), not a sequential
search; :class:`LookSearcher` is its inference API.

This module holds the searcher (:class:`LookSearcher`, :class:`LookResult`, the second look) and
re-exports the look's public names; the parts are in their own modules:
:mod:`matchenv.agents.look_network` (the network and its config), :mod:`matchenv.agents.look_correlation` (kernels
and correlation), :mod:`matchenv.agents.look_images` (query canvas, pyramid levels, patches),
:mod:`matchenv.agents.look_runtime` (ONNX Runtime or PyTorch at inference), :mod:`matchenv.agents.look_peaks`
(candidates and boxes from score maps), :mod:`matchenv.agents.look_training` (training examples) and
:mod:`matchenv.agents.look_files` (look files).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from matchenv.agents.look_correlation import KernelPart, trimmed_kernel
from matchenv.agents.look_files import config_dict, load_look_file, save_look_file
from matchenv.agents.look_images import fill_colour, level_image, patch_around, pyramid, template_canvas
from matchenv.agents.look_network import STRIDE, LookConfig, LookFeatures, MultiScaleLook
from matchenv.agents.look_peaks import (box_at, clip_to_reference, distinct_peaks, has_close_rival, position_centre,
                               refine_peak, score_near)
from matchenv.agents.look_runtime import LookRuntime
from matchenv.agents.look_training import TrainingSample, training_sample
from matchenv.agents.searcher import MIN_QUERY_SIDE, SearchResult, prepare_image
from matchenv.datasets.photos import to_working_size

__all__ = [
    # the searcher (this module)
    "CLOSER_MARGIN", "CLOSER_ZOOM", "LookResult", "LookSearcher",
    # re-exported from the look's other modules, for `from matchenv.agents.multiscale_look import ...`
    "STRIDE", "LookConfig", "LookFeatures", "MultiScaleLook", "TrainingSample", "config_dict", "fill_colour",
    "level_image", "load_look_file", "patch_around", "pyramid", "refine_peak", "save_look_file",
    "template_canvas", "training_sample",
]

#: the second look draws the query and the candidates this many times larger than the first
CLOSER_ZOOM = 2
#: cells of the second look's patches around a candidate's centre, each way (its map is 2 * this + 1 wide)
CLOSER_MARGIN = 2


@dataclass
class LookResult(SearchResult):
    """A :class:`~matchenv.agents.searcher.SearchResult` of the look, plus where it came from.

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
    """Find a query in a photograph with a trained :class:`~matchenv.agents.look_network.MultiScaleLook`.

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
        self._runtime = LookRuntime(look, torch.get_num_threads() if threads is None else int(threads))
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
        """Load a look shipped with matchenv: see :data:`matchenv.agents.pretrained.LOOKS`."""
        from matchenv.agents.pretrained import look_path

        return cls.load(look_path(name), **kwargs)

    def locate(self, query: np.ndarray, reference: np.ndarray) -> LookResult:
        """Find ``query`` (``(h, w, 3)`` or grayscale uint8, any size from
        :data:`~matchenv.agents.searcher.MIN_QUERY_SIDE` (4) pixels a side) in ``reference`` (any size: the
        look searches for the target at many scales, so the query need not fit in the reference).

        :return: a :class:`LookResult`; its box has the query's aspect, is in pixels of
            ``reference`` as given and is clipped to it (so a box at an edge may be narrower).
        :raises ValueError: a query under 4 px a side, or an image that is not one (a float one
            with NaN values, for one).
        """
        query = prepare_image(query, 3, self.channel_order, "query", MIN_QUERY_SIDE)
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
            box = clip_to_reference(self._box(query, maps, sides, scales, level, row, col, neighbours) / factor, reference)
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
        neighbours = tuple(score_near(maps[other], scales[other], centre, self.config.canvas)
                           if 0 <= other < len(maps) else None for other in (level - 1, level + 1))
        box = self._box(query, maps, sides, scales, level, row, col, neighbours)
        box = self._closer_size(kernel, query.shape[1] / query.shape[0], working, fill, box)
        box = clip_to_reference(box / factor, reference)
        grid = np.stack([self._grid_box(query, sides, scales, p[1], p[2], p[3]) for p in peaks])
        grid = clip_to_reference(grid / factor, reference)
        scores = np.clip(np.append(totals, totals[pick]) / 2.0, 0.0, 1.0)  # the mean of the two looks' scores
        return LookResult(box=box, path=np.concatenate([grid, box[None]]), scores=scores, level_sides=sides / factor,
                          level_scores=np.array(best), positions=positions + int(closer.size))

    def _centre(self, scales, level: int, row: float, col: float) -> tuple[float, float]:
        """Working-pixel centre of position ``(row, col)`` of ``level`` (:func:`position_centre`)."""
        return position_centre(scales[level], row, col, self.config.canvas)

    def _grid_box(self, query: np.ndarray, sides: np.ndarray, scales, level: int, row: float, col: float) -> np.ndarray:
        """Working-pixel box of the query's aspect at position ``(row, col)`` of ``level``."""
        centre_x, centre_y = self._centre(scales, level, row, col)
        return box_at(centre_x, centre_y, sides[level], query.shape[1] / query.shape[0])

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
        return box_at(centre_x, centre_y, sides[level] * self.config.level_step ** d_level, query.shape[1] / query.shape[0])

    def _may_have_close_rival(self, query, maps, sides, scales, best: list[float], level: int, row: int, col: int) -> bool:
        """Whether any position scores within :attr:`closer_gap` of the best (``(row, col)`` of
        ``level``) and has a box that overlaps the best's by IoU under 0.3: where none does, the
        second look cannot run and :meth:`_peaks` is skipped (:func:`has_close_rival`)."""
        return has_close_rival(maps, sides, scales, query.shape[1] / query.shape[0], self.config.canvas, best,
                               level, row, col, self.closer_gap)

    def _peaks(self, query, maps, sides, scales) -> list[tuple[float, int, int, int]]:
        """Up to :attr:`candidates` ``(score, level, row, col)``, best first: the best local maxima
        of the levels' scores whose boxes overlap no better one's (:func:`distinct_peaks`)."""
        return distinct_peaks(maps, sides, scales, query.shape[1] / query.shape[0], self.config.canvas,
                              self.candidates)

    def _closer_size(self, kernel: KernelPart, aspect: float, working: np.ndarray,
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
        return box_at(centre_x, centre_y, side * half_step ** shift, aspect)

    def _closer_batches(self) -> set[int]:
        """How many patches the second look's calls take (each count has its own session, built
        when the searcher is): the candidates, and the three sizes of the answer; none without
        a second look."""
        return {self.candidates, 3} if self.candidates > 1 else set()

    def _closer_config(self) -> LookConfig:
        """The look's configuration for the second look: the query drawn :data:`CLOSER_ZOOM` times larger."""
        return dataclasses.replace(self.config, side=CLOSER_ZOOM * self.config.side, canvas=CLOSER_ZOOM * self.config.canvas)

    def _closer_kernel(self, query: np.ndarray) -> KernelPart:
        """The (trimmed) kernel of the query drawn for the second look (:meth:`_closer_config`)."""
        return trimmed_kernel(self._runtime.kernel(*template_canvas(query, self._closer_config())))

    def _closer_scores(self, kernel: KernelPart, working: np.ndarray, fill: np.ndarray,
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
        query = prepare_image(query, 3, self.channel_order, "query", MIN_QUERY_SIDE)
        maps, sides, _, factor, _ = self._score_maps(query, reference)
        return maps, sides / factor

    def _score_maps(self, query: np.ndarray, reference: np.ndarray):
        """Score maps, level sides and scales (working pixels), the working-size factor and the
        working reference."""
        reference = prepare_image(reference, 3, self.channel_order, "reference")
        working, factor = to_working_size(reference, self.config.max_side)
        kernel = trimmed_kernel(self._runtime.kernel(*template_canvas(query, self.config)))
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
