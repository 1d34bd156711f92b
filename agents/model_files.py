"""Small model files (a coarse proposer, a photograph look): a dict saved with ``torch.save``,
written so that a crash never leaves a half-written file under the real name, and read back with
errors that say which script makes them -- and, for a model file of another kind (a look passed
where a photograph agent is expected, an agent checkpoint passed where a ``.pt`` is), what the
file is and which loader takes it."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch


@dataclass(frozen=True)
class ModelKind:
    """One kind of model file.

    :param what: what it holds, in words ("look").
    :param script: the script that writes it.
    :param loader: what loads it (named in messages about a file passed to the wrong loader).
    """

    what: str
    script: str
    loader: str


#: Every kind of model file, by the ``kind`` saved in it. Proposer files predate the field and
#: are told by their keys (:func:`saved_kind`); an agent checkpoint is an SB3 ``.zip``, not a dict.
MODEL_KINDS: dict[str, ModelKind] = {
    "agent": ModelKind("search agent checkpoint", "train/ppo_lstm.py",
                       "TemplateSearcher.load or matchenv.load(path)"),
    "photo-search": ModelKind("photograph search", "train/photo_search.py",
                              "PhotoSearcher.load or matchenv.load(path)"),
    "multiscale-look": ModelKind("look", "train/multiscale_look.py", "LookSearcher.load or matchenv.load(path)"),
    "look-agent": ModelKind("photograph agent", "train/look_agent.py", "LookAgentSearcher.load or matchenv.load(path)"),
    "proposer": ModelKind("proposer", "train/coarse_proposer.py", "CoarseToFineSearcher.load or matchenv.load(path)"),
    "box-refiner": ModelKind("box refiner", "train/box_refiner.py",
                             "TemplateSearcher(..., refiner=path) or matchenv.load('flickrlogos27', refiner=path)"),
}
#: The keys that tell a proposer file (it has no ``kind``).
_PROPOSER_KEYS = {"state_dict", "config", "crop_size", "fine"}
#: Kinds told by a file's form rather than a saved ``kind`` field.
_UNNAMED_KINDS = {"agent", "proposer"}


def write_model_file(path: Union[str, Path], contents: dict[str, Any]) -> Path:
    """Save ``contents`` to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(contents, tmp)
    tmp.replace(path)
    return path


def saved_kind(saved: Any) -> Optional[str]:
    """The kind (a key of :data:`MODEL_KINDS`, or whatever other ``kind`` it names) of a loaded
    model file's contents; ``None`` where it says nothing."""
    if not isinstance(saved, dict):
        return None
    if isinstance(saved.get("kind"), str):
        return saved["kind"]
    return "proposer" if _PROPOSER_KEYS <= set(saved) else None


def is_agent_checkpoint(path: Union[str, Path]) -> bool:
    """Whether ``path`` is an SB3 ``.zip`` (what ``train/ppo_lstm.py`` writes): a zip with a
    ``data`` entry at its top. Reads the zip's directory only (a ``torch.save`` file is a zip too,
    its entries in a folder)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "data" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def model_file_kind(path: Union[str, Path]) -> Optional[str]:
    """The kind of model file at ``path`` (:data:`MODEL_KINDS`' keys, or the other ``kind`` it
    names): ``"agent"`` for an SB3 checkpoint; ``None`` where it is no model file we know.
    Reads tensors only: nothing in the file runs."""
    path = Path(path)
    if not path.is_file():
        return None
    if is_agent_checkpoint(path):
        return "agent"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (not a torch file at all)
        return None
    return saved_kind(saved)


def wrong_kind_message(path: Union[str, Path], kind: str, what: str, script: str) -> str:
    """``path`` is a model file of ``kind`` but a ``what`` file (which ``script`` writes) was
    expected: what it is, and which loader takes it."""
    known = MODEL_KINDS.get(kind)
    if known is None:
        return f"{path} holds a {kind!r} file, not a {what} file written by {script}"
    field = "" if kind in _UNNAMED_KINDS else f"kind {kind!r}, "
    return (f"{path} is a {known.what} file ({field}written by {known.script}), not a {what} file written "
            f"by {script}: load it with {known.loader}")


def read_model_file(path: Union[str, Path], what: str, script: str, required: set[str],
                    kind: Optional[str] = None) -> dict[str, Any]:
    """The dict in ``path``, which ``script`` writes and which must hold the ``required`` keys.

    :param what: what the file holds, for messages ("proposer", "look").
    :param kind: the ``kind`` the file must be (:data:`MODEL_KINDS`' keys); default: the kind
        that ``script`` writes, if it is one of :data:`MODEL_KINDS`' (else no check).
    :raises IsADirectoryError: ``path`` is a folder.
    :raises FileNotFoundError: no file at ``path`` (the message says how to make one).
    :raises ValueError: a file that is not such a model file; for a model file of another kind,
        the message says what it is and which loader takes it.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a {what} file: pass the .pt file that {script} wrote in it")
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {path}: train one with `python {script}`")
    if kind is None:
        kind = next((key for key, known in MODEL_KINDS.items() if known.script == script), None)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (pickle and zip errors alike mean: not our file)
        if kind != "agent" and is_agent_checkpoint(path):
            raise ValueError(wrong_kind_message(path, "agent", what, script)) from err
        first_line = (str(err).strip().splitlines() or [""])[0]  # torch's weights-only errors run to a page
        raise ValueError(f"{path} is not a {what} file written by {script}: torch.load cannot read it as one "
                         f"({type(err).__name__}: {first_line})") from err
    found = saved_kind(saved)
    if kind is not None and found is not None and found != kind:
        raise ValueError(wrong_kind_message(path, found, what, script))
    missing = required - set(saved if isinstance(saved, dict) else ())
    if missing:
        raise ValueError(f"{path} is not a {what} file written by {script} (missing {sorted(missing)})")
    return saved
