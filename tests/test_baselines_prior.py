"""The centre-box control: a blind answer whose size is fitted on training pairs only."""

from __future__ import annotations

import numpy as np
import pytest

from matchenv.agents.baselines import CentreBox, make_matcher
from matchenv.datasets.base import SearchPair
from matchenv.datasets.photos import nominal_window


def pair(reference_hw, query_hw, target_box) -> SearchPair:
    return SearchPair(query=np.zeros((*query_hw, 3), np.uint8), reference=np.zeros((*reference_hw, 3), np.uint8),
                      target_box=np.asarray(target_box, np.float64))


def test_fixed_size_answer_is_the_query_size_box_at_the_centre_whatever_the_images_show():
    prior = CentreBox()
    rng = np.random.default_rng(0)
    answers = {tuple(prior.locate(rng.integers(0, 256, (28, 28), dtype=np.uint8),
                                  rng.integers(0, 256, (100, 120), dtype=np.uint8)).box) for _ in range(3)}
    assert answers == {(46.0, 36.0, 74.0, 64.0)}
    assert prior.locate(np.zeros((28, 28), np.uint8), np.zeros((100, 120), np.uint8)).evaluated == 0


def test_photograph_answer_is_the_nominal_window_times_scale_clipped_to_the_reference():
    prior = CentreBox(scale=2.0, window_fraction=0.4)
    h, w = nominal_window((20, 40), (200, 300), 0.4)
    box = prior.box((20, 40, 3), (200, 300, 3))
    np.testing.assert_allclose(box, [150 - w, 100 - h, 150 + w, 100 + h])
    whole = CentreBox(scale=100.0, window_fraction=0.4).box((20, 40, 3), (200, 300, 3))
    np.testing.assert_allclose(whole, [0, 0, 300, 200])


def test_fit_chooses_the_scale_that_covers_centred_training_targets():
    # Every training target is centred and twice the query's side: the fitted scale is 2.
    pairs = [pair((100, 100), (10, 10), [40, 40, 60, 60]), pair((80, 120), (10, 10), [50, 30, 70, 50])]
    assert CentreBox.fit(pairs).scale == pytest.approx(2.0)
    assert CentreBox.fit(pairs, scales=(0.5, 1.0, 2.0, 3.0)).scale == 2.0


def test_fit_and_constructor_reject_bad_input():
    with pytest.raises(ValueError, match="at least one training pair"):
        CentreBox.fit([])
    with pytest.raises(ValueError, match="scale must be > 0"):
        CentreBox(scale=0.0)
    with pytest.raises(ValueError, match="window_fraction"):
        CentreBox(window_fraction=1.5)
    with pytest.raises(ValueError, match="larger than the reference"):
        CentreBox().locate(np.zeros((30, 30), np.uint8), np.zeros((20, 20), np.uint8))


def test_registered_under_its_name():
    assert make_matcher("centre-box").name == "centre-box"
