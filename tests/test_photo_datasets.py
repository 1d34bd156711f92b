"""Photograph datasets read from files: FlickrLogos-27/32, the BBS pair format, user manifests.

Everything runs offline on small synthetic fixtures: FlickrLogos-32, BBS and manifest fixtures
are committed under ``tests/fixtures/`` (regenerate with ``python tests/fixtures/make_photo_fixtures.py``);
the FlickrLogos-27 fixture, and its tarball for the download test, are built in temporary folders.
One test also loads the real FlickrLogos-27 when it is present on this machine.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import shutil
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from matchenv.datasets import DATASETS, KTM, FlickrLogos27, FlickrLogos32, ManifestPairs, TemplateTargetPairs, make_dataset
from matchenv.datasets import logos, pair_files
from matchenv.datasets.logos import read_flickrlogos27_annotations
from matchenv.datasets.photos import (
    AnnotationWarning,
    DatasetFilesError,
    crop_box,
    nominal_window,
    read_image,
    to_original_box,
    xywh_to_xyxy,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FL32_ROOT = FIXTURES / "flickrlogos32"
BBS_DIR = FIXTURES / "bbs_pairs"
MANIFEST_DIR = FIXTURES / "manifest"
REAL_FL27 = Path("/work/shared/data/flickrlogos27")


def _load_fixture_module():
    spec = importlib.util.spec_from_file_location("make_photo_fixtures", FIXTURES / "make_photo_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fx = _load_fixture_module()


# ============================================================================ helpers


def check_pair(pair, dataset, split: str) -> None:
    """Types, shapes and dtypes of a photograph pair, and its box inside its reference."""
    assert pair.query.shape == (32, 32, 3) and pair.query.dtype == np.uint8
    assert pair.reference.dtype == np.uint8 and pair.reference.ndim == 3 and pair.reference.shape[2] == 3
    if dataset.max_side is not None:
        assert max(pair.reference.shape[:2]) <= dataset.max_side
    assert pair.template.dtype == np.uint8 and pair.template.ndim == 3 and pair.template.shape[2] == 3
    # The nominal window is photos.nominal_window (the template's aspect, sized by the reference),
    # or for real pairs of two views (KTM) the template's own size.
    expected = (pair.template.shape[:2] if dataset.template_sized_window
                else nominal_window(pair.template.shape, pair.reference.shape))
    assert pair.window_size == pytest.approx(expected)
    h, w = pair.reference.shape[:2]
    box = pair.target_box
    assert box.shape == (4,) and box.dtype == np.float64
    assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
    assert min(box[2] - box[0], box[3] - box[1]) >= dataset.min_target_side
    meta = pair.meta
    assert meta["split"] == split
    for key in ("working_scale", "original_size", "reference_path", "template_path"):
        assert key in meta
    assert 0 < meta["working_scale"] <= 1
    oh, ow = meta["original_size"]
    assert abs(oh * meta["working_scale"] - h) <= 1 and abs(ow * meta["working_scale"] - w) <= 1


def same_pair(a, b) -> bool:
    return (
        np.array_equal(a.query, b.query)
        and np.array_equal(a.reference, b.reference)
        and np.array_equal(a.template, b.template)
        and np.array_equal(a.target_box, b.target_box)
        and a.meta["reference_path"] == b.meta["reference_path"]
        and a.meta["template_path"] == b.meta["template_path"]
    )


def check_reproducible(dataset) -> None:
    """Same generator seed -> same training pair; test_pair(i) is the same pair every time."""
    assert same_pair(dataset.sample(np.random.default_rng(3)), dataset.sample(np.random.default_rng(3)))
    for i in range(dataset.test_size):
        assert same_pair(dataset.test_pair(i), dataset.test_pair(i))
    with pytest.raises(IndexError, match="test_size"):
        dataset.test_pair(dataset.test_size)


def quiet(factory, *args, **kwargs):
    """Build a dataset, ignoring the annotation warning (tests that check it use pytest.warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnnotationWarning)
        return factory(*args, **kwargs)


# ============================================================================ registry


def test_photo_datasets_are_registered():
    for name in ("FlickrLogos27", "FlickrLogos32", "TemplateTargetPairs", "ManifestPairs"):
        assert name in DATASETS
    assert isinstance(make_dataset("ManifestPairs", path=MANIFEST_DIR / "pairs.csv"), ManifestPairs)
    assert isinstance(make_dataset("FlickrLogos32", root=FL32_ROOT), FlickrLogos32)


# ============================================================================ FlickrLogos-27


@pytest.fixture(scope="module")
def fl27_root(tmp_path_factory) -> Path:
    """A FlickrLogos-27 look-alike: the folder that holds ``flickr_logos_27_dataset/``."""
    root = tmp_path_factory.mktemp("fl27")
    fx.make_flickrlogos27(root)
    return root


@pytest.fixture(scope="module")
def fl27(fl27_root) -> FlickrLogos27:
    return quiet(FlickrLogos27, root=fl27_root, augment=False)  # checks the pair protocol itself


