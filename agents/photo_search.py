"""The photograph searcher: a first look at the whole reference, then windows compared one policy step at a time.

The design card's search, for real photographs (a template cut from one view of a scene, found
in another view: the KTM benchmark)::

    searcher = PhotoSearcher.from_pretrained("photo")
    result = searcher.locate(query, reference)      # RGB uint8 (channel_order="bgr" for cv2.imread)
    x0, y0, x1, y1 = result.box                     # the query's size, in pixels of the reference
    result.found, result.score                      # is it there? (calibrated probability)

1. **First look.** The query and the whole reference go through the look's features
   (:class:`~matchenv.agents.photo_search_net.PhotoSearchNet`: ImageNet EfficientNet-Lite0's first
   blocks, fine-tuned on self-supervised pairs) at a resolution where the query's shorter side is
   ``look_min_side`` pixels (never enlarged); their cosine map scores every position, and its
   best local maxima are the candidates (positions refined between cells by parabolas).
2. **Windows.** A policy places windows on candidates one at a time; each window is compared
   with the query by the verifier (a deeper siamese CNN on both, resized to one size: the
   contrastive match head). A window's score is its verifier score plus ``look_weight`` times
   its first-look score. The policy is the learned :class:`~matchenv.agents.photo_search_net.WindowPolicy`
   (``policy="learned"``) or the candidates in first-look order (``policy="first-look order"``);
   it stops when it chooses, or after ``windows`` windows.
3. **Answer.** The best-scoring window, moved to the best position of a full-resolution look
   around it (when the first look ran at a lower resolution); its box has the query's size
   (real pairs keep it: KTM targets are 0.8-1.2x the template's side in 80% of the pairs).
   ``score`` is the calibrated probability that the window shows the query (fitted on
   self-supervised pairs with and without the query); ``found`` is ``score >= found_threshold``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np
import torch

from matchenv.agents.model_files import read_model_file, write_model_file
from matchenv.agents.photo_search_net import PhotoSearchConfig, PhotoSearchNet, cosine_map
from matchenv.agents.searcher import MIN_QUERY_SIDE, prepare_image

#: The model file's ``kind``.
MODEL_KIND = "photo-search"
#: Policies a searcher may follow (see the module docstring).
POLICIES = ("learned", "first-look order")
#: Default threshold on ``score`` for ``found``.
DEFAULT_FOUND_THRESHOLD = 0.5
#: Pixels of search either way around the answer in the full-resolution look, beyond one cell of
#: the first look's resolution.
REFINE_MARGIN = 4


@dataclass
class PhotoSearchResult:
    """Where the query is, and how the search found it.

    :param box: ``(4,)`` float ``(x0, y0, x1, y1)`` of the answer in pixels of the reference as given.
    :param score: calibrated probability in ``[0, 1]`` that the answer shows the query.
    :param found: ``score >= found_threshold``.
    :param path: ``(T, 4)`` the windows compared, in order.
    :param scores: ``(T,)`` each window's score (verifier + ``look_weight`` x first look).
    :param candidates: ``(K, 4)`` the first look's candidates, best first.
    :param look_scores: ``(K,)`` their first-look scores (cosine similarities).
    :param positions: positions the first look scored (plus those of the full-resolution look).
    """

    box: np.ndarray
    score: float
    found: bool
    path: np.ndarray
    scores: np.ndarray
    candidates: np.ndarray
    look_scores: np.ndarray
    positions: int = 0

    @property
    def windows(self) -> int:
        """Windows compared."""
        return len(self.path)

    @property
    def xywh(self) -> np.ndarray:
        """The box as ``(x, y, width, height)`` (OpenCV's ``Rect`` order)."""
        x0, y0, x1, y1 = self.box
        return np.array([x0, y0, x1 - x0, y1 - y0])


# ---------------------------------------------------------------------------------- arithmetic
def parabola_offset(before: float, peak: float, after: float) -> float:
    """Offset in ``[-1/2, 1/2]`` of the vertex of the parabola through three equally spaced samples
    whose middle one is the largest (0 where they are not a maximum)."""
    curvature = before - 2.0 * peak + after
    if not curvature < 0.0:
        return 0.0
    return float(np.clip(0.5 * (before - after) / curvature, -0.5, 0.5))


def subcell_peak(scores: np.ndarray, y: int, x: int) -> tuple[float, float]:
    """``(y, x)`` of a maximum of ``scores`` placed between cells by parabolas in each direction."""
    dy = parabola_offset(scores[y - 1, x], scores[y, x], scores[y + 1, x]) if 0 < y < scores.shape[0] - 1 else 0.0
    dx = parabola_offset(scores[y, x - 1], scores[y, x], scores[y, x + 1]) if 0 < x < scores.shape[1] - 1 else 0.0
    return y + dy, x + dx


def best_peaks(scores: np.ndarray, count: int, half_size: tuple[int, int]) -> list[tuple[float, float, float]]:
    """The ``count`` best local maxima of ``scores``, each suppressing the cells within ``half_size``
    ``(rows, cols)`` of it: ``[(y, x, score), ...]`` best first, positions between cells."""
    work = scores.copy()
    peaks = []
    hy, hx = max(int(half_size[0]), 1), max(int(half_size[1]), 1)
    for _ in range(count):
        index = int(np.argmax(work))
        y, x = divmod(index, work.shape[1])
        if work[y, x] <= -1e8:
            break
        fy, fx = subcell_peak(scores, y, x)
        peaks.append((fy, fx, float(scores[y, x])))
        work[max(y - hy, 0):y + hy + 1, max(x - hx, 0):x + hx + 1] = -1e9
    return peaks


def verifier_size(height: int, width: int, side: int) -> tuple[int, int]:
    """``(h, w)`` at which the verifier sees a ``height x width`` query and its windows: the longer
    side ``side``, the shorter in steps of 8 pixels (at least 16)."""
    if height >= width:
        return side, max(16, int(round(side * width / height / 8.0)) * 8)
    return max(16, int(round(side * height / width / 8.0)) * 8), side


def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` at ``(h, w)``: area averaging to shrink, bilinear to enlarge."""
    if image.shape[:2] == tuple(size):
        return image
    shrink = size[0] * size[1] < image.shape[0] * image.shape[1]
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


# ---------------------------------------------------------------------------------- runtime
class _LookExport(torch.nn.Module):
    """:meth:`PhotoSearchNet.look_features` as a module's forward (what export takes)."""

    def __init__(self, net: PhotoSearchNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.look_features(pixels)


class _EmbedExport(_LookExport):
    """:meth:`PhotoSearchNet.embed` as a module's forward."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.embed(pixels)


class _CosineExport(torch.nn.Module):
    """:func:`~matchenv.agents.photo_search_net.cosine_map` as a module's forward."""

    def forward(self, features: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return cosine_map(features, kernel)


class _DecideExport(torch.nn.Module):
    """:meth:`WindowPolicy.decide` of one search, with its masks as floats (what export takes)."""

    def __init__(self, net: PhotoSearchNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, look: torch.Tensor, verified: torch.Tensor, seen: torch.Tensor, state: torch.Tensor,
                chosen: torch.Tensor, has_chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.policy.decide(look, verified, seen > 0.5, state, chosen, has_chosen > 0.5,
                                      self.net.config.look_weight)


class PhotoSearchRuntime:
    """The look's features, its cosine maps, the verifier's embeddings and the policy's decisions:
    the torch modules and functions exported to ONNX Runtime (sizes left free) when it is
    installed, else PyTorch (the same modules: tested to agree to float rounding). ONNX Runtime's
    convolution also correlates the first look's small kernels 2-3x faster than OpenCV's
    ``matchTemplate`` summed over groups of 4 channels (measured: 0.4 against 1.0 ms for a 4x6
    kernel over 44x77 cells; larger kernels, 30x8 over 90x120 cells, take it longer, 7.4 against
    2.9 ms, but the first look shrinks large queries to about 4 cells a side).

    :param threads: ONNX Runtime's intra-op threads.
    :param onnx: use ONNX Runtime when it is installed.
    """

    def __init__(self, net: PhotoSearchNet, threads: int = 1, onnx: bool = True) -> None:
        self.net = net.eval()
        self.name = "torch"
        self._look = self._embed = self._decide = self._cosine = None
        from matchenv.agents.onnx_export import onnxruntime_available

        if onnx and onnxruntime_available():
            try:
                from matchenv.agents.onnx_export import onnx_session

                self._look = onnx_session(_LookExport(self.net), (torch.zeros(1, 3, 64, 64),), ["pixels"], ["features"],
                                          {"pixels": {2: "height", 3: "width"}, "features": {2: "rows", 3: "cols"}},
                                          threads)
                self._embed = onnx_session(_EmbedExport(self.net), (torch.zeros(2, 3, 64, 48),), ["pixels"],
                                           ["embeddings"], {"pixels": {0: "n", 2: "height", 3: "width"},
                                                            "embeddings": {0: "n"}}, threads)
                k, hidden = self.net.config.candidates, self.net.policy.hidden
                example = (torch.zeros(1, k), torch.zeros(1, k), torch.zeros(1, k), torch.zeros(1, hidden),
                           torch.zeros(1, dtype=torch.long), torch.zeros(1))
                self._decide = onnx_session(_DecideExport(self.net), example,
                                            ["look", "verified", "seen", "state", "chosen", "has_chosen"],
                                            ["logits", "next_state"], {}, threads)
                channels = self.net.look.channels
                self._cosine = onnx_session(
                    _CosineExport(), (torch.zeros(1, channels, 20, 30), torch.zeros(1, channels, 4, 6)),
                    ["features", "kernel"], ["scores"], {"features": {2: "rows", 3: "cols"}}, threads,
                    weight_axes={"kernel": {2: "kernel_rows", 3: "kernel_cols"}, "scores": {0: "out_rows", 1: "out_cols"}})
                self.name = "onnxruntime"
            except Exception as err:  # noqa: BLE001  (a speed-up only: PyTorch gives the same numbers)
                warnings.warn(f"could not run the photograph search in ONNX Runtime ({err}); using PyTorch",
                              RuntimeWarning, stacklevel=3)
                self._look = self._embed = self._decide = self._cosine = None

    @staticmethod
    def _pixels(images: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float32."""
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)

    def look_features(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> ``(C, ceil(H / 4), ceil(W / 4))`` float32."""
        pixels = self._pixels(image[None])
        if self._look is not None:
            return self._look.run(None, {"pixels": pixels})[0][0]
        with torch.inference_mode():
            return self.net.look_features(torch.from_numpy(pixels))[0].numpy()

    def cosine_map(self, features: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """:func:`~matchenv.agents.photo_search_net.cosine_map` of ``(C, H, W)`` features and a ``(C, h, w)``
        kernel (``h <= H``, ``w <= W``): ``(H - h + 1, W - w + 1)`` float32."""
        if self._cosine is not None:
            return self._cosine.run(None, {"features": features[None], "kernel": np.ascontiguousarray(kernel[None])})[0]
        with torch.inference_mode():
            return cosine_map(torch.from_numpy(features)[None], torch.from_numpy(np.ascontiguousarray(kernel))[None]).numpy()

    def decide(self, look: np.ndarray, verified: np.ndarray, seen: np.ndarray, state: np.ndarray, chosen: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """The policy's next decision in one search (:meth:`~matchenv.agents.photo_search_net.WindowPolicy.decide`):
        ``(K + 1,)`` logits and the ``(hidden,)`` state, from ``(K,)`` float32 first-look and verifier
        scores, ``(K,)`` bool ``seen``, the ``(hidden,)`` state and the candidate compared last (-1: none)."""
        inputs = [look[None], verified[None], seen[None].astype(np.float32), state[None],
                  np.array([max(chosen, 0)], np.int64), np.array([float(chosen >= 0)], np.float32)]
        if self._decide is not None:
            logits, state = self._decide.run(None, dict(zip(("look", "verified", "seen", "state", "chosen", "has_chosen"),
                                                            inputs)))
            return logits[0], state[0]
        with torch.inference_mode():
            tensors = [torch.from_numpy(x) for x in inputs]
            logits, state = self.net.policy.decide(*tensors[:2], tensors[2] > 0.5, tensors[3], tensors[4],
                                                   tensors[5] > 0.5, self.net.config.look_weight)
            return logits[0].numpy(), state[0].numpy()

    def embed(self, images: np.ndarray) -> np.ndarray:
        """``(N, h, w, 3)`` uint8 -> ``(N, D)`` float32 L2-normalised verifier embeddings."""
        pixels = self._pixels(images)
        if self._embed is not None:
            return self._embed.run(None, {"pixels": pixels})[0]
        with torch.inference_mode():
            return self.net.embed(torch.from_numpy(pixels)).numpy()


# ---------------------------------------------------------------------------------- the searcher
@dataclass
class FirstLook:
    """The first look of one query.

    :param scale: the resolution it ran at (1: the reference as given).
    :param corners: ``(K, 2)`` top-left ``(x, y)`` of each candidate window (the query's size),
        pixels of the reference as given, best first.
    :param scores: ``(K,)`` their cosine similarities.
    :param positions: positions it scored.
    """

    scale: float
    corners: np.ndarray
    scores: np.ndarray
    positions: int


class PhotoSearcher:
    """Find a query crop in a photograph (see the module docstring).

    :param net: the trained networks.
    :param channel_order: ``"rgb"`` or ``"bgr"`` (what ``cv2.imread`` gives).
    :param threads: ONNX Runtime threads (default 1: the timings the docs report are one thread).
    :param policy: ``"learned"`` (the trained :class:`~matchenv.agents.photo_search_net.WindowPolicy`) or
        ``"first-look order"`` (every candidate, best first-look score first); default: the one the
        model file names (``train/photo_search.py`` keeps the learned one where it is as accurate), else
        first-look order.
    :param windows: most windows compared per search (default: all candidates).
    :param found_threshold: ``found`` is ``score >= found_threshold``.
    :param onnx: run the networks in ONNX Runtime when it is installed (``False``: PyTorch).
    """

    def __init__(
        self,
        net: PhotoSearchNet,
        channel_order: str = "rgb",
        threads: int = 1,
        policy: Optional[str] = None,
        windows: Optional[int] = None,
        found_threshold: float = DEFAULT_FOUND_THRESHOLD,
        onnx: bool = True,
        info: Optional[dict[str, Any]] = None,
    ) -> None:
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        self.info = dict(info or {})
        policy = self.info.get("policy", "first-look order") if policy is None else policy
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if not 0.0 <= float(found_threshold) <= 1.0:
            raise ValueError(f"found_threshold must be a probability in [0, 1], got {found_threshold}")
        self.net = net.eval()
        self.config: PhotoSearchConfig = net.config
        self.windows = self.config.candidates if windows is None else int(windows)
        if not 1 <= self.windows:
            raise ValueError(f"windows must be >= 1, got {windows}")
        self.channel_order = channel_order
        self.policy = policy
        self.found_threshold = float(found_threshold)
        self.runtime = PhotoSearchRuntime(self.net, threads=max(1, int(threads)), onnx=onnx)

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path: Union[str, Path], **kwargs: Any) -> "PhotoSearcher":
        """A searcher from a model file written by ``train/photo_search.py`` (tensors only: loading runs no code)."""
        net, info = load_photo_search_file(path)
        return cls(net, info=info, **kwargs)

    @classmethod
    def from_pretrained(cls, name: str = "photo", **kwargs: Any) -> "PhotoSearcher":
        """The searcher shipped with matchenv: see :data:`matchenv.agents.pretrained.PHOTO_SEARCHERS`."""
        from matchenv.agents.pretrained import photo_search_path

        return cls.load(photo_search_path(name), **kwargs)

    # ------------------------------------------------------------------ search
    def locate(self, query: np.ndarray, reference: np.ndarray) -> PhotoSearchResult:
        """Find ``query`` (``(h, w, 3)``, or grayscale, uint8; at least
        :data:`~matchenv.agents.searcher.MIN_QUERY_SIDE` (4) pixels a side) in ``reference`` (larger or equal).

        :raises ValueError: for images that are not images (a float one with NaN values, for
            one), a query under 4 px a side, or a query larger than the reference.
        """
        query = prepare_image(query, 3, self.channel_order, "query", MIN_QUERY_SIDE)
        reference = prepare_image(reference, 3, self.channel_order, "reference")
        qh, qw = query.shape[:2]
        rh, rw = reference.shape[:2]
        if qh > rh or qw > rw:
            raise ValueError(f"the query ({qw}x{qh} px) is larger than the reference ({rw}x{rh} px): crop the query "
                             "or pass a larger reference")
        look = self.first_look(query, reference)
        k = len(look.scores)
        windows = np.zeros((k, 4))
        windows[:, :2] = look.corners
        windows[:, 2:] = look.corners + [qw, qh]
        order, verified = self._compare(query, reference, look)
        combined = verified[order] + self.config.look_weight * look.scores[order]
        best = order[int(np.argmax(combined))]
        corner, positions = self._refine(query, reference, look, look.corners[best])
        box = np.array([corner[0], corner[1], corner[0] + qw, corner[1] + qh])
        best_score = float(verified[best] + self.config.look_weight * look.scores[best])
        with torch.inference_mode():
            probability = float(self.net.found_probability(torch.tensor([best_score]))[0])
        return PhotoSearchResult(box=box, score=probability, found=probability >= self.found_threshold,
                                 path=windows[order], scores=combined.astype(np.float64), candidates=windows,
                                 look_scores=look.scores.astype(np.float64), positions=look.positions + positions)

    def locate_batch(self, queries: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> list[PhotoSearchResult]:
        """:meth:`locate` for each pair (one at a time: sizes differ)."""
        if len(queries) != len(references):
            raise ValueError(f"got {len(queries)} queries and {len(references)} references: give one reference per query")
        return [self.locate(q, r) for q, r in zip(queries, references)]

    def first_look(self, query: np.ndarray, reference: np.ndarray) -> "FirstLook":
        """The first look at the whole reference: its candidates, best first (``query`` and
        ``reference`` as :meth:`locate` prepares them: RGB uint8)."""
        qh, qw = query.shape[:2]
        rh, rw = reference.shape[:2]
        scale = min(1.0, self.config.look_min_side / min(qh, qw))
        small_q = resized(query, (max(int(round(qh * scale)), 1), max(int(round(qw * scale)), 1)))
        small_r = resized(reference, (max(int(round(rh * scale)), 1), max(int(round(rw * scale)), 1)))
        kernel = self.runtime.look_features(small_q)
        features = self.runtime.look_features(small_r)
        # rounding may leave the query's cells one larger than fit: drop its last row or column
        kernel = kernel[:, : features.shape[1], : features.shape[2]]
        scores = self.runtime.cosine_map(features, kernel)
        stride = self.net.look.stride / scale
        peaks = best_peaks(scores, self.config.candidates, (kernel.shape[1] // 2, kernel.shape[2] // 2))
        corners = np.array([(x * stride, y * stride) for y, x, _ in peaks], dtype=np.float64)
        corners = np.clip(corners, 0, [rw - qw, rh - qh])
        return FirstLook(scale=scale, corners=corners, scores=np.array([s for *_, s in peaks], np.float32),
                         positions=int(scores.size))

    def _crops(self, reference: np.ndarray, corners: np.ndarray, height: int, width: int) -> list[np.ndarray]:
        rh, rw = reference.shape[:2]
        crops = []
        for x, y in corners:
            x0 = int(min(max(round(x), 0), rw - width))
            y0 = int(min(max(round(y), 0), rh - height))
            crops.append(reference[y0:y0 + height, x0:x0 + width])
        return crops

    def verify(self, query: np.ndarray, reference: np.ndarray, corners: np.ndarray) -> np.ndarray:
        """``(N,)`` the verifier's score (cosine of embeddings) of the query-size windows at ``corners``
        ``(N, 2)`` (top-left ``(x, y)``), all in one batch."""
        qh, qw = query.shape[:2]
        size = verifier_size(qh, qw, self.config.verifier_side)
        crops = self._crops(reference, corners, qh, qw)
        embeddings = self.runtime.embed(np.stack([resized(image, size) for image in [query, *crops]]))
        return embeddings[1:] @ embeddings[0]

    def _compare(self, query: np.ndarray, reference: np.ndarray, look: FirstLook) -> tuple[np.ndarray, np.ndarray]:
        """The windows the policy compares, in order, and every candidate's verifier score (those
        not compared are never read)."""
        qh, qw = query.shape[:2]
        size = verifier_size(qh, qw, self.config.verifier_side)
        k = len(look.scores)
        verified = np.zeros(self.config.candidates, np.float32)
        if self.policy == "first-look order":
            order = np.arange(min(k, self.windows))
            verified[order] = self.verify(query, reference, look.corners[order])
            return order, verified
        query_embedding = self.runtime.embed(resized(query, size)[None])[0]
        k_max = self.config.candidates
        look_scores = np.zeros(k_max, np.float32)
        look_scores[:k] = look.scores
        seen = np.arange(k_max) >= k  # no candidate there: never chosen
        state = np.zeros(self.net.policy.hidden, np.float32)
        order: list[int] = []
        chosen = -1
        for _ in range(min(self.windows, k)):
            logits, state = self.runtime.decide(look_scores, verified, seen, state, chosen)
            chosen = int(np.argmax(logits))
            if chosen == k_max:  # stop
                break
            crop = self._crops(reference, look.corners[chosen:chosen + 1], qh, qw)[0]
            verified[chosen] = float(self.runtime.embed(resized(crop, size)[None])[0] @ query_embedding)
            seen[chosen] = True
            order.append(chosen)
        return np.array(order, dtype=np.int64), verified

    def _refine(self, query: np.ndarray, reference: np.ndarray, look: FirstLook, corner: np.ndarray) -> tuple[np.ndarray, int]:
        """The answer's top-left moved to the best position of a full-resolution look around it
        (unchanged where the first look was at full resolution already)."""
        if look.scale >= 1.0:
            return corner, 0
        qh, qw = query.shape[:2]
        rh, rw = reference.shape[:2]
        margin = int(math.ceil(self.net.look.stride / look.scale)) + REFINE_MARGIN
        x0, y0 = int(max(math.floor(corner[0]) - margin, 0)), int(max(math.floor(corner[1]) - margin, 0))
        x1, y1 = int(min(math.ceil(corner[0]) + qw + margin, rw)), int(min(math.ceil(corner[1]) + qh + margin, rh))
        kernel = self.runtime.look_features(query)
        features = self.runtime.look_features(reference[y0:y1, x0:x1])
        if kernel.shape[1] > features.shape[1] or kernel.shape[2] > features.shape[2]:
            return corner, 0
        scores = self.runtime.cosine_map(features, kernel)
        y, x = divmod(int(np.argmax(scores)), scores.shape[1])
        fy, fx = subcell_peak(scores, y, x)
        stride = self.net.look.stride
        moved = np.clip([x0 + fx * stride, y0 + fy * stride], 0, [rw - qw, rh - qh])
        return moved, int(scores.size)


# ---------------------------------------------------------------------------------- files
def save_photo_search_file(path: Union[str, Path], net: PhotoSearchNet, info: Optional[dict[str, Any]] = None) -> Path:
    """Write the networks (float16 weights: half the size, the same answers to float rounding),
    their :class:`~matchenv.agents.photo_search_net.PhotoSearchConfig` and free-form ``info`` (the training
    command, its measured numbers)."""
    state = {key: (value.half() if value.is_floating_point() else value) for key, value in net.state_dict().items()}
    return write_model_file(path, {"kind": MODEL_KIND, "state_dict": state, "config": net.config.to_dict(),
                                   "info": info or {}})


def load_photo_search_file(path: Union[str, Path]) -> tuple[PhotoSearchNet, dict[str, Any]]:
    """The networks and ``info`` of a file written by :func:`save_photo_search_file`."""
    saved = read_model_file(path, "photograph search", "train/photo_search.py", {"kind", "state_dict", "config", "info"})
    if saved["kind"] != MODEL_KIND:
        raise ValueError(f"{path} holds a {saved['kind']!r}, not a photograph search written by train/photo_search.py")
    net = PhotoSearchNet(PhotoSearchConfig(**saved["config"]))
    net.load_state_dict({key: value.float() if value.is_floating_point() else value
                         for key, value in saved["state_dict"].items()})
    return net.eval(), saved["info"]
