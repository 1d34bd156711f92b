"""Drawing search episodes: frames, strips, PNG/GIF files and a pygame viewer.

Everything here is a pure function of arrays (no environment dependency), so it can be
used on logged episodes as well as inside ``env.render()``.

Conventions (shared with the rest of matchenv):

* A **box** is ``(x0, y0, x1, y1)`` as floats in *pixel coordinates* of the reference
  image; pixel column ``i`` spans ``[i, i + 1)``, so ``x1``/``y1`` are exclusive.
* An **image** is ``uint8`` and either ``(H, W)`` grayscale, ``(H, W, 3)`` RGB (or
  ``(H, W, 1)``), or channel-first ``(C, H, W)`` with ``C`` in ``{1, 3}``.
* A **frame** (what this module returns) is always an RGB ``uint8`` array ``(H, W, 3)``.

Text is drawn with OpenCV's Hershey fonts, which cover printable ASCII only; other
characters are replaced by ``?``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence, Union

import cv2
import numpy as np

__all__ = [
    "HumanViewer",
    "frame_strip",
    "render_search",
    "save_frames",
    "to_rgb",
    "window_colors",
]

Box = Union[Sequence[float], np.ndarray]

# ---------------------------------------------------------------------------------------
# Style. Colours are RGB.
# ---------------------------------------------------------------------------------------
TARGET_COLOR = (0, 255, 0)
DISTRACTOR_COLOR = (200, 200, 200)
PANEL_BG = (30, 30, 30)
PANEL_TEXT = (235, 235, 235)
PANEL_MUTED = (120, 120, 120)

# Anchors of the window colormap, first window -> last window. It runs blue -> violet ->
# red -> orange -> yellow and deliberately avoids green so no window is mistaken for the
# target box.
_CMAP_ANCHORS = np.array(
    [
        (40, 130, 255),  # blue
        (150, 80, 255),  # violet
        (235, 50, 140),  # magenta-red
        (255, 110, 30),  # orange
        (255, 225, 0),  # yellow
    ],
    dtype=np.float64,
)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
# INTER_NEAREST_EXACT matches np.repeat pixel-for-pixel; older OpenCV only has INTER_NEAREST,
# which is also exact for the integer factors used here.
_NEAREST = getattr(cv2, "INTER_NEAREST_EXACT", cv2.INTER_NEAREST)

_MARGIN = 8  # px around panel items
_LABEL_SCALE = 0.45  # font scale of the panel labels ("query", "window")
_TITLE_SCALE = 0.4
_TITLE_LINES = 3  # lines reserved for the title so the layout does not depend on its length
_MIN_SLOT = 24  # smallest edge (px) of a panel image slot
_MIN_PANEL_W = 160  # px; wide enough for ~22 title characters per line
_TARGET_LONG_SIDE = 400  # default scale brings the reference's long side to <= this


# ---------------------------------------------------------------------------------------
# Input normalisation
# ---------------------------------------------------------------------------------------
def to_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return ``image`` as a C-contiguous RGB ``uint8`` array of shape ``(H, W, 3)``.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` grayscale, ``(H, W, 1)`` or ``(H, W, 3)`` channel-last RGB, or
        ``(C, H, W)`` channel-first with ``C`` in ``{1, 3}``. Channel-first is detected
        when ``ndim == 3``, ``shape[0]`` is 1 or 3 and ``shape[-1]`` is not. ``uint8`` is
        expected; ``bool`` is mapped to {0, 255}, floats with max <= 1 are treated as
        ``[0, 1]`` intensities and other types are clipped to ``[0, 255]``. This is for
        pictures, so it draws what it can rather than refuse: NaN pixels are drawn black (0)
        and infinities clipped to 0 or 255 (the searchers and matchers refuse NaN images).
    name : str
        Used in error messages.

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` ``uint8``; grayscale is replicated into the three channels.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)  # channel-first -> channel-last
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise ValueError(
            f"{name} must be (H, W), (H, W, 3), (H, W, 1) or (C, H, W) with C in {{1, 3}}; "
            f"got shape {np.shape(image)}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {np.shape(image)}")
    if arr.dtype != np.uint8:
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8) * 255
        else:
            arr = arr.astype(np.float64)
            # the largest finite value decides [0, 1] or [0, 255] (no NaN warning, an inf pixel does not tip it)
            if (np.issubdtype(np.asarray(image).dtype, np.floating) and arr.size
                    and np.max(arr, where=np.isfinite(arr), initial=0.0) <= 1.0):
                arr = arr * 255.0
            arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)  # gray shown as gray RGB
    return np.ascontiguousarray(arr)


def _as_box_array(boxes: Any, name: str) -> np.ndarray:
    """``None``/empty -> ``(0, 4)``; one box or ``(N, 4)`` -> float64 ``(N, 4)``, finite rows only."""
    if boxes is None:
        return np.zeros((0, 4), dtype=np.float64)
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must be boxes (x0, y0, x1, y1) of shape (N, 4); got shape {arr.shape}")
    # Rows with NaN/inf are padding for "not placed yet" (e.g. a fixed-size history buffer).
    return arr[np.isfinite(arr).all(axis=1)]


def window_colors(n: int, total: int | None = None) -> np.ndarray:
    """Colours of windows ``0..n-1`` along the window colormap (blue -> red -> yellow).

    Parameters
    ----------
    n : int
        Number of colours wanted.
    total : int, optional
        Length of the whole colormap, e.g. the episode's maximum number of windows, so that
        window ``i`` keeps the same colour as the episode grows. Defaults to ``n``.

    Returns
    -------
    np.ndarray
        ``(n, 3)`` ``uint8`` RGB.
    """
    total = max(int(total or n), n, 1)
    t = np.arange(n, dtype=np.float64) / max(total - 1, 1)
    xs = np.linspace(0.0, 1.0, len(_CMAP_ANCHORS))
    cols = np.stack([np.interp(t, xs, _CMAP_ANCHORS[:, c]) for c in range(3)], axis=-1)
    return cols.round().astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Drawing primitives (all operate in place on contiguous RGB uint8 canvases)
# ---------------------------------------------------------------------------------------
def _scaled_rect(box: np.ndarray, scale: int, width: int, height: int, grow: int = 0):
    """Inclusive pixel rectangle ``(x0, y0, x1, y1)`` of ``box`` on a canvas upscaled by ``scale``.

    ``grow`` enlarges the rectangle outwards by that many px. The result is clipped to the
    canvas so a box partially outside the image still shows its visible part framed;
    ``None`` when nothing of it is visible.
    """
    x0 = int(np.floor(box[0] * scale)) - grow
    y0 = int(np.floor(box[1] * scale)) - grow
    x1 = int(np.ceil(box[2] * scale)) - 1 + grow  # exclusive -> inclusive last pixel
    y1 = int(np.ceil(box[3] * scale)) - 1 + grow
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, width - 1), min(y1, height - 1)
    if x1 < x0 or y1 < y0:
        return None
    return x0, y0, x1, y1


def _frame_rect(canvas: np.ndarray, rect, color, thickness: int) -> None:
    """Draw a ``thickness``-px border lying *inside* the inclusive ``rect``.

    Nested 1-px ``cv2.rectangle`` calls are used instead of one thick call because OpenCV
    centres thick lines on the edge, which would spill outside the box and make the
    border's position depend on its thickness.
    """
    x0, y0, x1, y1 = rect
    color = tuple(int(c) for c in color)
    for k in range(thickness):
        if x1 - k < x0 + k or y1 - k < y0 + k:
            break
        cv2.rectangle(canvas, (x0 + k, y0 + k), (x1 - k, y1 - k), color, 1, cv2.LINE_8)


def _dashed_rect(canvas: np.ndarray, rect, color, dash: int = 4) -> None:
    """1-px dashed border on the inclusive ``rect`` (numpy fancy indexing, no Python loop per dash)."""
    x0, y0, x1, y1 = rect
    xs = np.arange(x0, x1 + 1)
    ys = np.arange(y0, y1 + 1)
    xs = xs[((xs - x0) // dash) % 2 == 0]
    ys = ys[((ys - y0) // dash) % 2 == 0]
    col = np.asarray(color, dtype=np.uint8)
    canvas[y0, xs] = col
    canvas[y1, xs] = col
    canvas[ys, x0] = col
    canvas[ys, x1] = col


def _text_color_on(bg) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (Rec. 601 luma)."""
    r, g, b = (int(c) for c in bg)
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _ascii(text: str) -> str:
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in str(text))


