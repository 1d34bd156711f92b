"""Small model files (a coarse proposer, a photograph look): a dict saved with ``torch.save``,
written so that a crash never leaves a half-written file under the real name, and read back with
errors that say which script makes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch


def write_model_file(path: Union[str, Path], contents: dict[str, Any]) -> Path:
    """Save ``contents`` to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(contents, tmp)
    tmp.replace(path)
    return path


def read_model_file(path: Union[str, Path], what: str, script: str, required: set[str]) -> dict[str, Any]:
    """The dict in ``path``, which ``script`` writes and which must hold the ``required`` keys.

    :param what: what the file holds, for messages ("proposer", "look").
    :raises FileNotFoundError: no file at ``path`` (the message says how to make one).
    :raises ValueError: a file that is not such a model file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {path}: train one with `python {script}`")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (pickle and zip errors alike mean: not our file)
        raise ValueError(f"{path} is not a {what} file written by {script} ({err})") from err
    missing = required - set(saved if isinstance(saved, dict) else ())
    if missing:
        raise ValueError(f"{path} is not a {what} file written by {script} (missing {sorted(missing)})")
    return saved
