"""FlickrLogos-27 and FlickrLogos-32: find a brand's logo in a photo, given that logo cut from another photo.

Both datasets are Flickr photographs with boxes around logo instances. They become search pairs
the same way (:class:`LogoPairDataset`):

* A **group** is one brand in one image with all of that brand's boxes in the image. Its
  **target** is the largest box (by area). The other boxes of the same brand in that image go
  to ``meta["other_instances"]`` (working pixels): finding one of them is arguably also right,
  so an honest score should not count it as a miss. We keep one pair per (image, brand), not
  one per box, so that every pair has exactly one target.
* The **reference** is the group's image at working size (see :mod:`matchenv.datasets.photos`).
* The **template** is the largest box of the same brand in a *different* image of the same
  split, cropped from that image at its working size. The agent's query is the template
  letterboxed to ``query_size``.

Training pairs draw a group and a template image with the caller's generator. Test pair ``i``
is test group ``i`` (groups sorted by image name, then brand), with a template image chosen by
``(test_seed, i)``. Train and test never share an image, neither as reference nor as template.

Annotations are checked when the dataset is built: boxes with zero area or outside their image
are skipped, and so are groups whose target would be smaller than ``min_target_side`` pixels at
working size (a logo of a few pixels after shrinking to ``max_side`` cannot be matched), and
groups whose brand has no other image in their split to take a template from. A single
:class:`~matchenv.datasets.photos.AnnotationWarning` lists what was skipped; nothing is dropped
silently.

The base of every dataset read from image files (here and in :mod:`matchenv.datasets.pair_files`),
:class:`~matchenv.datasets.photos.PhotoFilesDataset`, lives in :mod:`matchenv.datasets.photos`,
with :class:`~matchenv.datasets.photos.DatasetFilesError` and the warning.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from matchenv.datasets.appearance import AppearanceChange
from matchenv.datasets.base import SPLITS, SearchPair, check_split
from matchenv.datasets.downloads import fetch, find_data_folder, safe_extract_tar
from matchenv.datasets.mnist_files import default_cache_dir
from matchenv.datasets.photos import (
    DEFAULT_MAX_SIDE,
    DEFAULT_MIN_TARGET_SIDE,
    DEFAULT_PHOTO_QUERY_SIZE,
    DEFAULT_PHOTO_SCALE_RANGE,
    AnnotationWarning,
    DatasetFilesError,
    PathLike,
    PhotoFilesDataset,
    SkippedItems,
    box_text,
    check_box,
    listing,
    make_photo_pair,
    to_working_size,
    xywh_to_xyxy,
)
from matchenv.geometry import resize_image

# ----------------------------------------------------------------------------- FlickrLogos-27 files

#: Public tarball of FlickrLogos-27 (NTUA). It holds ``flickr_logos_27_dataset/`` with the
#: annotation files and a *nested* ``flickr_logos_27_dataset_images.tar.gz`` of the photos.
#: A module constant so that tests can point it at a local ``file://`` tarball.
FLICKRLOGOS27_URL = "http://image.ntua.gr/iva/datasets/flickr_logos/flickr_logos_27_dataset.tar.gz"
#: Environment variable naming a folder that holds FlickrLogos-27.
FLICKRLOGOS27_ENV = "MATCHENV_FLICKRLOGOS27"
FL27_FOLDER = "flickr_logos_27_dataset"
FL27_ANNOTATIONS = "flickr_logos_27_dataset_training_set_annotation.txt"
FL27_IMAGES = "flickr_logos_27_dataset_images"
FL27_NESTED_TARBALL = "flickr_logos_27_dataset_images.tar.gz"

# ----------------------------------------------------------------------------- FlickrLogos-32 files

#: Where FlickrLogos-32 is requested (it is not publicly downloadable).
FLICKRLOGOS32_PAGE = "https://www.uni-augsburg.de/en/fakultaet/fai/informatik/prof/mmc/research/datensatze/flickrlogos/"
#: Environment variable naming a folder that holds FlickrLogos-32 (used when ``root`` is not given).
FLICKRLOGOS32_ENV = "MATCHENV_FLICKRLOGOS32"
FL32_FOLDER = "FlickrLogos-v2"
#: Split names -> list file stem (``<stem>.txt``, or ``<stem>.relpaths.txt`` as a fallback).
FL32_LISTS: dict[str, str] = {
    "train": "trainset",  # P1: 10 hand-picked images per brand (320)
    "trainval": "trainvalset",  # P1 + P2, including 3000 no-logo images (skipped)
    "val": "valset-logosonly",  # P2 logo images: 30 per brand (960)
    "test": "testset-logosonly",  # P3 logo images: 30 per brand (960)
}
FL32_NO_LOGO = "no-logo"


# ============================================================================= shared helpers


def _classify_box(box: Sequence[float], width: int, height: int, where: str) -> tuple[Optional[np.ndarray], str]:
    """Validate a box; return ``(clipped box, "")`` or ``(None, reason)`` with reason ``"zero-area"``/``"outside"``."""
    b = np.asarray(box, dtype=np.float64)
    if b.shape == (4,) and np.all(np.isfinite(b)) and (b[2] - b[0] < 1 or b[3] - b[1] < 1):
        return None, "zero-area"
    try:
        return check_box(b, width, height, where), ""
    except ValueError:
        return None, "outside"


# ============================================================================= logo pairs (FL27, FL32)


@dataclass(frozen=True, eq=False)
class LogoGroup:
    """One brand in one image, with all of that brand's boxes there.

    :param image: the image file.
    :param brand: class name.
    :param boxes: ``(K, 4)`` float64 ``(x0, y0, x1, y1)`` in original pixels, largest first:
        ``boxes[0]`` is the group's target.
    :param size: original ``(height, width)`` of the image.
    """

    image: Path
    brand: str
    boxes: np.ndarray
    size: tuple[int, int]

    @property
    def target_box(self) -> np.ndarray:
        return self.boxes[0]


#: How training templates are varied: the colour, blur and warp of a different photo, no occluder.
TRAIN_TEMPLATE_CHANGE = AppearanceChange(occlusion_prob=0.0)


def augment_logo_pair(
    pair: SearchPair, rng: np.random.Generator, query_size: tuple[int, int], reframe: float = 0.0
) -> SearchPair:
    """A varied copy of a training logo pair, so a few hundred photos do not get memorised.

    With probability 1/2 the reference *and* the template are mirrored left-right (a mirrored
    logo still matches its mirrored template), and the template's appearance is changed by
    :data:`TRAIN_TEMPLATE_CHANGE`. With probability ``reframe`` the reference is also cropped to
    a random rectangle that still holds the whole target (each edge uniform between the image's
    edge and the target's), so the target appears at other places and other shares of the
    photograph than the few hundred training photos show. The target box moves with both (the
    boxes in ``meta``, other instances and a photograph beside, do not).
    """
    reference, template = pair.reference, pair.template
    target = pair.target_box.copy()
    if rng.random() < 0.5:
        width = reference.shape[1]
        reference, template = reference[:, ::-1], template[:, ::-1]
        target[[0, 2]] = width - target[[2, 0]]
    if reframe > 0.0 and rng.random() < reframe:
        height, width = reference.shape[:2]
        x0 = int(rng.integers(0, int(target[0]) + 1))
        y0 = int(rng.integers(0, int(target[1]) + 1))
        x1 = int(rng.integers(min(int(np.ceil(target[2])), width), width + 1))
        y1 = int(rng.integers(min(int(np.ceil(target[3])), height), height + 1))
        reference = reference[y0:y1, x0:x1]
        target = np.minimum(target - [x0, y0, x0, y0], [x1 - x0, y1 - y0, x1 - x0, y1 - y0])
    template = TRAIN_TEMPLATE_CHANGE.apply(np.ascontiguousarray(template), rng)
    return make_photo_pair(template, np.ascontiguousarray(reference), target, query_size, label=pair.label,
                           meta={**pair.meta, "augmented": True})


class LogoPairDataset(PhotoFilesDataset):
    """Pairs from brand-annotated photos: the protocol of the module docstring.

    Subclasses read their annotations and call :meth:`_set_groups` with the validated groups of
    each split. Attributes set there: ``classes`` (sorted brand names), ``test_size`` (one test
    pair per usable test group), ``num_boxes`` (valid distinct boxes over both splits, before
    the size filter) and ``skipped`` (reason -> what was left out, as in the warning).
    """

    classes: list[str]
    num_boxes: int
    skipped: dict[str, list[str]]

    def _set_variations(self, augment: bool, reframe: float, beside_other_brand: bool) -> None:
        """Check and keep the subclasses' ``augment``, ``reframe`` and ``beside_other_brand`` arguments."""
        if not 0.0 <= float(reframe) <= 1.0:
            raise ValueError(f"reframe is a probability in [0, 1], got {reframe}")
        self.augment = bool(augment)
        self.reframe = float(reframe)
        self.beside_other_brand = bool(beside_other_brand)

    def groups(self, split: str) -> tuple[LogoGroup, ...]:
        """The usable groups of ``split`` (one per training reference / test pair), sorted by image then brand."""
        return tuple(self._groups[split])

    def _validated_groups(
        self, boxes: dict[tuple[Path, str], list[Sequence[float]]], folder: Path, skipped: SkippedItems
    ) -> list[LogoGroup]:
        """Check images exist and boxes are valid; return one :class:`LogoGroup` per (image, brand) left.

        :param boxes: ``(image path, brand) -> boxes (x0, y0, x1, y1)`` in original pixels.
        :param folder: where the images were looked for (for the error message).
        :raises DatasetFilesError: if image files are missing (the first few are listed).
        """
        missing = sorted(
            {
                str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)
                for path, _ in boxes
                if not path.is_file()
            }
        )
        if missing:
            raise DatasetFilesError(
                f"{self.name}: {len(missing)} annotated image file(s) are missing from {folder}: {listing(missing)}. "
                "The dataset folder is incomplete: extract or download it again."
            )
        groups = []
        for (path, brand), raw_boxes in boxes.items():
            height, width = self.image_size(path)
            valid = []
            for raw in raw_boxes:
                box, reason = _classify_box(raw, width, height, f"{path.name} {brand}")
                if box is None:
                    what = "zero-area box(es)" if reason == "zero-area" else "box(es) outside their image"
                    skipped.add(what, f"{path.name} {brand} {box_text(raw)}")
                else:
                    valid.append(box)
            if valid:
                stacked = np.stack(valid)
                areas = (stacked[:, 2] - stacked[:, 0]) * (stacked[:, 3] - stacked[:, 1])
                order = np.argsort(-areas, kind="stable")  # largest first; ties keep file order
                groups.append(LogoGroup(path, brand, stacked[order], (height, width)))
        return groups

    def _set_groups(self, split_groups: dict[str, list[LogoGroup]], skipped: SkippedItems, hint: str) -> None:
        """Filter too-small targets and lonely brands, index by brand, warn once, check both splits.

        :param hint: how to get non-empty splits, appended to the error when a split is empty.
        """
        self.num_boxes = sum(len(g.boxes) for groups in split_groups.values() for g in groups)
        self._groups: dict[str, list[LogoGroup]] = {}
        self._by_brand: dict[str, dict[str, list[int]]] = {}
        small_reason = f"target(s) under min_target_side={self.min_target_side:g} px at max_side={self.max_side}"
        for split in SPLITS:
            kept = []
            for group in split_groups[split]:
                if self.target_too_small(group.target_box, group.image):
                    skipped.add(small_reason, f"{group.image.name} {group.brand} {box_text(group.target_box)}")
                else:
                    kept.append(group)
            counts: dict[str, int] = defaultdict(int)
            for group in kept:
                counts[group.brand] += 1
            usable = []
            for group in kept:
                if counts[group.brand] < 2:  # the template must come from another image of the split
                    skipped.add(
                        f"{split} group(s) whose brand has no other {split} image to take a query from",
                        f"{group.image.name} {group.brand}",
                    )
                else:
                    usable.append(group)
            usable.sort(key=lambda g: (g.image.name, g.brand))
            by_brand: dict[str, list[int]] = defaultdict(list)
            for i, group in enumerate(usable):
                by_brand[group.brand].append(i)
            self._groups[split] = usable
            self._by_brand[split] = dict(by_brand)
        self.skipped = {reason: list(items) for reason, items in skipped.items.items()}
        skipped.warn(self.name)
        for split in SPLITS:
            if not self._groups[split]:
                raise ValueError(
                    f"{self.name}: no usable {split} pairs: each needs a target of at least min_target_side="
                    f"{self.min_target_side:g} working px and a brand with at least two {split} images. {hint}"
                )
        self.test_size = len(self._groups["test"])
        self.classes = sorted({g.brand for split in SPLITS for g in self._groups[split]})

    # ------------------------------------------------------------------ pairs
    def sample(self, rng: np.random.Generator) -> SearchPair:
        """A training pair: a random training group and a random other training image of its brand."""
        index = int(rng.integers(len(self._groups["train"])))
        pair = self._logo_pair("train", index, rng)
        if not getattr(self, "augment", False):
            return pair
        return augment_logo_pair(pair, rng, self.query_size, reframe=getattr(self, "reframe", 0.0))

    def test_pair(self, index: int) -> SearchPair:
        """Test group ``index`` with a template image chosen by ``(test_seed, index)``."""
        index = self._check_test_index(index)
        return self._logo_pair("test", index, np.random.default_rng([self.test_seed, index]), test_index=index)

    def _logo_pair(
        self, split: str, index: int, rng: np.random.Generator, test_index: Optional[int] = None
    ) -> SearchPair:
        groups = self._groups[split]
        group = groups[index]
        others = [j for j in self._by_brand[split][group.brand] if j != index]
        source = groups[others[int(rng.integers(len(others)))]]
        meta = {"split": split, "brand": group.brand, "test_index": test_index}
        pair = self._photo_pair(
            group.image,
            group.target_box,
            source.image,
            source.target_box,
            group.brand,
            meta,
            other_boxes=group.boxes[1:],
        )
        return self._beside_other_brand(pair, split, index, rng) if getattr(self, "beside_other_brand", False) else pair

    def _beside_other_brand(self, pair: SearchPair, split: str, index: int, rng: np.random.Generator) -> SearchPair:
        """``pair`` with a photograph of another brand of ``split`` beside its reference.

        The other photograph (drawn by ``rng`` after the template, so a test pair keeps its
        template) is resized to the reference's height and put on its left or right; the
        composite is shrunk to the working size, every box with it. Its target box is
        ``meta["beside"]["box"]``; ``meta["composite"]`` marks that the reference is not one
        photograph (``meta["working_scale"]`` is then ``None``).
        """
        groups = self._groups[split]
        brand = groups[index].brand
        others = [j for j, g in enumerate(groups) if g.brand != brand]
        other = groups[others[int(rng.integers(len(others)))]]
        image, scale = self.working_image(other.image)
        height = pair.reference.shape[0]
        factor = height / image.shape[0]
        image = resize_image(image, (height, max(int(round(image.shape[1] * factor)), 1)))
        other_box = np.minimum(other.target_box * scale * factor, [image.shape[1], height] * 2)
        target, instances = pair.target_box.copy(), np.asarray(pair.meta["other_instances"], np.float64).copy()
        if rng.random() < 0.5:  # the other photograph on the left
            reference = np.concatenate([image, pair.reference], axis=1)
            shift = np.array([image.shape[1], 0.0] * 2)
            target, instances = target + shift, instances + shift
        else:
            reference = np.concatenate([pair.reference, image], axis=1)
            other_box = other_box + [pair.reference.shape[1], 0.0] * 2
        reference, shrink = to_working_size(reference, self.max_side)
        # The shrunk size is rounded: keep every box inside it (as _photo_pair does).
        limit = [reference.shape[1], reference.shape[0]] * 2
        meta = {**pair.meta, "composite": True, "working_scale": None,
                "other_instances": np.minimum(instances * shrink, limit),
                "beside": {"brand": other.brand, "image": str(other.image), "box": np.minimum(other_box * shrink, limit)}}
        return make_photo_pair(pair.template, reference, np.minimum(target * shrink, limit), self.query_size,
                               label=pair.label, meta=meta)

    def __repr__(self) -> str:
        return (
            f"{self.name}(train={len(self._groups['train'])} pairs, test={self.test_size} pairs, "
            f"{len(self.classes)} brands, max_side={self.max_side})"
        )


