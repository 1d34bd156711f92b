"""The privileged teacher: the action a perfect searcher takes, read from the target box.

Only training code calls this (imitation targets, demos); a policy never sees its inputs.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def target_action(
    target_box: Sequence[float],
    reference_size: tuple[int, int],
    window_size: tuple[int, int],
    scale_range: Optional[tuple[float, float]] = None,
) -> np.ndarray:
    """The ``"absolute"`` action that places the window on ``target_box``.

    Inverse of :class:`matchenv.envs.actions.AbsoluteAction`: the centre maps linearly onto the
    positions where the window fits, and the scale log-uniformly onto ``scale_range``.

    :param target_box: pixel box ``(x0, y0, x1, y1)`` of the target.
    :param reference_size: ``(height, width)`` of the reference in pixels.
    :param window_size: nominal ``(height, width)`` of the window in pixels.
    :param scale_range: the env's window scale range, or ``None`` for a fixed-size window.
    :return: float32 action of shape ``(2,)`` (``(3,)`` with scale), inside ``[-1, 1]``.
    """
    x0, y0, x1, y1 = (float(v) for v in target_box)
    img_h, img_w = reference_size
    scale = 1.0
    if scale_range is not None:
        scale = min(max(math.sqrt((x1 - x0) * (y1 - y0) / (window_size[0] * window_size[1])), scale_range[0]), scale_range[1])
    win_w, win_h = min(window_size[1] * scale, img_w), min(window_size[0] * scale, img_h)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    action = [
        2.0 * (cx - win_w / 2) / (img_w - win_w) - 1.0 if img_w > win_w else 0.0,
        2.0 * (cy - win_h / 2) / (img_h - win_h) - 1.0 if img_h > win_h else 0.0,
    ]
    if scale_range is not None:
        lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
        action.append(2.0 * (math.log(scale) - lo) / (hi - lo) - 1.0 if hi > lo else 0.0)
    return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)


def env_target_action(env) -> np.ndarray:
    """:func:`target_action` for a (possibly wrapped) ``TemplateSearchEnv``'s current pair."""
    base = env.unwrapped
    info = base.privileged_info()
    return target_action(info["target_box"], info["reference_size"], base.window_size, base.scale_range)


def search_target_box(
    target_box: Sequence[float], distractor_boxes: np.ndarray, window_boxes: Sequence[np.ndarray], match_iou: float = 0.5
) -> np.ndarray:
    """Where a *searching* teacher puts the next window when look-alike candidates exist.

    The teacher visits the candidates (target and distractors) from left to right, the order a
    policy can read off the global view, skipping those a window has already covered, until a
    window covers the target; from then on it stays there. Unlike "go to the target", this is
    a function of what the policy can observe (where the digits are, what it has seen so far),
    so imitating it teaches search-and-verify instead of collapsing onto the mean position.

    :param target_box: the target's pixel box.
    :param distractor_boxes: ``(K, 4)`` pixel boxes of the other candidates.
    :param window_boxes: the windows placed so far this episode.
    :param match_iou: IoU at which a window counts as having covered a candidate.
    :return: the pixel box the next window should cover.
    """
    from matchenv.geometry import iou

    target = np.asarray(target_box, dtype=np.float64)
    candidates = np.concatenate([target[None], np.asarray(distractor_boxes, dtype=np.float64).reshape(-1, 4)])
    if len(window_boxes):
        windows = np.asarray(window_boxes, dtype=np.float64)
        covered = np.array([np.max(iou(windows, c)) > match_iou for c in candidates])
        if covered[0]:
            return target
    else:
        covered = np.zeros(len(candidates), dtype=bool)
    order = np.argsort((candidates[:, 0] + candidates[:, 2]) / 2, kind="stable")
    for index in order:
        if not covered[index]:
            return candidates[index]
    return target


def env_search_action(env) -> np.ndarray:
    """:func:`target_action` towards :func:`search_target_box` for a ``TemplateSearchEnv``."""
    base = env.unwrapped
    info = base.privileged_info()
    box = search_target_box(info["target_box"], info["distractor_boxes"], base.window_boxes)
    return target_action(box, info["reference_size"], base.window_size, base.scale_range)


def zoom_target_box(
    target_box: Sequence[float], trial: int, reference_size: tuple[int, int], zoom_trials: int = 2, max_zoom: float = 3.0
) -> np.ndarray:
    """Where a *coarse-to-fine* teacher puts window ``trial`` (0-based): around the target, shrinking to it.

    The first look at a photograph is the whole image at the query resolution (e.g. 32x32), where
    a logo is a few pixels: too little to find it exactly, enough to find the region. So the
    teacher first asks for a window ``max_zoom`` times the target's side centred on it, then
    shrinks geometrically to the target itself after ``zoom_trials`` windows; every window it asks
    for contains the target, at a resolution where the next decision can be made.

    :param target_box: the target's pixel box.
    :param trial: windows placed so far this episode.
    :param reference_size: ``(height, width)`` of the reference (the box is clipped to it).
    :param zoom_trials: windows spent zooming in (0: straight to the target).
    :param max_zoom: enlargement of the first window's side.
    :return: the pixel box the next window should cover.
    """
    x0, y0, x1, y1 = (float(v) for v in target_box)
    if trial >= zoom_trials:
        return np.array([x0, y0, x1, y1])
    zoom = max_zoom ** (1.0 - trial / zoom_trials)
    img_h, img_w = reference_size
    half_w, half_h = min((x1 - x0) * zoom, img_w) / 2, min((y1 - y0) * zoom, img_h) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # Shift (not shrink) the enlarged box into the image, so it keeps its size and holds the target.
    cx, cy = min(max(cx, half_w), img_w - half_w), min(max(cy, half_h), img_h - half_h)
    return np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h])


def env_zoom_action(env) -> np.ndarray:
    """:func:`target_action` towards :func:`zoom_target_box` for a ``TemplateSearchEnv``."""
    base = env.unwrapped
    info = base.privileged_info()
    box = zoom_target_box(info["target_box"], len(base.window_boxes), info["reference_size"])
    return target_action(box, info["reference_size"], base.window_size, base.scale_range)
