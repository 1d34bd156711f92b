"""Inference API: find a query in a reference image with a trained search agent.

    searcher = TemplateSearcher.load("runs/TemplateSearch-v0-seed0/best.zip")
    result = searcher.locate(query, reference)         # numpy / OpenCV images
    x0, y0, x1, y1 = result.box                        # pixels of the reference as given
    results = searcher.locate_batch(queries, references)

The searcher replays exactly what the agent saw in training: the whole reference shrunk to the
query resolution, then one window per trial at that resolution. The nominal window is the
query's size (photograph agents: the query's aspect at a size relative to the reference, see
:func:`matchenv.datasets.photos.nominal_window`); a scale-aware agent multiplies it by the scale it chooses. For
photograph agents the reference is first shrunk to the training working size (``max_side``),
images are letterboxed like in training, and boxes are mapped back to the pixels given.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch

from matchenv.agents.box_refiner import BoxRefiner, RefinerRuntime, load_refiner_file, refine_boxes
from matchenv.agents.cnn_runtime import make_cnn_runtime
from matchenv.agents.fused_search import FusedSearch
from matchenv.agents.policy import SearchLstmPolicy
from matchenv.agents.policy_runtime import PolicyRuntime
from matchenv.envs.actions import AbsoluteAction
from matchenv.datasets.photos import nominal_window, to_working_size
from matchenv.geometry import crop_letterboxed, crop_window, letterbox, resize_image


@dataclass
class SearchResult:
    """Where the agent found the query.

    :param box: ``(4,)`` float pixel box ``(x0, y0, x1, y1)`` of the answer in the reference
        (always inside it: ``0 <= x0 <= x1 <= W``, likewise in y).
    :param path: ``(T, 4)`` every window placed, in order (the last one is :attr:`box` by default;
        clipped to the reference like :attr:`box`);
        ``T`` is ``max_trials`` unless ``stop_score`` ended the search earlier.
    :param scores: ``(T,)`` match score of each window in ``[0, 1]`` from the contrastive head
        (``1 - distance / margin``, clipped): near 1 the agent believes the window matches.
    :param refined_from: where a box refiner moved the answer (``TemplateSearcher``'s
        ``refiner``): the search's own answer, a window of ``path``; ``None`` otherwise.
    """

    box: np.ndarray
    path: np.ndarray
    scores: np.ndarray
    refined_from: Optional[np.ndarray] = None

    @property
    def score(self) -> float:
        """Match score of :attr:`box` (of the window it was refined from, for a refined answer)."""
        answer = self.box if self.refined_from is None else self.refined_from
        matches = np.flatnonzero(np.all(self.path == answer, axis=1))
        return float(self.scores[matches[-1]]) if len(matches) else float("nan")


def stacked(images: Sequence[np.ndarray]) -> np.ndarray:
    """``(N, ...)`` the images as one array; for one image a view, not a copy (a 2000x2000
    reference costs a few tenths of a millisecond to copy, a sizeable part of a search)."""
    return images[0][None] if len(images) == 1 else np.stack(images)


#: The smallest query side (pixels) the learned searchers take: a smaller template holds too
#: little pattern to match (a 1x1 query is one colour, found "anywhere"), and the searchers'
#: networks would only see it blown up to a blur. Every searcher checks it
#: (:func:`check_query_side`), with a ``ValueError`` below it.
MIN_QUERY_SIDE = 4


def check_query_side(query: np.ndarray, name: str = "query", min_side: int = MIN_QUERY_SIDE) -> None:
    """Raise a clear ``ValueError`` for a query under ``min_side`` pixels on a side.

    :param query: ``(h, w, ...)`` the query (only its shape is read).
    :param name: how the message calls it (``"query[3]"``).
    """
    h, w = np.shape(query)[:2]
    if min(h, w) < min_side:
        raise ValueError(f"{name} is {w}x{h} px, smaller than the {min_side}x{min_side} px the searchers need "
                         f"(a template that small has too little pattern to find): crop a larger template around the "
                         f"object, or enlarge it (e.g. cv2.resize) together with the reference")


def non_finite_message(image: np.ndarray, name: str) -> Optional[str]:
    """What is wrong with a float ``image`` holding NaN or infinite values (``None`` if it has
    none): a message that says which and how to fix it. For the error path only: it reads the
    whole image."""
    has_nan, has_inf = bool(np.isnan(image).any()), bool(np.isinf(image).any())
    if not (has_nan or has_inf):
        return None
    what = " and ".join(label for label, found in (("NaN", has_nan), ("infinite (inf)", has_inf)) if found)
    return (f"{name} has {what} values ({image.dtype}): replace them first (e.g. np.nan_to_num(image, nan=0.0, "
            "posinf=1.0, neginf=0.0) for floats in [0, 1]) or pass a uint8 (0-255) image")


def prepare_image(image: np.ndarray, channels: int, channel_order: str = "rgb", name: str = "image",
                  min_side: int = 1) -> np.ndarray:
    """Validate an image and convert it to what a network trained on RGB uint8 sees: ``(H, W, C)``
    uint8 with ``channels`` channels (1 or 3), RGB (a view, not a copy, where no conversion is needed).

    :param channel_order: ``"rgb"`` or ``"bgr"``: the order of ``image``'s colour channels.
    :param name: how error messages call the image (``"query[3]"``).
    :param min_side: the smallest side (pixels) allowed; queries pass :data:`MIN_QUERY_SIDE`
        (the message is :func:`check_query_side`'s).
    :raises TypeError, ValueError: for anything but a 2-D/3-D uint8 (or [0, 1] float) array, a
        float image with NaN or infinite values, or one under ``min_side`` pixels on a side.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array (e.g. from cv2.imread), got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"{name} must be (H, W) grayscale, (H, W, 3) colour or (H, W, 4) colour with alpha "
                         f"(ignored), got shape {image.shape}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    check_query_side(image, name, min_side)
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and np.all((image >= 0.0) & (image <= 1.0)):  # NaN fails
            image = (image * 255.0).round().astype(np.uint8)  # floats in [0, 1]
        elif np.issubdtype(image.dtype, np.floating) and (message := non_finite_message(image, name)):
            raise ValueError(message)  # only looked for once the range check failed: no cost for good images
        else:
            values = f" with values in [{image.min():g}, {image.max():g}]" if np.issubdtype(image.dtype, np.number) else ""
            raise ValueError(f"{name} must be uint8 (0-255) or float in [0, 1], got {image.dtype}{values}: convert it "
                             "(e.g. image.astype(np.uint8) for whole values in 0-255, image / 255.0 for floats in 0-255)")
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim == 3 and channel_order == "bgr":
        image = image[:, :, ::-1]  # the networks are trained on RGB
    if channels == 1 and image.ndim == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    if image.ndim == 2:
        image = image[:, :, None] if channels == 1 else np.repeat(image[:, :, None], 3, axis=2)
    return image


def inside_references(results: list[SearchResult], shapes: Sequence[tuple[int, int]]) -> list[SearchResult]:
    """``results`` with every box (answer, path, ``refined_from``) clipped to its reference, in place.

    Windows are placed inside the reference at working size, but mapping them back to the pixels
    given divides by the working-size factor, and a reference shrunk to a row or two of working
    pixels (a 5x3000 strip at ``max_side=320``) gives back windows taller than the reference
    itself; the refiner's boxes likewise. Every box is clipped here, the one place answers leave
    the searcher; the path is clipped the same way, so the answer stays one of its windows.

    :param shapes: ``(H, W)`` of each reference as given.
    """
    for result, (height, width) in zip(results, shapes):
        limits = np.array([width, height, width, height], dtype=np.float64)
        result.box = np.clip(result.box, 0.0, limits)
        result.path = np.clip(result.path, 0.0, limits)
        if result.refined_from is not None:
            result.refined_from = np.clip(result.refined_from, 0.0, limits)
    return results


class TemplateSearcher:
    """Locate queries in references with a trained :class:`~matchenv.agents.policy.SearchLstmPolicy`.

    :param policy: the trained policy (continuous ``"absolute"`` actions).
    :param max_trials: windows per search (the training env's ``max_trials``).
    :param margin: the contrastive margin the match head was trained with (for :attr:`SearchResult.scores`).
    :param select: ``"last"`` answers with the final window (the paper's protocol); ``"best_score"``
        with the window the match head scores highest.
    :param fast: the CPU fast path: the CNN and the policy's decisions exported to a faster runtime
        (``cnn_runtime="auto"``: ONNX Runtime, else TorchScript; :mod:`matchenv.agents.policy_runtime`), on a
        snapshot of the trained weights; the same modules, equal up to float rounding, several
        times faster per query at batch 1. On by default for CPU policies with a one-layer LSTM.
    :param cnn_runtime: where the CNN runs (:mod:`matchenv.agents.cnn_runtime`): ``"onnxruntime"`` (needs
        ``onnxruntime``, a dependency of matchenv), ``"torchscript"``, ``"torch"``, or ``"auto"`` (ONNX
        Runtime when installed, else TorchScript). Default: ``"auto"`` with ``fast``, else ``"torch"``.
        ONNX Runtime uses ``torch.get_num_threads()`` threads, read when the searcher is built.
    :param fused: run each search as one ONNX Runtime call (:mod:`matchenv.agents.fused_search`; the same
        windows, several times faster at batch 1). ``None`` (default): whenever possible, i.e. on
        the fast path with ONNX Runtime, for fixed-size agents (Noisy MNIST), for queries at the
        observation size, references of one size per batch and no ``stop_score``; other searches
        go step by step. ``False``: never; ``True``: raise if the agent cannot be fused.
    :param stop_score: end a search at the first window whose match score (see
        :attr:`SearchResult.scores`) reaches this value -- the verifier accepts it -- instead of
        always placing ``max_trials`` windows; the answer is then that window. Fewer CNN calls
        per query where the agent finds the target at once (Translated and Mixed MNIST); it
        costs accuracy where the agent refines over several windows (Cluttered MNIST), see
        README "The shipped agents against the bars". ``None`` (default): the paper's protocol.
    :param refiner: a box refiner (:class:`~matchenv.agents.box_refiner.BoxRefiner` or its file from
        ``train/box_refiner.py``) that moves each answer onto the target after the search, for
        photograph agents (colour, working size); :attr:`SearchResult.box` is then the refined box
        and :attr:`SearchResult.refined_from` the search's own. ``None`` (default): no refinement.
    :param refine_steps: how many times the refiner moves each answer (one network call per step
        for the whole batch).
    """

    #: batches up to this size run without oneDNN (measured faster at batch 1 on this project's CPUs).
    MKLDNN_MIN_BATCH = 8

    def __init__(
        self,
        policy: SearchLstmPolicy,
        max_trials: int = 6,
        margin: float = 1.0,
        select: str = "last",
        scale_range: Optional[tuple[float, float]] = None,
        letterbox: bool = False,
        max_side: Optional[int] = None,
        window_fraction: Optional[float] = None,
        channel_order: str = "rgb",
        fast: Optional[bool] = None,
        stop_score: Optional[float] = None,
        cnn_runtime: Optional[str] = None,
        fused: Optional[bool] = None,
        refiner: Union[None, str, Path, BoxRefiner] = None,
        refine_steps: int = 1,
    ) -> None:
        if stop_score is not None and not 0.0 < stop_score <= 1.0:
            raise ValueError(f"stop_score must be in (0, 1] (a match score) or None (always max_trials windows), got {stop_score!r}")
        if select not in ("last", "best_score"):
            raise ValueError(f"select must be 'last' or 'best_score', got {select!r}")
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr' (cv2.imread gives 'bgr'), got {channel_order!r}")
        self.policy = policy.eval()  # inference only: the searcher puts the policy in eval mode
        self.max_trials = int(max_trials)
        self.margin = float(margin)
        self.select = select
        self.stop_score = None if stop_score is None else float(stop_score)
        self.letterbox = bool(letterbox)
        self.max_side = None if max_side is None else int(max_side)
        self.window_fraction = None if window_fraction is None else float(window_fraction)
        self.channel_order = channel_order
        space = policy.observation_space["query"]
        self.channels, self.query_size = space.shape[0], tuple(space.shape[1:])
        if refiner is not None:
            if self.channels != 3:
                raise ValueError(f"a box refiner is for colour photograph agents; this agent sees {self.channels}-channel "
                                 "images: leave refiner=None")
            refiner = (refiner if isinstance(refiner, BoxRefiner) else load_refiner_file(refiner)[0]).eval()
        if int(refine_steps) < 1:
            raise ValueError(f"refine_steps must be at least 1 (or pass refiner=None for no refinement), got {refine_steps!r}")
        #: the box refiner applied to every answer (None: answers are the search's own)
        self.refiner: Optional[BoxRefiner] = refiner
        self.refine_steps = int(refine_steps)
        overview = policy.observation_space.spaces.get("overview")
        self.overview_size = None if overview is None else tuple(overview.shape[1:])
        action_dims = policy.action_space.shape
        if action_dims == (3,) and scale_range is None:
            raise ValueError("this policy chooses a window scale (3 action components): pass the training env's scale_range")
        if action_dims not in ((2,), (3,)):
            raise ValueError(f"TemplateSearcher needs an 'absolute' action policy (shape (2,) or (3,)), got {action_dims}")
        self.scale_range = None if action_dims == (2,) else (float(scale_range[0]), float(scale_range[1]))
        self.device = policy.device  # SB3 computes it from the parameters on every access
        if fast is None:
            fast = policy.device.type == "cpu" and policy.lstm_actor.num_layers == 1
        if fast and (policy.device.type != "cpu" or policy.lstm_actor.num_layers != 1):
            raise ValueError("fast=True needs a CPU policy with a one-layer actor LSTM: pass fast=False")
        self.fast = bool(fast)
        # The fast path: the CNN exported to a faster runtime; otherwise the module itself.
        self._cnn = make_cnn_runtime(cnn_runtime or ("auto" if self.fast else "torch"), policy.features_extractor.cnn,
                                     (self.channels, *self.query_size))
        #: where the CNN runs: "onnxruntime", "torchscript" or "torch" (see matchenv.agents.cnn_runtime)
        self.cnn_runtime: str = self._cnn.name
        # The refiner runs where the CNN does: ONNX Runtime on the fast path when it is installed.
        self._refiner: Optional[RefinerRuntime] = None
        if refiner is not None:
            self._refiner = RefinerRuntime(refiner.to(self.device), onnx=self._cnn.name == "onnxruntime")
        #: where the box refiner runs: "onnxruntime" or "torch"; None without a refiner
        self.refiner_runtime: Optional[str] = None if self._refiner is None else self._refiner.name
        self._action = AbsoluteAction(self.scale_range)  # the env's action map: the same windows for the same actions
        # The search steps run where the CNN does: exported to ONNX Runtime or TorchScript on the
        # fast path, the modules themselves otherwise.
        self._policy_runtime = PolicyRuntime(policy, self._cnn.name, self.overview_size)
        # The whole search as one ONNX Runtime call, for agents whose windows are plain crops.
        eligible = (self._cnn.name == "onnxruntime" and self.scale_range is None and not self.letterbox
                    and self.max_side is None and self.window_fraction is None)
        if fused and not eligible:
            raise ValueError("fused=True needs the CPU fast path with ONNX Runtime (pip install onnx onnxruntime) and a "
                             "fixed-size agent (no scale, letterbox or working size, as for Noisy MNIST)")
        self._fused: Optional[FusedSearch] = None
        if eligible and fused is not False:
            try:
                self._fused = FusedSearch(policy, self.max_trials, self.overview_size, threads=torch.get_num_threads())
            except Exception as err:  # noqa: BLE001  (a speed-up only: step by step still works)
                if fused:
                    raise
                warnings.warn(f"could not fuse the search into one ONNX Runtime call ({err}); searching step by step",
                              RuntimeWarning, stacklevel=2)

    @classmethod
    def load(cls, path: Union[str, Path], device: str = "cpu", **kwargs) -> "TemplateSearcher":
        """Load a checkpoint written by ``train/ppo_lstm.py`` (``best.zip`` / ``last.zip``).

        :raises ValueError: for another kind of model file (a ``.pt`` look, photograph search,
            proposer...): the message says what it is and which loader takes it.
        """
        from matchenv.agents.model_files import model_file_kind, wrong_kind_message
        from matchenv.agents.ppo import load_trained_model

        # Another of our model files would fail deep in SB3's loader ("no item named 'data'"):
        # say what it is instead. An SB3 zip is told by its directory alone (nothing is loaded twice).
        kind = model_file_kind(path)
        if kind not in (None, "agent"):
            raise ValueError(wrong_kind_message(path, kind, "search agent checkpoint", "train/ppo_lstm.py"))
        model = load_trained_model(path, device=device)
        if kwargs.get("stop_score") is not None and model.aux_weight == 0:
            raise ValueError(f"{path} was trained without the contrastive match head (aux_weight=0): its match "
                             "scores mean nothing, so stop_score cannot end searches; leave stop_score=None")
        kwargs.setdefault("margin", model.aux_margin)
        for key, value in getattr(model, "search_config", {}).items():  # how training showed images
            kwargs.setdefault(key, value)
        return cls(model.policy, **kwargs)

    @classmethod
    def from_pretrained(cls, name: str, device: str = "cpu", refine: bool = True, **kwargs) -> "TemplateSearcher":
        """Load an agent shipped with matchenv: see :data:`matchenv.agents.pretrained.PRETRAINED`.

        :param refine: apply the box refiner shipped with the agent (``"flickrlogos27"`` has one),
            unless ``refiner`` is passed; ``False``: the search's own answers.
        """
        from matchenv.agents.pretrained import pretrained_path, refiner_path

        path = pretrained_path(name)
        if refine and kwargs.get("refiner") is None:
            kwargs["refiner"] = refiner_path(name)
        return cls.load(path, device=device, **kwargs)

    @classmethod
    def from_spec(cls, spec: str, device: str = "cpu", refine: bool = True, **kwargs) -> "TemplateSearcher":
        """``"pretrained:<name>"`` (:meth:`from_pretrained`) or a checkpoint path (:meth:`load`):
        how the scripts and proposer files name an agent.

        :param refine: for a shipped agent, apply its box refiner (if it has one); a checkpoint
            has none unless ``refiner`` is passed.
        """
        if spec.startswith("pretrained:"):
            return cls.from_pretrained(spec.split(":", 1)[1], device=device, refine=refine, **kwargs)
        return cls.load(spec, device=device, **kwargs)

    # ------------------------------------------------------------------ public API
    def locate(self, query: np.ndarray, reference: np.ndarray) -> SearchResult:
        """Find ``query`` in ``reference``.

        :param query: ``(h, w)`` grayscale or ``(h, w, 3)`` colour uint8 image (the template), in
            the channel order given at construction (``channel_order``); at least
            :data:`MIN_QUERY_SIDE` (4) pixels a side.
        :param reference: ``(H, W)`` or ``(H, W, 3)`` uint8 image to search. For a fixed-size agent
            it must be at least as large as the query (a scale-aware agent searches windows sized
            relative to the reference, so any reference will do).
        :return: a :class:`SearchResult` with the box in pixels of ``reference`` as given, inside it.
        :raises ValueError: a query under 4 px a side, a float image with NaN or infinite values,
            or (fixed-size agents) a query larger than the reference.
        """
        return self.locate_batch([query], [reference])[0]

    def locate_batch(self, queries: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> list[SearchResult]:
        """:meth:`locate` for many pairs at once: one policy forward per trial for the whole batch."""
        if len(queries) != len(references):
            raise ValueError(f"got {len(queries)} queries but {len(references)} references: pass one reference per query")
        if len(queries) == 0:
            return []
        queries = [self.prepare(q, f"query[{i}]", MIN_QUERY_SIDE) for i, q in enumerate(queries)]
        references = [self.prepare(r, f"reference[{i}]") for i, r in enumerate(references)]
        shapes = [r.shape[:2] for r in references]  # the pixels answers are given in (and kept inside)
        if self.scale_range is None:
            for i, (q, r) in enumerate(zip(queries, references)):
                if q.shape[0] > r.shape[0] or q.shape[1] > r.shape[1]:
                    raise ValueError(
                        f"pair {i}: the query ({q.shape[1]}x{q.shape[0]} px) is larger than the reference "
                        f"({r.shape[1]}x{r.shape[0]} px); this agent searches for the query at its own size, so the "
                        "query must fit inside the image it is searched in: pass a larger reference (or shrink both)"
                    )
        # Photograph agents work at the training working size; boxes are mapped back at the end.
        factors = np.ones(len(references))
        if self.max_side is not None:
            shrunk = [to_working_size(r, self.max_side) for r in references]
            references, factors = [r for r, _ in shrunk], np.array([f for _, f in shrunk])
        n = len(queries)
        # The whole search as one ONNX Runtime call (agents/fused_search.py): no PyTorch on this path.
        if (self._fused is not None and self.stop_score is None
                and all(q.shape[:2] == self.query_size for q in queries)
                and all(r.shape == references[0].shape for r in references)):
            overviews = None
            if self.overview_size is not None:
                overviews = stacked([resize_image(r, self.overview_size) for r in references])
            boxes, distances = self._fused(stacked(queries), stacked([self._view(r) for r in references]),
                                           stacked(references), overviews)
            results = self._refined(self._results(boxes, distances, np.full(n, self.max_trials), factors),
                                    queries, references, factors)
            return inside_references(results, shapes)
        if self.window_fraction is None:  # the query's size in working pixels
            windows = [(q.shape[0] * f, q.shape[1] * f) for q, f in zip(queries, factors)]
        else:  # photographs: the query's aspect, a size relative to the reference
            windows = [nominal_window(q.shape, r.shape, self.window_fraction) for q, r in zip(queries, references)]
        # At small batches oneDNN's convolution costs more than it saves (and re-plans whenever
        # the input shape changes); PyTorch's native kernels are faster there.
        previous = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = n > self.MKLDNN_MIN_BATCH
        try:
            with torch.inference_mode():
                query_views = [self._view(q) for q in queries]
                results = self._search(query_views, references, windows, factors)
                return inside_references(self._refined(results, queries, references, factors, query_views), shapes)
        finally:
            torch.backends.mkldnn.enabled = previous

    def _refined(self, results: list[SearchResult], queries: list[np.ndarray], references: list[np.ndarray],
                 factors: np.ndarray, query_views: Optional[list[np.ndarray]] = None) -> list[SearchResult]:
        """``results`` with their boxes moved by the refiner (none: ``results`` as they are).

        :param queries: prepared queries. :param references: prepared references at working size.
        :param factors: ``(N,)`` working-size factors (result boxes are in the pixels given).
        :param query_views: the search's own views of the queries (:meth:`_view`), if it made them:
            the refiner's letterboxed queries where they are the same image.
        """
        if self.refiner is None:
            return results
        size = self.refiner.config.query_size
        if query_views is not None and self.letterbox and size == self.query_size:
            views = np.stack(query_views)
        else:
            views = np.stack([letterbox(q, size) for q in queries])
        answers = np.stack([r.box for r in results]) * factors[:, None]
        refined = refine_boxes(self._refiner, views, references, answers, self.refine_steps)
        for result, box, reference, factor in zip(results, refined, references, factors):
            h, w = reference.shape[:2]
            box = np.clip(box, 0.0, [w, h, w, h])
            if box[2] - box[0] >= 1.0 and box[3] - box[1] >= 1.0:  # else (moved off the image) keep the search's
                result.refined_from = result.box
                result.box = box / factor
        return results

    def _search(self, query_views, references, windows, factors) -> list[SearchResult]:
        """The search step by step: a call of the policy runtime per window (every agent and option).

        :param query_views: the prepared queries as the agent sees them (:meth:`_view`)."""
        n = len(query_views)
        overviews = None
        if self.overview_size is not None:  # the sharper first look, once per search
            whole = letterbox if self.letterbox else resize_image
            overviews = np.stack([whole(r, self.overview_size) for r in references])
        # The actor and the match head, with the LSTM state: opened on the query and the global view.
        search = self._policy_runtime.start(np.stack(list(query_views) + [self._view(r) for r in references]), overviews,
                                            self.max_trials)
        paths = np.zeros((self.max_trials, n, 4))
        distances = np.zeros((self.max_trials, n))
        lengths = np.full(n, self.max_trials)  # windows placed per search
        active = np.arange(n)  # searches still going (all of them unless stop_score ends some)
        window_embs: list[np.ndarray] = []
        for t in range(self.max_trials):
            actions = search.actions if len(active) == n else search.actions[active]
            if not np.isfinite(actions).all():
                raise RuntimeError(f"the policy produced a non-finite action at trial {t}: {actions.tolist()}")
            # The env's window for each decision, one at a time on Python floats (WindowAction.place)
            crops, locations = [], np.empty((len(active), 4), np.float32)
            clipped = np.minimum(np.maximum(actions, -1.0), 1.0).tolist()  # (np.clip costs more at batch 1)
            for row, (i, action) in enumerate(zip(active.tolist(), clipped)):
                reference = references[i]  # ("absolute" actions: no centre; the scale is the action's)
                placed = self._action.place(action, (0.0, 0.0), 1.0, (reference.shape[1], reference.shape[0]), windows[i][::-1])
                paths[t, i], locations[row] = placed.box, placed.location
                crops.append(self._window(reference, paths[t, i]))
            rows = None if len(active) == n else active
            if t + 1 < self.max_trials:  # the window and the next decision
                window_emb = search.look(np.stack(crops), locations, rows)
            else:  # the last window: no decision follows
                window_emb = self._cnn.embed(np.stack(crops))
            if self.stop_score is not None:  # the match head accepts the window: that search ends here
                distances[t, active] = search.distance(window_emb, rows)
                accepted = 1.0 - distances[t, active] / self.margin >= self.stop_score
                lengths[active[accepted]] = t + 1
                active = active[~accepted]
                if len(active) == 0:
                    break
            else:
                window_embs.append(window_emb)
        if self.stop_score is None:  # every window scored in one call of the match head
            distances = search.distance(np.concatenate(window_embs)).reshape(self.max_trials, n)
        return self._results(paths, distances, lengths, factors)

    def _results(self, paths: np.ndarray, distances: np.ndarray, lengths: np.ndarray, factors: np.ndarray) -> list[SearchResult]:
        """:param paths: ``(T, N, 4)`` windows placed. :param distances: ``(T, N)`` their match distances.
        :param lengths: ``(N,)`` windows placed per search. :param factors: ``(N,)`` working-size factors."""
        scores = np.clip(1.0 - distances / self.margin, 0.0, 1.0)
        results = []
        for i in range(paths.shape[1]):
            path = paths[:lengths[i], i] / factors[i]  # back to the pixels of the reference as given
            score = scores[:lengths[i], i]
            pick = len(path) - 1 if self.select == "last" else int(np.argmax(score))
            results.append(SearchResult(box=path[pick].copy(), path=path, scores=score.copy()))
        return results

    def window_similarity(self, queries: Sequence[np.ndarray], references: Sequence[np.ndarray],
                          boxes: np.ndarray) -> np.ndarray:
        """How alike the agent's siamese CNN finds each query and a window of its reference.

        :param queries: query images (as for :meth:`locate`).
        :param references: one reference per query.
        :param boxes: ``(N, 4)`` one window ``(x0, y0, x1, y1)`` per reference, in pixels of the
            reference as given (e.g. :attr:`SearchResult.box`).
        :return: ``(N,)`` cosine similarity in ``[-1, 1]`` of the query's embedding and the window's
            (the window cropped and resized to the query resolution as the agent sees windows): one
            CNN call for all of them. It ranks answers from different searches of one query (see
            :class:`~matchenv.agents.coarse_to_fine.CoarseToFineSearcher`'s ``candidates``).
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if not len(queries) == len(references) == len(boxes):
            raise ValueError(f"got {len(queries)} queries, {len(references)} references and {len(boxes)} boxes: "
                             "pass one reference and one box per query")
        if len(queries) == 0:
            return np.zeros(0, np.float32)
        views = [self._view(self.prepare(q, f"query[{i}]", MIN_QUERY_SIDE)) for i, q in enumerate(queries)]
        windows = []
        for i, (reference, box) in enumerate(zip(references, boxes)):
            reference, factor = to_working_size(self.prepare(reference, f"reference[{i}]"), self.max_side)
            windows.append(self._window(reference, box * factor))
        embeddings = self._cnn.embed(np.stack(views + windows)).astype(np.float64)
        query_emb, window_emb = embeddings[:len(views)], embeddings[len(views):]
        norms = np.linalg.norm(query_emb, axis=1) * np.linalg.norm(window_emb, axis=1)
        # An all-zero embedding (a ReLU network on a flat image) is like nothing: similarity 0.
        return (np.sum(query_emb * window_emb, axis=1) / np.maximum(norms, 1e-12)).astype(np.float32)

    def prepare(self, image: np.ndarray, name: str = "image", min_side: int = 1) -> np.ndarray:
        """Validate an image and convert it to what the agent sees (:func:`prepare_image` with the
        policy's channel count and this searcher's ``channel_order``).

        :param name: how error messages call the image (``"query[3]"``).
        :param min_side: the smallest side allowed (queries: :data:`MIN_QUERY_SIDE`).
        """
        return prepare_image(image, self.channels, self.channel_order, name, min_side)

    # ------------------------------------------------------------------ internals
    def _view(self, image: np.ndarray) -> np.ndarray:
        """A whole image at the observation resolution, as the training env shows it."""
        return letterbox(image, self.query_size) if self.letterbox else resize_image(image, self.query_size)

    def _window(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        if self.letterbox:
            return crop_letterboxed(image, box, self.query_size)
        return crop_window(image, box, self.query_size)
