"""Property tests of matchenv.geometry: IoU, box conversions, window placement and crops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from matchenv.geometry import crop_window, cxcywh_to_xyxy, iou, place_window, xyxy_to_cxcywh

coord = st.floats(-200, 200, allow_nan=False, allow_infinity=False)
size = st.floats(0.5, 150, allow_nan=False, allow_infinity=False)


@st.composite
def boxes(draw, min_size: float = 0.5) -> np.ndarray:
    """A non-empty box (x0, y0, x1, y1)."""
    x0, y0 = draw(coord), draw(coord)
    w, h = draw(st.floats(min_size, 150)), draw(st.floats(min_size, 150))
    return np.array([x0, y0, x0 + w, y0 + h])


@st.composite
def any_boxes(draw) -> np.ndarray:
    """Any four finite numbers, including empty and inverted boxes."""
    return np.array([draw(coord) for _ in range(4)])


image_sides = st.integers(1, 64)


@st.composite
def images(draw, channels=st.sampled_from([None, 1, 3])):
    h, w, c = draw(image_sides), draw(image_sides), draw(channels)
    shape = (h, w) if c is None else (h, w, c)
    return draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 255)))


# ============================================================================ IoU


@given(any_boxes(), any_boxes())
def test_iou_is_symmetric(a, b):
    assert iou(a, b) == iou(b, a)


@given(any_boxes(), any_boxes())
def test_iou_is_in_unit_interval(a, b):
    value = iou(a, b)
    assert isinstance(value, float)
    assert 0.0 <= value <= 1.0


@given(boxes())
def test_iou_of_a_box_with_itself_is_one(a):
    assert iou(a, a) == pytest.approx(1.0)


@given(boxes(), boxes())
def test_iou_of_disjoint_boxes_is_zero(a, b):
    # Move b entirely to the right of a (touching edges share no area).
    shift = a[2] - b[0] + 1e-3
    b = b + np.array([shift, 0, shift, 0])
    assert iou(a, b) == 0.0


@given(boxes(), boxes())
def test_iou_of_nested_boxes_is_area_ratio(outer, inner):
    # Put a shrunk copy of inner strictly inside outer.
    ow, oh = outer[2] - outer[0], outer[3] - outer[1]
    iw, ih = min(inner[2] - inner[0], ow), min(inner[3] - inner[1], oh)
    nested = np.array([outer[0], outer[1], outer[0] + iw, outer[1] + ih])
    assert iou(outer, nested) == pytest.approx(iw * ih / (ow * oh), rel=1e-9, abs=1e-12)


@given(st.lists(st.tuples(any_boxes(), any_boxes()), min_size=1, max_size=20))
def test_batch_iou_equals_elementwise_iou(box_pairs):
    a = np.stack([p[0] for p in box_pairs])
    b = np.stack([p[1] for p in box_pairs])
    batch = iou(a, b)
    assert isinstance(batch, np.ndarray) and batch.shape == (len(box_pairs),)
    np.testing.assert_array_equal(batch, [iou(x, y) for x, y in box_pairs])


@given(st.lists(any_boxes(), min_size=1, max_size=20), any_boxes())
def test_batch_iou_broadcasts_one_box_against_many(many, one):
    np.testing.assert_array_equal(iou(np.stack(many), one), [iou(m, one) for m in many])


def test_iou_rejects_arrays_that_are_not_boxes():
    with pytest.raises(ValueError, match="shape"):
        iou([0, 0, 1], [0, 0, 1, 1])


# ============================================================================ conversions

dims = st.integers(1, 500)


@given(any_boxes(), dims, dims)
def test_xyxy_cxcywh_round_trip(box, width, height):
    back = cxcywh_to_xyxy(xyxy_to_cxcywh(box, width, height), width, height)
    np.testing.assert_allclose(back, box, rtol=1e-9, atol=1e-9)


@given(st.lists(any_boxes(), min_size=1, max_size=10), dims, dims)
def test_cxcywh_xyxy_round_trip_on_batches(box_list, width, height):
    normalised = xyxy_to_cxcywh(np.stack(box_list), width, height)
    assert normalised.shape == (len(box_list), 4)
    np.testing.assert_allclose(xyxy_to_cxcywh(cxcywh_to_xyxy(normalised, width, height), width, height), normalised, atol=1e-9)


@given(dims, dims)
def test_whole_image_is_centre_half_size_one(width, height):
    np.testing.assert_allclose(xyxy_to_cxcywh([0, 0, width, height], width, height), [0.5, 0.5, 1.0, 1.0])


# ============================================================================ place_window


@given(coord, coord, size, size, st.integers(1, 120), st.integers(1, 120))
def test_place_window_is_inside_the_image_with_the_requested_size(cx, cy, win_w, win_h, img_w, img_h):
    box = place_window(cx, cy, win_w, win_h, img_w, img_h)
    assert box.dtype == np.float64 and box.shape == (4,)
    np.testing.assert_array_equal(box, np.round(box))  # whole pixels
    assert 0 <= box[0] < box[2] <= img_w and 0 <= box[1] < box[3] <= img_h
    assert box[2] - box[0] == min(max(round(win_w), 1), img_w)
    assert box[3] - box[1] == min(max(round(win_h), 1), img_h)


@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 80), st.integers(0, 80))
def test_place_window_keeps_a_centre_where_the_window_fits(win_w, win_h, x0, y0):
    img_w, img_h = x0 + win_w + 5, y0 + win_h + 5
    box = place_window(x0 + win_w / 2, y0 + win_h / 2, win_w, win_h, img_w, img_h)
    np.testing.assert_array_equal(box, [x0, y0, x0 + win_w, y0 + win_h])


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_the_window_geometry_is_the_same_in_numpy_and_in_a_traced_torch_graph():
    """The fused search exports the env's geometry on torch tensors: same windows, same locations,
    half-pixel ties included (rounded half to even on both paths)."""
    import torch

    from matchenv.geometry import absolute_centres, place_windows, window_locations

    rng = np.random.default_rng(0)
    n = 4000
    image_wh = rng.integers(1, 200, (n, 2)).astype(np.float64)
    window_wh = np.where(rng.random((n, 2)) < 0.3, rng.integers(1, 60, (n, 2)) + 0.5, rng.uniform(0.3, 80, (n, 2)))
    action = np.clip(np.round(rng.uniform(-1.2, 1.2, (n, 2)) * 8) / 8, -1.0, 1.0)  # exact ties among them

    def geometry(action, image_wh, window_wh):
        p0, p1 = place_windows(absolute_centres(action, image_wh, window_wh), window_wh, image_wh)
        return p0, p1, window_locations(p0, p1, image_wh)

    expected = geometry(action, image_wh, window_wh)
    traced = torch.jit.trace(geometry, tuple(torch.zeros(2, 2, dtype=torch.float64) + 1 for _ in range(3)))
    got = traced(*(torch.from_numpy(a) for a in (action, image_wh, window_wh)))
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g.numpy(), e)
    p0, p1, _ = expected
    assert (p0 >= 0).all() and (p1 <= image_wh).all() and (p1 - p0 >= 1).all()
    for i in range(0, n, 7):  # and as the env placed windows before the batched geometry (Python scalars)
        np.testing.assert_array_equal(scalar_window(action[i], image_wh[i], window_wh[i]), np.concatenate([p0[i], p1[i]]))
        np.testing.assert_array_equal(place_window(*absolute_centres(action[i], image_wh[i], window_wh[i]),
                                                   *window_wh[i], *image_wh[i]), np.concatenate([p0[i], p1[i]]))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_the_absolute_action_map_with_scales_is_the_same_in_numpy_and_in_a_traced_torch_graph():
    """The exported search step moves windows with the env's AbsoluteAction on torch tensors; its
    scale (torch.exp, not math.exp) places the same whole-pixel windows."""
    import torch

    from matchenv.envs.actions import AbsoluteAction
    from matchenv.geometry import place_windows, window_locations

    rng = np.random.default_rng(1)
    n = 4000
    image_wh = rng.integers(20, 400, (n, 2)).astype(np.float64)
    window_wh = rng.uniform(4, 60, (n, 2))
    action = np.clip(rng.uniform(-1.2, 1.2, (n, 3)), -1.0, 1.0)
    action_map = AbsoluteAction((0.5, 2.0))

    def geometry(action, image_wh, window_wh):
        centre, scale = action_map.move(action, None, None, image_wh, window_wh)
        p0, p1 = place_windows(centre, window_wh * scale[:, None], image_wh)
        return p0, p1, window_locations(p0, p1, image_wh)

    expected = geometry(action, image_wh, window_wh)
    example = (torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64) * 9, torch.ones(2, 2, dtype=torch.float64))
    traced = torch.jit.trace(geometry, example)
    got = traced(*(torch.from_numpy(a) for a in (action, image_wh, window_wh)))
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g.numpy(), e)


def scalar_window(action, image_wh, window_wh) -> np.ndarray:
    """The env's window geometry of 2026-12-05, in plain Python: an independent check of the batched one."""
    (img_w, img_h), (win_w, win_h) = image_wh.tolist(), window_wh.tolist()
    win_w, win_h = min(win_w, img_w), min(win_h, img_h)
    cx = win_w / 2 + (action[0] + 1.0) / 2.0 * (img_w - win_w)
    cy = win_h / 2 + (action[1] + 1.0) / 2.0 * (img_h - win_h)
    w = int(min(max(round(window_wh[0]), 1), img_w))
    h = int(min(max(round(window_wh[1]), 1), img_h))
    x0 = int(min(max(round(cx - w / 2), 0), img_w - w))
    y0 = int(min(max(round(cy - h / 2), 0), img_h - h))
    return np.array([x0, y0, x0 + w, y0 + h], dtype=np.float64)


