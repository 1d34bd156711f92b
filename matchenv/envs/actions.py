"""Action spaces of :class:`~matchenv.envs.template_search.TemplateSearchEnv` and how they move the window.

Each action type turns an action into the next window *centre* (pixels) and *scale* (a factor
on the dataset's nominal window size), given the current ones:

* ``"absolute"`` (default): ``Box(-1, 1, (2,))``, or ``(3,)`` when the window scale varies.
  ``(x, y)`` place the window anywhere: -1 puts it against the left/top edge, +1 against the
  right/bottom edge, 0 in the middle (the range covers every position at which the whole window
  fits). The optional third component picks the scale log-uniformly in ``scale_range``.
* ``"relative"``: same shape; ``(dx, dy)`` move the centre by up to ``max_step`` of the
  reference width/height, the third component multiplies the scale by up to ``max_zoom``.
* ``"discrete"``: ``Discrete(9)`` (``Discrete(11)`` with scale): stay; a small move of
  ``step`` of the reference size up, down, left or right; a large move (3 steps) in the same
  four directions; and, with scale, zoom in / zoom out by ``max_zoom``.

Continuous actions outside ``[-1, 1]`` are clipped; NaN or infinite actions raise ``ValueError``.
"""

from __future__ import annotations

import abc
import math
from typing import Optional, Sequence

import numpy as np
from gymnasium import spaces

ACTION_TYPES = ("absolute", "relative", "discrete")


