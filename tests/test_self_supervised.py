"""Self-supervised photo pairs (SelfSupervisedPhotos) and the appearance changes that make their templates.

Every image here is synthetic and written to a temporary folder: no shared data, no downloads.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from matchenv.datasets import DATASETS, SearchPair, make_dataset
from matchenv.datasets.appearance import (
    AppearanceChange,
    add_noise,
    gaussian_blur,
    occlude,
    photometric_jitter,
    random_warp,
)
from matchenv.datasets.photos import ImageReadError, crop_box, nominal_window
from matchenv.datasets.self_supervised import MIN_IMAGE_SIDE, SelfSupervisedPhotos
from matchenv.geometry import letterbox, resize_image

# (file name, height, width): both orientations, PNG/JPG/BMP, one in a sub-folder, one larger than
# the default working size (320 px) so that it is shrunk.
IMAGES = [
    ("a.png", 120, 160),
    ("b.jpg", 200, 90),
    ("c.png", 300, 400),
    ("sub/d.JPG", 100, 150),
    ("sub/e.bmp", 120, 120),
]
N_PAIRS = 24


# ---------------------------------------------------------------------------------- helpers
def texture(height: int, width: int, seed: int) -> np.ndarray:
    """A textured RGB image: smooth random colours, fine grain and a few filled shapes."""
    rng = np.random.default_rng(seed)
    coarse = (rng.random((height // 8 + 2, width // 8 + 2, 3)) * 255).astype(np.uint8)
    img = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    img = cv2.add(img, (rng.random((height, width, 3)) * 40).astype(np.uint8))
    for _ in range(8):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        centre = (int(rng.integers(width)), int(rng.integers(height)))
        if rng.random() < 0.5:
            cv2.circle(img, centre, int(rng.integers(4, 25)), colour, -1)
        else:
            cv2.rectangle(img, centre, (centre[0] + int(rng.integers(5, 40)), centre[1] + int(rng.integers(5, 40))), colour, -1)
    return img


def write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix.lower(), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(data.tobytes())


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Zero-mean normalised cross-correlation of two equal-shape images (all channels)."""
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def target_crop(pair: SearchPair) -> np.ndarray:
    return crop_box(pair.reference, pair.target_box)


