"""Two-view self-supervised pairs (TwoViewPhotos, ViewChange): the target is where the template's content went.

Every image is synthetic and made in memory: no shared data, no downloads.
"""

from __future__ import annotations

import numpy as np
import pytest

from matchenv.datasets import DATASETS, make_dataset
from matchenv.datasets.appearance import AppearanceChange
from matchenv.datasets.photos import crop_box
from matchenv.datasets.two_views import TwoViewPhotos, ViewChange, deform_near, inside_fraction, map_box
from matchenv.geometry import iou

from test_self_supervised import texture

IMAGES = [texture(240, 320, seed) for seed in range(4)] + [texture(300, 200, 9)]
#: No change at all but where the second view's frame falls: a pure translation.
STILL = ViewChange(scale=(1.0, 1.0), rotation=0.0, perspective=0.0, deformation=0.0, occlusion_prob=0.0,
                   appearance=AppearanceChange.none(), template_appearance=AppearanceChange.none())


def test_a_translated_view_shows_the_template_exactly_at_the_target():
    data = TwoViewPhotos(IMAGES, view_change=STILL, max_side=None)
    rng = np.random.default_rng(0)
    moved = whole = 0
    for _ in range(30):
        pair = data.sample(rng)
        x0, y0, x1, y1 = pair.target_box
        h, w = pair.reference.shape[:2]
        if x0 == 0 or y0 == 0 or x1 == w or y1 == h:
            continue  # partly outside the frame (up to 10% may be): clipped
        whole += 1
        assert pair.target_box[2] - x0 == pair.template.shape[1] and y1 - y0 == pair.template.shape[0]
        np.testing.assert_array_equal(crop_box(pair.reference, pair.target_box), pair.template)
        # the frame is 0.8 of the photograph: the target moved in it
        assert pair.reference.shape[:2] == tuple(round(0.8 * s) for s in pair.meta["original_size"])
        moved += not np.allclose(pair.target_box, pair.meta["template_box"])
    assert moved > 20 and whole > 20


def test_changed_views_keep_the_target_inside_near_the_template_size_and_are_reproducible():
    data = make_dataset("TwoViewPhotos", images=IMAGES, max_side=None)
    assert DATASETS["TwoViewPhotos"] is TwoViewPhotos and data.template_sized_window
    rng = np.random.default_rng(1)
    for _ in range(40):
        pair = data.sample(rng)
        h, w = pair.reference.shape[:2]
        x0, y0, x1, y1 = pair.target_box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        th, tw = pair.template.shape[:2]
        # scale 0.8-1.25, and a rotation of at most 8 degrees and a 3% tilt grow the bounding box a little
        assert 0.6 < (x1 - x0) / tw < 1.7 and 0.6 < (y1 - y0) / th < 1.7
        assert pair.window_size == (th, tw)
    first, again = data.test_pair(3), data.test_pair(3)
    np.testing.assert_array_equal(first.reference, again.reference)
    np.testing.assert_array_equal(first.template, again.template)
    a, b = data.sample(np.random.default_rng(7)), data.sample(np.random.default_rng(7))
    np.testing.assert_array_equal(a.reference, b.reference)


def test_map_box_and_inside_fraction():
    shift = np.array([[1.0, 0, 5], [0, 1.0, -3], [0, 0, 1]])
    np.testing.assert_allclose(map_box(shift, [10, 10, 20, 30]), [15, 7, 25, 27])
    double = np.diag([2.0, 2.0, 1.0])
    np.testing.assert_allclose(map_box(double, [10, 10, 20, 30]), [20, 20, 40, 60])
    assert inside_fraction(np.array([-10.0, 0, 10, 10]), 100, 100) == pytest.approx(0.5)
    assert inside_fraction(np.array([0.0, 0, 10, 10]), 100, 100) == 1.0


def test_deformation_moves_pixels_near_the_target_only():
    image = texture(200, 200, 3)
    box = np.array([80.0, 80, 120, 120])
    out = deform_near(image, box, 0.2, np.random.default_rng(0))
    changed = np.any(out != image, axis=2)
    assert changed[80:120, 80:120].mean() > 0.3
    assert not changed[:50].any() and not changed[:, :50].any() and not changed[150:].any()
    assert iou(box, box) == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": (1.2, 0.9)}, "scale"),
        ({"rotation": -1}, "rotation"),
        ({"frame_fraction": 0.1}, "frame_fraction"),
        ({"occlusion_prob": 2}, "occlusion_prob"),
        ({"occlusion_fraction": (0.2, 1.5)}, "occlusion_fraction"),
    ],
)
def test_view_change_rejects_bad_values_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViewChange(**kwargs)


def test_view_change_from_a_dict_and_a_scale_outside_the_windows_reach():
    change = ViewChange.from_dict({"scale": [0.9, 1.1], "appearance": {"blur_prob": 0.0}})
    assert change.scale == (0.9, 1.1) and change.appearance.blur_prob == 0.0
    with pytest.raises(ValueError, match="unknown field"):
        ViewChange.from_dict({"sclae": [0.9, 1.1]})
    with pytest.raises(ValueError, match="scale_range"):
        TwoViewPhotos(IMAGES, view_change={"scale": [0.3, 1.0]})
