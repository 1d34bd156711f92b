"""MNIST digits from the original IDX files, with a fixed source order and checksums.

:func:`load_mnist` looks for the data in this order and uses the **first** source that has it:

1. the ``data_dir`` argument (an error if the files are not there),
2. the ``MATCHENV_DATA`` environment variable (same rules),
3. the user cache ``<default_cache_dir()>/mnist``,
4. a download from public mirrors into that cache (unless offline, see ``download``),
5. a small real subset bundled with matchenv (3,000 training and 1,000 test digits).

A folder counts as a source only if it holds all four MNIST files, so both splits always
come from the same place; the :attr:`MNISTDigits.source` string says which one was used.
Every file is checked against the published MD5 checksums the first time a process reads it;
the parsed arrays are then cached per process so that many environments share one copy.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import math
import os
import socket
import tempfile
import threading
import time
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from matchenv.datasets.downloads import download_allowed

logger = logging.getLogger("matchenv.datasets")

PathLike = Union[str, os.PathLike]

#: The four standard MNIST file names -> (md5 of the .gz, sha256 of the .gz, md5 of the
#: uncompressed IDX file). These are the values torchvision and others publish.
MNIST_FILES: dict[str, tuple[str, str, str]] = {
    "train-images-idx3-ubyte.gz": (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "6bbc9ace898e44ae57da46a324031adb",
    ),
    "train-labels-idx1-ubyte.gz": (
        "d53e105ee54ea40749a09fcbcd1e9432",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "a25bea736e30d166cdddb491f175f624",
    ),
    "t10k-images-idx3-ubyte.gz": (
        "9fb629c4189551a2d022fa330f9573f3",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "2646ac647ad5339dbf082846283269ea",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "ec29112dd5afa0611ce80d1b7f02629c",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "27ae3e4e09519cfbb04c329615203637",
    ),
}

#: Public mirrors tried in order; each serves the four ``.gz`` files under these prefixes.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# split -> (images file, labels file), as keys of MNIST_FILES
_SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Where, inside a data folder, the files may sit: directly, in ``mnist/`` or in the
# ``MNIST/raw/`` layout that torchvision creates (so a torchvision download can be reused).
_SUBFOLDERS: tuple[str, ...] = (".", "mnist", "MNIST/raw")

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_DIGIT_SHAPE = (28, 28)
_CONNECT_TIMEOUT_S = 10.0
_CHUNK_BYTES = 1 << 16


class MNISTDataError(RuntimeError):
    """MNIST files are missing, damaged or not MNIST; the message says how to fix it."""


@dataclass(frozen=True, eq=False)
class MNISTDigits:
    """One split of MNIST, as loaded by :func:`load_mnist`.

    Instances are shared between all callers in a process (see :func:`load_mnist`), so the
    arrays are made read-only: copy a digit before modifying it.

    :param images: ``(N, 28, 28)`` uint8 digits, C-contiguous, 0 = background, 255 = full ink.
    :param labels: ``(N,)`` uint8 class of each image, in ``0..9``.
    :param split: ``"train"`` or ``"test"``.
    :param source: human-readable origin, e.g. ``"directory /data/mnist (MNIST IDX files)"``
        or ``"bundled subset (3000 train / 1000 test digits)"``.
    """

    images: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    split: str
    source: str

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 3):
            raise ValueError(f"images must be an (N, 28, 28) uint8 array, got {_describe(images)}")
        if images.shape[1:] != _DIGIT_SHAPE:
            raise ValueError(f"images must be an (N, 28, 28) uint8 array, got {_describe(images)}")
        if not (isinstance(labels, np.ndarray) and labels.dtype == np.uint8 and labels.shape == images.shape[:1]):
            raise ValueError(f"labels must be an ({len(images)},) uint8 array, got {_describe(labels)}")
        if labels.size and int(labels.max()) > 9:
            raise ValueError(f"labels must be in 0..9, found {int(labels.max())}")
        if self.split not in _SPLIT_FILES:
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")
        # Frozen dataclass: bypass __setattr__ to store the contiguous, read-only versions.
        object.__setattr__(self, "images", _read_only(np.ascontiguousarray(images)))
        object.__setattr__(self, "labels", _read_only(np.ascontiguousarray(labels)))

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"MNISTDigits(split={self.split!r}, n={len(self)}, source={self.source!r})"


# ----------------------------------------------------------------------------- IDX parsing


def read_idx(path: PathLike) -> np.ndarray:
    """Parse an IDX file (the MNIST format), gzipped or raw.

    Compression is detected from the content, not the name. The header is validated: magic
    number (two zero bytes, a known type code, the number of dimensions), then the data size
    implied by the dimensions must equal the bytes present.

    :param path: the file, e.g. ``train-images-idx3-ubyte.gz`` or ``t10k-labels-idx1-ubyte``.
    :return: an array of the shape stored in the header, e.g. ``(60000, 28, 28)`` uint8 for
        image files and ``(60000,)`` uint8 for label files. Multi-byte types are converted to
        native byte order. Single-byte arrays are read-only views of the file's bytes.
    :raises MNISTDataError: if the file cannot be read, is not valid gzip, or is not a
        complete IDX file (truncated, bad magic number, wrong size).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise MNISTDataError(f"cannot read IDX file {path}: {err}") from err
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, path)
    return _parse_idx(data, path)