def assert_same_pair(a: SearchPair, b: SearchPair) -> None:
    for name in ("query", "reference", "target_box", "template"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.window_size == b.window_size and a.meta == b.meta


def train_pairs(dataset: SelfSupervisedPhotos, n: int = N_PAIRS, seed: int = 0) -> list[SearchPair]:
    rng = np.random.default_rng(seed)
    return [dataset.sample(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for i, (name, h, w) in enumerate(IMAGES):
        write_image(root / name, texture(h, w, seed=i))
    (root / "notes.txt").write_text("not an image")
    (root / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # hidden: must be skipped
    return root


@pytest.fixture(scope="module")
def dataset(folder) -> SelfSupervisedPhotos:
    return SelfSupervisedPhotos(folder, test_size=50)


@pytest.fixture(scope="module")
def smooth() -> np.ndarray:
    """A 48x64 image with texture at every scale (for the appearance functions)."""
    return texture(48, 64, seed=42)


# ---------------------------------------------------------------------------------- pairs
def test_registered():
    assert DATASETS["SelfSupervisedPhotos"] is SelfSupervisedPhotos


def test_finds_images_recursively(dataset):
    assert sorted(dataset.keys) == sorted(name for name, _, _ in IMAGES)


@pytest.mark.parametrize("split", ["train", "test"])
def test_pair_shapes_and_boxes(dataset, split):
    pairs = train_pairs(dataset) if split == "train" else [dataset.test_pair(i) for i in range(N_PAIRS)]
    for pair in pairs:
        assert pair.query.shape == (32, 32, 3) and pair.query.dtype == np.uint8
        assert pair.reference.dtype == np.uint8 and pair.reference.ndim == 3 and pair.reference.shape[2] == 3
        assert pair.template.dtype == np.uint8 and pair.template.shape[2] == 3
        assert pair.window_size == nominal_window(pair.template.shape, pair.reference.shape)
        assert max(pair.reference.shape[:2]) <= 320
        ref_h, ref_w = pair.reference.shape[:2]
        x0, y0, x1, y1 = pair.target_box
        assert 0 <= x0 < x1 <= ref_w and 0 <= y0 < y1 <= ref_h
        np.testing.assert_array_equal(pair.target_box, np.round(pair.target_box))  # whole pixels
        assert pair.template.shape[0] <= ref_h and pair.template.shape[1] <= ref_w
        assert pair.meta["split"] == split
        # the working size and the way back to the original image's pixels
        orig_h, orig_w = pair.meta["original_size"]
        assert ref_h == round(orig_h * pair.meta["working_scale"]) and ref_w == round(orig_w * pair.meta["working_scale"])
        assert Path(pair.meta["path"]).is_file()


def test_large_image_is_shrunk_to_working_size(dataset):
    index = dataset.keys.index("c.png")
    image, factor, original = dataset.working_image(index)
    assert original == (300, 400) and image.shape == (240, 320, 3) and factor == pytest.approx(0.8)


def test_query_is_letterboxed_template():
    images = [texture(120, 160, seed=s) for s in range(3)]
    wide = SelfSupervisedPhotos(images, aspect_range=(2.0, 2.0), template_scale=(1.0, 1.0))
    for pair in train_pairs(wide, n=8):
        np.testing.assert_array_equal(pair.query, letterbox(pair.template, (32, 32)))
        h, w = pair.template.shape[:2]
        assert w > h  # a wide region gives a wide template: black bars above and below
        bar = (32 - round(h * 32 / w)) // 2
        assert bar >= 4 and not pair.query[:bar].any() and not pair.query[-bar:].any()


def test_same_seed_same_pair(dataset):
    for a, b in zip(train_pairs(dataset, n=6, seed=3), train_pairs(dataset, n=6, seed=3)):
        assert_same_pair(a, b)
    a, b = train_pairs(dataset, n=2, seed=4)
    assert not np.array_equal(a.target_box, b.target_box) or a.meta["index"] != b.meta["index"]


def test_test_pairs_are_fixed(dataset, folder):
    fresh = SelfSupervisedPhotos(folder, test_size=50)  # its own (empty) image cache
    for i in (0, 7, 49):
        assert_same_pair(dataset.test_pair(i), dataset.test_pair(i))
        assert_same_pair(dataset.test_pair(i), fresh.test_pair(i))
    assert not np.array_equal(dataset.test_pair(0).template, dataset.test_pair(1).template)
    with pytest.raises(IndexError, match="test_size=50"):
        dataset.test_pair(50)


def test_split_is_by_image(dataset):
    train, test = set(dataset.train_indices), set(dataset.test_indices)
    assert not train & test and train | test == set(range(len(IMAGES)))
    assert len(test) == 1  # round(0.2 * 5)
    assert {p.meta["index"] for p in train_pairs(dataset, n=40)} <= train
    assert {dataset.test_pair(i).meta["index"] for i in range(40)} <= test
    train_paths = {str(dataset.sources[i]) for i in train}
    assert not {dataset.test_pair(i).meta["path"] for i in range(10)} & train_paths


def test_split_barely_moves_when_an_image_is_added():
    images = [texture(60, 60, seed=s) for s in range(21)]
    before = SelfSupervisedPhotos(images[:20], test_fraction=0.25)
    after = SelfSupervisedPhotos(images, test_fraction=0.25)
    assert len(before.test_indices) == 5 and len(after.test_indices) == 5
    # the 20 shared images keep their side, except at most the one displaced by the newcomer
    moved = set(before.test_indices) ^ (set(after.test_indices) - {20})
    assert len(moved) <= 1


def test_exclude_leaves_images_out(folder):
    dataset = SelfSupervisedPhotos(folder, exclude=[folder / "a.png", str(folder / "sub" / "e.bmp")])
    assert sorted(dataset.keys) == ["b.jpg", "c.png", "sub/d.JPG"]


def test_template_is_not_a_copy_but_matches(dataset):
    scores = []
    for pair in train_pairs(dataset, n=40):
        target = target_crop(pair)
        template = resize_image(pair.template, target.shape[:2])
        assert not np.array_equal(template, target)
        scores.append(ncc(template, target))
    assert np.mean(scores) > 0.5, scores


def test_template_is_the_crop_without_appearance_change(folder):
    exact = SelfSupervisedPhotos(
        folder, appearance=AppearanceChange.none(), reference_appearance=None, template_scale=(1.0, 1.0)
    )
    for pair in train_pairs(exact) + [exact.test_pair(i) for i in range(5)]:
        np.testing.assert_array_equal(pair.template, target_crop(pair))
        index = pair.meta["index"]
        np.testing.assert_array_equal(pair.reference, exact.working_image(index)[0])


def test_reference_appearance_changes_the_reference_not_the_cache(folder):
    dataset = SelfSupervisedPhotos(folder)
    pair = dataset.sample(np.random.default_rng(0))
    cached = dataset.working_image(pair.meta["index"])[0]
    before = cached.copy()
    assert not np.array_equal(pair.reference, cached)
    assert ncc(pair.reference, cached) > 0.9
    pair.reference[:] = 0  # the pair's arrays are the caller's
    np.testing.assert_array_equal(dataset.working_image(pair.meta["index"])[0], before)


def test_template_scale_sets_the_templates_size_not_the_target(folder):
    dataset = SelfSupervisedPhotos(folder, template_scale=(0.5, 2.0))
    ratios = []
    for pair in train_pairs(dataset, n=40):
        box_h, box_w = pair.target_box[3] - pair.target_box[1], pair.target_box[2] - pair.target_box[0]
        ratio = np.sqrt(pair.template.shape[0] * pair.template.shape[1] / (box_h * box_w))
        assert ratio == pytest.approx(pair.meta["template_scale"], rel=0.15)
        ratios.append(ratio)
        win_h, win_w = pair.window_size  # the scale the agent must choose is reachable
        assert dataset.scale_range[0] - 0.05 <= np.sqrt(box_h * box_w / (win_h * win_w)) <= dataset.scale_range[1]
    assert min(ratios) < 0.8 and max(ratios) > 1.25


def test_region_side_must_be_reachable(folder):
    with pytest.raises(ValueError, match=r"region_side.*scale_range"):
        SelfSupervisedPhotos(folder, region_side=(0.02, 0.4), scale_range=(0.6, 1.5))


def test_flat_regions_are_avoided():
    flat_left = texture(120, 160, seed=5)
    flat_left[:, :100] = 128  # most of the image is one flat gray
    textured = SelfSupervisedPhotos([flat_left, flat_left], reference_appearance=None)
    anywhere = SelfSupervisedPhotos([flat_left, flat_left], reference_appearance=None, min_region_std=0)

    def gray_stds(dataset):
        return [cv2.cvtColor(target_crop(p), cv2.COLOR_RGB2GRAY).std() for p in train_pairs(dataset, n=40)]

    assert min(gray_stds(textured)) >= 12
    assert min(gray_stds(anywhere)) < 1  # without the check, flat regions do come up


def test_arrays_and_make_dataset():
    images = [texture(100, 140, seed=s) for s in range(3)]
    dataset = make_dataset("SelfSupervisedPhotos", images=images, appearance={"occlusion_prob": 0.0}, test_size=10)
    assert dataset.appearance.occlusion_prob == 0.0 and dataset.appearance.rotation == AppearanceChange().rotation
    pair = dataset.test_pair(3)
    assert pair.meta["path"] is None and pair.reference.shape == (100, 140, 3)
    images[pair.meta["index"]][:] = 0  # the dataset keeps its own copies
    assert_same_pair(pair, dataset.test_pair(3))


def test_pickle_keeps_pairs_and_drops_decoded_files(dataset):
    train_pairs(dataset, n=4)  # decode (and cache) some files
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._cache == {}
    assert_same_pair(dataset.test_pair(5), clone.test_pair(5))


def test_single_image_is_used_for_both_splits(tmp_path):
    write_image(tmp_path / "only.png", texture(80, 80, seed=1))
    with pytest.warns(UserWarning, match="single image"):
        dataset = SelfSupervisedPhotos(tmp_path)
    assert dataset.train_indices == dataset.test_indices == [0]
    assert isinstance(dataset.test_pair(0), SearchPair)


# ---------------------------------------------------------------------------------- errors
def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"no images found in .*\.jpg, \.jpeg, \.png, \.bmp, \.webp"):
        SelfSupervisedPhotos(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        SelfSupervisedPhotos(tmp_path / "nowhere")


def test_unreadable_file(tmp_path):
    write_image(tmp_path / "good.png", texture(80, 80, seed=1))
    (tmp_path / "broken.jpg").write_bytes(b"this is not a JPEG")
    with pytest.raises(ImageReadError, match=r"cannot use image .*broken\.jpg"):
        SelfSupervisedPhotos(tmp_path)


def test_file_unreadable_at_first_use(tmp_path):
    for name in ("a.png", "b.png"):
        write_image(tmp_path / name, texture(80, 80, seed=1))
    dataset = SelfSupervisedPhotos(tmp_path)  # sizes come from the headers; pixels are read lazily
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"corrupted since")
    with pytest.raises(ImageReadError, match=r"cannot use image .*[ab]\.png"):
        dataset.sample(np.random.default_rng(0))


def test_all_images_too_small(tmp_path):
    for i in range(2):
        write_image(tmp_path / f"tiny{i}.png", texture(40, 60, seed=i))
    with pytest.raises(ValueError, match=f"all 2 images have a shorter side under {MIN_IMAGE_SIDE} px"):
        SelfSupervisedPhotos(tmp_path)


def test_small_images_are_skipped_with_one_warning(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"ok{i}.png", texture(80, 100, seed=i))
    for i in range(2):
        write_image(tmp_path / f"tiny{i}.png", texture(30, 90, seed=i))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = SelfSupervisedPhotos(tmp_path)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "skipped 2 of 5 images" in messages[0] and "tiny0.png" in messages[0]
    assert sorted(dataset.keys) == ["ok0.png", "ok1.png", "ok2.png"]


def test_bad_arrays_and_parameters():
    with pytest.raises(ValueError, match=r"RGB uint8 array of shape \(H, W, 3\)"):
        SelfSupervisedPhotos([np.zeros((80, 80), dtype=np.uint8)])
    with pytest.raises(ValueError, match="region_side"):
        SelfSupervisedPhotos([texture(80, 80, 0)], region_side=(0.5, 1.5))
    with pytest.raises(ValueError, match="test_fraction"):
        SelfSupervisedPhotos([texture(80, 80, 0)], test_fraction=1.0)


# ---------------------------------------------------------------------------------- appearance
def test_zero_strength_is_identity(smooth):
    rng = np.random.default_rng(0)
    for out in (
        photometric_jitter(smooth),
        gaussian_blur(smooth, 0.0),
        add_noise(smooth, 0.0, rng),
        random_warp(smooth, rng, rotation=0, shear=0, stretch=0, perspective=0),
        occlude(smooth, rng, max_fraction=0.0),
        AppearanceChange.none().apply(smooth, rng),
    ):
        assert out is not smooth
        np.testing.assert_array_equal(out, smooth)


def test_every_change_keeps_dtype_shape_and_input(smooth):
    rng = np.random.default_rng(0)
    before = smooth.copy()
    outputs = [
        photometric_jitter(smooth, brightness=1.2, contrast=0.8, saturation=1.3, hue=8, gamma=1.2),
        gaussian_blur(smooth, 1.2),
        add_noise(smooth, 8.0, rng),
        random_warp(smooth, rng),
        occlude(smooth, rng, max_fraction=0.25),
        AppearanceChange().apply(smooth, rng),
        AppearanceChange.mild().apply(smooth, rng),
    ]
    for out in outputs:
        assert out.dtype == np.uint8 and out.shape == smooth.shape
    np.testing.assert_array_equal(smooth, before)


def test_photometric_directions(smooth):
    mean, std = smooth.mean(), smooth.std()
    assert photometric_jitter(smooth, brightness=1.25).mean() > mean + 10
    assert photometric_jitter(smooth, brightness=0.75).mean() < mean - 10
    assert photometric_jitter(smooth, contrast=0.5).std() < 0.6 * std
    luma = cv2.cvtColor(smooth, cv2.COLOR_RGB2GRAY).mean()
    low = cv2.cvtColor(photometric_jitter(smooth, contrast=0.5), cv2.COLOR_RGB2GRAY).mean()
    assert abs(low - luma) < 1  # contrast pivots on the mean gray
    assert photometric_jitter(smooth, gamma=1.5).mean() < mean - 5
    gray = photometric_jitter(smooth, saturation=0.0).astype(int)
    assert np.abs(gray - gray[:, :, :1]).max() <= 1  # no colour left
    np.testing.assert_allclose(photometric_jitter(smooth, hue=360.0), smooth, atol=1)


def test_hue_shift_is_about_the_requested_angle():
    red = np.full((4, 4, 3), (200, 60, 60), dtype=np.uint8)  # hue 0 deg
    shifted = photometric_jitter(red, hue=20.0)
    hue = cv2.cvtColor(shifted, cv2.COLOR_RGB2HSV_FULL)[0, 0, 0] * 360.0 / 256.0
    assert 15 < hue < 25  # towards yellow; HSV's hexagon is not a circle, so only about 20


def high_frequency_energy(image: np.ndarray) -> float:
    return float(np.mean(cv2.Laplacian(image.astype(np.float32), cv2.CV_32F) ** 2))


def test_blur_lowers_high_frequencies(smooth):
    energy = high_frequency_energy(smooth)
    assert high_frequency_energy(gaussian_blur(smooth, 0.6)) < 0.8 * energy
    assert high_frequency_energy(gaussian_blur(smooth, 1.2)) < high_frequency_energy(gaussian_blur(smooth, 0.6))


def test_noise_has_the_requested_std():
    gray = np.full((64, 64, 3), 128, dtype=np.uint8)
    noisy = add_noise(gray, 8.0, np.random.default_rng(0))
    assert noisy.astype(float).std() == pytest.approx(8.0, rel=0.1)
    assert abs(noisy.astype(float).mean() - 128) < 0.5
    np.testing.assert_array_equal(noisy, add_noise(gray, 8.0, np.random.default_rng(0)))
    assert not np.array_equal(noisy, add_noise(gray, 8.0, np.random.default_rng(1)))


def test_warp_is_small_and_reproducible(smooth):
    warped = random_warp(smooth, np.random.default_rng(0))
    assert not np.array_equal(warped, smooth)
    assert ncc(warped, smooth) > 0.5
    np.testing.assert_array_equal(warped, random_warp(smooth, np.random.default_rng(0)))


def test_occlusion_covers_at_most_the_fraction():
    image = np.full((40, 50, 3), 7, dtype=np.uint8)  # no fill colour or noise equals it in all channels often
    rng = np.random.default_rng(0)
    changed = []
    for _ in range(200):
        out = occlude(image, rng, max_fraction=0.25)
        covered = np.any(out != image, axis=2)
        assert covered.sum() <= 0.25 * covered.size
        ys, xs = np.nonzero(covered)
        if len(ys):  # one rectangle
            assert covered[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].mean() > 0.95
        changed.append(covered.mean())
    assert max(changed) > 0.15 and np.mean(changed) > 0.05


def test_appearance_change_apply_is_reproducible_and_varied(smooth):
    change = AppearanceChange()
    a = change.apply(smooth, np.random.default_rng(5))
    np.testing.assert_array_equal(a, change.apply(smooth, np.random.default_rng(5)))
    assert not np.array_equal(a, change.apply(smooth, np.random.default_rng(6)))
    assert AppearanceChange.none().is_identity and not AppearanceChange().is_identity


def test_appearance_change_validation():
    with pytest.raises(ValueError, match="contrast"):
        AppearanceChange(contrast=(1.3, 0.7))
    with pytest.raises(ValueError, match="blur_prob"):
        AppearanceChange(blur_prob=1.5)
    with pytest.raises(ValueError, match="noise_std"):
        AppearanceChange(noise_std=-1)
    with pytest.raises(ValueError, match="no field"):
        AppearanceChange().replace(sharpness=2)
    assert AppearanceChange(contrast=[0.8, 1.2]).contrast == (0.8, 1.2)  # lists (config files) become tuples
    with pytest.raises(ValueError, match=r"RGB uint8 image of shape \(H, W, 3\)"):
        AppearanceChange().apply(np.zeros((8, 8), dtype=np.uint8), np.random.default_rng(0))