# ============================================================================ crop_window


@st.composite
def image_and_box(draw, inside: bool = False):
    image = draw(images())
    h, w = image.shape[:2]
    if inside:
        x0, y0 = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
        x1, y1 = draw(st.integers(x0 + 1, w)), draw(st.integers(y0 + 1, h))
    else:  # may stick out on any side, but keeps at least one pixel inside
        x0, y0 = draw(st.integers(-30, w - 1)), draw(st.integers(-30, h - 1))
        x1, y1 = draw(st.integers(max(x0, 0) + 1, w + 30)), draw(st.integers(max(y0, 0) + 1, h + 30))
    return image, np.array([x0, y0, x1, y1], dtype=np.float64)


out_sizes = st.tuples(st.integers(1, 40), st.integers(1, 40))


@given(image_and_box(), out_sizes)
def test_crop_window_returns_requested_size_dtype_and_channels(data, out_size):
    image, box = data
    out = crop_window(image, box, out_size)
    assert out.dtype == np.uint8
    assert out.shape == tuple(out_size) + image.shape[2:]


@given(image_and_box())
def test_crop_window_reads_only_pixels_inside_the_image(data):
    # At the size of the visible part no resizing happens: the crop is exactly the pixels of
    # the box that lie inside the image (no wrap-around of negative indices, no padding).
    image, box = data
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    visible = image[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)]
    out = crop_window(image, box, visible.shape[:2])
    np.testing.assert_array_equal(out, visible)