class WindowAction(abc.ABC):
    """Maps actions to window placements. ``scale_range=None`` means a fixed window size."""

    space: spaces.Space

    def __init__(self, scale_range: Optional[tuple[float, float]]) -> None:
        self.scale_range = scale_range

    @property
    def has_scale(self) -> bool:
        return self.scale_range is not None

    def clamp_scale(self, scale: float) -> float:
        if self.scale_range is None:
            return 1.0
        return float(min(max(scale, self.scale_range[0]), self.scale_range[1]))

    @abc.abstractmethod
    def apply(
        self, action: np.ndarray, center: tuple[float, float], scale: float, image_size: tuple[int, int],
        window_size: tuple[int, int],
    ) -> tuple[float, float, float]:
        """Return the next ``(center_x, center_y, scale)`` (pixels, pixels, factor).

        :param action: a member of :attr:`space` (validated by the caller).
        :param center: current window centre in pixels ``(x, y)``.
        :param scale: current scale factor on ``window_size``.
        :param image_size: reference ``(height, width)`` in pixels.
        :param window_size: nominal window ``(height, width)`` in pixels.
        """

    def _box_space(self) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, shape=(3 if self.has_scale else 2,), dtype=np.float32)

    def _check_finite(self, action) -> np.ndarray:
        arr = np.asarray(action, dtype=np.float64).reshape(-1)
        if arr.shape != self.space.shape:
            raise ValueError(f"expected an action of shape {self.space.shape}, got shape {np.shape(action)}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"action contains NaN or inf: {np.asarray(action).tolist()}; actions must be finite")
        return np.clip(arr, -1.0, 1.0)


class AbsoluteAction(WindowAction):
    def __init__(self, scale_range: Optional[tuple[float, float]]) -> None:
        super().__init__(scale_range)
        self.space = self._box_space()

    def apply(self, action, center, scale, image_size, window_size):
        return absolute_window_center(self._check_finite(action), image_size, window_size, self.scale_range, scale)


def absolute_window_center(
    action: Sequence[float],
    image_size: tuple[int, int],
    window_size: tuple[float, float],
    scale_range: Optional[tuple[float, float]],
    scale: float = 1.0,
) -> tuple[float, float, float]:
    """Where an ``"absolute"`` action puts the window: ``(center_x, center_y, scale)``.

    ``(x, y)`` in ``[-1, 1]`` span the centres that keep the window inside the image; with a
    ``scale_range`` the third component picks the scale log-uniformly in it (else ``scale`` is
    kept). Plain Python arithmetic on a finite, clipped action: the env and the inference API
    (one window at a time, where numpy's per-call overhead would dominate) share it.
    """
    if scale_range is not None:
        lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
        scale = math.exp(lo + (action[2] + 1.0) / 2.0 * (hi - lo))
    img_h, img_w = image_size
    win_w = min(window_size[1] * scale, img_w)
    win_h = min(window_size[0] * scale, img_h)
    cx = win_w / 2 + (action[0] + 1.0) / 2.0 * (img_w - win_w)
    cy = win_h / 2 + (action[1] + 1.0) / 2.0 * (img_h - win_h)
    return float(cx), float(cy), float(scale)


class RelativeAction(WindowAction):
    def __init__(self, scale_range: Optional[tuple[float, float]], max_step: float = 0.25, max_zoom: float = 1.5):
        super().__init__(scale_range)
        if not (max_step > 0 and max_zoom > 1):
            raise ValueError(f"need max_step > 0 and max_zoom > 1, got {max_step}, {max_zoom}")
        self.max_step, self.max_zoom = float(max_step), float(max_zoom)
        self.space = self._box_space()

    def apply(self, action, center, scale, image_size, window_size):
        a = self._check_finite(action)
        img_h, img_w = image_size
        cx = center[0] + a[0] * self.max_step * img_w
        cy = center[1] + a[1] * self.max_step * img_h
        if self.has_scale:
            scale = self.clamp_scale(scale * self.max_zoom ** a[2])
        return float(cx), float(cy), float(scale)


# (dx, dy, zoom exponent) per discrete action, in units of `step` and `max_zoom`.
_MOVES = [(0, 0, 0), (0, -1, 0), (0, 1, 0), (-1, 0, 0), (1, 0, 0), (0, -3, 0), (0, 3, 0), (-3, 0, 0), (3, 0, 0)]
_ZOOMS = [(0, 0, -1), (0, 0, 1)]
DISCRETE_ACTION_NAMES = [
    "stay", "up", "down", "left", "right", "up_far", "down_far", "left_far", "right_far", "zoom_in", "zoom_out",
]


class DiscreteAction(WindowAction):
    def __init__(self, scale_range: Optional[tuple[float, float]], step: float = 0.125, max_zoom: float = 1.25):
        super().__init__(scale_range)
        if not (step > 0 and max_zoom > 1):
            raise ValueError(f"need step > 0 and max_zoom > 1, got {step}, {max_zoom}")
        self.step, self.max_zoom = float(step), float(max_zoom)
        self.moves = np.array(_MOVES + (_ZOOMS if self.has_scale else []), dtype=np.float64)
        self.space = spaces.Discrete(len(self.moves))

    def apply(self, action, center, scale, image_size, window_size):
        arr = np.asarray(action)
        value = arr.item() if arr.size == 1 else None
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
            raise ValueError(f"a discrete action is one integer in [0, {self.space.n}), got {action!r}")
        index = int(value)
        if not 0 <= index < self.space.n:
            raise ValueError(f"discrete action {index} is out of range [0, {self.space.n}): {DISCRETE_ACTION_NAMES[: self.space.n]}")
        dx, dy, dz = self.moves[index]
        img_h, img_w = image_size
        cx = center[0] + dx * self.step * img_w
        cy = center[1] + dy * self.step * img_h
        if self.has_scale:
            scale = self.clamp_scale(scale * self.max_zoom**dz)
        return float(cx), float(cy), float(scale)


def make_window_action(action_type: str, scale_range: Optional[tuple[float, float]], **kwargs) -> WindowAction:
    """Build the :class:`WindowAction` for ``action_type`` (one of :data:`ACTION_TYPES`)."""
    classes = {"absolute": AbsoluteAction, "relative": RelativeAction, "discrete": DiscreteAction}
    if action_type not in classes:
        raise ValueError(f"unknown action_type {action_type!r}; choose one of {ACTION_TYPES}")
    return classes[action_type](scale_range, **kwargs)