# ============================================================================= FlickrLogos-27


def flickrlogos27_cache_dir() -> Path:
    """``<default_cache_dir()>/flickrlogos27``.

    The cache root is ``$MATCHENV_CACHE``, else ``$XDG_CACHE_HOME/matchenv``, else ``~/.cache/matchenv``
    (:func:`matchenv.datasets.mnist_files.default_cache_dir`).
    """
    return default_cache_dir() / "flickrlogos27"


def find_flickrlogos27(root: Optional[PathLike] = None, download: Optional[bool] = None) -> Path:
    """The ``flickr_logos_27_dataset`` folder, from the first source that has it.

    Sources, in order:

    1. ``root``: the ``flickr_logos_27_dataset`` folder itself or the folder containing it
       (an error if the data is not there);
    2. the folder in ``$MATCHENV_FLICKRLOGOS27`` (same rules);
    3. the cache :func:`flickrlogos27_cache_dir`;
    4. a download of :data:`FLICKRLOGOS27_URL` into that cache (about 100 MB), unless
       ``download=False``, or ``download=None`` and ``MATCHENV_OFFLINE=1``.

    A folder counts when it holds the training annotation file and the images folder.

    :raises DatasetFilesError: if no source has the data; the message lists the ways to provide it.
    """
    cache = flickrlogos27_cache_dir()
    return find_data_folder(
        root=root, root_origin="the root argument", env_var=FLICKRLOGOS27_ENV, required=_fl27_required,
        cached=lambda: _fl27_in(cache, extract_nested=True), download_into_cache=lambda: download_flickrlogos27(cache),
        download=download, help_text=lambda why: _fl27_help(cache, f"FlickrLogos-27 was not found and {why}."),
        download_errors=(OSError, tarfile.TarError, ValueError),
    )