def _label(canvas: np.ndarray, text: str, x: int, y: int, bg, placed: list | None = None,
           scale: float = 0.4) -> None:
    """Filled label with top-left corner near ``(x, y)``, kept inside the canvas.

    ``placed`` collects the rectangles of earlier labels; a label that would cover one is
    slid right (then down), so windows sharing a corner keep every number readable.
    """
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    w, h = tw + 4, th + base + 3
    H, W = canvas.shape[:2]

    def clamp(px: int, py: int) -> tuple[int, int]:
        return min(max(px, 0), max(W - w, 0)), min(max(py, 0), max(H - h, 0))

    x, y = clamp(x, y)
    if placed is not None:
        def hits(px: int, py: int) -> bool:
            return any(px < bx1 and bx0 < px + w and py < by1 and by0 < py + h for bx0, by0, bx1, by1 in placed)

        for dy in range(0, 4 * h, h):
            cand = [clamp(x + k * w, y + dy) for k in range(0, 8)]
            free = [c for c in cand if not hits(*c)]
            if free:
                x, y = free[0]
                break
        placed.append((x, y, x + w, y + h))
    cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), tuple(int(c) for c in bg), -1)
    cv2.putText(canvas, text, (x + 2, y + th + 1), _FONT, scale, _text_color_on(bg), 1, cv2.LINE_AA)


