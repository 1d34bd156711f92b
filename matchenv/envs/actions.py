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
from typing import NamedTuple, Optional, Sequence

import numpy as np
from gymnasium import spaces

from matchenv.geometry import absolute_centres, is_torch_tensor, place_windows, window_locations

ACTION_TYPES = ("absolute", "relative", "discrete")


class PlacedWindow(NamedTuple):
    """One window an action placed (:meth:`WindowAction.place`), on Python floats.

    ``box``: the whole-pixel window ``(x0, y0, x1, y1)``; ``location``: what the agent observes of
    its place, ``(cx, cy, w, h)`` as fractions of the reference; ``scale``: its factor on the
    nominal window size (the state a relative or discrete move starts from next).
    """

    box: tuple[float, float, float, float]
    location: tuple[float, float, float, float]
    scale: float


class WindowAction(abc.ABC):
    """Maps actions to window placements. ``scale_range=None`` means a fixed window size.

    Each action type says once how an action moves the window (:meth:`_next_scale` and
    :meth:`_next_centre`, element-wise arithmetic); :meth:`move` applies it to a batch (numpy
    arrays; torch tensors for ``"absolute"``), :meth:`place` to one window on Python floats, axis
    by axis (numpy's per-call overhead would be most of the cost of one window), with the same
    results to the bit. :meth:`check` checks one action.
    """

    space: spaces.Space

    def __init__(self, scale_range: Optional[tuple[float, float]]) -> None:
        self.scale_range = scale_range

    @property
    def has_scale(self) -> bool:
        return self.scale_range is not None

    def clamp_scale(self, scale):
        """``scale`` (an array or a float) clamped to :attr:`scale_range` (ones without one)."""
        if self.scale_range is None:
            return 1.0 if isinstance(scale, float) else np.ones_like(scale)
        if isinstance(scale, float):
            return min(max(scale, self.scale_range[0]), self.scale_range[1])
        return np.minimum(np.maximum(scale, self.scale_range[0]), self.scale_range[1])

    def move(
        self, actions: np.ndarray, centre: Optional[np.ndarray], scale: np.ndarray, image_wh: np.ndarray, window_wh: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The next window centres and scales of a batch: ``(N, 2)`` pixels ``(x, y)`` and ``(N,)`` factors.

        :param actions: ``(N, *space.shape)`` float64, checked (finite, clipped to ``[-1, 1]``;
            discrete: whole indices in range).
        :param centre: ``(N, 2)`` current centres ``(x, y)`` (``"absolute"`` ignores it);
            ``scale`` ``(N,)`` current factors on ``window_wh``; ``image_wh`` ``(N, 2)`` references
            ``(width, height)``; ``window_wh`` ``(N, 2)`` nominal windows ``(width, height)``, all float64.
        """
        offsets, zoom = self._components(actions)
        scale = self._next_scale(zoom, scale)
        return self._next_centre(offsets, centre, image_wh, window_wh * scale[:, None]), scale

    def place(self, action: Sequence[float], centre: tuple[float, float], scale: float, image_wh: Sequence[float],
              window_wh: Sequence[float]) -> PlacedWindow:
        """The window one action places: :meth:`move`, :func:`~matchenv.geometry.place_windows` and
        :func:`~matchenv.geometry.window_locations` on Python floats, axis by axis.

        :param action: the checked action (:meth:`check`) as floats.
        :param centre: the current centre ``(x, y)``; ``scale`` the current factor; ``image_wh``
            the reference ``(width, height)``; ``window_wh`` the nominal window, pixels.
        """
        centre, scale, windows = self._move_one(action, centre, scale, image_wh, window_wh)
        axes = []
        for middle, image, window in zip(centre, image_wh, windows):
            image = float(image)
            p0, p1 = place_windows(middle, window, image)
            axes.append((p0, p1, *window_locations(p0, p1, image)))
        (x0, x1, cx, w), (y0, y1, cy, h) = axes
        return PlacedWindow((x0, y0, x1, y1), (cx, cy, w, h), scale)

    def check(self, action) -> list[float]:
        """One action as the floats :meth:`place` takes; ``ValueError`` naming what is wrong."""
        arr = np.asarray(action, dtype=np.float64).reshape(-1)
        if arr.shape != self.space.shape:
            raise ValueError(f"expected an action of shape {self.space.shape}, got shape {np.shape(action)}")
        values = arr.tolist()
        if not all(map(math.isfinite, values)):
            raise ValueError(f"action contains NaN or inf: {np.asarray(action).tolist()}; actions must be finite")
        return [min(max(v, -1.0), 1.0) for v in values]

    def apply(
        self, action: np.ndarray, center: tuple[float, float], scale: float, image_size: tuple[int, int],
        window_size: tuple[float, float],
    ) -> tuple[float, float, float]:
        """Return the next ``(center_x, center_y, scale)`` (pixels, pixels, factor) of one window
        (before it is placed in whole pixels).

        :param action: a member of :attr:`space` (checked here).
        :param center: current window centre in pixels ``(x, y)``.
        :param scale: current scale factor on ``window_size``.
        :param image_size: reference ``(height, width)`` in pixels.
        :param window_size: nominal window ``(height, width)`` in pixels.
        """
        (x, y), scale, _ = self._move_one(self.check(action), center, scale, image_size[::-1], window_size[::-1])
        return x, y, scale

    def _move_one(self, action: Sequence[float], centre: Sequence[float], scale: float, image_wh: Sequence[float],
                  window_wh: Sequence[float]) -> tuple[tuple[float, float], float, tuple[float, float]]:
        """:meth:`move` for one window on Python floats: the next centre ``(x, y)``, the next scale
        and the window ``(width, height)`` at that scale (arguments as for :meth:`place`)."""
        (dx, dy), zoom = self._components_of_one(action)
        scale = self._next_scale(zoom, float(scale))
        w, h = float(window_wh[0]) * scale, float(window_wh[1]) * scale
        x = self._next_centre(float(dx), float(centre[0]), float(image_wh[0]), w)
        y = self._next_centre(float(dy), float(centre[1]), float(image_wh[1]), h)
        return (x, y), scale, (w, h)

    @abc.abstractmethod
    def _components(self, actions):
        """``(N, 2)`` offsets and ``(N,)`` zoom components (``None`` without a scale) of a batch."""

    @abc.abstractmethod
    def _components_of_one(self, action: Sequence[float]):
        """The same for one action: two floats and a float (``None`` without a scale)."""

    @abc.abstractmethod
    def _next_scale(self, zoom, scale):
        """The next scales from the zoom components and the current scales (arrays or floats)."""

    @abc.abstractmethod
    def _next_centre(self, offset, centre, image, window):
        """The next centres, element-wise: per axis from the offset components, the current
        centres, the image sizes and the window sizes at the next scale (arrays or floats)."""

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

    def exponent(v):
        return lo + (v + 1.0) / 2.0 * (hi - lo)

    if isinstance(component, float):
        return math.exp(exponent(component))
    if is_torch_tensor(component):
        return exponent(component).exp()
    return np.array([math.exp(exponent(v)) for v in component.tolist()], dtype=np.float64)


def _powers(base: float, exponents):
    """``base ** exponents``: Python's pow value by value (as :func:`log_uniform_scales` does exp)."""
    if isinstance(exponents, float):
        return base ** exponents
    return np.array([base ** v for v in exponents.tolist()], dtype=np.float64)


class _ContinuousAction(WindowAction):
    """A ``Box(-1, 1)`` action: ``(x, y)`` then, with a scale, the zoom component."""

    def __init__(self, scale_range: Optional[tuple[float, float]]) -> None:
        super().__init__(scale_range)
        self.space = self._box_space()

    def _components(self, actions):
        return actions[:, :2], (actions[:, 2] if self.has_scale else None)

    def _components_of_one(self, action):
        return action[:2], (float(action[2]) if self.has_scale else None)


class AbsoluteAction(_ContinuousAction):
    def _next_scale(self, zoom, scale):
        return log_uniform_scales(zoom, self.scale_range) if self.has_scale else scale

    def _next_centre(self, offset, centre, image, window):
        return absolute_centres(offset, image, window)


class RelativeAction(_ContinuousAction):
    def __init__(self, scale_range: Optional[tuple[float, float]], max_step: float = 0.25, max_zoom: float = 1.5):
        super().__init__(scale_range)
        if not (max_step > 0 and max_zoom > 1):
            raise ValueError(f"need max_step > 0 and max_zoom > 1, got {max_step}, {max_zoom}")
        self.max_step, self.max_zoom = float(max_step), float(max_zoom)

    def _next_scale(self, zoom, scale):
        return self.clamp_scale(scale * _powers(self.max_zoom, zoom)) if self.has_scale else scale

    def _next_centre(self, offset, centre, image, window):
        return centre + offset * self.max_step * image


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

    def check(self, action) -> list[float]:
        arr = np.asarray(action)
        value = arr.item() if arr.size == 1 else None
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
            raise ValueError(f"a discrete action is one integer in [0, {self.space.n}), got {action!r}")
        index = int(value)
        if not 0 <= index < self.space.n:
            raise ValueError(f"discrete action {index} is out of range [0, {self.space.n}): {DISCRETE_ACTION_NAMES[: self.space.n]}")
        return [float(index)]

    def _components(self, actions):
        moves = self.moves[actions.reshape(-1).astype(np.int64)]
        return moves[:, :2], (moves[:, 2] if self.has_scale else None)

    def _components_of_one(self, action):
        dx, dy, zoom = self.moves[int(action[0])].tolist()
        return (dx, dy), (zoom if self.has_scale else None)

    def _next_scale(self, zoom, scale):
        return self.clamp_scale(scale * _powers(self.max_zoom, zoom)) if self.has_scale else scale

    def _next_centre(self, offset, centre, image, window):
        return centre + offset * self.step * image


def make_window_action(action_type: str, scale_range: Optional[tuple[float, float]], **kwargs) -> WindowAction:
    """Build the :class:`WindowAction` for ``action_type`` (one of :data:`ACTION_TYPES`)."""
    classes = {"absolute": AbsoluteAction, "relative": RelativeAction, "discrete": DiscreteAction}
    if action_type not in classes:
        raise ValueError(f"unknown action_type {action_type!r}; choose one of {ACTION_TYPES}")
    return classes[action_type](scale_range, **kwargs)
