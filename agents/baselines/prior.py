"""The blind control: a box at the reference's centre, placed without looking at either image.

Not a matcher but the floor every matcher must clear. Where targets are large and often central
(photographs of logos: on FlickrLogos-27 the median logo side is 0.59 of the photograph's shorter
side) a centred box of the right size already overlaps many targets by IoU > 0.5, and a method that
scores about as well has learned the dataset's layout, not where the query is. On Noisy MNIST
(a small digit anywhere on the canvas) it scores near zero.

Its one parameter, the box's size relative to the nominal window, is chosen on *training* pairs
(:meth:`CentreBox.fit`), never on the test pairs it is evaluated on.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from matchenv.agents.baselines.base import Matcher, MatchResult, check_pair
from matchenv.datasets.base import SearchPair
from matchenv.datasets.photos import nominal_window
from matchenv.geometry import iou

#: Box sizes :meth:`CentreBox.fit` tries, as factors on the nominal window (geometric, 0.25-4).
FIT_SCALES: tuple[float, ...] = tuple(round(2 ** (k / 4), 4) for k in range(-8, 9))


class CentreBox(Matcher):
    """Answers every query with the same box at the reference's centre.

    The box has the query's aspect and ``scale`` times the nominal window's side: the query's own
    size for fixed-size data (``window_fraction=None``, Noisy MNIST), or, for photographs, a
    square-equivalent side of ``window_fraction`` times the reference's shorter side (the agents'
    nominal window, see :func:`matchenv.datasets.photos.nominal_window`). It is clipped to the
    reference.

    :param scale: factor on the nominal window's side (> 0).
    :param window_fraction: the dataset's ``window_fraction`` (photographs), or ``None``.
    """

    name = "centre-box"
    features = "none: no image is looked at (box size fitted on training pairs)"

    def __init__(self, scale: float = 1.0, window_fraction: Optional[float] = None) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if window_fraction is not None and not 0 < window_fraction <= 1:
            raise ValueError(f"window_fraction must be in (0, 1] or None, got {window_fraction}")
        self.scale = float(scale)
        self.window_fraction = window_fraction

    def box(self, query_shape: Sequence[int], reference_shape: Sequence[int]) -> np.ndarray:
        """``(4,)`` the answer ``(x0, y0, x1, y1)`` for a query and reference of these ``(h, w, ...)`` shapes."""
        if self.window_fraction is None:
            h, w = float(query_shape[0]), float(query_shape[1])
        else:
            h, w = nominal_window(query_shape, reference_shape, self.window_fraction)
        height, width = float(reference_shape[0]), float(reference_shape[1])
        h, w = min(h * self.scale, height), min(w * self.scale, width)
        return np.array([(width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2])

    def locate(self, query: np.ndarray, reference: np.ndarray) -> MatchResult:
        query, reference = check_pair(query, reference)
        return MatchResult(box=self.box(query.shape, reference.shape), score=0.0, evaluated=0)

    @classmethod
    def fit(
        cls, pairs: Iterable[SearchPair], window_fraction: Optional[float] = None, scales: Sequence[float] = FIT_SCALES
    ) -> "CentreBox":
        """The centred box whose ``scale`` (from ``scales``) has the highest success (IoU > 0.5) on
        ``pairs``; ties go to the higher mean IoU, then to the smaller scale.

        :param pairs: *training* pairs (fitting on the pairs it is then scored on would be testing on
            the training set).
        """
        pairs = list(pairs)
        if not pairs:
            raise ValueError("CentreBox.fit needs at least one training pair")
        best, best_key = None, None
        for scale in sorted(scales):
            prior = cls(scale, window_fraction)
            overlaps = np.array([iou(prior.box(p.matcher_query.shape, p.reference.shape), p.target_box) for p in pairs])
            key = (float(np.mean(overlaps > 0.5)), float(np.mean(overlaps)))
            if best_key is None or key > best_key:
                best, best_key = prior, key
        return best

    def __repr__(self) -> str:
        return f"CentreBox(scale={self.scale}, window_fraction={self.window_fraction})"
