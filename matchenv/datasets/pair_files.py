"""Pairs listed explicitly in files: the Best-Buddies-Similarity benchmark format and your own manifest.

Each pair names a reference image with its target box and a template: a box in another (or the
same) image, or a whole query image. Pairs are built like every photograph pair (see
:mod:`matchenv.datasets.photos`): the reference at working size, the template cropped from its
image at that image's working size, boxes mapped to working pixels, provenance in ``meta``.

* :class:`TemplateTargetPairs` reads the 105-pair benchmark of Best-Buddies Similarity
  (Dekel et al., CVPR 2015; also used by DDIS): pairs of video frames with a box in each; any
  folder in that format, or the public set itself (:func:`find_bbs_pairs`: found or downloaded).
* :class:`ManifestPairs` reads a CSV or JSON manifest of your own pairs.

Unlike the logo datasets, the pairs are fixed: test pair ``i`` is the ``i``-th listed test pair,
and ``sample`` draws one listed training pair uniformly with the caller's generator.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from matchenv.datasets.base import SPLITS, SearchPair
from matchenv.datasets.downloads import extract_zip_files, fetch, find_data_folder
from matchenv.datasets.mnist_files import default_cache_dir
from matchenv.datasets.photos import (
    DEFAULT_MAX_SIDE,
    DEFAULT_MIN_TARGET_SIDE,
    DEFAULT_PHOTO_QUERY_SIZE,
    DEFAULT_PHOTO_SCALE_RANGE,
    DatasetFilesError,
    ImageReadError,
    PathLike,
    PhotoFilesDataset,
    SkippedItems,
    box_text,
    check_box,
    xywh_to_xyxy,
)

#: Window scales around a template-sized nominal window (real pairs: the target's side is
#: 0.8-1.2x the template's in 80% of KTM's pairs, 0.24-2.2x at the extremes).
TEMPLATE_SIZED_SCALE_RANGE = (0.5, 2.0)
#: Image file extensions recognised in a pair folder (lower case, without the dot).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "tif", "tiff")


class _BadPair(ValueError):
    """A listed pair that cannot be used; the message names the pair and the problem."""


class _BadBox(_BadPair):
    """A listed pair whose box has zero area or lies outside its image."""


@dataclass(frozen=True, eq=False)
class PairSpec:
    """One listed pair, boxes in *original* pixels.

    :param name: how the pair is named in messages and ``meta["name"]`` (``"pair0003"``, ``"row 2"``).
    :param reference: the image to search.
    :param target_box: ``(4,)`` float64 ``(x0, y0, x1, y1)`` of the target in ``reference``.
    :param template: the image the template comes from.
    :param template_box: ``(4,)`` box of the template in ``template``, or ``None`` when the whole
        image is the query (it is then shrunk by the reference's working scale).
    :param label: optional class of the target.
    :param split: ``"train"``, ``"test"`` or ``None`` (both).
    """

    name: str
    reference: Path
    target_box: np.ndarray
    template: Path
    template_box: Optional[np.ndarray]
    label: Any = None
    split: Optional[str] = None


class ListedPairsDataset(PhotoFilesDataset):
    """Base of the datasets whose pairs are listed explicitly (see the module docstring)."""

    def pairs(self, split: str) -> tuple[PairSpec, ...]:
        """The listed pairs of ``split`` that were kept, in order (test pair ``i`` is ``pairs("test")[i]``)."""
        return tuple(self._pairs[split])

    def _set_pairs(self, specs: list[PairSpec], skipped: SkippedItems, hint: str) -> None:
        """Skip too-small targets, assign splits, warn once, check both splits are non-empty."""
        reason = f"target(s) under min_target_side={self.min_target_side:g} px at max_side={self.max_side}"
        kept = []
        for spec in specs:
            if self.target_too_small(spec.target_box, spec.reference):
                skipped.add(reason, f"{spec.name} {box_text(spec.target_box)}")
            else:
                kept.append(spec)
        self._pairs = {split: [s for s in kept if s.split in (None, split)] for split in SPLITS}
        self.skipped = {r: list(items) for r, items in skipped.items.items()}
        skipped.warn(self.name)
        for split in SPLITS:
            if not self._pairs[split]:
                raise ValueError(f"{self.name}: no usable {split} pairs in {self.path}. {hint}")
        self.test_size = len(self._pairs["test"])

    def _validate(self, spec: PairSpec) -> PairSpec:
        """Check the files are readable images and the boxes lie inside them; return the spec with clipped boxes.

        :raises _BadPair: naming the pair and the problem (``_BadBox`` for a box).
        """
        for role, path in (
            ("reference", spec.reference),
            ("template" if spec.template_box is not None else "query", spec.template),
        ):
            if not path.is_file():
                raise _BadPair(f"{spec.name}: {role} image not found: {path}")
            try:
                self.image_size(path)
            except ImageReadError as err:
                raise _BadPair(f"{spec.name}: {role} image is unreadable: {err}") from None
        try:
            height, width = self.image_size(spec.reference)
            target = check_box(spec.target_box, width, height, f"{spec.name}: target box (x0, y0, x1, y1)")
            template_box = spec.template_box
            if template_box is not None:
                t_height, t_width = self.image_size(spec.template)
                template_box = check_box(template_box, t_width, t_height, f"{spec.name}: template box (x0, y0, x1, y1)")
        except ValueError as err:
            raise _BadBox(str(err)) from None
        return PairSpec(spec.name, spec.reference, target, spec.template, template_box, spec.label, spec.split)

    # ------------------------------------------------------------------ pairs
    def sample(self, rng: np.random.Generator) -> SearchPair:
        """A training pair drawn uniformly with ``rng``."""
        train = self._pairs["train"]
        return self._spec_pair(train[int(rng.integers(len(train)))], "train")

    def test_pair(self, index: int) -> SearchPair:
        """The ``index``-th test pair (fixed; ``test_seed`` plays no role)."""
        index = self._check_test_index(index)
        return self._spec_pair(self._pairs["test"][index], "test", index)

    def _spec_pair(self, spec: PairSpec, split: str, test_index: Optional[int] = None) -> SearchPair:
        meta = {"split": split, "name": spec.name, "test_index": test_index}
        return self._photo_pair(spec.reference, spec.target_box, spec.template, spec.template_box, spec.label, meta)

    def __repr__(self) -> str:
        return f"{self.name}({self.path}, train={len(self._pairs['train'])} pairs, test={self.test_size} pairs)"


# ============================================================================= BBS benchmark folder

# pair<k>_frm<1|2>_<sequence>_<frame>.<ext>, e.g. pair0001_frm1_bolt_0032.jpg. The sequence name
# may itself contain underscores ("_(\d+)\." anchors the frame number at the end).
_BBS_NAME = re.compile(r"^pair(?P<k>\d+)_frm(?P<frm>[12])_(?P<seq>.+?)_(?P<frame>\d+)\.(?P<ext>[A-Za-z]+)$")

@dataclass(frozen=True)
class PairSetSource:
    """Where a public set of template/target pairs in the BBS file format is found or fetched.

    :param dataset: the dataset's name, for messages.
    :param urls_attr: name of the module constant listing the archive URLs, tried in order (read
        when called, so that tests can point it at local ``file://`` archives).
    :param env_var: environment variable naming a folder that holds the pair files.
    :param cache_name: sub-folder of :func:`~matchenv.datasets.mnist_files.default_cache_dir`
        where the pair files are kept, flat, once downloaded.
    :param archive_data: where the archive keeps the pairs, relative to the folder it is unpacked in.
    """

    dataset: str
    urls_attr: str
    env_var: str
    cache_name: str
    archive_data: Path

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(globals()[self.urls_attr])

    def cache_dir(self) -> Path:
        return default_cache_dir() / self.cache_name


#: The public release of the BBS paper (MATLAB code and the 105 pairs in ``.../data/``), tried in
#: order. A module constant so that tests can point it at local ``file://`` archives.
BBS_PAIRS_URLS: tuple[str, ...] = (
    "http://people.csail.mit.edu/talidekel/Code/BBS_code_and_data_release_v1.0.zip",
    "http://www.eng.tau.ac.il/~oron/BBS/BBS_code_and_data_release_v1.0.zip",
)
#: Environment variable naming a folder that holds the pair files.
BBS_PAIRS_ENV = "MATCHENV_BBS_PAIRS"
#: Where the release keeps the pairs, relative to the folder it is unpacked in.
BBS_RELEASE_DATA = Path("BBS_code_and_data_release_v1.0") / "data"
BBS_SOURCE = PairSetSource("TemplateTargetPairs", "BBS_PAIRS_URLS", BBS_PAIRS_ENV, "bbs_pairs", BBS_RELEASE_DATA)

#: The KTM set as published with Deep-DIM (Gao & Spratling, 2021): the authors' repository at a
#: fixed commit, whose ``KTMdata/`` folder holds the 200 pairs (research use; no licence file).
KTM_COMMIT = "d200a923b86af1ae9fd33c4197663698b7d4fda2"
KTM_URLS: tuple[str, ...] = (f"https://github.com/iminfine/Deep-DIM/archive/{KTM_COMMIT}.zip",)
#: Environment variable naming a folder that holds the KTM pair files.
KTM_ENV = "MATCHENV_KTM"
KTM_SOURCE = PairSetSource("KTM", "KTM_URLS", KTM_ENV, "ktm", Path(f"Deep-DIM-{KTM_COMMIT}") / "KTMdata")


def bbs_pairs_cache_dir() -> Path:
    """``<default_cache_dir()>/bbs_pairs``: the pair files, flat, once downloaded."""
    return BBS_SOURCE.cache_dir()


def find_bbs_pairs(root: Optional[PathLike] = None, download: Optional[bool] = None) -> Path:
    """The folder holding the Best-Buddies-Similarity pair files, from the first source that has it.

    Sources, in order:

    1. ``root``: the folder with the ``pair*`` files, or one holding them in ``data/`` or in
       ``BBS_code_and_data_release_v1.0/data/`` (the unpacked release); an error if they are not there;
    2. the folder in ``$MATCHENV_BBS_PAIRS`` (same rules);
    3. the cache :func:`bbs_pairs_cache_dir`;
    4. a download of the public release (:data:`BBS_PAIRS_URLS`, each in turn) whose pair files
       are kept in that cache (the MATLAB code is not), unless ``download=False``, or
       ``download=None`` and ``MATCHENV_OFFLINE=1``.

    :raises DatasetFilesError: if no source has the pairs; the message lists the ways to provide them.
    """
    return find_pair_set(BBS_SOURCE, root, download)


def find_pair_set(source: PairSetSource, root: Optional[PathLike] = None, download: Optional[bool] = None) -> Path:
    """The folder holding ``source``'s pair files: ``root``, ``$<source.env_var>``, the cache, or a
    download (see :func:`find_bbs_pairs`, which is this for the BBS set).

    :raises DatasetFilesError: if no source has the pairs; the message lists the ways to provide them.
    """
    cache = source.cache_dir()
    return find_data_folder(
        root=root, root_origin="the path argument", env_var=source.env_var,
        required=lambda folder, origin: _pairs_required(source, folder, origin),
        cached=lambda: cache if _has_pair_files(cache) else None,
        download_into_cache=lambda: download_pair_set(source, cache),
        download=download, help_text=lambda why: _pairs_help(source, cache, f"The pairs were not found and {why}."),
    )


def _pairs_help(source: PairSetSource, cache: Path, why: str) -> str:
    return (
        f"{source.dataset}: {why} Provide them in one of three ways: (1) pass path=<folder with the pair*_frm* "
        f"files>; (2) set {source.env_var}=<that folder>; (3) let matchenv download {source.urls[0]} into the "
        f"cache {cache} (download=True, or unset MATCHENV_OFFLINE), or unzip it yourself and copy "
        f"{source.archive_data.as_posix()}/* there."
    )


def _has_pair_files(folder: Path) -> bool:
    return folder.is_dir() and any(_BBS_NAME.match(f.name) for f in folder.iterdir())


def _pairs_required(source: PairSetSource, root: Path, origin: str) -> Path:
    root = root.expanduser()
    if not root.is_dir():
        raise DatasetFilesError(f"{source.dataset}: pair folder {root} (from {origin}) does not exist or is not a folder")
    for candidate in (root, root / "data", root / source.archive_data.name, root / source.archive_data):
        if _has_pair_files(candidate):
            return candidate
    raise DatasetFilesError(
        f"{source.dataset}: no pair files in {root} (from {origin}), nor in its data/, "
        f"{source.archive_data.name}/ or {source.archive_data.as_posix()}/: expected names like "
        "pair0001_frm1_<seq>_<frame>.jpg, pair0001_frm1_<seq>_<frame>.txt and pair0001_frm2_<seq>_<frame>.jpg"
    )


def download_bbs_pairs(cache: Optional[PathLike] = None, urls: Optional[Sequence[str]] = None) -> Path:
    """Download the BBS release and keep its pair files (flat) in ``cache``; return ``cache``
    (:func:`download_pair_set` for the BBS set; ``cache`` defaults to :func:`bbs_pairs_cache_dir`)."""
    return download_pair_set(BBS_SOURCE, cache, urls)


def download_pair_set(source: PairSetSource, cache: Optional[PathLike] = None,
                      urls: Optional[Sequence[str]] = None) -> Path:
    """Download ``source``'s archive and keep its pair files (flat) in ``cache``; return ``cache``.

    The archive is written next to the cache and unpacked into a temporary folder that replaces the
    cache only when complete, so an interrupted download never looks like data. Only files named
    like pair files are kept, each by its base name, so no archive member can land elsewhere.

    :param cache: destination; default ``source.cache_dir()``.
    :param urls: tried in order until one gives an archive with pair files; default ``source.urls``.
    :raises OSError: if no URL gives a usable archive; the message names each URL's problem.
    """
    cache = Path(cache) if cache is not None else source.cache_dir()
    urls = tuple(urls) if urls is not None else source.urls
    cache.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    prefix = f".{source.cache_name}."
    for url in urls:
        fd, part = tempfile.mkstemp(prefix=prefix, suffix=".zip.part", dir=cache.parent)
        archive = Path(part)
        work = Path(tempfile.mkdtemp(prefix=f"{prefix}extract-", dir=cache.parent))
        try:
            with os.fdopen(fd, "wb") as out:
                fetch(url, out, f"{source.dataset} pairs")
            if not extract_zip_files(archive, work, lambda name: bool(_BBS_NAME.match(name))):
                raise ValueError("the archive has no pair files (pair0001_frm1_<seq>_<frame>.jpg, ...)")
            if not _has_pair_files(cache):  # else another process completed the same download meanwhile
                if cache.exists():  # an incomplete earlier copy
                    shutil.rmtree(cache)
                os.replace(work, cache)
            return cache
        except (OSError, zipfile.BadZipFile, ValueError) as err:
            failures.append(f"{url}: {err}")
        finally:
            archive.unlink(missing_ok=True)
            shutil.rmtree(work, ignore_errors=True)
    raise OSError("; ".join(failures) or f"no URL to download the {source.dataset} pairs from")


def read_bbs_box(path: PathLike) -> np.ndarray:
    """Read a BBS box file: one line ``x,y,w,h`` (floats, 1-based top-left corner, MATLAB style).

    :return: ``(4,)`` float64 ``(x0, y0, x1, y1)`` in 0-based pixel coordinates: pixel column
        ``x`` (1-based) is ``[x - 1, x)``, so ``x0 = x - 1`` and ``x1 = x - 1 + w``.
    :raises ValueError: if the file does not hold exactly four numbers.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8").strip()
    parts = [p for p in re.split(r"[,;\s]+", text) if p]
    try:
        x, y, w, h = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{path}: expected one line 'x,y,w,h' (four numbers), got {text!r}") from None
    return xywh_to_xyxy((x - 1.0, y - 1.0, w, h))


class TemplateTargetPairs(ListedPairsDataset):
    """A folder of template/target frame pairs in the Best-Buddies-Similarity benchmark format.

    The benchmark (Dekel et al., "Best-Buddies Similarity for Robust Template Matching", CVPR
    2015; ``BBS_code_and_data_release_v1.0/data``) has 105 pairs of frames from tracking videos.
    Pair ``k`` (``KKKK`` = four digits, from ``0001``) is four files::

        pairKKKK_frm1_<seq>_<f>.jpg   template frame (frame f of video <seq>)
        pairKKKK_frm1_<seq>_<f>.txt   template box in that frame
        pairKKKK_frm2_<seq>_<g>.jpg   target frame (frame g), the reference to search
        pairKKKK_frm1_<seq>_<g>.txt   target box: note "frm1" with the *target's* frame number g

    (a target box named ``pairKKKK_frm2_<seq>_<g>.txt`` is accepted too.) A box file is one line
    ``x,y,w,h``: floats, **1-based** top-left corner and size (MATLAB), converted to 0-based by
    subtracting 1 from ``x`` and ``y``. Pairs are matched by file name; a pair with a missing or
    duplicated file is an error naming the pair.

    This is an **evaluation set**: there is no train/test distinction, both :meth:`sample` and
    :meth:`test_pair` use every pair; ``test_size`` is the number of pairs, and test pair ``i``
    is the ``i``-th pair in order of ``k``. Boxes outside their frame and targets under
    ``min_target_side`` working pixels are skipped with one :class:`~matchenv.datasets.photos.AnnotationWarning`.

    The public set is found or fetched by :func:`find_bbs_pairs` when ``path`` is not given:
    ``$MATCHENV_BBS_PAIRS``, the cache, or a download of the paper's public release.

    :param path: the folder holding the pair files (or the unpacked release holding them in
        ``BBS_code_and_data_release_v1.0/data/``); ``None``: the public set (see above).
    :param query_size: ``(h, w)`` of query and window observations.
    :param max_side: working size (longest side, pixels) of every frame.
    :param scale_range: window scales the agent may choose around the nominal window
        (:func:`~matchenv.datasets.photos.nominal_window`).
    :param test_seed: accepted for a uniform interface; the pairs are fixed, so it has no effect.
    :param min_target_side: skip targets with a side under this many working pixels.
    :param cache_images: keep decoded working-size frames in memory.
    :param download: without ``path``, whether the public set may be downloaded (``None``: unless
        ``MATCHENV_OFFLINE=1``).
    """

    #: Where the public set is found or fetched when ``path`` is not given.
    source: PairSetSource = BBS_SOURCE

    def __init__(
        self,
        path: Optional[PathLike] = None,
        query_size: tuple[int, int] = DEFAULT_PHOTO_QUERY_SIZE,
        max_side: Optional[int] = DEFAULT_MAX_SIDE,
        scale_range: tuple[float, float] = DEFAULT_PHOTO_SCALE_RANGE,
        test_seed: int = 0,
        min_target_side: float = DEFAULT_MIN_TARGET_SIDE,
        cache_images: bool = True,
        download: Optional[bool] = None,
    ) -> None:
        super().__init__(query_size, max_side, scale_range, test_seed, min_target_side, cache_images)
        self.path = find_pair_set(self.source, path, download)
        skipped = SkippedItems()
        specs = []
        for spec in self._discover():
            try:
                specs.append(self._validate(spec))
            except _BadBox as err:  # a bad box is skipped like any annotation; a bad file is an error
                problem = str(err)
                skipped.add("zero-area box(es)" if "zero area" in problem else "box(es) outside their frame", problem)
        self._set_pairs(
            specs, skipped, hint="Each pair needs valid boxes and a target of at least min_target_side working px."
        )

    def _discover(self) -> list[PairSpec]:
        files: dict[int, list[tuple[re.Match, Path]]] = {}
        for file in sorted(self.path.iterdir()):
            match = _BBS_NAME.match(file.name)
            if match and file.is_file():
                files.setdefault(int(match["k"]), []).append((match, file))
        if not files:
            raise DatasetFilesError(
                f"{self.name}: no pair files in {self.path}: expected names like pair0001_frm1_<seq>_<frame>.jpg, "
                "pair0001_frm1_<seq>_<frame>.txt and pair0001_frm2_<seq>_<frame>.jpg"
            )
        return [self._pair_spec(k, files[k]) for k in sorted(files)]

    def _pair_spec(self, k: int, entries: list[tuple[re.Match, Path]]) -> PairSpec:
        # The pairing rule that serves BBS and KTM alike: two frames per pair, the template frame
        # first in (frm, frame number) order (frm1 before frm2; where both are named frm1, as in
        # three KTM pairs, the earlier frame), and each frame's box file the one with its frame number.
        name = f"pair{k:04d}"
        images = sorted(((m, f) for m, f in entries if m["ext"].lower() in IMAGE_EXTENSIONS),
                        key=lambda mf: (mf[0]["frm"], int(mf[0]["frame"])))
        boxes = [(m, f) for m, f in entries if m["ext"].lower() == "txt"]
        targets = [(m, f) for m, f in images if m["frm"] == "2"]
        if len(targets) > 1 or len(images) != 2:
            listed, role = (targets, "one target frame") if len(targets) > 1 else (images, "two frames, template and target,")
            found = ", ".join(f.name for _, f in listed) or "none"
            raise DatasetFilesError(
                f"{self.name}: {name} needs exactly {role} {name}_frm<1|2>_<seq>_<frame>.jpg "
                f"in {self.path}, found {len(listed)} ({found})"
            )
        (m1, template_image), (m2, target_image) = images
        f, g = int(m1["frame"]), int(m2["frame"])
        if f == g:
            raise ValueError(
                f"{self.name}: {name}'s template and target frames are both frame {f} ({template_image.name}, "
                f"{target_image.name}): their box files cannot be told apart"
            )

        def box_file(frame: int, role: str, names: str) -> Path:
            found = [file for m, file in boxes if int(m["frame"]) == frame and (m["frm"] == "1" or role == "target")]
            if len(found) != 1:
                what = "missing" if not found else f"ambiguous ({', '.join(p.name for p in found)})"
                also = " (frm2 in the name is accepted too)" if role == "target" else ""
                raise DatasetFilesError(f"{self.name}: {name}'s {role} box file {names} is {what} in {self.path}{also}")
            return found[0]

        template_txt = box_file(f, "template", f"{name}_frm1_{m1['seq']}_{m1['frame']}.txt")
        target_txt = box_file(g, "target", f"{name}_frm1_{m2['seq']}_{m2['frame']}.txt")
        return PairSpec(
            name, target_image, read_bbs_box(target_txt), template_image, read_bbs_box(template_txt), label=None
        )


class KTM(TemplateTargetPairs):
    """KTM: 200 real template/target pairs from 40 tracking videos (Gao & Spratling, "Robust
    Template Matching via Hierarchical Convolutional Features from a Shape Biased CNN", 2021).

    Each pair is a template (an object's box in one frame) and the same object 30 frames later,
    moved, turned, deformed, partly occluded or lit differently: the template matching users meet.
    The files follow the BBS format (:class:`TemplateTargetPairs`, whose pairing rule also serves
    KTM's three pairs whose target frame is named ``frm1``); boxes are 1-based ``x,y,w,h``.

    An **evaluation set**: use it to measure and to choose, never to train on. By default frames
    are used as given (``max_side=None``; 320x240 to 640x480) and the agent's nominal window is
    the template's own size (the target's side is 0.8-1.2x the template's in 80% of the pairs).

    The set is found with :func:`find_pair_set`: ``path``, ``$MATCHENV_KTM``, the cache, or a
    download of the authors' repository (:data:`KTM_URLS`, 7.6 MB of pairs kept; research use).

    :param path: the folder with the pair files (or a Deep-DIM checkout holding them in ``KTMdata/``).
    :param max_side: working size (longest side); ``None``: frames as given.
    :param scale_range: window scales the agent may choose around the template's size.
    Other parameters as :class:`TemplateTargetPairs`.
    """

    source = KTM_SOURCE
    template_sized_window = True
    window_fraction = None  # the window is the template's size, not a fraction of the reference

    def __init__(
        self,
        path: Optional[PathLike] = None,
        query_size: tuple[int, int] = DEFAULT_PHOTO_QUERY_SIZE,
        max_side: Optional[int] = None,
        scale_range: tuple[float, float] = TEMPLATE_SIZED_SCALE_RANGE,
        test_seed: int = 0,
        min_target_side: float = 0.0,
        cache_images: bool = True,
        download: Optional[bool] = None,
    ) -> None:
        super().__init__(path, query_size, max_side, scale_range, test_seed, min_target_side, cache_images, download)


# ============================================================================= user manifest

_CSV_REQUIRED = ("reference", "target_x", "target_y", "target_w", "target_h")
_CSV_TEMPLATE_BOX = ("template_x", "template_y", "template_w", "template_h")
_CSV_OPTIONAL = ("query", "template", *_CSV_TEMPLATE_BOX, "split", "label")
_JSON_KEYS = ("reference", "target_box", "query", "template", "template_box", "split", "label")


class ManifestPairs(ListedPairsDataset):
    """Your own pairs, listed in a CSV or JSON manifest.

    Every pair has a ``reference`` image and the ``target`` box in it, plus **either** a
    ``query`` image (the whole image is the template) **or** a ``template`` image and a
    ``template_box`` in it (the template may be the reference itself). Boxes are
    ``x, y, w, h``: 0-based top-left corner and size in the image's original pixels. Paths are
    relative to the manifest's folder (absolute paths work too). Optional ``split`` (``train`` or
    ``test``; empty or absent: the pair is in both) and ``label`` (any class name).

    CSV (the format is chosen by the file extension, ``.csv`` or ``.json``): a header row and
    one pair per row; each box is four columns; leave unused cells empty::

        reference,target_x,target_y,target_w,target_h,query,template,template_x,template_y,template_w,template_h,split,label
        shelf1.jpg,120,40,64,48,logo.png,,,,,,train,acme
        shelf2.jpg,30,88,60,45,,shelf1.jpg,120,40,64,48,test,acme

    JSON: a list of objects, or ``{"pairs": [...]}``; each box is a list ``[x, y, w, h]``::

        {"pairs": [
          {"reference": "shelf1.jpg", "target_box": [120, 40, 64, 48], "query": "logo.png",
           "split": "train", "label": "acme"},
          {"reference": "shelf2.jpg", "target_box": [30, 88, 60, 45],
           "template": "shelf1.jpg", "template_box": [120, 40, 64, 48], "split": "test"}
        ]}

    A whole ``query`` image is taken to be at the resolution of the reference's original pixels
    (e.g. a crop of a similar photo) and is shrunk by the reference's working scale, so that it
    stays comparable to the target. A template cut with ``template_box`` comes from its image at
    that image's own working size, like every photograph dataset.

    Bad rows (a missing file, an unreadable image, a box outside its image or with zero area, a
    malformed value) raise a ``ValueError`` naming each row and its problem with
    ``on_error="raise"``, or are left out with one :class:`~matchenv.datasets.photos.AnnotationWarning`
    listing them with ``on_error="skip"``. Rows are numbered from 1 (the first pair; in a CSV
    the file line is given too). Targets under ``min_target_side`` working pixels are always
    skipped with a warning: they depend on ``max_side``, not on the manifest. Images are only
    identified at init (from their headers); a file whose pixels are damaged fails when its pair
    is first drawn.

    :param path: the manifest, ``.csv`` or ``.json``.
    :param on_error: ``"raise"`` or ``"skip"`` for bad rows.
    :param query_size: ``(h, w)`` of query and window observations.
    :param max_side: working size (longest side, pixels) of every image.
    :param scale_range: window scales the agent may choose around the nominal window
        (:func:`~matchenv.datasets.photos.nominal_window`).
    :param test_seed: accepted for a uniform interface; the pairs are fixed, so it has no effect.
    :param min_target_side: skip targets with a side under this many working pixels.
    :param cache_images: keep decoded working-size images in memory.
    """

    def __init__(
        self,
        path: PathLike,
        on_error: str = "raise",
        query_size: tuple[int, int] = DEFAULT_PHOTO_QUERY_SIZE,
        max_side: Optional[int] = DEFAULT_MAX_SIDE,
        scale_range: tuple[float, float] = DEFAULT_PHOTO_SCALE_RANGE,
        test_seed: int = 0,
        min_target_side: float = DEFAULT_MIN_TARGET_SIDE,
        cache_images: bool = True,
    ) -> None:
        super().__init__(query_size, max_side, scale_range, test_seed, min_target_side, cache_images)
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise DatasetFilesError(f"{self.name}: manifest {self.path} not found")
        suffix = self.path.suffix.lower()
        if suffix not in (".csv", ".json"):
            raise ValueError(
                f"{self.name}: manifest {self.path} must end in .csv or .json (the extension picks the format)"
            )
        rows = self._csv_rows() if suffix == ".csv" else self._json_rows()
        if not rows:
            raise ValueError(f"{self.name}: manifest {self.path} lists no pairs")
        specs, bad = [], []
        for name, fields in rows:
            try:
                spec = self._csv_spec(name, fields) if suffix == ".csv" else self._json_spec(name, fields)
                specs.append(self._validate(spec))
            except ValueError as err:  # _BadPair, check_box's and _validate's errors
                message = str(err)
                bad.append(message if message.startswith(name) else f"{name}: {message}")
        skipped = SkippedItems()
        if bad and on_error == "raise":
            raise ValueError(
                f"{self.name}: {len(bad)} bad row(s) in {self.path}: "
                + "; ".join(bad[:10])
                + ("; ..." if len(bad) > 10 else "")
                + ". Fix them, or pass on_error='skip' to leave them out."
            )
        for message in bad:
            skipped.add("bad manifest row(s)", message)
        self._set_pairs(
            specs,
            skipped,
            hint="Give at least one valid pair with split 'train' or empty, and one with 'test' or empty.",
        )

    # ------------------------------------------------------------------ reading
    def _csv_rows(self) -> list[tuple[str, dict[str, str]]]:
        with open(self.path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in _CSV_REQUIRED if c not in header]
            unknown = [c for c in header if c not in _CSV_REQUIRED + _CSV_OPTIONAL]
            if missing or unknown:
                raise ValueError(
                    f"{self.name}: the header of {self.path} "
                    + (f"lacks column(s) {missing}" if missing else "")
                    + (" and " if missing and unknown else "")
                    + (f"has unknown column(s) {unknown}" if unknown else "")
                    + f". Required: {', '.join(_CSV_REQUIRED)}; optional: {', '.join(_CSV_OPTIONAL)}."
                )
            rows = []
            for number, raw in enumerate(reader, start=1):
                fields = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
                if not any(fields.values()):
                    continue  # blank line
                rows.append((f"row {number} (line {reader.line_num})", fields))
        return rows

    def _json_rows(self) -> list[tuple[str, dict[str, Any]]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.name}: {self.path} is not valid JSON: {err}") from None
        if isinstance(data, dict) and isinstance(data.get("pairs"), list):
            data = data["pairs"]
        if not isinstance(data, list):
            raise ValueError(f'{self.name}: {self.path} must hold a list of pair objects, or {{"pairs": [...]}}')
        rows = []
        for number, item in enumerate(data, start=1):
            if not isinstance(item, dict):
                raise ValueError(f"{self.name}: {self.path}, row {number}: each pair must be an object, got {item!r}")
            unknown = [k for k in item if k not in _JSON_KEYS]
            if unknown:
                raise ValueError(
                    f"{self.name}: {self.path}, row {number}: unknown key(s) {unknown}; "
                    f"valid keys: {', '.join(_JSON_KEYS)}"
                )
            rows.append((f"row {number}", item))
        return rows

    def _file(self, value: Any) -> Path:
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else self.path.parent / path

    @staticmethod
    def _xywh(name: str, what: str, values: Any) -> np.ndarray:
        if not isinstance(values, (list, tuple)) or len(values) != 4:
            raise _BadPair(f"{name}: {what} must be 4 numbers x, y, w, h, got {values!r}")
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError):
            raise _BadPair(f"{name}: {what} must be 4 numbers x, y, w, h, got {values!r}") from None
        if not np.all(np.isfinite(numbers)):
            raise _BadPair(f"{name}: {what} must be finite numbers, got {values!r}")
        return xywh_to_xyxy(numbers)

    def _spec(
        self,
        name: str,
        reference: Any,
        target: np.ndarray,
        query: Any,
        template: Any,
        template_box: Optional[np.ndarray],
        split: Any,
        label: Any,
    ) -> PairSpec:
        if not reference:
            raise _BadPair(f"{name}: no reference image")
        if query and (template or template_box is not None):
            raise _BadPair(f"{name}: give either query (a whole image) or template + template box, not both")
        if not query and not template:
            raise _BadPair(f"{name}: give a query image, or a template image with a template box")
        if template and template_box is None:
            raise _BadPair(
                f"{name}: template {template!r} needs a template box (x, y, w, h); for a whole image use query"
            )
        split = str(split).strip().lower() if split not in (None, "") else None
        if split is not None and split not in SPLITS:
            raise _BadPair(f"{name}: split must be 'train', 'test' or empty (both), got {split!r}")
        source = self._file(query or template)
        return PairSpec(name, self._file(reference), target, source, None if query else template_box, label, split)

    def _csv_spec(self, name: str, fields: dict[str, str]) -> PairSpec:
        target = self._xywh(
            name, "target box (target_x, target_y, target_w, target_h)", [fields.get(c, "") for c in _CSV_REQUIRED[1:]]
        )
        cells = [fields.get(c, "") for c in _CSV_TEMPLATE_BOX]
        template_box = None
        if any(cells):
            template_box = self._xywh(name, "template box (template_x, template_y, template_w, template_h)", cells)
        label = fields.get("label") or None
        return self._spec(
            name,
            fields.get("reference"),
            target,
            fields.get("query"),
            fields.get("template"),
            template_box,
            fields.get("split"),
            label,
        )

    def _json_spec(self, name: str, item: dict[str, Any]) -> PairSpec:
        target = self._xywh(name, "target_box", item.get("target_box"))
        template_box = (
            self._xywh(name, "template_box", item["template_box"]) if item.get("template_box") is not None else None
        )
        return self._spec(
            name,
            item.get("reference"),
            target,
            item.get("query"),
            item.get("template"),
            template_box,
            item.get("split"),
            item.get("label"),
        )