def _fl27_help(cache: Path, why: str) -> str:
    return (
        f"{why} Provide it in one of three ways: (1) pass root=<folder holding {FL27_FOLDER}/> to FlickrLogos27; "
        f"(2) set {FLICKRLOGOS27_ENV}=<that folder>; (3) let matchenv download {FLICKRLOGOS27_URL} into the cache "
        f"{cache} (download=True, or unset MATCHENV_OFFLINE), or download it and extract it there yourself "
        f"(tar xzf flickr_logos_27_dataset.tar.gz -C {cache}; the nested {FL27_NESTED_TARBALL} is "
        "extracted on first use)."
    )


def _fl27_in(folder: Path, extract_nested: bool = False) -> Optional[Path]:
    """The dataset folder at ``folder`` or ``folder/flickr_logos_27_dataset``, or ``None``."""
    for candidate in (folder / FL27_FOLDER, folder):
        if (candidate / FL27_ANNOTATIONS).is_file():
            if (
                not (candidate / FL27_IMAGES).is_dir()
                and extract_nested
                and (candidate / FL27_NESTED_TARBALL).is_file()
            ):
                safe_extract_tar(candidate / FL27_NESTED_TARBALL, candidate)
            if (candidate / FL27_IMAGES).is_dir():
                return candidate
    return None


