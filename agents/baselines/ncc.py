"""Exhaustive pixel matchers on OpenCV's ``matchTemplate``: zero-mean NCC and normalised SSD.

These are the textbook baselines (e.g. Lewis, "Fast Normalized Cross-Correlation", Vision
Interface 1995; Brunelli, *Template Matching Techniques in Computer Vision*, Wiley 2009, ch. 3):
every query-size window of the reference is scored, so their cost is the number of positions.
"""

from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

from matchenv.agents.baselines.base import MIN_QUERY_SIDE, Matcher, MatchResult, check_pair
from matchenv.geometry import resize_image

#: ``method`` name -> (OpenCV flag, benchmark name, whether lower scores are better).
_METHODS: dict[str, tuple[int, str, bool]] = {
    "ccoeff_normed": (cv2.TM_CCOEFF_NORMED, "ncc", False),
    "sqdiff_normed": (cv2.TM_SQDIFF_NORMED, "ssd", True),
}

#: A scale grid for :class:`OpenCVMatcher`: the Noisy MNIST ``scale_range`` (0.7, 1.5) in steps of
#: 0.1, which keeps 1.0 (the nominal size) in the grid.
DEFAULT_SCALES: tuple[float, ...] = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)


class OpenCVMatcher(Matcher):
    """Template matching with ``cv2.matchTemplate``, optionally over a grid of query scales.

    - ``method="ccoeff_normed"`` (benchmark name ``"ncc"``): ``TM_CCOEFF_NORMED``, the zero-mean
      normalised cross-correlation of the query and each window, in ``[-1, 1]``; invariant to an
      affine change of intensity (brightness offset and contrast gain) of the window.
    - ``method="sqdiff_normed"`` (benchmark name ``"ssd"``): ``TM_SQDIFF_NORMED``, the sum of squared
      differences divided by ``sqrt(sum q^2 * sum w^2)``, in ``[0, 1]`` (0 is a perfect match); only
      invariant to a contrast gain. ``score`` is ``1 - distance`` so that higher is better.

    Colour pairs are matched on all three channels at once (OpenCV sums the per-channel
    correlations), grayscale pairs on their single channel.

    :param method: ``"ccoeff_normed"`` or ``"sqdiff_normed"``.
    :param scales: ``None`` to match at the query's own size; otherwise a sequence of factors
        (e.g. :data:`DEFAULT_SCALES`, ``0.7 ... 1.5``) by which the query is resized before matching.
        Scales at which the resized query would not fit in the reference (or would be smaller
        than 2 px) are skipped. The returned box has the size of the query at the winning scale.
        Both methods are normalised per window, so their scores are comparable across scales.
    """

    def __init__(self, method: str = "ccoeff_normed", scales: Optional[Sequence[float]] = None) -> None:
        if method not in _METHODS:
            raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(_METHODS)}")
        if scales is not None:
            scales = tuple(float(s) for s in scales)
            if not scales or any(not np.isfinite(s) or s <= 0 for s in scales):
                raise ValueError(f"scales must be a non-empty sequence of positive factors, got {scales}")
        self.method = method
        self.scales = scales
        self._flag, base_name, self._lower_is_better = _METHODS[method]
        self.name = base_name if scales is None else f"{base_name}-multiscale"

    def locate(self, query: np.ndarray, reference: np.ndarray) -> MatchResult:
        """Find ``query`` in ``reference``.

        :param query: ``(h, w)`` / ``(h, w, 1)`` grayscale or ``(h, w, 3)`` colour uint8 template.
        :param reference: ``(H, W[, C])`` uint8 image at least as large as the query.
        :return: the best window over all positions (and scales), as a box in reference pixels;
            ``evaluated`` is the number of positions scored, summed over the scales tried.
        :raises ValueError: for invalid images (see :func:`~matchenv.agents.baselines.base.check_pair`) or
            when no scale of the query fits in the reference.
        """
        q, r = check_pair(query, reference)
        ref = _for_opencv(r)
        img_h, img_w = r.shape[:2]
        best: Optional[tuple[float, float, int, int, int, int]] = None  # (score, scale, x, y, w, h)
        evaluated = 0
        for scale in self.scales if self.scales is not None else (1.0,):
            qh, qw = int(round(q.shape[0] * scale)), int(round(q.shape[1] * scale))
            if qh > img_h or qw > img_w or min(qh, qw) < MIN_QUERY_SIDE:
                continue  # the resized query does not fit (or is too small to carry a pattern)
            templ = _for_opencv(resize_image(q, (qh, qw)) if (qh, qw) != q.shape[:2] else q)
            result = cv2.matchTemplate(ref, templ, self._flag)
            # OpenCV sets flat windows to 0 (NCC) / 1 (SSD); guard against any NaN all the same,
            # mapping it to the worst possible score rather than letting argmax pick it.
            scores = 1.0 - result if self._lower_is_better else result
            scores = np.nan_to_num(scores, nan=-np.inf)
            evaluated += scores.size
            y, x = np.unravel_index(int(np.argmax(scores)), scores.shape)
            score = float(scores[y, x])
            if best is None or score > best[0]:
                best = (score, scale, int(x), int(y), qw, qh)
        if best is None:  # only with scales: check_pair lets through queries that fit at their own size
            raise ValueError(
                f"no scale in {self.scales} makes the {q.shape[1]}x{q.shape[0]} query both fit in the {img_w}x{img_h} "
                f"reference and keep at least {MIN_QUERY_SIDE} px a side (a smaller window has no pattern to "
                "correlate): pass scales that keep it between those sizes, or scales=None for its own size"
            )
        score, _, x, y, w, h = best
        return MatchResult(box=np.array([x, y, x + w, y + h], dtype=np.float64), score=score, evaluated=evaluated)

    def __repr__(self) -> str:
        return f"OpenCVMatcher(method={self.method!r}, scales={self.scales})"


def _for_opencv(image: np.ndarray) -> np.ndarray:
    """Channel-last uint8 -> what ``matchTemplate`` takes: 2-D for one channel, contiguous."""
    return np.ascontiguousarray(image[:, :, 0] if image.shape[2] == 1 else image)