@given(image_and_box(inside=True), out_sizes)
def test_crop_window_never_aliases_the_image(data, out_size):
    image, box = data
    out = crop_window(image, box, out_size)
    assert not np.shares_memory(out, image)


@given(image_and_box(), out_sizes)
def test_crop_window_values_stay_within_the_visible_range(data, out_size):
    image, box = data
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    visible = image[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)]
    out = crop_window(image, box, out_size)
    assert visible.min() <= out.min() and out.max() <= visible.max()


@given(images(), st.sampled_from(["left", "right", "above", "below"]), st.integers(0, 50), st.integers(1, 30))
def test_crop_of_a_box_outside_the_image_raises_value_error(image, side, gap, extent):
    h, w = image.shape[:2]
    box = {
        "left": [-gap - extent, 0, -gap, h],
        "right": [w + gap, 0, w + gap + extent, h],
        "above": [0, -gap - extent, w, -gap],
        "below": [0, h + gap, w, h + gap + extent],
    }[side]
    with pytest.raises(ValueError, match="no pixels inside"):
        crop_window(image, box, (8, 8))


@given(images(), out_sizes)
def test_crop_window_of_an_empty_box_raises_value_error(image, out_size):
    assume(image.shape[0] > 1 and image.shape[1] > 1)
    with pytest.raises(ValueError):
        crop_window(image, [1, 1, 1, 1], out_size)


@pytest.mark.parametrize("shape, size", [((1000, 1000), (28, 28)), ((1001, 1333, 3), (240, 320)),
                                         ((900, 800, 1), (125, 100)), ((1024, 1024), (512, 512))])
def test_large_images_shrink_by_halvings_to_the_direct_area_average(shape, size):
    from matchenv.geometry import HALVING_MIN_PIXELS, resize_image

    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 8).reshape(shape)
    image = ((noise - noise.min()) / (noise.max() - noise.min()) * 255).astype(np.uint8)  # full contrast, photo-smooth
    assert image.shape[0] * image.shape[1] > HALVING_MIN_PIXELS
    out = resize_image(image, size)
    direct = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA).reshape(out.shape)
    assert out.shape == size + shape[2:] and out.dtype == np.uint8
    # The same area average up to uint8 rounding at each level and sub-pixel sampling differences
    # (a misplaced level or a dropped deep row would be off by tens of grey levels).
    error = np.abs(out.astype(int) - direct)
    assert error.max() <= 16 and error.mean() < 2.0
    assert not np.shares_memory(out, image)


def test_small_images_resize_exactly_as_before():
    from matchenv.geometry import resize_image

    rng = np.random.default_rng(1)
    for shape, size in (((100, 100, 1), (28, 28)), ((320, 240, 3), (32, 32)), ((60, 60, 1), (120, 120))):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        method = cv2.INTER_AREA if size[0] < shape[0] else cv2.INTER_LINEAR
        np.testing.assert_array_equal(resize_image(image, size),
                                      cv2.resize(image, size[::-1], interpolation=method).reshape(size + shape[2:]))


def test_large_images_shrunk_less_than_twofold_resize_directly():
    from matchenv.geometry import resize_image

    image = np.random.default_rng(2).integers(0, 256, (1001, 1001, 1), dtype=np.uint8)
    np.testing.assert_array_equal(resize_image(image, (600, 600)),
                                  cv2.resize(image, (600, 600), interpolation=cv2.INTER_AREA)[:, :, None])