def _fl27_required(root: Path, origin: str) -> Path:
    root = root.expanduser()
    if not root.is_dir():
        raise DatasetFilesError(
            f"FlickrLogos-27 folder {root} (from {origin}) does not exist. Point it at the folder that holds "
            f"{FL27_FOLDER}/ (or at {FL27_FOLDER}/ itself), or leave it unset to use the cache or a download."
        )
    found = _fl27_in(root)
    if found is not None:
        return found
    for candidate in (root / FL27_FOLDER, root):
        if (candidate / FL27_ANNOTATIONS).is_file() and (candidate / FL27_NESTED_TARBALL).is_file():
            raise DatasetFilesError(
                f"FlickrLogos-27 in {candidate} (from {origin}) has its images still packed in {FL27_NESTED_TARBALL}: "
                f"extract it there first (cd {candidate} && tar xzf {FL27_NESTED_TARBALL})."
            )
    raise DatasetFilesError(
        f"FlickrLogos-27 not found in {root} (from {origin}): expected {FL27_ANNOTATIONS} and the folder "
        f"{FL27_IMAGES}/ there or in {root / FL27_FOLDER}. Pass the folder that holds {FL27_FOLDER}/, "
        "or leave root / the environment variable unset to use the cache or a download."
    )


def download_flickrlogos27(cache: Optional[PathLike] = None, url: Optional[str] = None) -> Path:
    """Download and extract FlickrLogos-27 (both tarballs) into ``cache``; return the dataset folder.

    The tarball is written next to its destination and extracted in a temporary folder that is
    moved into place only when complete, so an interrupted download never looks like data.
    Archive members that would land outside the destination (absolute paths, ``..``, links)
    are refused.

    :param cache: destination; default :func:`flickrlogos27_cache_dir`.
    :param url: default :data:`FLICKRLOGOS27_URL` (read when called, so tests can patch it).
    :raises OSError: if the download fails; ``tarfile.TarError`` / ``ValueError`` for a bad archive.
    """
    cache = Path(cache) if cache is not None else flickrlogos27_cache_dir()
    url = url if url is not None else FLICKRLOGOS27_URL
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".flickr_logos_27_dataset.", suffix=".tar.gz.part", dir=cache)
    tarball = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            fetch(url, out, "FlickrLogos-27")
        with tempfile.TemporaryDirectory(prefix=".extract-", dir=cache) as work:
            safe_extract_tar(tarball, Path(work))
            folder = Path(work) / FL27_FOLDER
            if not (folder / FL27_ANNOTATIONS).is_file():
                raise ValueError(f"the archive from {url} has no {FL27_FOLDER}/{FL27_ANNOTATIONS}")
            nested = folder / FL27_NESTED_TARBALL
            if nested.is_file():
                safe_extract_tar(nested, folder)
                nested.unlink()
            if not (folder / FL27_IMAGES).is_dir():
                raise ValueError(
                    f"the archive from {url} has no {FL27_FOLDER}/{FL27_IMAGES}/ folder (nor {FL27_NESTED_TARBALL})"
                )
            destination = cache / FL27_FOLDER
            finished = _fl27_in(cache)
            if finished is not None:  # another process completed the same download meanwhile
                return finished
            if destination.exists():  # an incomplete earlier copy (a complete one would have been used)
                shutil.rmtree(destination)
            os.replace(folder, destination)
    finally:
        tarball.unlink(missing_ok=True)
    return destination


