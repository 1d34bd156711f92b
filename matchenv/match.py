"""The one result type every searcher and baseline returns through :func:`matchenv.load`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class Match:
    """Where a model found the query in the reference.

    :param box: ``(4,)`` float64 ``(x0, y0, x1, y1)`` in pixels of the reference as given
        (``x1``/``y1`` exclusive: the box of an ``h x w`` query placed at ``(x, y)`` is
        ``(x, y, x + w, y + h)``). Always inside the reference.
    :param score: the model's confidence in its answer; what it measures depends on the model
        (:func:`matchenv.list_models` says, column ``score``); higher is better.
    :param found: whether the model judges the query to be in the reference at all, for models
        with a calibrated found decision (``"photo"``); ``None`` where the model has none.
    :param evaluated: windows or positions the model compared with the query to answer (its cost:
        a few windows for a search, every position for an exhaustive matcher).
    :param path: ``(T, 4)`` float64 windows the search placed, in order (``None`` for models
        that do not place windows one after another).
    :param model: the name (or file) the searcher was loaded from.
    :param raw: the underlying searcher's own result, with its model-specific fields (not
        compared, not printed).
    """

    box: np.ndarray
    score: float
    found: Optional[bool]
    evaluated: int
    path: Optional[np.ndarray] = None
    model: str = ""
    raw: Any = field(default=None, compare=False, repr=False)

    @property
    def xywh(self) -> np.ndarray:
        """``(4,)`` float64 ``(x, y, width, height)``: OpenCV's ``Rect`` order."""
        x0, y0, x1, y1 = self.box
        return np.array([x0, y0, x1 - x0, y1 - y0], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (lists and plain numbers)."""
        return {
            "model": self.model,
            "box": [float(v) for v in self.box],
            "xywh": [float(v) for v in self.xywh],
            "score": float(self.score),
            "found": self.found,
            "evaluated": int(self.evaluated),
            "path": None if self.path is None else np.asarray(self.path, dtype=float).tolist(),
        }