def _fit_image(img: np.ndarray, max_w: int, max_h: int) -> np.ndarray:
    """Resize ``img`` to fit ``max_w x max_h``: integer nearest-neighbour upscaling keeps pixels
    crisp; images too large for the slot are shrunk with area averaging."""
    h, w = img.shape[:2]
    f = min(max_w / w, max_h / h)
    if f >= 1.0:
        k = int(f)
        return img if k == 1 else cv2.resize(img, (w * k, h * k), interpolation=_NEAREST)
    size = (max(1, int(round(w * f))), max(1, int(round(h * f))))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _crop_box(image: np.ndarray, box: np.ndarray, out_w: int, out_h: int) -> np.ndarray | None:
    """Pixels of ``image`` covered by ``box`` (clipped), resized to ``out_w x out_h``; ``None`` if empty."""
    H, W = image.shape[:2]
    x0 = max(int(np.floor(box[0])), 0)
    y0 = max(int(np.floor(box[1])), 0)
    x1 = min(int(np.ceil(box[2])), W)
    y1 = min(int(np.ceil(box[3])), H)
    if x1 <= x0 or y1 <= y0:
        return None
    crop = image[y0:y1, x0:x1]
    interp = cv2.INTER_AREA if (x1 - x0 > out_w or y1 - y0 > out_h) else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (out_w, out_h), interpolation=interp)