def read_flickrlogos27_annotations(path: PathLike) -> tuple[dict[tuple[str, str], list[tuple[float, ...]]], int]:
    """Parse the FlickrLogos-27 training annotation file, dropping duplicated lines.

    Each line is ``<image> <class> <subset> <x1> <y1> <x2> <y2>`` (space separated; corners, in
    pixels). Every box is repeated once per training subset from its own up to 6, so lines are
    de-duplicated on ``(image, class, x1, y1, x2, y2)``, keeping the first.

    :return: ``(boxes, n_lines)``: ``(image name, class) -> distinct boxes (x1, y1, x2, y2)`` in
        file order, and the number of non-empty lines read.
    :raises ValueError: for a malformed line (its number is given).
    """
    path = Path(path)
    boxes: dict[tuple[str, str], list[tuple[float, ...]]] = defaultdict(list)
    seen: set[tuple] = set()
    n_lines = 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            n_lines += 1
            if len(parts) != 7:
                raise ValueError(
                    f"{path}, line {line_no}: expected '<image> <class> <subset> <x1> <y1> <x2> <y2>', "
                    f"got {line.strip()!r}"
                )
            image, brand = parts[0], parts[1]
            try:
                box = tuple(float(v) for v in parts[3:])
            except ValueError:
                raise ValueError(f"{path}, line {line_no}: box corners must be numbers, got {parts[3:]}") from None
            key = (image, brand, *box)
            if key not in seen:
                seen.add(key)
                boxes[(image, brand)].append(box)
    return dict(boxes), n_lines


