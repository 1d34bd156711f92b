"""Tests of matchenv.datasets.mnist_files: IDX parsing, source order, checksums, bundled subset.

Fully offline: ``urllib.request.urlopen`` only accepts ``file://`` URLs here, and the download
tests serve tiny fixture files from a local folder.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from matchenv.datasets import mnist_files as mf

REAL_MNIST = Path("/work/shared/data/mnist")
N_FIXTURE = {"train": 12, "test": 7}


# ----------------------------------------------------------------------------- fixtures


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """Encode ``array`` as an IDX file (big-endian header, then the data)."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def fixture_arrays() -> dict[str, np.ndarray]:
    """Tiny fake MNIST: key of MNIST_FILES -> images ``(N, 28, 28)`` or labels ``(N,)``, uint8."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, (images_name, labels_name) in mf._SPLIT_FILES.items():
        n = N_FIXTURE[split]
        arrays[images_name] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[labels_name] = (np.arange(n) % 10).astype(np.uint8)
    return arrays


def fixture_files() -> dict[str, tuple[bytes, bytes]]:
    """Key of MNIST_FILES -> (raw IDX bytes, gzipped bytes) of the fixture (deterministic)."""
    return {name: (idx_bytes(a), gzip.compress(idx_bytes(a), mtime=0)) for name, a in fixture_arrays().items()}


def write_mnist(folder: Path, gzipped: bool = True, dotted: bool = False) -> Path:
    """Write the four fixture files to ``folder`` under one of the accepted spellings."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (raw, gz) in fixture_files().items():
        file_name = name if gzipped else name[: -len(".gz")]
        if dotted:
            file_name = file_name.replace("-idx", ".idx")
        (folder / file_name).write_bytes(gz if gzipped else raw)
    return folder


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Empty cache, no MATCHENV_DATA, offline by default, fresh module caches, no network."""
    monkeypatch.setenv("MATCHENV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MATCHENV_OFFLINE", "1")
    monkeypatch.delenv("MATCHENV_DATA", raising=False)
    real_urlopen = urllib.request.urlopen

    def local_only(request, *args, **kwargs):  # type: ignore[no-untyped-def]
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        assert url.startswith("file:"), f"a test tried to access the network: {url}"
        return real_urlopen(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)
    mf._clear_caches()
    yield
    mf._clear_caches()


@pytest.fixture
def fixture_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the real MNIST checksums by those of the fixture files."""
    for name, (raw, gz) in fixture_files().items():
        checksums = (hashlib.md5(gz).hexdigest(), hashlib.sha256(gz).hexdigest(), hashlib.md5(raw).hexdigest())
        monkeypatch.setitem(mf.MNIST_FILES, name, checksums)


