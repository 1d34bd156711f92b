"""Every shipped model and baseline behind one door: :func:`load`, :func:`locate`, :func:`list_models`.

::

    import matchenv

    match = matchenv.locate(query, reference, model="photo")   # RGB uint8 arrays; a Match
    searcher = matchenv.load("photo", channel_order="bgr")      # load once (cv2.imread gives BGR)
    matches = searcher.locate_batch(queries, references)

A :class:`Searcher` wraps the model's own class (``agents``: ``PhotoSearcher``,
``TemplateSearcher``, ``LookSearcher``, ``LookAgentSearcher``, ``CoarseToFineSearcher``, or a
baseline ``Matcher``) and turns its result into one :class:`~matchenv.match.Match`; the
underlying searcher stays reachable as :attr:`Searcher.model` for its own options.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from matchenv.match import Match

#: What ``score`` means, per kind of model (``list_models()``'s ``score`` column).
SCORE_MEANING: dict[str, str] = {
    "photo-search": "probability that the query is in the reference (calibrated on two-view pairs)",
    "agent": "the contrastive head's match score of the answer window, 0-1",
    "coarse-to-fine": "the contrastive head's match score of the answer window, 0-1",
    "look": "the look's correlation score at the answer",
    "look-agent": "the look's correlation score at the answer",
    "baseline": "the matcher's own score at the answer (e.g. NCC's correlation)",
}

#: One line per baseline: what it is.
BASELINE_DESCRIPTIONS: dict[str, str] = {
    "ncc": "OpenCV zero-mean normalised cross-correlation (TM_CCOEFF_NORMED) at the query's size",
    "ncc-multiscale": "NCC over several query sizes (default 0.7-1.5x the query's, in steps of 0.1)",
    "ssd": "OpenCV normalised sum of squared differences (TM_SQDIFF_NORMED) at the query's size",
    "mtm": "Matching by Tone Mapping (Hel-Or et al. 2014)",
    "bbs": "Best-Buddies Similarity (Dekel et al. 2015); exhaustive, seconds to minutes per photograph pair",
    "ddis": "Deformable Diversity Similarity (Talmi et al. 2017); exhaustive, seconds per photograph pair",
    "qatm": "QATM (Cheng et al. 2019) on a trained agent's CNN (default: the shipped 'cluttered-mnist' agent)",
    "qatm-imagenet": "QATM as published, training-free, on ImageNet EfficientNet-Lite0 features (pretrained extra)",
    "embedding-exhaustive": "cosine similarity of a trained agent's CNN embeddings at every position "
                            "(default: the shipped 'cluttered-mnist' agent)",
    "centre-box": "the blind control: a query-sized box at the reference's centre, placed without looking",
}

#: Baselines that compare learned features: without ``checkpoint=`` they use this shipped agent's CNN.
_CHECKPOINT_BASELINES = {"qatm": "cluttered-mnist", "embedding-exhaustive": "cluttered-mnist"}


@dataclass(frozen=True)
class ModelInfo:
    """One row of the model table.

    :param name: what :func:`load` takes.
    :param kind: ``"photo-search"``, ``"agent"``, ``"coarse-to-fine"``, ``"look"``,
        ``"look-agent"`` or ``"baseline"``.
    :param description: what it is for.
    :param score: what its results' ``score`` means.
    :param file: the shipped file (``None`` for baselines).
    :param command: the command that made the file (``None`` for baselines).
    :param defaults: the options :func:`load` applies unless given (e.g. a shipped box refiner,
        a coarse-to-fine searcher's candidates).
    """

    name: str
    kind: str
    description: str
    score: str
    file: Optional[str]
    command: Optional[str]
    defaults: dict[str, Any] = field(default_factory=dict)


def _shipped_rows() -> list[tuple[ModelInfo, Callable[..., Any]]]:
    """``(info, factory(**options))`` for every shipped file: built from ``matchenv.agents.pretrained``'s
    registries, so a model added there appears here."""
    from matchenv.agents.pretrained import LOOK_AGENTS, LOOKS, PHOTO_SEARCHERS, PRETRAINED, PROPOSERS

    rows: list[tuple[ModelInfo, Callable[..., Any]]] = []

    def add(name: str, kind: str, entry: Any, factory: Callable[..., Any], defaults: Optional[dict] = None) -> None:
        rows.append((ModelInfo(name, kind, entry.description, SCORE_MEANING[kind], entry.filename, entry.command,
                               dict(defaults or {})), factory))

    from matchenv.agents.photo_search import DEFAULT_FOUND_THRESHOLD

    for key, entry in PHOTO_SEARCHERS.items():
        add(key, "photo-search", entry, functools.partial(_photo_search, key),
            {"found_threshold": DEFAULT_FOUND_THRESHOLD, "policy": "the one the file names", "windows": "all candidates"})
    for key, entry in LOOKS.items():
        add(f"{key}-look", "look", entry, functools.partial(_look, key))
    for key, entry in LOOK_AGENTS.items():
        add(f"{key}-agent", "look-agent", entry, functools.partial(_look_agent, key))
    for key, entry in PRETRAINED.items():
        add(key, "agent", entry, functools.partial(_agent, key), {"refiner": entry.refiner} if entry.refiner else None)
    for key, entry in PROPOSERS.items():
        add(f"{key}-large", "coarse-to-fine", entry, functools.partial(_coarse_to_fine, key),
            {"agent": key, "candidates": entry.candidates, "accept": entry.accept, "verifier": entry.verifier})
    return rows


def _photo_search(key: str, **options: Any) -> Any:
    from matchenv.agents.photo_search import PhotoSearcher

    return PhotoSearcher.from_pretrained(key, **options)


def _look(key: str, **options: Any) -> Any:
    from matchenv.agents.multiscale_look import LookSearcher

    return LookSearcher.from_pretrained(key, **options)


def _look_agent(key: str, **options: Any) -> Any:
    from matchenv.agents.look_agent import LookAgentSearcher

    return LookAgentSearcher.from_pretrained(key, **options)


def _agent(key: str, **options: Any) -> Any:
    from matchenv.agents.searcher import TemplateSearcher

    return TemplateSearcher.from_pretrained(key, **options)


def _coarse_to_fine(key: str, **options: Any) -> Any:
    from matchenv.agents.coarse_to_fine import CoarseToFineSearcher

    return CoarseToFineSearcher.from_pretrained(key, **options)


def _baseline(key: str, **options: Any) -> Any:
    from matchenv.agents.baselines import make_matcher
    from matchenv.agents.pretrained import pretrained_path

    if key in _CHECKPOINT_BASELINES and "checkpoint" not in options:
        options["checkpoint"] = pretrained_path(_CHECKPOINT_BASELINES[key])
    return make_matcher(key, **options)


def _baseline_rows() -> list[tuple[ModelInfo, Callable[..., Any]]]:
    from matchenv.agents.baselines import MATCHERS

    return [(ModelInfo(key, "baseline", BASELINE_DESCRIPTIONS.get(key, "a baseline matcher"), SCORE_MEANING["baseline"],
                       None, None, {"checkpoint": f"the shipped {_CHECKPOINT_BASELINES[key]!r} agent"}
                       if key in _CHECKPOINT_BASELINES else {}),
             functools.partial(_baseline, key)) for key in MATCHERS]


def _table() -> dict[str, tuple[ModelInfo, Callable[..., Any]]]:
    return {info.name: (info, factory) for info, factory in _shipped_rows() + _baseline_rows()}


def list_models(kind: Optional[str] = None) -> list[ModelInfo]:
    """Every name :func:`load` takes, shipped models first, with what each is for.

    :param kind: only this kind (``"baseline"``, ``"agent"``, ...); ``None``: all.
    """
    infos = [info for info, _ in _table().values()]
    if kind is not None:
        kinds = sorted({info.kind for info in infos})
        if kind not in kinds:
            raise ValueError(f"unknown kind {kind!r}; kinds: {', '.join(kinds)}")
        infos = [info for info in infos if info.kind == kind]
    return infos


@contextlib.contextmanager
def intra_op_threads(threads: Optional[int]) -> Iterator[None]:
    """Run the block with ``threads`` torch and OpenCV threads, then restore both (``None``: as they are).

    Why: the docs' times are one thread; torch's default (every core) is slower for these small
    networks on a busy machine, and a user's numbers should match the docs'.
    """
    if threads is None:
        yield
        return
    import cv2
    import torch

    torch_before, cv2_before = torch.get_num_threads(), cv2.getNumThreads()
    if torch_before != threads:
        torch.set_num_threads(threads)
    if cv2_before != threads:
        cv2.setNumThreads(threads)
    try:
        yield
    finally:
        if torch_before != threads:
            torch.set_num_threads(torch_before)
        if cv2_before != threads:
            cv2.setNumThreads(cv2_before)


class Searcher:
    """A loaded model: ``locate(query, reference) -> Match`` and ``locate_batch``.

    Made by :func:`load`; wraps :attr:`model`, the model's own searcher or matcher.

    :param model: the underlying searcher (``agents``' classes) or baseline matcher.
    :param name: what it was loaded as (copied to every :class:`Match`'s ``model``).
    :param kind: its kind (:class:`ModelInfo`).
    :param channel_order: ``"rgb"`` or ``"bgr"`` (what ``cv2.imread`` gives) for every image passed.
    :param threads: torch and OpenCV threads while it searches (default 1; ``None``: leave them).
    """

    def __init__(self, model: Any, name: str, kind: str, channel_order: str = "rgb", threads: Optional[int] = 1) -> None:
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr' (cv2.imread gives 'bgr'), got {channel_order!r}")
        if threads is not None and (int(threads) != threads or threads < 1):
            raise ValueError(f"threads must be a positive integer or None (leave torch's and OpenCV's setting), got {threads!r}")
        self.model = model
        self.name = name
        self.kind = kind
        self.channel_order = channel_order
        self.threads = None if threads is None else int(threads)
        # the agents' classes take the channel order themselves; a baseline gets RGB from us
        self._flip = channel_order == "bgr" and getattr(model, "channel_order", None) is None

    def __repr__(self) -> str:
        return f"Searcher(name={self.name!r}, kind={self.kind!r}, channel_order={self.channel_order!r}, threads={self.threads})"

    def locate(self, query: np.ndarray, reference: np.ndarray) -> Match:
        """Find ``query`` in ``reference``.

        :param query: ``(h, w, 3)`` colour or ``(h, w)`` grayscale uint8 image (the template).
        :param reference: ``(H, W, 3)`` or ``(H, W)`` uint8 image at least as large as the query.
        :return: the :class:`~matchenv.match.Match`, its box in pixels of ``reference``.
        """
        return self.locate_batch([query], [reference])[0]

    def locate_batch(self, queries: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> list[Match]:
        """:meth:`locate` for many pairs (one call: the agents batch their windows)."""
        if len(queries) != len(references):
            raise ValueError(f"got {len(queries)} queries but {len(references)} references: pass one reference per query")
        queries = [self._rgb(q, "query") for q in queries]
        references = [self._rgb(r, "reference") for r in references]
        with intra_op_threads(self.threads):
            if hasattr(self.model, "locate_batch"):
                raw = self.model.locate_batch(queries, references)
            else:
                raw = [self.model.locate(q, r) for q, r in zip(queries, references)]
        return [self._match(result) for result in raw]

    def _rgb(self, image: Any, name: str) -> Any:
        if self._flip and isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3:
            return np.ascontiguousarray(image[..., ::-1])
        return image

    def _match(self, result: Any) -> Match:
        # Every model keeps its answers inside the reference itself (tests/test_inputs.py checks each
        # on thin references through load()); nothing is clipped here, so there is one owner of it.
        box = np.asarray(result.box, dtype=np.float64).copy()
        path = getattr(result, "path", None)
        evaluated = (getattr(result, "evaluated", None) or getattr(result, "positions", None)
                     or getattr(result, "windows", None) or (0 if path is None else len(path)))
        found = getattr(result, "found", None)
        return Match(box=box, score=float(result.score), found=None if found is None else bool(found),
                     evaluated=int(evaluated), path=None if path is None else np.asarray(path, dtype=np.float64),
                     model=self.name, raw=result)


def _file_kind(path: Path) -> str:
    """The kind of model file at ``path`` (read as tensors only: nothing in it runs)."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: pass a model file (a train/ppo_lstm.py .zip checkpoint or a .pt "
                                "model file) or a model name (matchenv.list_models())")
    if path.suffix == ".zip":
        return "agent"
    from matchenv.agents.model_files import read_model_file

    saved = read_model_file(path, "model", "one of the train/ scripts", set())
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is not a matchenv model file (a dict of tensors)")
    kinds = {"photo-search": "photo-search", "multiscale-look": "look", "look-agent": "look-agent"}
    if saved.get("kind") in kinds:
        return kinds[saved["kind"]]
    if {"fine", "config", "state_dict"} <= set(saved):
        return "coarse-to-fine"
    if saved.get("kind") == "box-refiner":
        raise ValueError(f"{path} is a box refiner, not a searcher: pass it to a photograph agent as "
                         "matchenv.load('flickrlogos27', refiner=path)")
    raise ValueError(f"{path} is not a model file matchenv can search with (kind {saved.get('kind')!r})")


def _from_file(path: Path, kind: str, **options: Any) -> Any:
    if kind == "agent":
        from matchenv.agents.searcher import TemplateSearcher

        return TemplateSearcher.load(path, **options)
    if kind == "photo-search":
        from matchenv.agents.photo_search import PhotoSearcher

        return PhotoSearcher.load(path, **options)
    if kind == "look":
        from matchenv.agents.multiscale_look import LookSearcher

        return LookSearcher.load(path, **options)
    if kind == "look-agent":
        from matchenv.agents.look_agent import LookAgentSearcher

        return LookAgentSearcher.load(path, **options)
    from matchenv.agents.coarse_to_fine import CoarseToFineSearcher

    return CoarseToFineSearcher.load(path, **options)


#: kinds whose classes take ``channel_order`` themselves (baselines get RGB from the Searcher)
_TAKES_CHANNEL_ORDER = {"photo-search", "agent", "look", "look-agent"}


def load(name_or_path: Union[str, Path], *, channel_order: str = "rgb", threads: Optional[int] = 1,
         **options: Any) -> Searcher:
    """Load a shipped model or baseline by name, or a model file, as a :class:`Searcher`.

    :param name_or_path: a name from :func:`list_models` (``"photo"``, ``"cluttered-mnist"``,
        ``"ncc"``, ...) or a file written by a ``train/`` script (``.zip`` agent checkpoint,
        ``.pt`` photograph search, look, photograph agent or proposer).
    :param channel_order: ``"rgb"`` or ``"bgr"`` (``cv2.imread`` gives ``"bgr"``).
    :param threads: torch and OpenCV threads while searching (1: the docs' timings; ``None``:
        leave the process's setting).
    :param options: the model's own options (e.g. ``windows=4`` for ``"photo"``,
        ``refine=False`` for ``"flickrlogos27"``, ``scales=...`` for ``"ncc-multiscale"``).
    :raises ValueError: an unknown name (the message lists the valid ones) or a file that is not a model.
    :raises FileNotFoundError: a path that does not exist.
    """
    if threads is not None and (isinstance(threads, bool) or int(threads) != threads or threads < 1):
        raise ValueError(f"threads must be a positive integer or None (leave torch's and OpenCV's setting), got {threads!r}")
    table = _table()
    key = str(name_or_path)
    if key in table:
        info, factory = table[key]
        kind = info.kind
    else:
        path = Path(name_or_path).expanduser()
        looks_like_path = isinstance(name_or_path, Path) or any(c in key for c in "/\\.")
        if not path.exists():
            if looks_like_path:
                raise FileNotFoundError(f"no model file at {path}; shipped models: {', '.join(table)}")
            raise ValueError(f"unknown model {key!r}; valid names: {', '.join(table)} (or a model file's path)")
        kind = _file_kind(path)
        factory = functools.partial(_from_file, path, kind)
    if kind in _TAKES_CHANNEL_ORDER:
        options["channel_order"] = channel_order
    if kind in ("photo-search", "look", "look-agent"):
        options.setdefault("threads", threads or 1)  # their ONNX Runtime sessions' threads
    with intra_op_threads(threads):  # sessions made while loading take the thread count in force
        model = factory(**options)
    return Searcher(model, key, kind, channel_order=channel_order, threads=threads)


_LOADED: dict[tuple, Searcher] = {}


def locate(query: np.ndarray, reference: np.ndarray, model: str = "photo", *, channel_order: str = "rgb",
           threads: Optional[int] = 1, **options: Any) -> Match:
    """Find ``query`` in ``reference`` with ``model`` in one call (the model is loaded once per
    process and kept: later calls with the same arguments reuse it).

    :param query: ``(h, w, 3)`` or ``(h, w)`` uint8 template.
    :param reference: ``(H, W, 3)`` or ``(H, W)`` uint8 image to search.
    :param model: a name from :func:`list_models` or a model file (default ``"photo"``: real
        photographs, a template cut from one view found in another).
    :param channel_order, threads, options: as for :func:`load`.
    """
    key = (str(model), channel_order, threads, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key not in _LOADED:
        _LOADED[key] = load(model, channel_order=channel_order, threads=threads, **options)
    return _LOADED[key].locate(query, reference)