class FlickrLogos27(LogoPairDataset):
    """FlickrLogos-27 (Kalantidis et al., ICMR 2011): 27 brands, 810 annotated (image, brand) pairs.

    Only the **training set** file is used: its 1261 distinct boxes (the file repeats each box
    once per subset; duplicates are dropped) over 809 images, 30 per brand. One box is
    degenerate (``2662264721.jpg RedBull 3 197 3 197``) and is skipped with a warning. The query
    set (270 images) has class labels but **no boxes**, so it is ignored; so is the distractor set
    (Flickr URLs only).

    Train and test are split **by image**, per brand: ``test_fraction`` of each brand's images
    (rounded, at least 2 so a test pair can take its template from another test image) go to
    test, chosen with ``test_seed``. An image annotated with two brands goes wholly to one side.
    A brand with fewer than 4 images stays in training. See :mod:`matchenv.datasets.logos` for
    how pairs are formed.

    Where the data comes from: see :func:`find_flickrlogos27` (``root``, ``$MATCHENV_FLICKRLOGOS27``,
    the cache, a download). Dataset page: http://image.ntua.gr/iva/datasets/flickr_logos/ ; the
    photos belong to their Flickr owners: research use, cite the paper.

    :param root: folder holding ``flickr_logos_27_dataset/``, or that folder itself.
    :param download: allow downloading into the cache (``None``: unless ``MATCHENV_OFFLINE=1``).
    :param test_fraction: share of each brand's images held out for the test split, in ``(0, 1)``.
    :param query_size: ``(h, w)`` of query and window observations.
    :param max_side: working size (longest side, pixels) of every image.
    :param scale_range: window scales the agent may choose around the nominal window
        (:func:`~matchenv.datasets.photos.nominal_window`).
    :param test_seed: seed of the train/test split and of the test pairs' templates.
    :param min_target_side: skip targets with a side under this many working pixels.
    :param cache_images: keep decoded working-size images in memory.
    :param augment: vary *training* pairs (see :func:`augment_logo_pair`); test pairs never change.
    :param reframe: with ``augment``, the probability that a training reference is also cropped
        around its target (:func:`augment_logo_pair`), in ``[0, 1]``.
    :param beside_other_brand: put a photograph of another brand (of the same split) beside each
        reference, on its left or right, and shrink the composite to the working size: one photo
        then holds a logo that is not the query's, so a searcher must match the query rather than
        find *a* logo (test pairs keep their template images, shrunk as always where one is larger
        than the composite; which photograph and which side are fixed by ``test_seed``).
    """

    def __init__(
        self,
        root: Optional[PathLike] = None,
        download: Optional[bool] = None,
        test_fraction: float = 0.2,
        query_size: tuple[int, int] = DEFAULT_PHOTO_QUERY_SIZE,
        max_side: Optional[int] = DEFAULT_MAX_SIDE,
        scale_range: tuple[float, float] = DEFAULT_PHOTO_SCALE_RANGE,
        test_seed: int = 0,
        min_target_side: float = DEFAULT_MIN_TARGET_SIDE,
        cache_images: bool = True,
        augment: bool = True,
        reframe: float = 0.0,
        beside_other_brand: bool = False,
    ) -> None:
        super().__init__(query_size, max_side, scale_range, test_seed, min_target_side, cache_images)
        self._set_variations(augment, reframe, beside_other_brand)
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.test_fraction = float(test_fraction)
        self.root = find_flickrlogos27(root, download)
        raw, _ = read_flickrlogos27_annotations(self.root / FL27_ANNOTATIONS)
        images = self.root / FL27_IMAGES
        skipped = SkippedItems()
        groups = self._validated_groups(
            {(images / name, brand): b for (name, brand), b in raw.items()}, images, skipped
        )
        self._set_groups(
            self._split(groups),
            skipped,
            hint="Use a test_fraction that leaves two images of a brand on each side, or a smaller min_target_side.",
        )

    def _split(self, groups: list[LogoGroup]) -> dict[str, list[LogoGroup]]:
        """Assign whole images to train or test, brand by brand (brands in sorted order, fixed by test_seed)."""
        images_of: dict[str, list[str]] = defaultdict(list)
        for group in groups:
            images_of[group.brand].append(group.image.name)
        rng = np.random.default_rng(self.test_seed)
        side: dict[str, str] = {}
        for brand in sorted(images_of):
            names = sorted(set(images_of[brand]))
            n = len(names)
            n_test = 0 if n < 4 else min(max(int(round(self.test_fraction * n)), 2), n - 2)
            # Images already placed by another brand (multi-brand images) count towards the quota.
            need = n_test - sum(side.get(name) == "test" for name in names)
            free = [name for name in names if name not in side]
            for rank, j in enumerate(rng.permutation(len(free))):
                side[free[j]] = "test" if rank < need else "train"
        split: dict[str, list[LogoGroup]] = {s: [] for s in SPLITS}
        for group in groups:
            split[side[group.image.name]].append(group)
        return split


def flickrlogos27_photos(split: str = "train", root: Optional[PathLike] = None, download: Optional[bool] = None,
                         test_seed: int = 0) -> list[Path]:
    """The photographs of one side of :class:`FlickrLogos27`'s train/test split (sorted), e.g. to
    train a photograph searcher without labels on the ``train`` side and keep the logo benchmark's
    test photographs unseen.

    :raises DatasetFilesError: if FlickrLogos-27 is not found (see :func:`find_flickrlogos27`).
    """
    check_split(split)
    with warnings.catch_warnings():  # the annotations it skips do not matter for the photographs
        warnings.simplefilter("ignore", AnnotationWarning)
        dataset = FlickrLogos27(root=root, download=download, test_seed=test_seed, augment=False)
    return sorted({group.image for group in dataset.groups(split)})


# ============================================================================= FlickrLogos-32

# Layout of FlickrLogos-32 (FlickrLogos-32_dataset_v2.zip -> FlickrLogos-v2/), as used by the
# dataset's own SDK and by public loaders (checked in the public code index):
# * split lists at the top: trainset.txt (P1), valset.txt / valset-logosonly.txt (P2),
#   testset.txt / testset-logosonly.txt (P3), trainvalset.txt; one image per line as
#   "<brand>,<image>.jpg" (the SDK's fl_read_groundtruth splits on any of " \t,;"); the
#   *.relpaths.txt variants list "classes/jpg/<brand>/<image>.jpg" instead
#   (FlickrLogos-32_SDK-1.0.4 scripts/flickrlogos/flickrlogos.py and fl_eval_retrieval.py, which
#   asserts 33 classes incl. "no-logo" / 4280 images in trainvalset and 32 / 960 in testset-logosonly;
#   SetaSouto/torchsight torchsight/datasets/flickr32.py).
# * images: classes/jpg/<brand>/<image>.jpg; boxes: classes/masks/<brand>/<image>.jpg.bboxes.txt,
#   a header line "x y width height" then one "x y w h" line of integers per box (torchsight
#   reads lines [1:]; others regex "\d+ \d+ \d+ \d+"). torchsight subtracts 1 from x, y, most
#   converters do not: we read them as 0-based top-left corners (a one-pixel question at most).
# * the masks folder of HP is spelled "hp" while the images folder is "HP" (torchsight and
#   several converters special-case it), so brand folders are matched case-insensitively.
# * no-logo images (classes/jpg/no-logo/) have no boxes.


