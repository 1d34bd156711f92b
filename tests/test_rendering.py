"""Tests for matchenv.rendering: frames, strips, PNG/GIF export and the pygame viewer."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from matchenv.rendering import (
    HumanViewer,
    frame_strip,
    render_search,
    save_frames,
    to_rgb,
    window_colors,
)

GREEN = np.array([0, 255, 0], np.uint8)


@pytest.fixture
def scene():
    """100x100 gray noise reference with a bright square; the query is that square."""
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 100, (100, 100), dtype=np.uint8)
    ref[30:50, 20:40] = 240
    query = ref[30:50, 20:40].copy()
    target = (20.0, 30.0, 40.0, 50.0)
    return ref, query, target


def _is(px: np.ndarray, color) -> bool:
    return bool(np.array_equal(px, np.asarray(color, np.uint8)))


def test_shape_dtype_and_default_scale(scene):
    ref, query, target = scene
    frame = render_search(ref, query, [(0, 0, 10, 10)], target)
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.flags["C_CONTIGUOUS"]
    # 100x100 -> x4: the reference occupies 400 px and the panel sits to its right.
    assert frame.shape[0] == 400 and frame.shape[1] > 400
    assert render_search(ref, query, [], scale=2).shape[0] == 200


def test_target_box_is_green_on_its_edge(scene):
    ref, query, target = scene
    s = 4
    frame = render_search(ref, query, [], target, scale=s)
    x0, y0, x1, y1 = (int(v * s) for v in target)
    # Ring of 2 px just outside the box, so a window exactly on the target stays visible.
    for y in (y0 - 1, y0 - 2, y1, y1 + 1):
        assert (frame[y, x0:x1] == GREEN).all()
    for x in (x0 - 1, x0 - 2, x1, x1 + 1):
        assert (frame[y0:y1, x] == GREEN).all()
    # The inside of the box is the (upscaled) reference, untouched.
    assert (frame[y0 + 5, x0 + 5] == 240).all()
    # No green where there is no target.
    plain = render_search(ref, query, [], None, scale=s)
    assert not (plain[:, :400] == GREEN).all(axis=-1).any()


def test_window_colours_follow_colormap_and_latest_is_thicker(scene):
    ref, query, target = scene
    s = 4
    wins = [(5, 60, 25, 80), (60, 5, 80, 25), (60, 60, 90, 90)]
    frame = render_search(ref, query, wins, target, scale=s)
    cols = window_colors(3)
    # Blue first, red/yellow last: the colormap runs from blue towards red/yellow.
    assert cols[0][2] > cols[0][0] and cols[-1][0] > cols[-1][2]
    assert len({tuple(c) for c in cols}) == 3
    for (x0, y0, x1, y1), col in zip(wins, cols):
        xm = int((x0 + x1) / 2 * s) + 3  # bottom edge, off the centre column where the path may run
        assert _is(frame[int(y1 * s) - 1, xm], col)
        assert _is(frame[int((y0 + y1) / 2 * s) + 3, int(x1 * s) - 1], col)
    # s=4 -> older windows 2 px, latest 3 px wide (inside the box).
    x0, y0, x1, y1 = wins[0]
    assert not _is(frame[int(y1 * s) - 3, int((x0 + x1) / 2 * s) + 3], cols[0])
    x0, y0, x1, y1 = wins[-1]
    assert _is(frame[int(y1 * s) - 3, int((x0 + x1) / 2 * s) + 3], cols[-1])


def test_max_windows_keeps_colours_stable(scene):
    ref, query, _ = scene
    wins = [(5, 5, 25, 25), (50, 50, 70, 70)]
    a = render_search(ref, query, wins[:1], max_windows=6, scale=4)
    b = render_search(ref, query, wins, max_windows=6, scale=4)
    first = window_colors(6)[0]
    assert _is(a[25 * 4 - 1, 60], first) and _is(b[25 * 4 - 1, 60], first)


def test_image_formats_give_the_same_frame(scene):
    ref, query, target = scene
    wins = [(10, 10, 40, 40), (20, 30, 40, 50)]
    gray = render_search(ref, query, wins, target)
    as_rgb = render_search(np.dstack([ref] * 3), np.dstack([query] * 3), wins, target)
    chw1 = render_search(ref[None], query[None], wins, target)
    hw1 = render_search(ref[..., None], query[..., None], wins, target)
    chw3 = render_search(np.stack([ref] * 3), np.stack([query] * 3), wins, target)
    for other in (as_rgb, chw1, hw1, chw3):
        np.testing.assert_array_equal(gray, other)
    # Grayscale is shown as gray RGB.
    assert (gray[5, 100] == gray[5, 100, 0]).all()


def test_colour_channel_first_matches_channel_last():
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    query = ref[8:24, 8:24]
    hwc = render_search(ref, query, [(8, 8, 24, 24)], (8, 8, 24, 24))
    chw = render_search(ref.transpose(2, 0, 1), query.transpose(2, 0, 1), [(8, 8, 24, 24)], (8, 8, 24, 24))
    np.testing.assert_array_equal(hwc, chw)
    # Colours are kept in RGB order: the reference area is the upscaled image.
    s = 400 // 64
    np.testing.assert_array_equal(hwc[40 * s, 50 * s], ref[40, 50])


def test_to_rgb_rejects_bad_shapes():
    with pytest.raises(ValueError):
        to_rgb(np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(ValueError):
        to_rgb(np.zeros((2, 3, 4, 5), np.uint8))
    assert to_rgb(np.ones((4, 5), np.float32)).max() == 255


@pytest.mark.parametrize("empty", [[], np.zeros((0, 4)), None])
def test_empty_windows(scene, empty):
    ref, query, target = scene
    frame = render_search(ref, query, empty, target)
    assert frame.shape[0] == 400
    # Same layout (frame size) whether or not a window has been placed, so episodes stack.
    assert frame.shape == render_search(ref, query, [(0, 0, 20, 20)], target).shape
    assert frame.shape == render_search(ref, query, [], None).shape


def test_boxes_outside_the_image_are_clipped(scene):
    ref, query, _ = scene
    s = 4
    col = window_colors(2)[0]
    frame = render_search(ref, query, [(-10, -10, 10, 10), (95, 95, 130, 130)], (90, -5, 120, 8),
                          distractor_boxes=[(-5, 70, 10, 90)], scale=s)
    # The clipped window's left edge sits on the image border.
    assert _is(frame[30, 0], col)
    # Fully outside boxes are ignored, NaN rows are padding.
    render_search(ref, query, [(200, 200, 220, 220)], (300, 300, 310, 310), scale=s)
    render_search(ref, query, np.array([[1, 1, 5, 5], [np.nan] * 4]), scale=s)


def test_distractors_and_title(scene):
    ref, query, target = scene
    base = render_search(ref, query, [], target, scale=4)
    with_d = render_search(ref, query, [], target, distractor_boxes=[(60, 60, 80, 80)], scale=4)
    assert (base != with_d).any(axis=-1)[240:320, 240:320].any()
    t1 = render_search(ref, query, [], target, scale=4, title="step 1")
    t2 = render_search(ref, query, [], target, scale=4, title="step 2 " + "long " * 40 + "\nsecond line")
    assert t1.shape == t2.shape  # the title never changes the layout
    assert (t1 != t2).any()


def test_bad_arguments(scene):
    ref, query, target = scene
    with pytest.raises(ValueError):
        render_search(ref, query, [(1, 2, 3)], target)
    with pytest.raises(ValueError):
        render_search(ref, query, [], [target, target])
    with pytest.raises(ValueError):
        render_search(ref, query, [], target, scale=0)


def test_frame_strip_pads_to_tallest():
    a = np.zeros((10, 6, 3), np.uint8)
    b = np.full((20, 4, 3), 7, np.uint8)
    strip = frame_strip([a, b], pad=3)
    assert strip.shape == (20, 6 + 3 + 4, 3) and strip.dtype == np.uint8
    assert (strip[:10, :6] == 0).all()
    assert (strip[:, 9:] == 7).all()
    assert (strip[:, 6:9] == 255).all() and (strip[10:, :6] == 255).all()
    assert frame_strip([a]).shape == a.shape
    with pytest.raises(ValueError):
        frame_strip([])


def _episode(scene, n=4):
    ref, query, target = scene
    wins = [(5, 5, 25, 25), (40, 10, 60, 30), (15, 25, 35, 45), (20, 30, 40, 50)]
    return [render_search(ref, query, wins[:t], target, max_windows=n, title=f"step {t}") for t in range(n)]


def test_save_png_round_trip(scene, tmp_path):
    frames = _episode(scene)
    out = save_frames(frames, tmp_path / "sub" / "dir" / "ep.PNG")
    assert out.exists() and out.parent.name == "dir"
    back = np.asarray(Image.open(out).convert("RGB"))
    np.testing.assert_array_equal(back, frame_strip(frames))


def test_save_gif_round_trip(scene, tmp_path):
    frames = _episode(scene)
    out = save_frames(frames, tmp_path / "ep.gif", fps=4)
    with Image.open(out) as im:
        assert im.n_frames == len(frames)
        assert im.size == (frames[0].shape[1], frames[0].shape[0])
        assert im.info.get("loop") == 0
        assert im.info.get("duration") == 250
    # Frames of different sizes are padded to a common size.
    small = np.zeros((10, 10, 3), np.uint8)
    out = save_frames([small, frames[0]], tmp_path / "mixed.gif")
    with Image.open(out) as im:
        assert im.n_frames == 2 and im.size == (frames[0].shape[1], frames[0].shape[0])


def test_save_frames_rejects_bad_input(scene, tmp_path):
    frames = _episode(scene, 2)
    with pytest.raises(ValueError, match=r"\.png.*\.gif"):
        save_frames(frames, tmp_path / "ep.mp4")
    with pytest.raises(ValueError):
        save_frames([], tmp_path / "ep.png")
    with pytest.raises(ValueError):
        save_frames([frames[0].astype(np.float32)], tmp_path / "ep.png")
    with pytest.raises(ValueError):
        save_frames([frames[0][..., 0]], tmp_path / "ep.gif")
    with pytest.raises(ValueError):
        save_frames(frames[0], tmp_path / "ep.png")  # a single frame, not a list
    with pytest.raises(ValueError):
        save_frames(frames, tmp_path / "ep.gif", fps=0)


def test_human_viewer_headless(scene, monkeypatch):
    pygame = pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    frames = _episode(scene, 2)
    viewer = HumanViewer(caption="test", fps=0)
    try:
        viewer.show(frames[0])
        assert viewer.is_open
        assert pygame.display.get_surface().get_size() == (frames[0].shape[1], frames[0].shape[0])
        viewer.show(frames[1])
        small = np.zeros((50, 60, 3), np.uint8)
        viewer.show(small)  # a new frame size resizes the window
        assert pygame.display.get_surface().get_size() == (60, 50)
        with pytest.raises(ValueError):
            viewer.show(small[..., 0])
    finally:
        viewer.close()
    assert not viewer.is_open
    viewer.close()  # idempotent


def test_human_viewer_without_pygame(monkeypatch):
    monkeypatch.setitem(sys.modules, "pygame", None)  # makes `import pygame` raise ImportError
    with pytest.raises(ImportError, match="pygame"):
        HumanViewer()


def test_human_viewer_without_display(monkeypatch):
    pygame = pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")

    def no_display(*args, **kwargs):
        raise pygame.error("No available video device")

    monkeypatch.setattr(pygame.display, "set_mode", no_display)
    viewer = HumanViewer()
    try:
        with pytest.raises(RuntimeError, match="rgb_array"):
            viewer.show(np.zeros((8, 8, 3), np.uint8))
    finally:
        viewer.close()