# ---------------------------------------------------------------------------------------
# Main renderer
# ---------------------------------------------------------------------------------------
def default_scale(height: int, width: int) -> int:
    """Integer upscale factor bringing the long side to at most ~400 px (100 px -> 4, >= 400 px -> 1)."""
    return max(1, _TARGET_LONG_SIDE // max(int(height), int(width), 1))


def render_search(
    reference: np.ndarray,
    query: np.ndarray,
    window_boxes: Sequence[Box] | np.ndarray,
    target_box: Box | None = None,
    *,
    distractor_boxes: Sequence[Box] | np.ndarray | None = None,
    scale: int | None = None,
    title: str | None = None,
    max_windows: int | None = None,
) -> np.ndarray:
    """Draw one step of a search episode.

    Layout: the reference, upscaled by an integer factor (nearest neighbour), with the
    target box (green, just *outside* the box edge so a window placed exactly on it stays
    visible), distractor boxes (thin dashed grey), the path joining successive window
    centres, and every window so far coloured along a blue -> red -> yellow colormap and
    numbered ``1..T`` (the latest one drawn thicker). To the right, a side panel of the
    same height shows the query ("query"), the crop under the latest window resized to the
    query size ("window", framed in that window's colour) and the optional title.

    Parameters
    ----------
    reference : np.ndarray
        Reference image, ``uint8`` ``(H, W)``, ``(H, W, 3)`` RGB or ``(C, H, W)``.
    query : np.ndarray
        Query image ``(h, w)``-like, same formats as ``reference``.
    window_boxes : sequence of boxes or np.ndarray
        ``(T, 4)`` windows ``(x0, y0, x1, y1)`` in reference pixels, in the order they were
        placed; may be empty. Rows containing NaN/inf are ignored.
    target_box : box, optional
        ``(4,)`` ground-truth box in reference pixels.
    distractor_boxes : sequence of boxes or np.ndarray, optional
        ``(K, 4)`` boxes of look-alike regions, drawn thin and dashed.
    scale : int, optional
        Integer upscale factor for the reference; default :func:`default_scale`.
    title : str, optional
        Text at the bottom of the side panel (``\\n`` starts a new line; long lines are
        wrapped; at most 3 lines are shown).
    max_windows : int, optional
        Episode's window budget. When given, window ``i`` gets the colour ``i / (max_windows
        - 1)`` along the colormap, so colours stay fixed from step to step; otherwise the
        colormap is stretched over the windows placed so far.

    Returns
    -------
    np.ndarray
        RGB ``uint8`` frame of shape ``(max(H * scale, min_panel_h), H * scale-wide
        reference + panel width, 3)``. Its size depends only on the image shapes, the scale
        and whether a title is given, so the frames of an episode can be stacked into a GIF.
    """
    ref = to_rgb(reference, "reference")
    qry = to_rgb(query, "query")
    wins = _as_box_array(window_boxes, "window_boxes")
    dists = _as_box_array(distractor_boxes, "distractor_boxes")
    tgt = _as_box_array(target_box, "target_box")
    if len(tgt) > 1:
        raise ValueError(f"target_box must be a single box (4,); got {len(tgt)} boxes")

    H, W = ref.shape[:2]
    if scale is None:
        scale = default_scale(H, W)
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer; got {scale!r}")
    s = int(scale)
    Hs, Ws = H * s, W * s
    lw = 1 if s < 3 else 2  # base line width grows a little with the zoom for legibility

    view = cv2.resize(ref, (Ws, Hs), interpolation=_NEAREST) if s > 1 else ref.copy()

    # Target first, as a ring just outside the box: windows are drawn inside their boxes,
    # so a perfect match shows both outlines side by side instead of one hiding the other.
    if len(tgt):
        rect = _scaled_rect(tgt[0], s, Ws, Hs, grow=2)
        if rect is not None:
            _frame_rect(view, rect, TARGET_COLOR, 2)

    for box in dists:
        rect = _scaled_rect(box, s, Ws, Hs)
        if rect is not None:
            _dashed_rect(view, rect, DISTRACTOR_COLOR)

    T = len(wins)
    cols = window_colors(T, max_windows)
    if T:
        centres = np.stack([(wins[:, 0] + wins[:, 2]) / 2, (wins[:, 1] + wins[:, 3]) / 2], axis=1) * s
        # cv2 sub-pixel drawing: coordinates in 1/16 px (shift=4) keep the path smooth at any scale.
        pts = np.round(centres * 16).astype(np.int64)
        pts = np.clip(pts, -(2**20), 2**20)  # far-away centres must not overflow cv2's int32
        for i in range(1, T):
            cv2.line(view, tuple(map(int, pts[i - 1])), tuple(map(int, pts[i])),
                     tuple(int(c) for c in cols[i]), lw, cv2.LINE_AA, shift=4)
        rects = [_scaled_rect(b, s, Ws, Hs) for b in wins]
        for i, rect in enumerate(rects):
            if rect is not None:
                _frame_rect(view, rect, cols[i], lw + 1 if i == T - 1 else lw)
        for i in range(T):  # centre dots on top of the borders
            cv2.circle(view, tuple(map(int, pts[i])), (lw + 1) * 16, tuple(int(c) for c in cols[i]), -1,
                       cv2.LINE_AA, shift=4)
        # Numbers last so no border crosses them; the latest window's label is on top.
        placed: list = []
        for i, rect in enumerate(rects):
            if rect is not None:
                _label(view, str(i + 1), rect[0], rect[1], cols[i], placed)

    latest = None
    if T:
        crop = _crop_box(ref, wins[-1], qry.shape[1], qry.shape[0])
        latest = (crop, cols[-1])
    panel = _side_panel(qry, latest, T > 0, title, Hs)

    out_h = panel.shape[0]
    if out_h > Hs:  # tiny references: the panel needs a minimum height; pad the reference below
        view = np.concatenate([view, np.full((out_h - Hs, Ws, 3), PANEL_BG, np.uint8)], axis=0)
    return np.ascontiguousarray(np.concatenate([view, panel], axis=1))


def _side_panel(qry: np.ndarray, latest, has_window: bool, title: str | None, height: int) -> np.ndarray:
    """Panel with "query" and "window" slots (and the title), ``height`` px tall or more."""
    m = _MARGIN
    (_, lh), lbase = cv2.getTextSize("window", _FONT, _LABEL_SCALE, 1)
    label_h = lh + lbase + 4
    (_, th), tbase = cv2.getTextSize("Ag", _FONT, _TITLE_SCALE, 1)
    line_h = th + tbase + 4
    title_h = (_TITLE_LINES * line_h + m) if title is not None else 0
    fixed = 3 * m + 2 * label_h + title_h + 4  # +4: the 2-px frame around the window crop
    panel_h = max(height, fixed + 2 * _MIN_SLOT)

    qh, qw = qry.shape[:2]
    slot_h = (panel_h - fixed) // 2
    # Cap the width so a very wide query cannot make the panel dominate the frame.
    slot_w = max(_MIN_PANEL_W, height // 2) - 2 * m
    shown_q = _fit_image(qry, slot_w, slot_h)
    dh, dw = shown_q.shape[:2]
    panel_w = max(_MIN_PANEL_W, dw + 2 * m + 4)

    panel = np.full((panel_h, panel_w, 3), PANEL_BG, np.uint8)
    x = (panel_w - dw) // 2
    y = m
    cv2.putText(panel, "query", (x, y + lh), _FONT, _LABEL_SCALE, PANEL_TEXT, 1, cv2.LINE_AA)
    y += label_h
    panel[y:y + dh, x:x + dw] = shown_q

    y += dh + m + 2
    cv2.putText(panel, "window", (x, y + lh), _FONT, _LABEL_SCALE, PANEL_TEXT, 1, cv2.LINE_AA)
    y += label_h
    crop, color = latest if latest is not None else (None, None)
    if crop is not None:
        shown_w = cv2.resize(crop, (dw, dh), interpolation=_NEAREST)
        panel[y:y + dh, x:x + dw] = shown_w
        # Frame in the latest window's colour, so the crop is tied to its box on the left.
        cv2.rectangle(panel, (x - 2, y - 2), (x + dw + 1, y + dh + 1), tuple(int(c) for c in color), 2)
    else:
        cv2.rectangle(panel, (x, y), (x + dw - 1, y + dh - 1), PANEL_MUTED, 1)
        msg = "outside" if has_window else "none"
        (mw, mh), _ = cv2.getTextSize(msg, _FONT, 0.4, 1)
        cv2.putText(panel, msg, (x + max((dw - mw) // 2, 1), y + (dh + mh) // 2), _FONT, 0.4,
                    PANEL_MUTED, 1, cv2.LINE_AA)

    if title is not None:
        _draw_title(panel, title, panel_h - title_h + m // 2, line_h)
    return panel


def _text_w(text: str, scale: float = _TITLE_SCALE) -> int:
    return cv2.getTextSize(text, _FONT, scale, 1)[0][0]


def _wrap(text: str, max_w: int) -> list[str]:
    """Greedy word wrap measured in rendered px (Hershey glyphs are proportional)."""
    lines: list[str] = []
    for para in str(text).split("\n"):
        cur = ""
        for word in _ascii(para.replace("\t", " ")).split():
            while _text_w(word) > max_w and len(word) > 1:  # hard-break words longer than a line
                cut = len(word) - 1
                while cut > 1 and _text_w(word[:cut]) > max_w:
                    cut -= 1
                if cur:
                    lines.append(cur)
                    cur = ""
                lines.append(word[:cut])
                word = word[cut:]
            cand = f"{cur} {word}" if cur else word
            if _text_w(cand) <= max_w:
                cur = cand
            else:
                lines.append(cur)
                cur = word
        lines.append(cur)
    return lines


def _draw_title(panel: np.ndarray, title: str, y: int, line_h: int) -> None:
    """Wrap ``title`` to the panel width and draw at most ``_TITLE_LINES`` lines from ``y`` down."""
    m = _MARGIN
    max_w = panel.shape[1] - 2 * m
    lines = _wrap(title, max_w)
    if len(lines) > _TITLE_LINES:
        lines = lines[:_TITLE_LINES]
        last = lines[-1]
        while last and _text_w(last + "...") > max_w:
            last = last[:-1]
        lines[-1] = last + "..."
    (_, th), _ = cv2.getTextSize("Ag", _FONT, _TITLE_SCALE, 1)
    for i, line in enumerate(lines):
        cv2.putText(panel, line, (m, y + i * line_h + th), _FONT, _TITLE_SCALE, PANEL_TEXT, 1, cv2.LINE_AA)


# ---------------------------------------------------------------------------------------
# Strips and files
# ---------------------------------------------------------------------------------------
def _check_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Validate a non-empty sequence of RGB ``uint8`` ``(H, W, 3)`` frames."""
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        raise ValueError("frames must be a sequence of (H, W, 3) arrays, got a single frame; wrap it in a list")
    try:
        frames = list(frames)
    except TypeError:
        raise ValueError(f"frames must be a sequence of (H, W, 3) uint8 arrays; got {type(frames).__name__}") from None
    if not frames:
        raise ValueError("frames is empty: need at least one (H, W, 3) uint8 frame")
    out = []
    for i, f in enumerate(frames):
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 or 0 in f.shape:
            desc = f"{f.dtype} array of shape {f.shape}" if isinstance(f, np.ndarray) else type(f).__name__
            raise ValueError(f"frames[{i}] must be an RGB uint8 array of shape (H, W, 3); got {desc}")
        out.append(f)
    return out


def _pad_to(frame: np.ndarray, height: int, width: int, fill: int) -> np.ndarray:
    """Pad ``frame`` at the bottom/right to ``height x width``."""
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return frame
    out = np.full((height, width, 3), fill, np.uint8)
    out[:h, :w] = frame
    return out


def frame_strip(frames: Sequence[np.ndarray], pad: int = 4, fill: int = 255) -> np.ndarray:
    """Place frames side by side, left to right.

    Parameters
    ----------
    frames : sequence of np.ndarray
        Non-empty; each RGB ``uint8`` ``(H_i, W_i, 3)``. Shorter frames are padded at the
        bottom to the tallest one.
    pad : int
        Width in px of the separator between frames (and of nothing at the ends).
    fill : int
        Gray level (0-255) of separators and padding; white by default.

    Returns
    -------
    np.ndarray
        ``(max H_i, sum W_i + pad * (n - 1), 3)`` ``uint8``.
    """
    frames = _check_frames(frames)
    if pad < 0:
        raise ValueError(f"pad must be >= 0; got {pad}")
    H = max(f.shape[0] for f in frames)
    widths = [f.shape[1] for f in frames]
    out = np.full((H, sum(widths) + pad * (len(frames) - 1), 3), fill, np.uint8)
    x = 0
    for f, w in zip(frames, widths):
        out[: f.shape[0], x:x + w] = f
        x += w + pad
    return out


_SUPPORTED = (".png", ".gif")


def save_frames(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 2.0) -> Path:
    """Write frames to ``path``: a horizontal PNG strip (``.png``) or an animated GIF (``.gif``).

    Parameters
    ----------
    frames : sequence of np.ndarray
        Non-empty; each RGB ``uint8`` ``(H, W, 3)``. For a GIF, frames of different sizes
        are padded (bottom/right, black) to the largest size.
    path : str or os.PathLike
        Destination; parent directories are created. The extension (case-insensitive)
        selects the format.
    fps : float
        GIF playback rate in frames per second (each frame lasts ``1000 / fps`` ms, rounded
        to the GIF's 10 ms resolution by viewers). The GIF loops forever. Pillow merges
        consecutive identical frames into one longer frame. Ignored for PNG.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        Unsupported extension, invalid frames or ``fps <= 0``.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in _SUPPORTED:
        raise ValueError(f"unsupported file extension {path.suffix!r} for {path}; supported: .png, .gif")
    frames = _check_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ext == ".png":
        strip = frame_strip(frames)
        if not cv2.imwrite(str(path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
        return path

    if not fps > 0:
        raise ValueError(f"fps must be > 0; got {fps}")
    from PIL import Image  # Pillow is a dependency of matchenv only for GIF export

    H = max(f.shape[0] for f in frames)
    W = max(f.shape[1] for f in frames)
    images = [Image.fromarray(_pad_to(f, H, W, 0), mode="RGB") for f in frames]
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(int(round(1000.0 / fps)), 10),
        loop=0,  # 0 = loop forever
        disposal=1,  # every frame is full-size and opaque: keep it, no clearing flicker
    )
    return path


# ---------------------------------------------------------------------------------------
# render_mode="human"
# ---------------------------------------------------------------------------------------
_PYGAME_MISSING = 'render_mode="human" needs pygame: pip install "matchenv[human]" (or pip install pygame)'
_NO_DISPLAY = (
    "render_mode=\"human\" could not open a window: no display was found ({err}). Use "
    "render_mode=\"rgb_array\" for headless runs, or set SDL_VIDEODRIVER=dummy to run the "
    "viewer without showing anything."
)


class HumanViewer:
    """Shows RGB frames in a window with pygame (optional dependency).

    The window is created lazily at the size of the first frame and resized when the
    frame size changes. Closing the window stops further drawing (``show`` becomes a
    no-op) rather than reopening it on the next step.

    Parameters
    ----------
    caption : str
        Window title.
    fps : float
        Maximum display rate; ``show`` sleeps to keep to it. ``<= 0`` means no limit.

    Raises
    ------
    ImportError
        If pygame is not installed.
    """

    def __init__(self, caption: str = "matchenv", fps: float = 4.0):
        try:
            import pygame
        except ImportError as exc:  # includes sys.modules["pygame"] = None
            raise ImportError(_PYGAME_MISSING) from exc
        self._pg = pygame
        self.caption = str(caption)
        self.fps = float(fps)
        self._screen = None
        self._clock = None
        self.closed_by_user = False

    @property
    def is_open(self) -> bool:
        """Whether a window is currently shown."""
        return self._screen is not None

    def _open(self, width: int, height: int) -> None:
        pg = self._pg
        try:
            if not pg.display.get_init():
                pg.display.init()
            self._screen = pg.display.set_mode((width, height))
        except pg.error as exc:
            self._screen = None
            raise RuntimeError(_NO_DISPLAY.format(err=exc)) from exc
        pg.display.set_caption(self.caption)
        if self._clock is None:
            self._clock = pg.time.Clock()

    def show(self, frame: np.ndarray) -> None:
        """Display ``frame``, an RGB ``uint8`` ``(H, W, 3)`` array.

        Raises
        ------
        RuntimeError
            If no display is available.
        """
        (frame,) = _check_frames([frame])
        if self.closed_by_user:
            return
        pg = self._pg
        h, w = frame.shape[:2]
        if self._screen is None or self._screen.get_size() != (w, h):
            self._open(w, h)
        # frombuffer shares memory with the array; blit copies it into the window surface.
        surf = pg.image.frombuffer(np.ascontiguousarray(frame).tobytes(), (w, h), "RGB")
        self._screen.blit(surf, (0, 0))
        # Pump events so the OS does not mark the window unresponsive; honour the close button.
        for event in pg.event.get():
            if event.type == pg.QUIT:
                self.close()
                self.closed_by_user = True
                return
        pg.display.flip()
        self._clock.tick(self.fps if self.fps > 0 else 0)

    def close(self) -> None:
        """Close the window (idempotent)."""
        if self._screen is not None or self._pg.display.get_init():
            self._pg.display.quit()
        self._screen = None

    def __enter__(self) -> "HumanViewer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