def read_flickrlogos32_list(path: PathLike) -> list[tuple[str, str]]:
    """Read a FlickrLogos-32 split list: ``(brand, image file name)`` per line, in file order.

    Accepts ``<brand>,<image>.jpg`` lines (any of space, tab, comma or semicolon as separator,
    like the dataset's SDK) and ``classes/jpg/<brand>/<image>.jpg`` lines (``*.relpaths.txt``).

    :raises ValueError: for a line that is neither (its number is given).
    """
    path = Path(path)
    entries = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            if "/" in line or "\\" in line:
                parts = re.split(r"[/\\]+", line)
                if len(parts) < 2:
                    raise ValueError(
                        f"{path}, line {line_no}: expected 'classes/jpg/<brand>/<image>.jpg', got {line!r}"
                    )
                entries.append((parts[-2], parts[-1]))
                continue
            parts = [p for p in re.split(r"[,;\s]+", line) if p]
            if len(parts) != 2:
                raise ValueError(f"{path}, line {line_no}: expected '<brand>,<image>.jpg', got {line!r}")
            entries.append((parts[0], parts[1]))
    return entries


def read_flickrlogos32_boxes(path: PathLike) -> list[np.ndarray]:
    """Read a ``*.bboxes.txt`` file: boxes ``(x0, y0, x1, y1)`` from its ``x y width height`` lines.

    The first line is a header (``x y width height``) and is skipped when it is not numeric.

    :raises ValueError: for a line that is not four numbers (its number is given).
    """
    path = Path(path)
    boxes = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            parts = [p for p in re.split(r"[,;\s]+", line.strip()) if p]
            if not parts:
                continue
            try:
                values = [float(p) for p in parts]
            except ValueError:
                if line_no == 1:  # the header
                    continue
                raise ValueError(f"{path}, line {line_no}: expected 'x y width height', got {line.strip()!r}") from None
            if len(values) != 4:
                raise ValueError(f"{path}, line {line_no}: expected 4 numbers 'x y width height', got {line.strip()!r}")
            boxes.append(xywh_to_xyxy(values))
    return boxes


