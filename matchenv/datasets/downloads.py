"""Downloading public datasets: where a dataset's folder comes from (an argument, an environment
variable, the cache or a download, :func:`find_data_folder`), whether the network may be used,
streaming a URL to a file with a progress bar, and extracting archives without letting a member
escape its destination.

Shared by the FlickrLogos-27 and the Best-Buddies-Similarity pair downloads (MNIST verifies each
file against a checksum and keeps its own loop, :mod:`matchenv.datasets.mnist_files`).
"""

from __future__ import annotations

import os
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from matchenv.datasets.photos import DatasetFilesError, PathLike

#: bytes read from the network per chunk
CHUNK_BYTES = 1 << 16
#: seconds to wait for a server to answer
CONNECT_TIMEOUT_S = 10.0


def download_allowed(download: Optional[bool]) -> bool:
    """``download`` if given, else whether ``MATCHENV_OFFLINE`` is unset (``1``/``true``/``yes``/``on``
    forbid the network)."""
    if download is not None:
        return bool(download)
    return os.environ.get("MATCHENV_OFFLINE", "").strip().lower() not in {"1", "true", "yes", "on"}


def find_data_folder(
    *,
    root: Optional[PathLike],
    root_origin: str,
    env_var: str,
    required: Callable[[Path, str], Path],
    cached: Callable[[], Optional[Path]],
    download_into_cache: Callable[[], Path],
    download: Optional[bool],
    help_text: Callable[[str], str],
    download_errors: tuple[type[BaseException], ...] = (OSError,),
) -> Path:
    """A dataset's folder from the first source that has it: ``root``, else the folder in
    ``$env_var`` (each checked by ``required(folder, origin)``, which raises if the data is not
    there), else ``cached()``, else ``download_into_cache()`` unless :func:`download_allowed` says no.

    :param root_origin: how messages name ``root`` (e.g. ``"the root argument"``).
    :param help_text: the error message for a reason clause (``"downloading is disabled ..."``,
        ``"the download failed: ..."``); it should list the ways to provide the data.
    :param download_errors: what a failed download raises (wrapped in the error, chained).
    :raises DatasetFilesError: if no source has the data.
    """
    if root is not None:
        return required(Path(root), root_origin)
    env = os.environ.get(env_var)
    if env:
        return required(Path(env), f"the {env_var} environment variable")
    found = cached()
    if found is not None:
        return found
    if not download_allowed(download):
        raise DatasetFilesError(help_text("downloading is disabled (download=False or MATCHENV_OFFLINE=1)"))
    try:
        return download_into_cache()
    except download_errors as err:
        raise DatasetFilesError(help_text(f"the download failed: {err}")) from err


def fetch(url: str, out: Any, desc: str) -> None:
    """Stream ``url`` into the open binary file ``out`` with a tqdm progress bar (when stderr is a terminal).

    :raises OSError: (``urllib.error.URLError`` among them) if the download fails.
    """
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "matchenv"})
    with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S) as response:
        total = response.headers.get("Content-Length")
        with tqdm(
            total=int(total) if total else None, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=None
        ) as bar:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))


def safe_extract_tar(archive: Path, destination: Path) -> None:
    """Extract a tar archive into ``destination``, refusing members that would land outside it.

    :raises ValueError: for a member with an absolute path, ``..`` out of ``destination``, or a link.
    """
    destination = destination.resolve()
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            target = (destination / member.name).resolve()
            if os.path.isabs(member.name) or not target.is_relative_to(destination):
                raise ValueError(
                    f"refusing to extract {archive.name}: member {member.name!r} would land outside {destination}"
                )
            if not (member.isfile() or member.isdir()):
                raise ValueError(
                    f"refusing to extract {archive.name}: member {member.name!r} is a link or a special file"
                )
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: the stdlib's own safety filter too
            tar.extractall(destination, members=members, filter="data")
        else:  # pragma: no cover - older Pythons; the checks above already refuse unsafe members
            tar.extractall(destination, members=members)


def extract_zip_files(archive: Path, destination: Path, keep: Callable[[str], bool]) -> list[Path]:
    """Extract the files of a zip archive whose *base name* passes ``keep`` into ``destination``,
    flat (folders inside the archive are dropped), so no member can land outside it.

    :param keep: called with each file's base name (e.g. ``"pair0001_frm1_bolt_0032.jpg"``).
    :return: the extracted files.
    :raises ValueError: if two kept members have the same base name, or for a base name that is
        not a plain file name; ``zipfile.BadZipFile`` for a file that is not a zip archive.
    """
    written: list[Path] = []
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            if info.is_dir():
                continue
            name = PurePosixPath(info.filename.replace("\\", "/")).name
            if not keep(name):
                continue
            if name in ("", ".", ".."):  # a base name never holds a "/", so only these could escape
                raise ValueError(f"refusing to extract {archive.name}: member {info.filename!r} has no plain file name")
            target = destination / name
            if target.exists():
                raise ValueError(f"{archive.name} holds two files named {name!r} ({info.filename!r} is the second)")
            with zipped.open(info) as source, open(target, "wb") as out:
                while chunk := source.read(CHUNK_BYTES):
                    out.write(chunk)
            written.append(target)
    return written
