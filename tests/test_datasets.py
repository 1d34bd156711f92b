"""Invariants of the Noisy MNIST pair datasets (Translated, Cluttered, Mixed), train and test splits."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import matchenv
from matchenv.datasets import DATASETS, SearchPair, make_dataset
from matchenv.geometry import iou

VARIANTS = ["TranslatedMNIST", "ClutteredMNIST", "MixedMNIST"]
SPLITS = ["train", "test"]
N_PAIRS = 24
# No noise, clutter or distractors: the reference under the target box is exactly the placed digit.
CLEAN = dict(noise_std=0.0, n_clutter=0, n_distractors=(0, 0))


def make_pairs(dataset, split: str, n: int = N_PAIRS, seed: int = 0) -> list[SearchPair]:
    if split == "train":
        rng = np.random.default_rng(seed)
        return [dataset.sample(rng) for _ in range(n)]
    return [dataset.test_pair(i) for i in range(n)]


def digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def crop(pair: SearchPair) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in pair.target_box)
    return pair.reference[y0:y1, x0:x1, 0]


def assert_same_pair(a: SearchPair, b: SearchPair) -> None:
    for field in ("query", "reference", "target_box", "distractor_boxes"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert a.label == b.label and a.meta == b.meta


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def dataset(variant):
    return make_dataset(variant)


@pytest.fixture(scope="module", params=SPLITS)
def split(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def pairs(dataset, split) -> list[SearchPair]:
    return make_pairs(dataset, split)


@pytest.fixture(scope="module")
def digit_hashes(dataset) -> dict[str, set[str]]:
    return {s: {digest(img) for img in dataset.digits(s).images} for s in SPLITS}


# ============================================================================ pair invariants


def test_target_box_is_inside_the_canvas(dataset, pairs):
    size = dataset.canvas_size
    for pair in pairs:
        assert pair.reference.shape == (size, size, 1) and pair.reference.dtype == np.uint8
        x0, y0, x1, y1 = pair.target_box
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size


def test_query_has_the_target_class(dataset, split, pairs):
    labels = dataset.digits(split).labels
    for pair in pairs:
        assert labels[pair.meta["query_index"]] == labels[pair.meta["target_index"]] == pair.label


def test_query_is_another_instance_than_the_target(dataset, split, pairs):
    images = dataset.digits(split).images
    for pair in pairs:
        assert pair.meta["query_index"] != pair.meta["target_index"]
        assert not np.array_equal(pair.query[:, :, 0], images[pair.meta["target_index"]])


def test_query_is_the_clean_digit_at_query_index(dataset, split, pairs):
    images = dataset.digits(split).images
    for pair in pairs:
        assert pair.query.shape == (28, 28, 1) and pair.query.dtype == np.uint8
        np.testing.assert_array_equal(pair.query[:, :, 0], images[pair.meta["query_index"]])


def test_pairs_record_their_split(split, pairs):
    assert all(pair.meta["split"] == split for pair in pairs)


def test_pairs_use_only_digits_of_their_own_split(split, pairs, digit_hashes):
    other = "test" if split == "train" else "train"
    for pair in pairs:
        h = digest(pair.query[:, :, 0])
        assert h in digit_hashes[split] and h not in digit_hashes[other]


def test_train_and_test_digits_share_no_identical_image(digit_hashes):
    assert len(digit_hashes["train"]) > 0 and len(digit_hashes["test"]) > 0
    assert not digit_hashes["train"] & digit_hashes["test"]


@pytest.mark.parametrize("split_name", SPLITS)
def test_target_index_points_at_the_placed_digit_of_the_right_split(variant, split_name):
    dataset = make_dataset(variant, **CLEAN)
    images = dataset.digits(split_name).images
    for pair in make_pairs(dataset, split_name):
        np.testing.assert_array_equal(crop(pair), images[pair.meta["target_index"]])


# ============================================================================ fixed test split


def test_test_pair_is_identical_across_instances_and_independent_of_other_calls(variant):
    fresh, busy = make_dataset(variant), make_dataset(variant)
    rng = np.random.default_rng(1)
    busy.sample(rng)
    busy.test_pair(3)
    busy.pair("test", rng)
    for index in (0, 5, busy.test_size - 1):
        busy.sample(rng)
        assert_same_pair(fresh.test_pair(index), busy.test_pair(index))


def test_test_pair_depends_on_test_seed(variant):
    a, b = make_dataset(variant, test_seed=1), make_dataset(variant, test_seed=2)
    assert not np.array_equal(a.test_pair(0).reference, b.test_pair(0).reference)


@pytest.mark.parametrize("index", [-1, 1000])
def test_test_pair_index_out_of_range_raises_index_error(variant, index):
    with pytest.raises(IndexError, match="test_size"):
        make_dataset(variant).test_pair(index)


def test_training_pairs_follow_the_generator(variant):
    dataset = make_dataset(variant)
    assert_same_pair(dataset.sample(np.random.default_rng(5)), dataset.sample(np.random.default_rng(5)))
    assert not np.array_equal(
        dataset.sample(np.random.default_rng(5)).reference, dataset.sample(np.random.default_rng(6)).reference
    )


# ============================================================================ construction errors


def test_unknown_dataset_name_raises_value_error_listing_valid_names():
    with pytest.raises(ValueError, match="Nope") as err:
        make_dataset("Nope")
    for name in DATASETS:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bogus": 1}, "bogus"),
        ({"n_distractors": (3, 1)}, "n_distractors"),
        ({"n_distractors": (0, 10)}, "n_distractors"),
        ({"clutter_size": 0}, "clutter_size"),
        ({"clutter_size": 29}, "clutter_size"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"test_size": 0}, "test_size"),
        ({"scale_range": (1.5, 0.7)}, "scale_range"),
        ({"scale_range": (0.0, 1.0)}, "scale_range"),
    ],
)
def test_bad_dataset_kwargs_raise_value_error(variant, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_dataset(variant, **kwargs)


@pytest.mark.parametrize("kwargs", [{"canvas_size": 20}, {"canvas_size": 27}, {"canvas_size": 40, "scale_range": (0.5, 1.5)}])
def test_canvas_smaller_than_the_digit_raises_value_error(variant, kwargs):
    with pytest.raises(ValueError, match="larger than the reference"):
        make_dataset(variant, **kwargs)


def test_canvas_exactly_the_digit_size_works(variant):
    pair = make_dataset(variant, canvas_size=28, n_distractors=(0, 0)).sample(np.random.default_rng(0))
    np.testing.assert_array_equal(pair.target_box, [0, 0, 28, 28])


# ============================================================================ harder options


def test_scale_range_varies_the_digit_size_within_range(variant):
    dataset = make_dataset(variant, scale_range=(0.7, 1.5), **CLEAN)
    sides = set()
    for split_name in SPLITS:
        for pair in make_pairs(dataset, split_name):
            x0, y0, x1, y1 = pair.target_box
            assert 0 <= x0 < x1 <= dataset.canvas_size and 0 <= y0 < y1 <= dataset.canvas_size
            assert x1 - x0 == y1 - y0
            assert round(28 * 0.7) <= x1 - x0 <= round(28 * 1.5)
            sides.add(x1 - x0)
    assert len(sides) > 5 and min(sides) < 28 < max(sides)


def test_rotation_changes_the_placed_digit(variant):
    dataset = make_dataset(variant, max_rotation=30.0, **CLEAN)
    for split_name in SPLITS:
        images = dataset.digits(split_name).images
        for pair in make_pairs(dataset, split_name):
            assert pair.target_box[2] - pair.target_box[0] == 28
            assert not np.array_equal(crop(pair), images[pair.meta["target_index"]])


def test_contrast_range_scales_the_placed_digit(variant):
    dataset = make_dataset(variant, contrast_range=(0.3, 0.6), **CLEAN)
    for split_name in SPLITS:
        images = dataset.digits(split_name).images
        for pair in make_pairs(dataset, split_name):
            digit = images[pair.meta["target_index"]].astype(np.float64)
            placed = crop(pair).astype(np.float64)
            assert placed.max() <= 0.6 * digit.max() + 1 and placed.max() >= 0.3 * digit.max() - 1
            assert np.all(placed <= digit)


def test_options_default_to_the_unmodified_digit(variant):
    # Control for the three tests above: without the options the crop is the digit itself.
    dataset = make_dataset(variant, **CLEAN)
    images = dataset.digits("train").images
    pair = dataset.sample(np.random.default_rng(0))
    np.testing.assert_array_equal(crop(pair), images[pair.meta["target_index"]])


# ============================================================================ Mixed MNIST


@pytest.mark.parametrize("split_name", SPLITS)
def test_mixed_mnist_distractors_have_other_classes(split_name):
    dataset = make_dataset("MixedMNIST")
    labels = dataset.digits(split_name).labels
    for pair in make_pairs(dataset, split_name):
        indices = pair.meta["distractor_indices"]
        assert 2 <= len(indices) <= 4 and len(indices) == len(pair.distractor_boxes)
        classes = [int(labels[i]) for i in indices]
        assert pair.label not in classes
        assert len(set(classes)) == len(classes)


@pytest.mark.parametrize("split_name", SPLITS)
def test_mixed_mnist_digits_overlap_at_most_max_overlap_iou(split_name):
    dataset = make_dataset("MixedMNIST")
    for pair in make_pairs(dataset, split_name):
        boxes = np.vstack([pair.target_box[None], pair.distractor_boxes])
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                assert iou(boxes[i], boxes[j]) <= dataset.max_overlap_iou
        assert np.all((boxes[:, :2] >= 0) & (boxes[:, 2:] <= dataset.canvas_size))


@pytest.mark.parametrize("split_name", SPLITS)
def test_mixed_mnist_distractor_indices_point_at_the_placed_digits(split_name):
    # Without noise or clutter, max-compositing keeps every placed digit's ink: the reference
    # under a distractor box is at least the digit its index names.
    dataset = make_dataset("MixedMNIST", noise_std=0.0, n_clutter=0)
    images = dataset.digits(split_name).images
    for pair in make_pairs(dataset, split_name):
        for idx, box in zip(pair.meta["distractor_indices"], pair.distractor_boxes):
            x0, y0, x1, y1 = (int(v) for v in box)
            assert np.all(pair.reference[y0:y1, x0:x1, 0] >= images[idx])


def test_large_canvases_keep_a_variants_clutter_density():
    from matchenv.datasets import ClutteredMNIST, MixedMNIST, TranslatedMNIST
    from matchenv.datasets.noisy_mnist import canvas_kwargs, default_clutter_density

    assert [default_clutter_density(c) for c in (ClutteredMNIST, MixedMNIST, TranslatedMNIST)] == [8.0, 4.0, 0.0]
    assert canvas_kwargs(250, 8.0) == {"canvas_size": 250, "n_clutter": 50}
    assert canvas_kwargs(1000, 4.0, {"n_distractors": [9, 9]}) == {"n_distractors": [9, 9], "canvas_size": 1000, "n_clutter": 400}
    assert canvas_kwargs(333, 8.0)["n_clutter"] == 89  # 88.7 fragments, rounded
    data = make_dataset("MixedMNIST", test_size=1, **canvas_kwargs(300, 4.0, {"n_distractors": (9, 9)}))
    assert data.test_pair(0).reference.shape[:2] == (300, 300)


def _flaky_dataset(bad_every: int):
    """Translated MNIST whose every ``bad_every``-th training draw fails to decode."""
    from matchenv.datasets.base import ImageReadError

    class Flaky(type(matchenv.make_dataset("TranslatedMNIST"))):
        calls = 0

        def sample(self, rng):
            self.calls += 1
            if self.calls % bad_every == 0:
                raise ImageReadError(f"cannot decode image broken_{self.calls}.jpg (a truncated file)")
            return super().sample(rng)

    return Flaky()


def test_an_unreadable_training_pair_is_skipped_counted_and_warned():
    import gymnasium as gym

    from matchenv.datasets.base import UnreadablePairWarning

    dataset = _flaky_dataset(bad_every=3)
    env = gym.make("TemplateSearch-v0", dataset=dataset)
    with pytest.warns(UnreadablePairWarning, match="broken_3.jpg"):
        for seed in range(4):
            env.reset(seed=seed)
    assert dataset.unreadable_draws == 1 and dataset.training_draws == 5  # draws 1, 2, (3 skipped), 4, 5


def test_too_many_unreadable_pairs_stop_with_a_clear_error():
    import warnings

    from matchenv.datasets.base import UNREADABLE_GRACE, TooManyUnreadablePairs

    dataset = _flaky_dataset(bad_every=2)  # half of the draws fail: the data is broken
    rng = np.random.default_rng(0)
    with warnings.catch_warnings(), pytest.raises(TooManyUnreadablePairs, match="could not be decoded"):
        warnings.simplefilter("ignore")
        for _ in range(10 * UNREADABLE_GRACE):
            dataset.pair("train", rng)
    assert dataset.unreadable_draws == UNREADABLE_GRACE + 1