class FlickrLogos32(LogoPairDataset):
    """FlickrLogos-32 (Romberg et al., ICMR 2011): 32 brands, 8240 photos, boxes around the main logos.

    **Not downloadable**: the Multimedia Computing and Computer Vision Lab of Augsburg University
    hands it out on request (form at :data:`FLICKRLOGOS32_PAGE`, formerly
    http://www.multimedia-computing.de/flickrlogos/). You receive ``FlickrLogos-32_dataset_v2.zip``;
    unzip it and pass the folder holding ``FlickrLogos-v2/`` (or ``FlickrLogos-v2/`` itself) as
    ``root``, or set ``$MATCHENV_FLICKRLOGOS32``.

    Layout of ``FlickrLogos-v2/``::

        classes/jpg/<brand>/<image>.jpg
        classes/masks/<brand>/<image>.jpg.bboxes.txt   # "x y width height" header, then "x y w h" per box
        trainset.txt            # P1: 10 hand-picked images per brand, one logo each (320 lines)
        valset-logosonly.txt    # P2 logo images: 30 per brand (960)
        testset-logosonly.txt   # P3 logo images: 30 per brand (960)
        trainvalset.txt, valset.txt, testset.txt   # the same with the 3000 + 3000 no-logo images
        *.relpaths.txt          # the same lists as classes/jpg/<brand>/<image>.jpg paths

    Lists have one ``<brand>,<image>.jpg`` per line (a ``.relpaths.txt`` list is used when the
    plain one is missing). Brand ``no-logo`` has no boxes and is skipped. Boxes are read as
    0-based ``x y w h``; the masks folder of HP is spelled ``hp``, so brand folders are matched
    ignoring case. The boxes cover the most prominent logos only (FlickrLogos-47 re-annotated
    the rest), so a test reference may show more instances than ``meta["other_instances"]``.

    Training pairs come from the ``train_split`` list, test pairs from the ``split`` list, by the
    protocol of :mod:`matchenv.datasets.logos`.

    :param root: folder holding ``FlickrLogos-v2/``, or that folder itself; default ``$MATCHENV_FLICKRLOGOS32``.
    :param split: held-out list for the test pairs: ``"test"`` (P3, ``testset-logosonly``) or
        ``"val"`` (P2, ``valset-logosonly``).
    :param train_split: list for the training pairs: ``"train"`` (P1, ``trainset``) or
        ``"trainval"`` (P1 + P2; not with ``split="val"``).
    :param query_size: ``(h, w)`` of query and window observations.
    :param max_side: working size (longest side, pixels) of every image.
    :param scale_range: window scales the agent may choose around the nominal window
        (:func:`~matchenv.datasets.photos.nominal_window`).
    :param test_seed: seed of the test pairs' templates.
    :param min_target_side: skip targets with a side under this many working pixels.
    :param cache_images: keep decoded working-size images in memory.
    :param augment: vary *training* pairs (see :func:`augment_logo_pair`); test pairs never change.
    :param reframe: with ``augment``, the probability that a training reference is also cropped
        around its target (:func:`augment_logo_pair`), in ``[0, 1]``.
    :param beside_other_brand: put a photograph of another brand (of the same split) beside each
        reference, on its left or right, and shrink the composite to the working size: one photo
        then holds a logo that is not the query's, so a searcher must match the query rather than
        find *a* logo (test pairs keep their template images, shrunk as always where one is larger
        than the composite; which photograph and which side are fixed by ``test_seed``).
    """

    def __init__(
        self,
        root: Optional[PathLike] = None,
        split: str = "test",
        train_split: str = "train",
        query_size: tuple[int, int] = DEFAULT_PHOTO_QUERY_SIZE,
        max_side: Optional[int] = DEFAULT_MAX_SIDE,
        scale_range: tuple[float, float] = DEFAULT_PHOTO_SCALE_RANGE,
        test_seed: int = 0,
        min_target_side: float = DEFAULT_MIN_TARGET_SIDE,
        cache_images: bool = True,
        augment: bool = True,
        reframe: float = 0.0,
        beside_other_brand: bool = False,
    ) -> None:
        super().__init__(query_size, max_side, scale_range, test_seed, min_target_side, cache_images)
        self._set_variations(augment, reframe, beside_other_brand)
        if split not in ("test", "val"):
            raise ValueError(f"split must be 'test' (P3) or 'val' (P2), got {split!r}")
        if train_split not in ("train", "trainval"):
            raise ValueError(f"train_split must be 'train' (P1) or 'trainval' (P1 + P2), got {train_split!r}")
        if split == "val" and train_split == "trainval":
            raise ValueError("split='val' and train_split='trainval' overlap (trainval contains the validation set)")
        self.split, self.train_split = split, train_split
        self.root = _fl32_root(root)
        skipped = SkippedItems()
        entries = {"train": self._list(train_split), "test": self._list(split)}
        overlap = {e for e in entries["train"]} & {e for e in entries["test"]}
        if overlap:
            names = sorted(f"{b}/{n}" for b, n in overlap)
            raise ValueError(
                f"{self.name}: the {train_split} and {split} lists share {len(names)} images: {listing(names)}"
            )
        split_groups = {}
        for side, listed in entries.items():
            boxes = self._read_boxes(listed, skipped)
            split_groups[side] = self._validated_groups(boxes, self.root / "classes" / "jpg", skipped)
        self._set_groups(split_groups, skipped, hint="Check the split lists and the bboxes files.")

    def _list(self, split: str) -> list[tuple[str, str]]:
        stem = FL32_LISTS[split]
        for name in (f"{stem}.txt", f"{stem}.relpaths.txt"):
            if (self.root / name).is_file():
                entries = read_flickrlogos32_list(self.root / name)
                # no-logo images have no boxes: nothing to search for.
                return list(dict.fromkeys(e for e in entries if e[0].lower() != FL32_NO_LOGO))
        raise DatasetFilesError(
            f"{self.name}: split list {stem}.txt (or {stem}.relpaths.txt) not found in {self.root}; "
            "is this the FlickrLogos-v2 folder of FlickrLogos-32_dataset_v2.zip?"
        )

    def _read_boxes(self, listed: Iterable[tuple[str, str]], skipped: SkippedItems) -> dict[tuple[Path, str], list]:
        jpg, masks = self.root / "classes" / "jpg", self.root / "classes" / "masks"
        mask_dirs = {p.name.lower(): p for p in masks.iterdir() if p.is_dir()} if masks.is_dir() else {}
        jpg_dirs = {p.name.lower(): p for p in jpg.iterdir() if p.is_dir()} if jpg.is_dir() else {}
        boxes: dict[tuple[Path, str], list] = {}
        missing = []
        for brand, name in listed:
            mask_dir = mask_dirs.get(brand.lower(), masks / brand)
            box_file = mask_dir / f"{name}.bboxes.txt"
            if not box_file.is_file():
                missing.append(str(box_file.relative_to(self.root)))
                continue
            image = jpg_dirs.get(brand.lower(), jpg / brand) / name
            found = read_flickrlogos32_boxes(box_file)
            if not found:
                skipped.add("image(s) whose bboxes file has no box", f"{brand}/{name}")
                continue
            boxes[(image, brand)] = found
        if missing:
            raise DatasetFilesError(
                f"{self.name}: {len(missing)} bboxes file(s) are missing under {masks}: {listing(missing)}. "
                "The dataset folder is incomplete: unzip FlickrLogos-32_dataset_v2.zip again."
            )
        return boxes


def _fl32_root(root: Optional[PathLike]) -> Path:
    origin = "the root argument"
    if root is None:
        env = os.environ.get(FLICKRLOGOS32_ENV)
        if not env:
            raise DatasetFilesError(
                "FlickrLogos32 needs root=<folder holding FlickrLogos-v2/> (or the environment variable "
                f"{FLICKRLOGOS32_ENV}). FlickrLogos-32 cannot be downloaded automatically: Augsburg University "
                f"hands it out on request (form at {FLICKRLOGOS32_PAGE}). Unzip the FlickrLogos-32_dataset_v2.zip "
                "you receive and pass its folder. FlickrLogos27 is a public alternative that matchenv can download."
            )
        root, origin = env, f"the {FLICKRLOGOS32_ENV} environment variable"
    root = Path(root).expanduser()
    for candidate in (root / FL32_FOLDER, root):
        if (candidate / "classes" / "jpg").is_dir():
            return candidate
    raise DatasetFilesError(
        f"FlickrLogos-32 not found in {root} (from {origin}): expected classes/jpg/ there or in {root / FL32_FOLDER}. "
        "Pass the folder holding FlickrLogos-v2/ from FlickrLogos-32_dataset_v2.zip "
        f"(requested at {FLICKRLOGOS32_PAGE})."
    )
