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

from matchenv.geometry import absolute_centres, is_torch_tensor, place_windows, window_locations

ACTION_TYPES = ("absolute", "relative", "discrete")


class WindowAction(abc.ABC):
    """Maps actions to window placements. ``scale_range=None`` means a fixed window size.

    :meth:`move` is the batched map (the vector env calls it for a whole batch);
    :meth:`apply` checks one action and moves one window with it.
    """

    space: spaces.Space

    def __init__(self, scale_range: Optional[tuple[float, float]]) -> None:
        self.scale_range = scale_range

    @property
    def has_scale(self) -> bool:
        return self.scale_range is not None

    def clamp_scale(self, scale: np.ndarray) -> np.ndarray:
        """``scale`` clamped to :attr:`scale_range` (ones without one)."""
        if self.scale_range is None:
            return np.ones_like(scale)
        return np.minimum(np.maximum(scale, self.scale_range[0]), self.scale_range[1])

    @abc.abstractmethod
    def move(
        self, actions: np.ndarray, centre: np.ndarray, scale: np.ndarray, image_wh: np.ndarray, window_wh: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The next window centres and scales of a batch: ``(N, 2)`` pixels ``(x, y)`` and ``(N,)`` factors.

        :param actions: ``(N, *space.shape)`` float64, checked (finite, clipped to ``[-1, 1]``;
            discrete: whole indices in range).
        :param centre: ``(N, 2)`` current centres ``(x, y)``; ``scale`` ``(N,)`` current factors on
            ``window_wh``; ``image_wh`` ``(N, 2)`` references ``(width, height)``; ``window_wh``
            ``(N, 2)`` nominal windows ``(width, height)``, all float64.
        """

    def check(self, action) -> np.ndarray:
        """One action as the float64 row :meth:`move` takes; ``ValueError`` naming what is wrong."""
        arr = np.asarray(action, dtype=np.float64).reshape(-1)
        if arr.shape != self.space.shape:
            raise ValueError(f"expected an action of shape {self.space.shape}, got shape {np.shape(action)}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"action contains NaN or inf: {np.asarray(action).tolist()}; actions must be finite")
        return np.clip(arr, -1.0, 1.0)

    def apply(
        self, action: np.ndarray, center: tuple[float, float], scale: float, image_size: tuple[int, int],
        window_size: tuple[float, float],
    ) -> tuple[float, float, float]:
        """Return the next ``(center_x, center_y, scale)`` (pixels, pixels, factor) of one window.

        :param action: a member of :attr:`space` (checked here).
        :param center: current window centre in pixels ``(x, y)``.
        :param scale: current scale factor on ``window_size``.
        :param image_size: reference ``(height, width)`` in pixels.
        :param window_size: nominal window ``(height, width)`` in pixels.
        """
        centre, new_scale = self.move(self.check(action)[None], np.array([center], np.float64), np.array([float(scale)]),
                                      np.array([[image_size[1], image_size[0]]], np.float64),
                                      np.array([[window_size[1], window_size[0]]], np.float64))
        return float(centre[0, 0]), float(centre[0, 1]), float(new_scale[0])

    def _box_space(self) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, shape=(3 if self.has_scale else 2,), dtype=np.float32)


def log_uniform_scales(component, scale_range: tuple[float, float]):
    """``(N,)`` window scales for ``(N,)`` action components in ``[-1, 1]``, log-uniform in
    ``scale_range`` (a float for a float).

    On numpy arrays ``math.exp`` value by value: numpy's vectorised exp may round the last bit
    differently by batch length, and a batch must place the windows one env would. On torch
    tensors (the exported search step) ``torch.exp``, which may round the last bit differently
    from ``math.exp``: a window's whole-pixel box then differs only if its size lies within that
    bit of a half pixel.
    """
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    if isinstance(component, float):  # one window (AbsoluteAction.place)
        return math.exp(lo + (component + 1.0) / 2.0 * (hi - lo))
    if is_torch_tensor(component):
        return (lo + (component + 1.0) / 2.0 * (hi - lo)).exp()
    return np.array([math.exp(lo + (v + 1.0) / 2.0 * (hi - lo)) for v in component.tolist()], dtype=np.float64)


class AbsoluteAction(WindowAction):
    def __init__(self, scale_range: Optional[tuple[float, float]]) -> None:
        super().__init__(scale_range)
        self.space = self._box_space()

    def move(self, actions, centre, scale, image_wh, window_wh):
        if self.has_scale:
            scale = log_uniform_scales(actions[:, 2], self.scale_range)
        return absolute_centres(actions[:, :2], image_wh, window_wh * scale[:, None]), scale

    def place(self, action: Sequence[float], image_wh: Sequence[float], window_wh: Sequence[float]
              ) -> tuple[tuple[float, float, float, float], tuple[float, float, float, float]]:
        """The window one action places: :meth:`move`, :func:`~matchenv.geometry.place_windows`
        and :func:`~matchenv.geometry.window_locations` on Python floats, axis by axis (the same
        functions, without numpy's per-call overhead, which is most of their cost on one row).

        :param action: checked and clipped action components (floats).
        :param image_wh: the reference ``(width, height)``; ``window_wh`` the nominal window, pixels.
        :return: the whole-pixel box ``(x0, y0, x1, y1)`` and the location ``(cx, cy, w, h)`` the
            agent observes, both float.
        """
        scale = log_uniform_scales(float(action[2]), self.scale_range) if self.has_scale else 1.0
        axes = []
        for axis in (0, 1):
            image, window = float(image_wh[axis]), float(window_wh[axis]) * scale
            p0, p1 = place_windows(absolute_centres(float(action[axis]), image, window), window, image)
            axes.append((p0, p1, *window_locations(p0, p1, image)))
        (x0, x1, cx, w), (y0, y1, cy, h) = axes
        return (x0, y0, x1, y1), (cx, cy, w, h)


class RelativeAction(WindowAction):
    def __init__(self, scale_range: Optional[tuple[float, float]], max_step: float = 0.25, max_zoom: float = 1.5):
        super().__init__(scale_range)
        if not (max_step > 0 and max_zoom > 1):
            raise ValueError(f"need max_step > 0 and max_zoom > 1, got {max_step}, {max_zoom}")
        self.max_step, self.max_zoom = float(max_step), float(max_zoom)
        self.space = self._box_space()

    def move(self, actions, centre, scale, image_wh, window_wh):
        centre = centre + actions[:, :2] * self.max_step * image_wh
        if self.has_scale:  # Python's pow value by value, as log_uniform_scales does exp
            scale = self.clamp_scale(scale * np.array([self.max_zoom**v for v in actions[:, 2].tolist()]))
        return centre, scale


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

    def check(self, action) -> np.ndarray:
        arr = np.asarray(action)
        value = arr.item() if arr.size == 1 else None
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
            raise ValueError(f"a discrete action is one integer in [0, {self.space.n}), got {action!r}")
        index = int(value)
        if not 0 <= index < self.space.n:
            raise ValueError(f"discrete action {index} is out of range [0, {self.space.n}): {DISCRETE_ACTION_NAMES[: self.space.n]}")
        return np.array([index], dtype=np.float64)

    def move(self, actions, centre, scale, image_wh, window_wh):
        moves = self.moves[actions.reshape(-1).astype(np.int64)]
        centre = centre + moves[:, :2] * self.step * image_wh
        if self.has_scale:
            scale = self.clamp_scale(scale * np.array([self.max_zoom**v for v in moves[:, 2].tolist()]))
        return centre, scale


def make_window_action(action_type: str, scale_range: Optional[tuple[float, float]], **kwargs) -> WindowAction:
    """Build the :class:`WindowAction` for ``action_type`` (one of :data:`ACTION_TYPES`)."""
    classes = {"absolute": AbsoluteAction, "relative": RelativeAction, "discrete": DiscreteAction}
    if action_type not in classes:
        raise ValueError(f"unknown action_type {action_type!r}; choose one of {ACTION_TYPES}")
    return classes[action_type](scale_range, **kwargs)