# ----------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gzipped", [True, False])
def test_read_idx_parses_images_and_labels(tmp_path: Path, gzipped: bool) -> None:
    folder = write_mnist(tmp_path, gzipped=gzipped)
    suffix = ".gz" if gzipped else ""
    images = mf.read_idx(folder / f"train-images-idx3-ubyte{suffix}")
    labels = mf.read_idx(folder / f"train-labels-idx1-ubyte{suffix}")
    expected = fixture_arrays()
    assert images.shape == (12, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, expected["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(labels, expected["train-labels-idx1-ubyte.gz"])


def test_read_idx_multibyte_types_are_native(tmp_path: Path) -> None:
    values = np.arange(-3, 9, dtype=np.int32).reshape(3, 4)
    (tmp_path / "x.idx").write_bytes(idx_bytes(values, type_code=0x0C))
    out = mf.read_idx(tmp_path / "x.idx")
    assert out.dtype.isnative and out.dtype.kind == "i" and out.dtype.itemsize == 4
    np.testing.assert_array_equal(out, values)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x00", "too short"),
        (b"<html>Not Found</html>", "bad magic number"),
        (b"\x00\x00\x07\x03" + bytes(12), "bad magic number"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated"),
    ],
)
def test_read_idx_rejects_garbage(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(mf.MNISTDataError, match=message):
        mf.read_idx(tmp_path / "bad")


@pytest.mark.parametrize("gzipped", [True, False])
def test_read_idx_rejects_truncated_file(tmp_path: Path, gzipped: bool) -> None:
    raw, gz = fixture_files()["train-images-idx3-ubyte.gz"]
    data = gz if gzipped else raw
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(mf.MNISTDataError, match="truncated") as info:
        mf.read_idx(path)
    assert str(path) in str(info.value) and "download it again" in str(info.value)


def test_read_idx_rejects_trailing_bytes(tmp_path: Path) -> None:
    raw, _ = fixture_files()["t10k-labels-idx1-ubyte.gz"]
    (tmp_path / "labels").write_bytes(raw + b"\x00")
    with pytest.raises(mf.MNISTDataError, match="too long"):
        mf.read_idx(tmp_path / "labels")


# ----------------------------------------------------------------------------- folder sources


@pytest.mark.parametrize(("gzipped", "dotted"), [(True, False), (False, False), (False, True)])
def test_data_dir_happy_path(tmp_path: Path, fixture_checksums: None, gzipped: bool, dotted: bool) -> None:
    folder = write_mnist(tmp_path / "data", gzipped=gzipped, dotted=dotted)
    train = mf.load_mnist("train", data_dir=folder, download=False)
    test = mf.load_mnist("test", data_dir=folder, download=False)
    expected = fixture_arrays()
    np.testing.assert_array_equal(train.images, expected["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(test.labels, expected["t10k-labels-idx1-ubyte.gz"])
    assert (len(train), len(test)) == (12, 7)
    assert train.source == test.source == f"directory {folder.resolve()} (MNIST IDX files)"
    assert train.images.flags.c_contiguous and not train.images.flags.writeable
    assert not train.labels.flags.writeable


def test_recompressed_gz_passes_by_content_checksum(tmp_path: Path, fixture_checksums: None) -> None:
    folder = write_mnist(tmp_path / "data")
    raw, _ = fixture_files()["t10k-images-idx3-ubyte.gz"]
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw, compresslevel=1, mtime=123))
    assert len(mf.load_mnist("test", data_dir=folder, download=False)) == 7


def test_data_dir_with_wrong_checksum(tmp_path: Path) -> None:
    # The real checksums are left in place, so the fixture files fail them.
    folder = write_mnist(tmp_path / "data")
    with pytest.raises(mf.MNISTDataError, match="Checksum mismatch") as info:
        mf.load_mnist("train", data_dir=folder, download=False)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert mf.MNIST_FILES["train-images-idx3-ubyte.gz"][0] in message  # expected md5
    assert hashlib.md5((folder / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest() in message  # actual
    assert "delete it" in message


def test_data_dir_with_missing_files(tmp_path: Path, fixture_checksums: None) -> None:
    folder = write_mnist(tmp_path / "data")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    (folder / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(mf.MNISTDataError, match="missing 2 of the four") as info:
        mf.load_mnist("test", data_dir=folder, download=False)
    message = str(info.value)
    missing = message.split("MNIST files: ")[1].split(". ")[0]
    assert missing == "train-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"


def test_data_dir_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(mf.MNISTDataError, match="does not exist"):
        mf.load_mnist("train", data_dir=tmp_path / "nope", download=False)


def test_env_var_with_mnist_subfolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixture_checksums: None) -> None:
    write_mnist(tmp_path / "datasets" / "mnist")
    monkeypatch.setenv("MATCHENV_DATA", str(tmp_path / "datasets"))
    digits = mf.load_mnist("train", download=False)
    assert digits.source == f"directory {(tmp_path / 'datasets' / 'mnist').resolve()} (MNIST IDX files)"


def test_env_var_without_files_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("MATCHENV_DATA", str(tmp_path / "empty"))
    with pytest.raises(mf.MNISTDataError, match="MATCHENV_DATA"):
        mf.load_mnist("train", download=False)


def test_data_dir_wins_over_env_var_and_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixture_checksums: None
) -> None:
    explicit = write_mnist(tmp_path / "explicit")
    monkeypatch.setenv("MATCHENV_DATA", str(write_mnist(tmp_path / "env")))
    write_mnist(mf.default_cache_dir() / "mnist")
    assert str(explicit.resolve()) in mf.load_mnist("test", data_dir=explicit, download=False).source
    assert str((tmp_path / "env").resolve()) in mf.load_mnist("test", download=False).source


def test_cache_dir_is_used(tmp_path: Path, fixture_checksums: None) -> None:
    assert mf.default_cache_dir() == tmp_path / "cache"
    write_mnist(tmp_path / "cache" / "mnist", gzipped=False)
    digits = mf.load_mnist("test", download=False)
    assert digits.source == f"directory {(tmp_path / 'cache' / 'mnist').resolve()} (MNIST IDX files)"


def test_default_cache_dir_fallbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MATCHENV_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mf.default_cache_dir() == tmp_path / "xdg" / "matchenv"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mf.default_cache_dir() == tmp_path / "home" / ".cache" / "matchenv"


def test_loads_are_cached(tmp_path: Path, fixture_checksums: None) -> None:
    folder = write_mnist(tmp_path / "data")
    first = mf.load_mnist("train", data_dir=folder, download=False)
    assert mf.load_mnist("train", data_dir=str(folder), download=False) is first
    assert mf.load_mnist("train", download=False) is not first  # another source: the bundled subset


def test_bad_split() -> None:
    with pytest.raises(ValueError, match="split"):
        mf.load_mnist("validation", download=False)


# ----------------------------------------------------------------------------- bundled subset


def test_offline_falls_back_to_bundled_subset_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="matchenv.datasets"):
        train = mf.load_mnist("train", download=False)
        test = mf.load_mnist("test")  # download=None with MATCHENV_OFFLINE=1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per process, not once per split
    assert "small bundled MNIST subset" in warnings[0].getMessage()
    assert "MATCHENV_DATA" in warnings[0].getMessage() and "data_dir" in warnings[0].getMessage()
    assert train.source == test.source == "bundled subset (3000 train / 1000 test digits)"
    assert not (mf.default_cache_dir() / "mnist").exists()  # nothing was downloaded


def test_bundled_subset_contents() -> None:
    train = mf.load_mnist("train", download=False)
    test = mf.load_mnist("test", download=False)
    for digits, n in ((train, 3000), (test, 1000)):
        assert digits.images.shape == (n, 28, 28) and digits.images.dtype == np.uint8
        assert digits.labels.shape == (n,) and digits.labels.dtype == np.uint8
        np.testing.assert_array_equal(np.bincount(digits.labels, minlength=10), [n // 10] * 10)
        assert not digits.images.flags.writeable and digits.images.flags.c_contiguous
        assert 0 < digits.images.mean() < 128  # real digits: dark background, some ink
    with np.load(mf.bundled_mnist_path()) as npz:
        assert npz["train_indices"].dtype == np.int32 and npz["train_indices"].max() < 60_000
        assert npz["test_indices"].dtype == np.int32 and npz["test_indices"].max() < 10_000
        assert len(np.unique(npz["train_indices"])) == 3000 and len(np.unique(npz["test_indices"])) == 1000


def test_bundled_subset_has_no_train_test_leakage() -> None:
    train = mf.load_mnist("train", download=False)
    test = mf.load_mnist("test", download=False)
    train_hashes = {image.tobytes() for image in train.images}
    assert not any(image.tobytes() in train_hashes for image in test.images)


def test_bundled_subset_is_cached() -> None:
    assert mf.load_mnist("test", download=False) is mf.load_mnist("test", download=False)


@pytest.mark.parametrize("damage", ["garbage", "wrong_dtype", "missing_array"])
def test_damaged_bundled_subset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    path = tmp_path / "mnist_subset.npz"
    with np.load(mf.bundled_mnist_path()) as npz:
        arrays = {key: npz[key] for key in npz.files}
    if damage == "garbage":
        path.write_bytes(mf.bundled_mnist_path().read_bytes()[:1000])
    else:
        if damage == "wrong_dtype":
            arrays["train_images"] = arrays["train_images"].astype(np.float32)
        else:
            del arrays["test_labels"]
        np.savez(path, **arrays)
    monkeypatch.setattr(mf, "bundled_mnist_path", lambda: path)
    with pytest.raises(mf.MNISTDataError, match="bundled MNIST subset") as info:
        mf.load_mnist("train", download=False)
    assert "make_mnist_subset.py" in str(info.value)


# ----------------------------------------------------------------------------- download (file:// mirrors)


def test_download_tries_mirrors_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixture_checksums: None
) -> None:
    mirror = write_mnist(tmp_path / "mirror")
    monkeypatch.setattr(mf, "MNIST_MIRRORS", ((tmp_path / "dead").as_uri() + "/", mirror.as_uri() + "/"))
    digits = mf.load_mnist("train", download=True)
    cache = tmp_path / "cache" / "mnist"
    assert digits.source == f"directory {cache.resolve()} (MNIST IDX files)"
    assert sorted(p.name for p in cache.iterdir()) == sorted(mf.MNIST_FILES)  # no leftover .part files


def test_download_with_bad_checksum_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Real checksums, fixture files on the "mirror": every download fails verification.
    mirror = write_mnist(tmp_path / "mirror")
    monkeypatch.setattr(mf, "MNIST_MIRRORS", (mirror.as_uri() + "/",))
    monkeypatch.delenv("MATCHENV_OFFLINE")
    with caplog.at_level(logging.WARNING, logger="matchenv.datasets"):
        digits = mf.load_mnist("train")
    assert digits.source.startswith("bundled subset")
    assert "checksum mismatch" in caplog.text and "the download failed" in caplog.text
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []  # nothing unverified was kept


# ----------------------------------------------------------------------------- the real files


@pytest.mark.skipif(not REAL_MNIST.exists(), reason="full MNIST files not available on this machine")
def test_real_mnist() -> None:
    train = mf.load_mnist("train", data_dir=REAL_MNIST, download=False)
    test = mf.load_mnist("test", data_dir=REAL_MNIST, download=False)
    assert train.images.shape == (60_000, 28, 28) and test.images.shape == (10_000, 28, 28)
    np.testing.assert_array_equal(train.labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(test.labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    np.testing.assert_array_equal(np.bincount(test.labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    # The bundled subset is a verbatim selection of these digits.
    with np.load(mf.bundled_mnist_path()) as npz:
        np.testing.assert_array_equal(train.images[npz["train_indices"]], npz["train_images"])
        np.testing.assert_array_equal(test.labels[npz["test_indices"]], npz["test_labels"])


def test_a_failed_download_is_not_retried_by_the_next_process_and_logs_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(mf, "MNIST_MIRRORS", ((tmp_path / "dead").as_uri() + "/",))
    monkeypatch.delenv("MATCHENV_OFFLINE")
    with caplog.at_level(logging.WARNING, logger="matchenv.datasets"):
        assert mf.load_mnist("train").source.startswith("bundled subset")
    assert len(caplog.records) == 1 and "the download failed" in caplog.records[0].getMessage()
    mf._clear_caches()  # as a new process would start
    caplog.clear()
    fetched = []
    monkeypatch.setattr(mf, "_download_file", lambda *args: fetched.append(args))
    with caplog.at_level(logging.WARNING, logger="matchenv.datasets"):
        assert mf.load_mnist("train").source.startswith("bundled subset")
    assert fetched == []  # no second attempt
    assert len(caplog.records) == 1 and "a download failed" in caplog.records[0].getMessage()
    # after the retry interval it tries again
    (marker,) = (tmp_path / "cache").glob(".mnist-download-failed-*")  # one per host
    # after the retry interval it tries again
    old = marker.stat().st_mtime - mf.RETRY_DOWNLOAD_AFTER_S - 1
    os.utime(marker, (old, old))
    mf._clear_caches()
    mf.load_mnist("train")
    assert fetched  # tried (the stub fetched nothing, so the bundled subset still serves)
    # download=True asked for explicitly: tried even right after a failure
    marker.write_text("no network")
    fetched.clear()
    mf._clear_caches()
    mf.load_mnist("train", download=True)
    assert fetched