@pytest.fixture
def no_fl27_sources(monkeypatch, tmp_path):
    """No FlickrLogos-27 anywhere: no env var, an empty private cache."""
    monkeypatch.delenv(logos.FLICKRLOGOS27_ENV, raising=False)
    monkeypatch.setenv("MATCHENV_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "flickrlogos27"


def test_fl27_annotations_are_deduplicated_and_the_zero_area_box_is_skipped_with_one_warning(fl27_root):
    folder = fl27_root / logos.FL27_FOLDER
    boxes, n_lines = read_flickrlogos27_annotations(folder / logos.FL27_ANNOTATIONS)
    distinct = sum(len(v) for v in fx.FL27_BOXES.values())
    assert n_lines == sum(7 - b[5] for v in fx.FL27_BOXES.values() for b in v)  # each box repeated per subset
    assert sum(len(v) for v in boxes.values()) == distinct
    with pytest.warns(AnnotationWarning, match=r"1 zero-area box\(es\): 3002\.jpg Initech \[3, 97, 3, 97\]") as record:
        dataset = FlickrLogos27(root=fl27_root)
    assert len(record) == 1
    assert dataset.num_boxes == distinct - 1
    assert dataset.classes == ["Acme", "Globex", "Initech"]


def test_fl27_pairs_have_the_right_types_shapes_and_provenance(fl27):
    rng = np.random.default_rng(0)
    for _ in range(20):
        pair = fl27.sample(rng)
        check_pair(pair, fl27, "train")
        assert pair.label in fl27.classes and pair.meta["brand"] == pair.label
        assert pair.meta["template_path"] != pair.meta["reference_path"]
    for i in range(fl27.test_size):
        check_pair(fl27.test_pair(i), fl27, "test")


def test_fl27_split_is_by_image_and_train_and_test_never_share_an_image(fl27):
    train = {g.image.name for g in fl27.groups("train")}
    test = {g.image.name for g in fl27.groups("test")}
    assert train and test and not train & test
    assert ("1005.jpg" in train) != ("1005.jpg" in test)  # the two-brand image is wholly on one side
    assert fl27.test_size == len(fl27.groups("test"))
    rng = np.random.default_rng(1)
    for _ in range(30):
        pair = fl27.sample(rng)
        assert Path(pair.meta["reference_path"]).name in train and Path(pair.meta["template_path"]).name in train
    for i in range(fl27.test_size):
        pair = fl27.test_pair(i)
        assert Path(pair.meta["reference_path"]).name in test and Path(pair.meta["template_path"]).name in test


def test_fl27_split_and_test_pairs_are_fixed_by_test_seed(fl27_root, fl27):
    again = quiet(FlickrLogos27, root=fl27_root)
    assert [g.image.name for g in again.groups("test")] == [g.image.name for g in fl27.groups("test")]
    check_reproducible(fl27)
    for i in range(fl27.test_size):
        assert same_pair(fl27.test_pair(i), again.test_pair(i))
    other = quiet(FlickrLogos27, root=fl27_root, test_seed=5)
    assert {g.image.name for g in other.groups("test")} != {g.image.name for g in fl27.groups("test")}


def test_fl27_target_is_the_largest_box_and_the_template_the_largest_box_of_another_image(fl27):
    rng = np.random.default_rng(2)
    groups = {(g.image.name, g.brand): g for s in ("train", "test") for g in fl27.groups(s)}
    seen_multi = False
    for _ in range(40):
        pair = fl27.sample(rng)
        group = groups[(Path(pair.meta["reference_path"]).name, pair.label)]
        areas = (group.boxes[:, 2] - group.boxes[:, 0]) * (group.boxes[:, 3] - group.boxes[:, 1])
        assert areas[0] == areas.max()
        np.testing.assert_allclose(pair.target_box, group.boxes[0])  # max_side 320 > 160: no resizing
        np.testing.assert_allclose(pair.meta["other_instances"], group.boxes[1:])
        seen_multi |= len(group.boxes) > 1
        source = groups[(Path(pair.meta["template_path"]).name, pair.label)]
        expected = crop_box(read_image(source.image), source.boxes[0])
        np.testing.assert_array_equal(pair.template, expected)
    assert seen_multi  # 3001.jpg has two Initech logos


def test_fl27_resizing_maps_boxes_back_to_the_annotation(fl27_root):
    dataset = quiet(FlickrLogos27, root=fl27_root, max_side=64)
    groups = {(g.image.name, g.brand): g for g in dataset.groups("test")}
    for i in range(dataset.test_size):
        pair = dataset.test_pair(i)
        check_pair(pair, dataset, "test")
        assert max(pair.reference.shape[:2]) == 64 and pair.meta["working_scale"] == pytest.approx(0.4)
        group = groups[(Path(pair.meta["reference_path"]).name, pair.label)]
        np.testing.assert_allclose(to_original_box(pair.target_box, pair.meta), group.boxes[0], atol=1e-9)
        assert max(pair.template.shape[:2]) < 0.5 * 160  # cut from the shrunk template image


def test_fl27_small_targets_are_skipped_with_a_warning_and_an_empty_split_is_an_error(fl27_root):
    with pytest.warns(AnnotationWarning, match=r"under min_target_side=45 px.*1001\.jpg Acme"):
        dataset = FlickrLogos27(root=fl27_root, max_side=None, min_target_side=45)
    for split in ("train", "test"):
        for group in dataset.groups(split):
            assert min(group.boxes[0, 2] - group.boxes[0, 0], group.boxes[0, 3] - group.boxes[0, 1]) >= 45
    with pytest.warns(AnnotationWarning), pytest.raises(ValueError, match="no usable train pairs.*min_target_side"):
        FlickrLogos27(root=fl27_root, min_target_side=1000)
    with pytest.raises(ValueError, match="test_fraction"):
        FlickrLogos27(root=fl27_root, test_fraction=0.0)


def test_fl27_missing_images_are_an_error_listing_them_and_the_folder(fl27_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(fl27_root, root)
    images = root / logos.FL27_FOLDER / logos.FL27_IMAGES
    (images / "2003.jpg").unlink()
    with pytest.raises(
        DatasetFilesError,
        match=r"1 annotated image file\(s\) are missing from .*flickr_logos_27_dataset_images: 2003\.jpg",
    ):
        FlickrLogos27(root=root)


def test_fl27_is_found_from_root_either_folder_or_the_environment_variable(
    fl27_root, fl27, no_fl27_sources, monkeypatch
):
    inner = fl27_root / logos.FL27_FOLDER
    assert quiet(FlickrLogos27, root=fl27_root).root == inner
    assert quiet(FlickrLogos27, root=inner).root == inner
    monkeypatch.setenv(logos.FLICKRLOGOS27_ENV, str(fl27_root))
    from_env = quiet(FlickrLogos27)
    assert from_env.root == inner and from_env.test_size == fl27.test_size
    monkeypatch.setenv(logos.FLICKRLOGOS27_ENV, str(fl27_root / "nowhere"))
    with pytest.raises(DatasetFilesError, match="MATCHENV_FLICKRLOGOS27.*does not exist"):
        FlickrLogos27()
    with pytest.raises(DatasetFilesError, match="FlickrLogos-27 not found in .*root argument"):
        FlickrLogos27(root=fl27_root.parent)


def test_fl27_root_with_packed_images_says_to_extract_them(fl27_root, tmp_path):
    root = tmp_path / "packed"
    shutil.copytree(fl27_root, root)
    folder = root / logos.FL27_FOLDER
    with tarfile.open(folder / logos.FL27_NESTED_TARBALL, "w:gz") as tar:
        tar.add(folder / logos.FL27_IMAGES, arcname=logos.FL27_IMAGES)
    shutil.rmtree(folder / logos.FL27_IMAGES)
    with pytest.raises(DatasetFilesError, match="still packed.*tar xzf flickr_logos_27_dataset_images.tar.gz"):
        FlickrLogos27(root=root)


def _fl27_tarball(fl27_root: Path, path: Path) -> Path:
    """The official layout: flickr_logos_27_dataset/ with the annotations and a nested images tarball."""
    folder = fl27_root / logos.FL27_FOLDER
    nested = io.BytesIO()
    with tarfile.open(fileobj=nested, mode="w:gz") as tar:
        tar.add(folder / logos.FL27_IMAGES, arcname=logos.FL27_IMAGES)
    with tarfile.open(path, "w:gz") as tar:
        for name in (logos.FL27_ANNOTATIONS, "flickr_logos_27_dataset_query_set_annotation.txt"):
            tar.add(folder / name, arcname=f"{logos.FL27_FOLDER}/{name}")
        info = tarfile.TarInfo(f"{logos.FL27_FOLDER}/{logos.FL27_NESTED_TARBALL}")
        info.size = nested.getbuffer().nbytes
        nested.seek(0)
        tar.addfile(info, nested)
    return path


def test_fl27_downloads_into_the_cache_and_extracts_the_nested_tarball(
    fl27_root, fl27, no_fl27_sources, monkeypatch, tmp_path
):
    tarball = _fl27_tarball(fl27_root, tmp_path / "flickr_logos_27_dataset.tar.gz")
    monkeypatch.setattr(logos, "FLICKRLOGOS27_URL", tarball.as_uri())
    dataset = quiet(FlickrLogos27, download=True)  # explicit: the test session is offline by default
    cache = no_fl27_sources
    assert dataset.root == cache / logos.FL27_FOLDER
    assert (cache / logos.FL27_FOLDER / logos.FL27_IMAGES / "1001.jpg").is_file()
    assert not (cache / logos.FL27_FOLDER / logos.FL27_NESTED_TARBALL).exists()
    assert [p.name for p in cache.iterdir()] == [logos.FL27_FOLDER]  # no partial files left behind
    assert dataset.test_size == fl27.test_size
    # The cache is used from now on: a broken URL and MATCHENV_OFFLINE=1 do not matter.
    monkeypatch.setattr(logos, "FLICKRLOGOS27_URL", (tmp_path / "gone.tar.gz").as_uri())
    assert quiet(FlickrLogos27).root == cache / logos.FL27_FOLDER


def test_fl27_offline_without_data_is_an_error_explaining_the_three_ways(no_fl27_sources, monkeypatch):
    monkeypatch.setenv("MATCHENV_OFFLINE", "1")
    with pytest.raises(DatasetFilesError, match="downloading is disabled") as err:
        FlickrLogos27()
    message = str(err.value)
    for hint in ("root=", logos.FLICKRLOGOS27_ENV, logos.FLICKRLOGOS27_URL, str(no_fl27_sources)):
        assert hint in message
    with pytest.raises(DatasetFilesError, match="downloading is disabled"):
        FlickrLogos27(download=False)


def test_fl27_failed_download_is_an_error_and_leaves_no_partial_files(no_fl27_sources, monkeypatch, tmp_path):
    monkeypatch.setattr(logos, "FLICKRLOGOS27_URL", (tmp_path / "missing.tar.gz").as_uri())
    with pytest.raises(DatasetFilesError, match="download failed"):
        FlickrLogos27(download=True)
    not_a_tarball = tmp_path / "page.tar.gz"
    not_a_tarball.write_text("<html>moved</html>")
    monkeypatch.setattr(logos, "FLICKRLOGOS27_URL", not_a_tarball.as_uri())
    with pytest.raises(DatasetFilesError, match="download failed"):
        FlickrLogos27(download=True)
    assert not any(no_fl27_sources.iterdir())


def test_fl27_download_refuses_archive_members_outside_the_cache(no_fl27_sources, monkeypatch, tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    monkeypatch.setattr(logos, "FLICKRLOGOS27_URL", evil.as_uri())
    with pytest.raises(DatasetFilesError, match="would land outside"):
        FlickrLogos27(download=True)
    assert not (no_fl27_sources.parent / "escaped.txt").exists()
    assert not (no_fl27_sources / "escaped.txt").exists()


def test_photo_dataset_pickles_without_its_image_cache(fl27):
    fl27.test_pair(0)
    assert fl27._images
    clone = pickle.loads(pickle.dumps(fl27))
    assert clone._images == {}
    assert same_pair(clone.test_pair(0), fl27.test_pair(0))


@pytest.mark.skipif(not REAL_FL27.is_dir(), reason="the real FlickrLogos-27 is not on this machine")
def test_real_flickrlogos27_counts():
    with pytest.warns(AnnotationWarning, match=r"1 zero-area box\(es\): 2662264721\.jpg RedBull \[3, 197, 3, 197\]"):
        dataset = FlickrLogos27(root=REAL_FL27)
    assert dataset.num_boxes == 1260
    assert len(dataset.classes) == 27
    train = {g.image.name for g in dataset.groups("train")}
    test = {g.image.name for g in dataset.groups("test")}
    assert not train & test
    # 810 (image, brand) groups, less the RedBull one whose only box has zero area.
    n_skipped = sum(len(items) for reason, items in dataset.skipped.items() if reason != "zero-area box(es)")
    assert len(dataset.groups("train")) + dataset.test_size + n_skipped == 809
    check_pair(dataset.test_pair(0), dataset, "test")


# ============================================================================ FlickrLogos-32


@pytest.fixture(scope="module")
def fl32() -> FlickrLogos32:
    return FlickrLogos32(FL32_ROOT, augment=False)


def _fl32_list(name: str) -> set[tuple[str, str]]:
    lines = (FL32_ROOT / "FlickrLogos-v2" / name).read_text().split()
    return {tuple(line.split(",")) for line in lines}


def test_fl32_reads_the_documented_layout(fl32):
    assert fl32.classes == ["HP", "acme", "globex"]  # HP's boxes live in masks/hp
    assert fl32.test_size == 6 and len(fl32.groups("train")) == 6
    assert fl32.num_boxes == 6 + 9  # train: 6 images x 1 box; test: 6 images, one per brand with two boxes
    check_reproducible(fl32)
    rng = np.random.default_rng(0)
    for _ in range(10):
        check_pair(fl32.sample(rng), fl32, "train")
    for i in range(fl32.test_size):
        check_pair(fl32.test_pair(i), fl32, "test")


def test_fl32_train_pairs_come_from_trainset_and_test_pairs_from_testset_logosonly(fl32):
    train, test = _fl32_list("trainset.txt"), _fl32_list("testset-logosonly.txt")

    def key(path: str) -> tuple[str, str]:
        return (Path(path).parent.name, Path(path).name)

    rng = np.random.default_rng(4)
    for _ in range(20):
        pair = fl32.sample(rng)
        assert key(pair.meta["reference_path"]) in train and key(pair.meta["template_path"]) in train
    for i in range(fl32.test_size):
        pair = fl32.test_pair(i)
        assert key(pair.meta["reference_path"]) in test and key(pair.meta["template_path"]) in test
    assert not {key(str(g.image)) for g in fl32.groups("train")} & {key(str(g.image)) for g in fl32.groups("test")}


def test_fl32_boxes_are_x_y_width_height_and_the_largest_is_the_target(fl32):
    by_image = {g.image.name: g for g in fl32.groups("test")}
    x, y, w, h = fx.FL32_LAYOUT[4][0]
    group = by_image["4000004.jpg"]
    np.testing.assert_array_equal(group.boxes[0], xywh_to_xyxy((x, y, w, h)))
    np.testing.assert_array_equal(group.boxes[1], xywh_to_xyxy(fx.FL32_LAYOUT[4][1]))
    index = [g.image.name for g in fl32.groups("test")].index("4000004.jpg")
    pair = fl32.test_pair(index)
    np.testing.assert_array_equal(pair.target_box, group.boxes[0])
    np.testing.assert_array_equal(pair.meta["other_instances"], group.boxes[1:])


def test_fl32_val_and_trainval_splits_and_no_logo_is_skipped():
    val = FlickrLogos32(FL32_ROOT / "FlickrLogos-v2", split="val")
    val_list = _fl32_list("valset-logosonly.txt")
    assert {(g.image.parent.name, g.image.name) for g in val.groups("test")} == val_list
    trainval = FlickrLogos32(FL32_ROOT, train_split="trainval")  # its list includes a no-logo image
    assert len(trainval.groups("train")) == 12 and "no-logo" not in trainval.classes
    with pytest.raises(ValueError, match="overlap"):
        FlickrLogos32(FL32_ROOT, split="val", train_split="trainval")
    with pytest.raises(ValueError, match="split must be"):
        FlickrLogos32(FL32_ROOT, split="train")


def test_fl32_falls_back_to_relpaths_lists(fl32, tmp_path):
    root = shutil.copytree(FL32_ROOT, tmp_path / "fl32")
    for plain in (root / "FlickrLogos-v2").glob("*set*.txt"):
        if not plain.name.endswith(".relpaths.txt"):
            plain.unlink()
    again = FlickrLogos32(root)
    assert [g.image.name for g in again.groups("test")] == [g.image.name for g in fl32.groups("test")]


def test_fl32_without_root_explains_how_to_request_it(monkeypatch, tmp_path):
    monkeypatch.delenv(logos.FLICKRLOGOS32_ENV, raising=False)
    with pytest.raises(DatasetFilesError, match="on request.*uni-augsburg"):
        FlickrLogos32()
    with pytest.raises(DatasetFilesError, match="FlickrLogos-32 not found in"):
        FlickrLogos32(tmp_path)
    monkeypatch.setenv(logos.FLICKRLOGOS32_ENV, str(FL32_ROOT))
    assert FlickrLogos32().test_size == 6


def test_fl32_missing_bboxes_file_and_missing_image_are_errors(tmp_path):
    root = shutil.copytree(FL32_ROOT, tmp_path / "fl32")
    (root / "FlickrLogos-v2/classes/masks/globex/4000100.jpg.bboxes.txt").unlink()
    with pytest.raises(DatasetFilesError, match=r"1 bboxes file\(s\) are missing.*globex/4000100\.jpg\.bboxes\.txt"):
        FlickrLogos32(root)
    root = shutil.copytree(FL32_ROOT, tmp_path / "fl32b")
    (root / "FlickrLogos-v2/classes/jpg/acme/4000005.jpg").unlink()
    with pytest.raises(DatasetFilesError, match=r"missing from .*classes/jpg: acme/4000005\.jpg"):
        FlickrLogos32(root)


def test_fl32_box_outside_its_image_is_skipped_with_a_warning(tmp_path):
    root = shutil.copytree(FL32_ROOT, tmp_path / "fl32")
    (root / "FlickrLogos-v2/classes/masks/hp/4000204.jpg.bboxes.txt").write_text(
        "x y width height\n10 60 50 45\n150 100 40 40\n"
    )
    with pytest.warns(
        AnnotationWarning, match=r"1 box\(es\) outside their image: 4000204\.jpg HP \[150, 100, 190, 140\]"
    ):
        dataset = FlickrLogos32(root)
    assert dataset.num_boxes == 14


# ============================================================================ BBS pair format


@pytest.fixture(scope="module")
def bbs() -> TemplateTargetPairs:
    return TemplateTargetPairs(BBS_DIR)


def test_bbs_pairs_are_discovered_and_used_for_both_sample_and_test(bbs):
    assert [s.name for s in bbs.pairs("test")] == ["pair0001", "pair0002", "pair0003", "pair0004"]
    assert bbs.test_size == 4 and bbs.pairs("train") == bbs.pairs("test")
    rng = np.random.default_rng(0)
    names = set()
    for _ in range(30):
        pair = bbs.sample(rng)
        check_pair(pair, bbs, "train")
        names.add(pair.meta["name"])
    assert names == {"pair0001", "pair0002", "pair0003", "pair0004"}
    for i in range(bbs.test_size):
        check_pair(bbs.test_pair(i), bbs, "test")
    check_reproducible(bbs)


def test_bbs_boxes_are_one_based_and_the_template_is_the_annotated_crop(bbs):
    assert (BBS_DIR / "pair0001_frm1_bolt_0052.txt").read_text().strip() == "71.0,46.0,40.0,30.0"
    pair = bbs.test_pair(0)
    np.testing.assert_array_equal(pair.target_box, [70.0, 45.0, 110.0, 75.0])
    np.testing.assert_array_equal(pair.meta["template_box"], [30.0, 20.0, 70.0, 50.0])
    for i, (k, seq, f, g, (tx, ty, tw, th), (gx, gy, gw, gh), _) in enumerate(fx.BBS_PAIRS):
        pair = bbs.test_pair(i)
        frame1 = read_image(BBS_DIR / f"pair{k:04d}_frm1_{seq}_{f:04d}.jpg")
        np.testing.assert_array_equal(pair.template, frame1[ty : ty + th, tx : tx + tw])
        np.testing.assert_array_equal(pair.reference, read_image(BBS_DIR / f"pair{k:04d}_frm2_{seq}_{g:04d}.jpg"))
        # The object has a white border: a box off by one pixel would include a dark row or column.
        x0, y0, x1, y1 = pair.target_box.astype(int)
        for crop in (pair.template.astype(float), pair.reference[y0:y1, x0:x1].astype(float)):
            edges = (crop[:, 0], crop[:, -1], crop[0], crop[-1])
            assert min(e.mean() for e in edges) > 200


def test_bbs_resizing_maps_boxes_back(bbs):
    small = TemplateTargetPairs(BBS_DIR, max_side=64)
    for i in range(small.test_size):
        pair = small.test_pair(i)
        check_pair(pair, small, "test")
        np.testing.assert_allclose(to_original_box(pair.target_box, pair.meta), bbs.test_pair(i).target_box, atol=1e-9)
        assert pair.template.shape[0] == round(fx.BBS_PAIRS[i][4][3] * 0.4)


def test_bbs_missing_or_ambiguous_files_are_errors_naming_the_pair(tmp_path):
    folder = shutil.copytree(BBS_DIR, tmp_path / "missing_box")
    (folder / "pair0002_frm1_car_4_0121.txt").unlink()
    with pytest.raises(DatasetFilesError, match="pair0002's target box file pair0002_frm1_car_4_0121.txt is missing"):
        TemplateTargetPairs(folder)
    folder = shutil.copytree(BBS_DIR, tmp_path / "two_targets")
    shutil.copy(folder / "pair0003_frm2_walk_0027.jpg", folder / "pair0003_frm2_walk_0028.jpg")
    with pytest.raises(DatasetFilesError, match="pair0003 needs exactly one target frame.*found 2"):
        TemplateTargetPairs(folder)
    folder = shutil.copytree(BBS_DIR, tmp_path / "bad_box")
    (folder / "pair0004_frm1_ball_0400.txt").write_text("11,71,44\n")
    with pytest.raises(ValueError, match="pair0004_frm1_ball_0400.txt: expected one line 'x,y,w,h'"):
        TemplateTargetPairs(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetFilesError, match="no pair files"):
        TemplateTargetPairs(empty)
    folder = shutil.copytree(BBS_DIR, tmp_path / "unreadable")
    (folder / "pair0001_frm2_bolt_0052.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="pair0001: reference image is unreadable"):
        TemplateTargetPairs(folder)


def test_bbs_box_outside_its_frame_is_skipped_with_a_warning(tmp_path):
    folder = shutil.copytree(BBS_DIR, tmp_path / "outside")
    (folder / "pair0002_frm1_car_4_0121.txt").write_text("150,100,36,28\n")
    with pytest.warns(AnnotationWarning, match=r"1 box\(es\) outside their frame: pair0002: target box"):
        dataset = TemplateTargetPairs(folder)
    assert [s.name for s in dataset.pairs("test")] == ["pair0001", "pair0003", "pair0004"]


# ---------------------------------------------------------------------------- the public BBS set


@pytest.fixture
def no_bbs_sources(monkeypatch, tmp_path) -> Path:
    """No BBS pairs anywhere: no env var, an empty private cache; returns the pairs' cache folder."""
    monkeypatch.delenv(pair_files.BBS_PAIRS_ENV, raising=False)
    monkeypatch.setenv("MATCHENV_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "bbs_pairs"


def _bbs_release_zip(path: Path, with_pairs: bool = True) -> Path:
    """A zip laid out like the BBS release: MATLAB code and, in .../data/, the fixture's pair files."""
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("BBS_code_and_data_release_v1.0/", "")
        zipped.writestr("BBS_code_and_data_release_v1.0/BBS_demo.m", "% code, not data\n")
        if with_pairs:
            for file in sorted(BBS_DIR.iterdir()):
                zipped.write(file, f"{pair_files.BBS_RELEASE_DATA.as_posix()}/{file.name}")
    return path


def test_bbs_public_set_downloads_trying_each_url_and_keeps_only_the_pair_files(no_bbs_sources, monkeypatch, tmp_path):
    release = _bbs_release_zip(tmp_path / "release.zip")
    monkeypatch.setattr(pair_files, "BBS_PAIRS_URLS", ((tmp_path / "gone.zip").as_uri(), release.as_uri()))
    dataset = TemplateTargetPairs(download=True)  # explicit: the test session is offline by default
    assert dataset.path == no_bbs_sources and dataset.test_size == TemplateTargetPairs(BBS_DIR).test_size
    assert sorted(f.name for f in no_bbs_sources.iterdir()) == sorted(f.name for f in BBS_DIR.iterdir())  # no code
    assert [f.name for f in no_bbs_sources.parent.iterdir()] == ["bbs_pairs"]  # no partial files left behind
    # The cache is used from now on, offline too; make_dataset without kwargs finds it.
    monkeypatch.setattr(pair_files, "BBS_PAIRS_URLS", ((tmp_path / "gone.zip").as_uri(),))
    assert make_dataset("TemplateTargetPairs").path == no_bbs_sources


def test_bbs_public_set_offline_or_failed_is_an_error_explaining_the_three_ways(no_bbs_sources, monkeypatch, tmp_path):
    with pytest.raises(DatasetFilesError, match="downloading is disabled") as err:
        TemplateTargetPairs()  # MATCHENV_OFFLINE=1 in the test session
    for hint in ("path=", pair_files.BBS_PAIRS_ENV, pair_files.BBS_PAIRS_URLS[0], str(no_bbs_sources)):
        assert hint in str(err.value)
    not_a_zip = tmp_path / "page.zip"
    not_a_zip.write_text("<html>moved</html>")
    no_pairs = _bbs_release_zip(tmp_path / "code_only.zip", with_pairs=False)
    monkeypatch.setattr(pair_files, "BBS_PAIRS_URLS", (not_a_zip.as_uri(), no_pairs.as_uri()))
    with pytest.raises(DatasetFilesError, match="download failed") as err:
        TemplateTargetPairs(download=True)
    assert "page.zip" in str(err.value) and "no pair files" in str(err.value)  # each URL's problem
    assert not no_bbs_sources.exists() and not any(no_bbs_sources.parent.iterdir())


def test_bbs_pairs_are_found_in_an_unpacked_release_or_through_the_environment(no_bbs_sources, monkeypatch, tmp_path):
    unpacked = tmp_path / "unpacked"
    shutil.copytree(BBS_DIR, unpacked / pair_files.BBS_RELEASE_DATA)
    assert TemplateTargetPairs(unpacked).path == unpacked / pair_files.BBS_RELEASE_DATA
    monkeypatch.setenv(pair_files.BBS_PAIRS_ENV, str(BBS_DIR))
    assert TemplateTargetPairs().path == BBS_DIR
    monkeypatch.setenv(pair_files.BBS_PAIRS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DatasetFilesError, match=f"from the {pair_files.BBS_PAIRS_ENV} environment variable"):
        TemplateTargetPairs()
    with pytest.raises(DatasetFilesError, match="no pair files in"):
        TemplateTargetPairs(tmp_path)

# ============================================================================ manifest


@pytest.fixture(scope="module", params=["pairs.csv", "pairs.json"])
def manifest(request) -> ManifestPairs:
    return ManifestPairs(MANIFEST_DIR / request.param)


def test_manifest_pairs_splits_and_labels(manifest):
    train = [(s.reference.name, s.label) for s in manifest.pairs("train")]
    test = [(s.reference.name, s.label) for s in manifest.pairs("test")]
    assert train == [("scene_b.jpg", "acme"), ("scene_a.jpg", "globex")]  # rows 1 and 3 (no split: both)
    assert test == [("scene_b.jpg", "acme"), ("scene_a.jpg", "globex")]  # rows 2 and 3
    assert manifest.test_size == 2
    rng = np.random.default_rng(0)
    for _ in range(10):
        check_pair(manifest.sample(rng), manifest, "train")
    for i in range(manifest.test_size):
        pair = manifest.test_pair(i)
        check_pair(pair, manifest, "test")
        assert pair.label == test[i][1]
    check_reproducible(manifest)


def test_manifest_template_is_the_annotated_crop_or_the_whole_query(manifest):
    pair = manifest.test_pair(0)  # row 2: template scene_a.jpg at (20, 30, 50, 40)
    np.testing.assert_array_equal(pair.template, read_image(MANIFEST_DIR / "scene_a.jpg")[30:70, 20:70])
    np.testing.assert_array_equal(pair.target_box, [90, 50, 134, 86])
    pair = manifest.test_pair(1)  # row 3: template in images/scene_c.jpg (path relative to the manifest)
    np.testing.assert_array_equal(pair.template, read_image(MANIFEST_DIR / "images" / "scene_c.jpg")[25:61, 30:66])
    rng = np.random.default_rng(0)
    query_pairs = [p for p in (manifest.sample(rng) for _ in range(20)) if p.meta["template_path"].endswith("logo.png")]
    assert query_pairs  # row 1: a whole query image
    np.testing.assert_array_equal(query_pairs[0].template, read_image(MANIFEST_DIR / "logo.png"))


def test_manifest_csv_and_json_describe_the_same_pairs():
    a, b = ManifestPairs(MANIFEST_DIR / "pairs.csv"), ManifestPairs(MANIFEST_DIR / "pairs.json")
    for split in ("train", "test"):
        for x, y in zip(a.pairs(split), b.pairs(split)):
            assert (x.reference, x.template, x.label, x.split) == (y.reference, y.template, y.label, y.split)
            np.testing.assert_array_equal(x.target_box, y.target_box)
    for i in range(a.test_size):
        assert same_pair(a.test_pair(i), b.test_pair(i))


def test_manifest_resizing_shrinks_a_whole_query_by_the_reference_scale():
    small = ManifestPairs(MANIFEST_DIR / "pairs.csv", max_side=64)
    rng = np.random.default_rng(0)
    pairs = [small.sample(rng) for _ in range(20)]
    query_pair = next(p for p in pairs if p.meta["template_path"].endswith("logo.png"))
    assert query_pair.meta["working_scale"] == pytest.approx(0.4)
    assert query_pair.template.shape[:2] == (round(36 * 0.4), round(44 * 0.4))
    for pair in pairs:
        check_pair(pair, small, "train")
        assert pair.meta["name"] in {"row 1 (line 2)", "row 3 (line 4)"}
    np.testing.assert_allclose(
        to_original_box(small.test_pair(0).target_box, small.test_pair(0).meta), [90, 50, 134, 86]
    )


def _bad_manifest(folder: Path) -> Path:
    """A manifest with four bad rows and one good one."""
    shutil.copy(MANIFEST_DIR / "scene_a.jpg", folder / "scene_a.jpg")
    shutil.copy(MANIFEST_DIR / "logo.png", folder / "logo.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    rows = [
        "reference,target_x,target_y,target_w,target_h,query,split",
        "missing.jpg,10,10,20,20,logo.png,",  # row 1: missing file
        "broken.jpg,10,10,20,20,logo.png,",  # row 2: unreadable image
        "scene_a.jpg,150,100,40,40,logo.png,",  # row 3: box outside the 160x120 image
        "scene_a.jpg,10,10,0,20,logo.png,",  # row 4: zero width
        "scene_a.jpg,20,30,50,40,logo.png,",  # row 5: fine
    ]
    path = folder / "bad.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_manifest_bad_rows_raise_naming_each_row_and_problem(tmp_path):
    path = _bad_manifest(tmp_path)
    with pytest.raises(ValueError, match="4 bad row") as err:
        ManifestPairs(path)
    message = str(err.value)
    assert "row 1 (line 2): reference image not found" in message and "missing.jpg" in message
    assert "row 2 (line 3): reference image is unreadable" in message
    assert "row 3 (line 4): target box" in message and "outside the 160x120 image" in message
    assert "row 4 (line 5): target box" in message and "zero area" in message
    assert "on_error='skip'" in message


def test_manifest_bad_rows_are_skipped_with_one_warning(tmp_path):
    path = _bad_manifest(tmp_path)
    with pytest.warns(AnnotationWarning, match=r"4 bad manifest row\(s\): row 1 \(line 2\)") as record:
        dataset = ManifestPairs(path, on_error="skip")
    assert len(record) == 1
    assert [s.name for s in dataset.pairs("test")] == ["row 5 (line 6)"]
    check_pair(dataset.test_pair(0), dataset, "test")


def test_manifest_format_errors(tmp_path):
    bad_header = tmp_path / "header.csv"
    bad_header.write_text("reference,target_x,target_y,target_w,target_h,querry\nscene.jpg,1,1,5,5,q.png\n")
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['querry'\]"):
        ManifestPairs(bad_header)
    with pytest.raises(ValueError, match=r"\.csv or \.json"):
        ManifestPairs(MANIFEST_DIR / "logo.png")
    not_a_list = tmp_path / "pairs.json"
    not_a_list.write_text('{"reference": "scene_a.jpg"}')
    with pytest.raises(ValueError, match="list of pair objects"):
        ManifestPairs(not_a_list)
    both = tmp_path / "both.json"
    both.write_text(
        '[{"reference": "a.jpg", "target_box": [0, 0, 9, 9], "query": "q.png", "template": "t.jpg", "template_box": [0, 0, 5, 5]}]'
    )
    with pytest.raises(ValueError, match="row 1: give either query"):
        ManifestPairs(both)
    with pytest.raises(DatasetFilesError, match="not found"):
        ManifestPairs(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="on_error"):
        ManifestPairs(MANIFEST_DIR / "pairs.csv", on_error="ignore")


def test_logo_training_pairs_are_augmented_and_test_pairs_are_not():
    from matchenv.datasets.logos import augment_logo_pair
    from matchenv.datasets.photos import make_photo_pair

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    pair = make_photo_pair(reference[10:30, 5:25].copy(), reference, (5, 10, 25, 30), (32, 32), label="acme")
    flipped = None
    for seed in range(10):
        out = augment_logo_pair(pair, np.random.default_rng(seed), (32, 32))
        assert out.label == "acme" and out.meta["augmented"]
        assert not np.array_equal(out.template, pair.template)  # appearance changed
        if not np.array_equal(out.reference, pair.reference):
            flipped = out
    assert flipped is not None  # some were mirrored: the target box moved with the mirror
    np.testing.assert_array_equal(flipped.reference, pair.reference[:, ::-1])
    np.testing.assert_allclose(flipped.target_box, [55, 10, 75, 30])


def test_reframed_logo_references_keep_the_target_under_its_box():
    from matchenv.datasets.logos import augment_logo_pair
    from matchenv.datasets.photos import make_photo_pair

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    target = (30, 20, 50, 44)
    pair = make_photo_pair(reference[20:44, 30:50].copy(), reference, target, (32, 32))
    shapes = set()
    for seed in range(40):
        out = augment_logo_pair(pair, np.random.default_rng(seed), (32, 32), reframe=1.0)
        x0, y0, x1, y1 = out.target_box
        assert 0 <= x0 < x1 <= out.reference.shape[1] and 0 <= y0 < y1 <= out.reference.shape[0]
        assert (x1 - x0, y1 - y0) == (20, 24)  # cropped, never rescaled
        under = out.reference[int(y0):int(y1), int(x0):int(x1)]
        # The pixels under the moved box are the target's (mirrored or not).
        original = reference[20:44, 30:50]
        assert np.array_equal(under, original) or np.array_equal(under, original[:, ::-1])
        shapes.add(out.reference.shape[:2])
    assert len(shapes) > 20  # the frame varies
    unframed = augment_logo_pair(pair, np.random.default_rng(0), (32, 32), reframe=0.0)
    assert unframed.reference.shape == reference.shape


def test_reframe_must_be_a_probability(fl27_root):
    with pytest.raises(ValueError, match="reframe is a probability"):
        quiet(FlickrLogos27, root=fl27_root, reframe=1.5)


def test_another_brand_beside_the_reference_keeps_the_target_and_its_pixels(fl27_root, fl27):
    from matchenv.datasets.photos import to_original_box
    from matchenv.geometry import crop_window

    beside = quiet(FlickrLogos27, root=fl27_root, augment=False, beside_other_brand=True)
    sides = set()
    for i in range(fl27.test_size):
        plain, pair = fl27.test_pair(i), beside.test_pair(i)
        assert max(pair.reference.shape[:2]) <= beside.max_side and pair.meta["composite"]
        assert pair.meta["beside"]["brand"] != pair.label == plain.label
        assert pair.meta["template_path"] == plain.meta["template_path"]  # the same template image
        h, w = pair.reference.shape[:2]
        x0, y0, x1, y1 = pair.target_box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        bx0, _, bx1, _ = pair.meta["beside"]["box"]
        assert bx1 <= x0 or x1 <= bx0  # the two logos are in different photographs
        sides.add(bool(bx1 <= x0))
        # The target's pixels are the plain pair's target, scaled with the composite.
        a = crop_window(plain.reference, plain.target_box, (16, 16)).astype(float)
        b = crop_window(pair.reference, pair.target_box, (16, 16)).astype(float)
        assert np.abs(a - b).mean() < 25, i
        with pytest.raises(ValueError, match="composite"):
            to_original_box(pair.target_box, pair.meta)
    assert sides == {True, False}  # the other photograph goes left and right
    check_reproducible(beside)
    augmented = quiet(FlickrLogos27, root=fl27_root, beside_other_brand=True, reframe=0.5)
    rng = np.random.default_rng(0)
    for _ in range(200):  # training pairs too, with the usual augmentation; boxes inside the (rounded) composite
        pair = augmented.sample(rng)
        h, w = pair.reference.shape[:2]
        x0, y0, x1, y1 = pair.target_box
        assert pair.meta["composite"] and 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_a_composite_shrunk_to_a_rounded_size_keeps_a_target_that_touches_its_edge(fl27_root):
    from matchenv.datasets.photos import make_photo_pair

    beside = quiet(FlickrLogos27, root=fl27_root, augment=False, beside_other_brand=True)
    template = np.full((20, 20, 3), 90, np.uint8)
    for width in range(200, 330):  # a reference whose composite's shrunk height rounds down
        reference = np.full((101, width, 3), 60, np.uint8)
        pair = make_photo_pair(template, reference, (0.0, 81.0, 20.0, 101.0), (32, 32), label="x",
                               meta={"other_instances": np.zeros((0, 4))})
        out = beside._beside_other_brand(pair, "test", 0, np.random.default_rng(width))
        h, w = out.reference.shape[:2]
        assert out.target_box[3] <= h and out.target_box[2] <= w and np.all(out.meta["beside"]["box"][2::2] <= w)


# ============================================================================ KTM


KTM_DIR = FIXTURES / "ktm_pairs"


def test_ktm_pairs_follow_the_sorted_names_rule_also_where_the_target_is_named_frm1():
    ktm = make_dataset("KTM", path=str(KTM_DIR))
    assert isinstance(ktm, KTM) and DATASETS["KTM"] is KTM
    assert [s.name for s in ktm.pairs("test")] == ["pair0025", "pair0026", "pair0085", "pair0086"]
    for i, ((k, seq, f, g, (tx, ty, tw, th), (gx, gy, gw, gh), _), odd) in enumerate(fx.KTM_PAIRS):
        spec, pair = ktm.pairs("test")[i], ktm.test_pair(i)
        assert spec.template.name == f"pair{k:04d}_frm1_{seq}_{f:04d}.jpg"  # the earlier frame
        assert spec.reference.name == f"pair{k:04d}_{'frm1' if odd else 'frm2'}_{seq}_{g:04d}.jpg"
        np.testing.assert_allclose(pair.target_box, [gx, gy, gx + gw, gy + gh])  # 1-based files, 0-based boxes
        np.testing.assert_allclose(pair.meta["template_box"], [tx, ty, tx + tw, ty + th])
        assert pair.template.shape[:2] == (th, tw)
        # frames as given (no working-size shrink) and a window of the template's own size
        assert pair.reference.shape[:2] == (fx.HEIGHT, fx.WIDTH) and pair.meta["working_scale"] == 1.0
        assert pair.window_size == (th, tw)
        check_pair(pair, ktm, "test")


def test_ktm_public_set_is_found_in_a_checkout_or_through_the_environment_or_explains_how(monkeypatch, tmp_path):
    monkeypatch.delenv(pair_files.KTM_ENV, raising=False)
    monkeypatch.setenv("MATCHENV_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetFilesError, match="downloading is disabled") as err:
        KTM()  # offline test session, nothing cached
    for hint in ("KTM", "path=", pair_files.KTM_ENV, pair_files.KTM_URLS[0], "KTMdata"):
        assert hint in str(err.value)
    checkout = tmp_path / "Deep-DIM"
    shutil.copytree(KTM_DIR, checkout / "KTMdata")
    assert KTM(checkout).path == checkout / "KTMdata"
    monkeypatch.setenv(pair_files.KTM_ENV, str(checkout))
    assert KTM().test_size == 4


def test_ktm_downloads_the_authors_archive_and_keeps_only_the_pair_files(monkeypatch, tmp_path):
    monkeypatch.delenv(pair_files.KTM_ENV, raising=False)
    monkeypatch.setenv("MATCHENV_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "deep-dim.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(f"{pair_files.KTM_SOURCE.archive_data.parent.as_posix()}/DIM.py", "# code, not data\n")
        for file in sorted(KTM_DIR.iterdir()):
            zipped.write(file, f"{pair_files.KTM_SOURCE.archive_data.as_posix()}/{file.name}")
    monkeypatch.setattr(pair_files, "KTM_URLS", (archive.as_uri(),))
    ktm = KTM(download=True)
    assert ktm.path == tmp_path / "cache" / "ktm" and ktm.test_size == 4
    assert sorted(f.name for f in ktm.path.iterdir()) == sorted(f.name for f in KTM_DIR.iterdir())


def test_pairs_with_two_target_frames_are_still_an_error(tmp_path):
    folder = shutil.copytree(KTM_DIR, tmp_path / "three_frames")
    shutil.copy(folder / "pair0026_frm2_Bike_0040.jpg", folder / "pair0026_frm2_Bike_0041.jpg")
    with pytest.raises(DatasetFilesError, match="pair0026 needs exactly one target frame.*found 2"):
        KTM(folder)
    (folder / "pair0026_frm2_Bike_0041.jpg").unlink()
    (folder / "pair0025_frm1_Basketball_0352.jpg").unlink()
    with pytest.raises(DatasetFilesError, match="pair0025 needs exactly two frames, template and target.*found 1"):
        KTM(folder)