def _gunzip(data: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        # EOFError is what gzip raises for a truncated stream: the usual interrupted download.
        raise MNISTDataError(
            f"{path} is not a valid gzip file ({err}); it is probably truncated or damaged. "
            "Delete it and download it again."
        ) from err


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    if len(data) < 4:
        raise MNISTDataError(f"{path} is not an IDX file: only {len(data)} bytes, too short for a header.")
    zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        hint = " (it looks like an HTML page, not data)" if data.lstrip()[:1] == b"<" else ""
        raise MNISTDataError(
            f"{path} is not an IDX file: bad magic number 0x{data[:4].hex()}{hint}; MNIST files start "
            "with 0x00000803 (images) or 0x00000801 (labels). Check that it is an MNIST file and "
            "download it again if it is damaged."
        )
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise MNISTDataError(
            f"{path} is truncated: its header declares {ndim} dimensions but the file has only "
            f"{len(data)} bytes. Delete it and download it again."
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = header_bytes + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "too long"
        raise MNISTDataError(
            f"{path} is {problem}: its header declares shape {dims} ({expected} bytes with the header) "
            f"but it has {len(data)} bytes. Delete it and download it again."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_bytes).reshape(dims)
    if dtype.itemsize > 1:  # IDX is big-endian; hand out native byte order
        array = array.astype(dtype.newbyteorder("="))
    return array


# ----------------------------------------------------------------------------- locations


def default_cache_dir() -> Path:
    """The matchenv cache folder; MNIST lives in its ``mnist/`` subfolder.

    ``$MATCHENV_CACHE`` if set, else ``$XDG_CACHE_HOME/matchenv``, else ``~/.cache/matchenv``.
    The folder is not created here.
    """
    if os.environ.get("MATCHENV_CACHE"):
        return Path(os.environ["MATCHENV_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "matchenv"
    return Path.home() / ".cache" / "matchenv"


def bundled_mnist_path() -> Path:
    """Path of the small real MNIST subset shipped with matchenv (``matchenv/data/mnist_subset.npz``)."""
    return Path(__file__).resolve().parent.parent / "data" / "mnist_subset.npz"


def _name_variants(name: str) -> tuple[str, ...]:
    """Accepted file names for a key of :data:`MNIST_FILES`, in order of preference."""
    raw = name[: -len(".gz")]  # train-images-idx3-ubyte
    dotted = raw.replace("-idx", ".idx")  # train-images.idx3-ubyte (the Kaggle spelling)
    return name, raw, dotted, dotted + ".gz"


def _find_in(folder: Path) -> dict[str, Path]:
    """The MNIST files present directly in ``folder``: key of MNIST_FILES -> path."""
    found = {}
    for name in MNIST_FILES:
        for variant in _name_variants(name):
            if (folder / variant).is_file():
                found[name] = folder / variant
                break
    return found


def _find_mnist_folder(root: Path) -> tuple[Optional[Path], dict[str, Path], list[str]]:
    """Search ``root`` and its known subfolders for all four files.

    :return: ``(folder, files, missing)``: the first folder holding all four files and its
        files, or ``(None, files, missing)`` for the most complete folder if none is complete.
    """
    best: dict[str, Path] = {}
    for sub in _SUBFOLDERS:
        folder = root / sub if sub != "." else root
        found = _find_in(folder)
        if len(found) == len(MNIST_FILES):
            return folder, found, []
        if len(found) > len(best):
            best = found
    return None, best, [name for name in MNIST_FILES if name not in best]


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    """A resolved source: a folder of the four IDX files, or the bundled subset (``files`` empty)."""

    path: Path
    files: Mapping[str, Path] = field(default_factory=dict)

    @property
    def bundled(self) -> bool:
        return not self.files


_lock = threading.RLock()
_digits_cache: dict[tuple[Any, ...], MNISTDigits] = {}
_resolved_cache: dict[tuple[Any, ...], _Source] = {}
_download_failed: Union[bool, str] = False  # False, or why the download failed
_warned_bundled = False


def load_mnist(
    split: str,
    data_dir: Optional[PathLike] = None,
    download: Optional[bool] = None,
) -> MNISTDigits:
    """Load one split of MNIST from the first source that has it.

    Sources, in order: ``data_dir``; ``$MATCHENV_DATA``; ``<default_cache_dir()>/mnist``;
    a download into that cache; the bundled subset (:func:`bundled_mnist_path`). A folder may
    hold the files directly or in a ``mnist/`` or ``MNIST/raw/`` subfolder, gzipped or not
    (``train-images-idx3-ubyte.gz``, ``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``).
    A folder is used only if it holds all four files, so that both splits come from the same
    source; the choice is also remembered for the process, for the same reason.

    Results are cached per (source, split): every call with the same settings returns the
    **same** read-only :class:`MNISTDigits`, and checksums are verified once per file per process.

    :param split: ``"train"`` (60,000 digits in full MNIST) or ``"test"`` (10,000).
    :param data_dir: folder with the MNIST IDX files. If given, it must hold them.
    :param download: download MNIST into the cache if no local copy is found. ``None`` (default)
        downloads unless the environment variable ``MATCHENV_OFFLINE=1``; ``False`` never
        touches the network. If the download fails, the bundled subset is used.
    :return: the digits of ``split``: ``images`` ``(N, 28, 28)`` uint8 and ``labels`` ``(N,)`` uint8.
    :raises MNISTDataError: if ``data_dir`` or ``$MATCHENV_DATA`` lacks files, a file fails its
        checksum or cannot be parsed, or the bundled subset is damaged.
    :raises ValueError: for a split other than ``"train"`` / ``"test"``.
    """
    if split not in _SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    # One lock for the whole load: envs created in threads then share a single load instead of
    # each parsing 50 MB; loading takes well under a second, so contention does not matter.
    with _lock:
        source = _resolve_source(data_dir, download)
        return _load_cached(source, split)


def _resolve_source(data_dir: Optional[PathLike], download: Optional[bool]) -> _Source:
    env_data = os.environ.get("MATCHENV_DATA") or None
    cache = default_cache_dir() / "mnist"
    allow_download = download_allowed(download)
    key = (
        None if data_dir is None else Path(data_dir).expanduser().resolve(),
        env_data if data_dir is None else None,
        cache.resolve(),
        allow_download,
        download is True,
    )
    source = _resolved_cache.get(key)
    if source is None or not _still_present(source):
        source = _resolve_uncached(data_dir, env_data, cache, allow_download, retry=download is True)
        _resolved_cache[key] = source
    return source


def _still_present(source: _Source) -> bool:
    # A remembered folder whose files were deleted is resolved again rather than failing later.
    return all(path.is_file() for path in source.files.values())


def _resolve_uncached(
    data_dir: Optional[PathLike], env_data: Optional[str], cache: Path, allow_download: bool, retry: bool = False
) -> _Source:
    """``retry``: download even if one failed recently (``download=True`` asked for it explicitly)."""
    if data_dir is not None:
        return _required_folder(Path(data_dir), "the data_dir argument")
    if env_data is not None:
        return _required_folder(Path(env_data), "the MATCHENV_DATA environment variable")

    folder, files, _ = _find_mnist_folder(cache)
    if folder is not None:
        logger.info("Using MNIST from the cache %s", folder)
        return _Source(folder.resolve(), files)

    why = "downloading is disabled (download=False or MATCHENV_OFFLINE=1)"
    if allow_download:
        failed_before = None if retry else _recent_failure(cache)
        if failed_before is not None:  # no network here a moment ago: do not wait on timeouts again
            why = failed_before
        else:
            error = _try_download(cache)
            if error is None:
                folder, files, _ = _find_mnist_folder(cache)
                if folder is not None:
                    return _Source(folder.resolve(), files)
            why = f"the download failed ({error})"

    global _warned_bundled
    if not _warned_bundled:  # one line per process
        _warned_bundled = True
        logger.warning(
            "MNIST not found locally and %s: using the small bundled MNIST subset (3,000 train / 1,000 test "
            "digits) instead of the full 60,000 / 10,000. To use full MNIST, set MATCHENV_DATA or pass "
            "data_dir=<folder with the four MNIST IDX files>, or run once online so that it is downloaded to %s.",
            why,
            cache,
        )
    return _Source(bundled_mnist_path())


def _required_folder(root: Path, origin: str) -> _Source:
    """The folder named by the user: it must hold the four files (checked, not guessed around)."""
    root = root.expanduser()
    if not root.is_dir():
        raise MNISTDataError(
            f"MNIST folder {root} (from {origin}) does not exist or is not a folder. Point it at the "
            f"folder holding the four MNIST IDX files: {', '.join(MNIST_FILES)}."
        )
    folder, files, missing = _find_mnist_folder(root)
    if folder is None:
        variants = " / ".join(_name_variants(next(iter(MNIST_FILES))))
        raise MNISTDataError(
            f"MNIST folder {root} (from {origin}) is missing {len(missing)} of the four MNIST files: "
            f"{', '.join(missing)}. Each may be gzipped or not, e.g. {variants}; they may also sit in "
            f"a 'mnist/' or 'MNIST/raw/' subfolder. Download them from {MNIST_MIRRORS[0]}, or leave "
            "data_dir / MATCHENV_DATA unset to use the cache, a download or the bundled subset."
        )
    logger.info("Using MNIST from %s (%s)", folder, origin)
    return _Source(folder.resolve(), files)


# ----------------------------------------------------------------------------- loading


def _load_cached(source: _Source, split: str) -> MNISTDigits:
    # The file's size and mtime are part of the key so a replaced file is read (and checked) again.
    paths = [source.path] if source.bundled else [source.files[name] for name in _SPLIT_FILES[split]]
    key = (split, *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths))
    digits = _digits_cache.get(key)
    if digits is None:
        start = time.perf_counter()
        digits = _load_bundled(source.path, split) if source.bundled else _load_folder(source, split)
        _digits_cache[key] = digits
        logger.info(
            "Loaded MNIST %s split: %d digits from %s in %.2f s",
            split, len(digits), digits.source, time.perf_counter() - start,
        )
    return digits


def _load_folder(source: _Source, split: str) -> MNISTDigits:
    images_name, labels_name = _SPLIT_FILES[split]
    images = _read_verified(source.files[images_name], images_name)
    labels = _read_verified(source.files[labels_name], labels_name)
    where = f"{source.files[images_name]} / {source.files[labels_name].name}"
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != _DIGIT_SHAPE:
        raise MNISTDataError(f"{where}: expected (N, 28, 28) uint8 images, got {_describe(images)}.")
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise MNISTDataError(f"{where}: expected ({len(images)},) uint8 labels, got {_describe(labels)}.")
    if labels.size and int(labels.max()) > 9:
        raise MNISTDataError(f"{where}: labels must be 0..9, found {int(labels.max())}.")
    return MNISTDigits(images, labels, split, f"directory {source.path} (MNIST IDX files)")


def _read_verified(path: Path, name: str) -> np.ndarray:
    """Read one MNIST file, check it against :data:`MNIST_FILES` and parse it.

    A ``.gz`` passes if its own MD5 matches or, failing that, if its content does (someone
    re-compressed the original). A raw IDX file must match the MD5 of the uncompressed file.
    """
    gz_md5, _, idx_md5 = MNIST_FILES[name]
    try:
        data = path.read_bytes()
    except OSError as err:
        raise MNISTDataError(f"cannot read MNIST file {path}: {err}") from err
    actual = _md5(data)
    if data[:2] == _GZIP_MAGIC:
        if actual == gz_md5:
            return _parse_idx(_gunzip(data, path), path)
        try:
            content = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            content = None  # report the checksum, the more useful message
        if content is not None and _md5(content) == idx_md5:
            return _parse_idx(content, path)
        expected = f"md5 {gz_md5} (or uncompressed content md5 {idx_md5})"
    else:
        if actual == idx_md5:
            return _parse_idx(data, path)
        expected = f"md5 {idx_md5} (uncompressed IDX)"
    raise MNISTDataError(
        f"Checksum mismatch for MNIST file {path}: expected {expected}, got md5 {actual}. The file is "
        "damaged, truncated or not the original MNIST file; delete it and download it again "
        f"(e.g. from {MNIST_MIRRORS[0]}{name})."
    )


def _load_bundled(path: Path, split: str) -> MNISTDigits:
    fix = (
        "The bundled MNIST subset is damaged; reinstall matchenv or regenerate it with "
        "'python matchenv/data/make_mnist_subset.py --mnist-dir <folder with MNIST>'."
    )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError as err:
        raise MNISTDataError(f"bundled MNIST subset {path} is missing. {fix}") from err
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise MNISTDataError(f"cannot read bundled MNIST subset {path} ({err}). {fix}") from err

    counts = {}
    for name in _SPLIT_FILES:
        images, labels = arrays.get(f"{name}_images"), arrays.get(f"{name}_labels")
        indices = arrays.get(f"{name}_indices")
        if images is None or labels is None or indices is None:
            raise MNISTDataError(f"bundled MNIST subset {path} lacks the {name}_images/_labels/_indices arrays. {fix}")
        n = len(images)
        if (
            images.dtype != np.uint8
            or images.shape != (n, *_DIGIT_SHAPE)
            or labels.dtype != np.uint8
            or labels.shape != (n,)
            or indices.dtype != np.int32
            or indices.shape != (n,)
            or n == 0
            or int(labels.max()) > 9
        ):
            raise MNISTDataError(
                f"bundled MNIST subset {path} has bad {name} arrays: images {_describe(images)}, "
                f"labels {_describe(labels)}, indices {_describe(indices)}; expected (N, 28, 28) uint8, "
                f"(N,) uint8 in 0..9 and (N,) int32. {fix}"
            )
        counts[name] = n
    source = f"bundled subset ({counts['train']} train / {counts['test']} test digits)"
    return MNISTDigits(arrays[f"{split}_images"], arrays[f"{split}_labels"], split, source)


# ----------------------------------------------------------------------------- download


#: how long a failed MNIST download keeps later processes from trying again (seconds)
RETRY_DOWNLOAD_AFTER_S = 24 * 3600


def _failure_marker(cache: Path) -> Path:
    # next to the MNIST folder, not in it: that folder holds only verified IDX files; one per host,
    # since a cache on a shared home folder is seen by machines with and without a network
    return cache.parent / f".mnist-download-failed-{socket.gethostname()}"


def _recent_failure(cache: Path) -> Optional[str]:
    """Why not to download now: a download from this machine failed less than
    :data:`RETRY_DOWNLOAD_AFTER_S` ago (its marker file says when and why); ``None``: try."""
    marker = _failure_marker(cache)
    try:
        age = time.time() - marker.stat().st_mtime
        reason = marker.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if age >= RETRY_DOWNLOAD_AFTER_S:
        return None
    return (f"a download failed {age / 3600:.1f} h ago ({reason}); it is retried after "
            f"{RETRY_DOWNLOAD_AFTER_S // 3600} h, or now if you delete {marker}")


def _try_download(cache: Path) -> Optional[str]:
    """Download the missing MNIST files into ``cache``: ``None`` on success, else what went wrong.

    A failure is remembered for the process and, in a marker file, for
    :data:`RETRY_DOWNLOAD_AFTER_S`: with no network, every environment of a vector env and every
    new process would otherwise wait for the timeouts again.
    """
    global _download_failed
    if _download_failed:
        logger.debug("Not retrying the MNIST download: it already failed in this process")
        return _download_failed
    try:
        cache.mkdir(parents=True, exist_ok=True)
        present = _find_in(cache)
        for name in MNIST_FILES:
            if name not in present:
                _download_file(name, cache)
    except (OSError, http.client.HTTPException, ValueError) as err:
        _download_failed = str(err) or type(err).__name__
        try:
            _failure_marker(cache).write_text(_download_failed, encoding="utf-8")
        except OSError:  # a read-only cache: the process flag still stops retries here
            pass
        return _download_failed
    _failure_marker(cache).unlink(missing_ok=True)
    return None


def _download_file(name: str, folder: Path) -> Path:
    """Fetch ``name`` from the first mirror that serves it with the right checksums."""
    errors = []
    for mirror in MNIST_MIRRORS:
        url = mirror + name
        try:
            path = _fetch_verified(url, folder / name, name)
        except (OSError, http.client.HTTPException, ValueError) as err:
            logger.info("MNIST download from %s failed: %s", url, err)
            errors.append(f"{url}: {err}")
            continue
        logger.info("Downloaded %s from %s", name, url)
        return path
    raise OSError(f"no mirror served {name} ({'; '.join(errors)})")


def _fetch_verified(url: str, target: Path, name: str) -> Path:
    # Download next to the target and rename only after both checksums match, so an
    # interrupted or corrupted download never leaves a file that looks complete.
    gz_md5, gz_sha256, _ = MNIST_FILES[name]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "matchenv"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=_CONNECT_TIMEOUT_S) as response:
            total = response.headers.get("Content-Length")
            with _progress_bar(int(total) if total else None, name) as update:
                while chunk := response.read(_CHUNK_BYTES):
                    out.write(chunk)
                    md5.update(chunk)
                    sha256.update(chunk)
                    update(len(chunk))
        if md5.hexdigest() != gz_md5 or sha256.hexdigest() != gz_sha256:
            raise ValueError(
                f"checksum mismatch: expected md5 {gz_md5} / sha256 {gz_sha256}, "
                f"got md5 {md5.hexdigest()} / sha256 {sha256.hexdigest()}"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


@contextmanager
def _progress_bar(total: Optional[int], desc: str) -> Iterator[Any]:
    """Yield an ``update(n_bytes)`` callable: a tqdm bar if tqdm is installed, else a no-op."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        yield lambda n: None
        return
    # disable=None: no bar when stderr is not a terminal (CI logs, subprocess envs).
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=None) as bar:
        yield bar.update


# ----------------------------------------------------------------------------- helpers


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"shape {value.shape} dtype {value.dtype}"
    return type(value).__name__


def _clear_caches() -> None:
    """Forget loaded digits, resolved sources and the once-per-process flags (for tests)."""
    global _download_failed, _warned_bundled
    with _lock:
        _digits_cache.clear()
        _resolved_cache.clear()
        _download_failed = False
        _warned_bundled = False
