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

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch

from agents.policy import SearchLstmPolicy
from matchenv.envs.actions import make_window_action
from matchenv.datasets.photos import nominal_window, to_working_size
from matchenv.geometry import crop_letterboxed, crop_window, letterbox, place_window, resize_image, xyxy_to_cxcywh


@dataclass
class SearchResult:
    """Where the agent found the query.

    :param box: ``(4,)`` float pixel box ``(x0, y0, x1, y1)`` of the answer in the reference.
    :param path: ``(T, 4)`` every window placed, in order (the last one is :attr:`box` by default).
    :param scores: ``(T,)`` match score of each window in ``[0, 1]`` from the contrastive head
        (``1 - distance / margin``, clipped): near 1 the agent believes the window matches.
    """

    box: np.ndarray
    path: np.ndarray
    scores: np.ndarray

    @property
    def score(self) -> float:
        """Match score of :attr:`box`."""
        matches = np.flatnonzero(np.all(self.path == self.box, axis=1))
        return float(self.scores[matches[-1]]) if len(matches) else float("nan")


class TemplateSearcher:
    """Locate queries in references with a trained :class:`~agents.policy.SearchLstmPolicy`.

    :param policy: the trained policy (continuous ``"absolute"`` actions).
    :param max_trials: windows per search (the training env's ``max_trials``).
    :param margin: the contrastive margin the match head was trained with (for :attr:`SearchResult.scores`).
    :param select: ``"last"`` answers with the final window (the paper's protocol); ``"best_score"``
        with the window the match head scores highest.
    """

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
    ) -> None:
        if select not in ("last", "best_score"):
            raise ValueError(f"select must be 'last' or 'best_score', got {select!r}")
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr' (cv2.imread gives 'bgr'), got {channel_order!r}")
        self.policy = policy.eval()  # inference only: the searcher puts the policy in eval mode
        self.max_trials = int(max_trials)
        self.margin = float(margin)
        self.select = select
        self.letterbox = bool(letterbox)
        self.max_side = None if max_side is None else int(max_side)
        self.window_fraction = None if window_fraction is None else float(window_fraction)
        self.channel_order = channel_order
        space = policy.observation_space["query"]
        self.channels, self.query_size = space.shape[0], tuple(space.shape[1:])
        overview = policy.observation_space.spaces.get("overview")
        self.overview_size = None if overview is None else tuple(overview.shape[1:])
        action_dims = policy.action_space.shape
        if action_dims == (3,) and scale_range is None:
            raise ValueError("this policy chooses a window scale (3 action components): pass the training env's scale_range")
        if action_dims not in ((2,), (3,)):
            raise ValueError(f"TemplateSearcher needs an 'absolute' action policy (shape (2,) or (3,)), got {action_dims}")
        self.scale_range = None if action_dims == (2,) else (float(scale_range[0]), float(scale_range[1]))
        self.window_action = make_window_action("absolute", self.scale_range)

    @classmethod
    def load(cls, path: Union[str, Path], device: str = "cpu", **kwargs) -> "TemplateSearcher":
        """Load a checkpoint written by ``train/ppo_lstm.py`` (``best.zip`` / ``last.zip``)."""
        from agents.ppo import load_trained_model

        model = load_trained_model(path, device=device)
        kwargs.setdefault("margin", model.aux_margin)
        for key, value in getattr(model, "search_config", {}).items():  # how training showed images
            kwargs.setdefault(key, value)
        return cls(model.policy, **kwargs)

    @classmethod
    def from_pretrained(cls, name: str, device: str = "cpu", **kwargs) -> "TemplateSearcher":
        """Load an agent shipped with matchenv: see :data:`agents.pretrained.PRETRAINED`."""
        from agents.pretrained import pretrained_path

        return cls.load(pretrained_path(name), device=device, **kwargs)

    # ------------------------------------------------------------------ public API
    def locate(self, query: np.ndarray, reference: np.ndarray) -> SearchResult:
        """Find ``query`` in ``reference``.

        :param query: ``(h, w)`` grayscale or ``(h, w, 3)`` colour uint8 image (the template), in
            the channel order given at construction (``channel_order``).
        :param reference: ``(H, W)`` or ``(H, W, 3)`` uint8 image to search. For a fixed-size agent
            it must be at least as large as the query.
        :return: a :class:`SearchResult` with the box in pixels of ``reference`` as given.
        """
        return self.locate_batch([query], [reference])[0]

    @torch.inference_mode()
    def locate_batch(self, queries: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> list[SearchResult]:
        """:meth:`locate` for many pairs at once: one policy forward per trial for the whole batch."""
        if len(queries) != len(references):
            raise ValueError(f"got {len(queries)} queries but {len(references)} references: pass one reference per query")
        if len(queries) == 0:
            return []
        queries = [self._prepare(q, f"query[{i}]") for i, q in enumerate(queries)]
        references = [self._prepare(r, f"reference[{i}]") for i, r in enumerate(references)]
        if self.scale_range is None:
            for i, (q, r) in enumerate(zip(queries, references)):
                if q.shape[0] > r.shape[0] or q.shape[1] > r.shape[1]:
                    raise ValueError(
                        f"pair {i}: the query ({q.shape[1]}x{q.shape[0]} px) is larger than the reference "
                        f"({r.shape[1]}x{r.shape[0]} px); the query must fit inside the image it is searched in"
                    )
        # Photograph agents work at the training working size; boxes are mapped back at the end.
        factors = np.ones(len(references))
        if self.max_side is not None:
            shrunk = [to_working_size(r, self.max_side) for r in references]
            references, factors = [r for r, _ in shrunk], np.array([f for _, f in shrunk])
        if self.window_fraction is None:  # the query's size in working pixels
            windows = [(q.shape[0] * f, q.shape[1] * f) for q, f in zip(queries, factors)]
        else:  # photographs: the query's aspect, a size relative to the reference
            windows = [nominal_window(q.shape, r.shape, self.window_fraction) for q, r in zip(queries, references)]
        n = len(queries)
        view = self._view
        # The query (embedded once per search) and the global view, in one CNN call.
        both = self._embed([view(q) for q in queries] + [view(r) for r in references])
        query_emb, window_emb = both[:n], both[n:]
        extractor = self.policy.features_extractor
        similarity = None
        if self.overview_size is not None:  # the sharper first look, once per search
            whole = letterbox if self.letterbox else resize_image
            overviews = np.stack([whole(r, self.overview_size) for r in references]).transpose(0, 3, 1, 2)
            similarity = extractor.similarity_map(query_emb, self._tensor(overviews).div_(255.0))
        locations = np.tile(np.array([0.5, 0.5, 1.0, 1.0], dtype=np.float32), (n, 1))
        paths = np.zeros((self.max_trials, n, 4))
        window_embs: list[torch.Tensor] = []
        centers = [(r.shape[1] / 2, r.shape[0] / 2) for r in references]
        state = None
        for t in range(self.max_trials):
            trials_left = np.full((n, 1), (self.max_trials - t) / self.max_trials, dtype=np.float32)
            scalars = {"location": self._tensor(locations), "trials_left": self._tensor(trials_left)}
            mean, state = self.policy.actor_step(extractor.combine(query_emb, window_emb, scalars, similarity), state)
            actions = np.clip(mean.cpu().numpy(), -1.0, 1.0)
            crops = []
            for i, r in enumerate(references):
                img_h, img_w = r.shape[:2]
                cx, cy, scale = self.window_action.apply(actions[i], centers[i], 1.0, (img_h, img_w), windows[i])
                box = place_window(cx, cy, windows[i][1] * scale, windows[i][0] * scale, img_w, img_h)
                centers[i] = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
                paths[t, i] = box
                locations[i] = xyxy_to_cxcywh(box, img_w, img_h)
                crops.append(self._window(r, box))
            window_emb = self._embed(crops)
            window_embs.append(window_emb)
        # Score every placed window in one call of the match head (it does not steer the search).
        distances = self.policy.match_distance(query_emb.repeat(self.max_trials, 1), torch.cat(window_embs))
        distances = distances.cpu().numpy().reshape(self.max_trials, n)
        scores = np.clip(1.0 - distances / self.margin, 0.0, 1.0)
        results = []
        for i in range(n):
            pick = self.max_trials - 1 if self.select == "last" else int(np.argmax(scores[:, i]))
            path = paths[:, i] / factors[i]  # back to the pixels of the reference as given
            results.append(SearchResult(box=path[pick].copy(), path=path, scores=scores[:, i].copy()))
        return results

    # ------------------------------------------------------------------ internals
    def _view(self, image: np.ndarray) -> np.ndarray:
        """A whole image at the observation resolution, as the training env shows it."""
        return letterbox(image, self.query_size) if self.letterbox else resize_image(image, self.query_size)

    def _window(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        if self.letterbox:
            return crop_letterboxed(image, box, self.query_size)
        return crop_window(image, box, self.query_size)

    def _embed(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Siamese CNN embeddings ``(N, E)`` of channel-last uint8 images at the query resolution."""
        batch = np.stack(images).transpose(0, 3, 1, 2)
        return self.policy.features_extractor.cnn(self._tensor(batch).div_(255.0))

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), device=self.policy.device).float()

    def _prepare(self, image: np.ndarray, name: str) -> np.ndarray:
        """Validate an image and convert it to channel-last uint8 with the policy's channel count."""
        if not isinstance(image, np.ndarray):
            raise TypeError(f"{name} must be a numpy array (e.g. from cv2.imread), got {type(image).__name__}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(f"{name} must be (H, W) grayscale or (H, W, 3) colour, got shape {image.shape}")
        if min(image.shape[:2]) < 1:
            raise ValueError(f"{name} is empty: shape {image.shape}")
        if image.dtype != np.uint8:
            if np.issubdtype(image.dtype, np.floating) and np.all((image >= 0.0) & (image <= 1.0)):  # NaN fails
                image = (image * 255.0).round().astype(np.uint8)  # floats in [0, 1]
            else:
                raise ValueError(f"{name} must be uint8 (0-255) or float in [0, 1], got {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[:, :, :3]
        if image.ndim == 3 and self.channel_order == "bgr":
            image = image[:, :, ::-1]  # the agents are trained on RGB
        if self.channels == 1 and image.ndim == 3:
            image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        if image.ndim == 2:
            image = image[:, :, None] if self.channels == 1 else np.repeat(image[:, :, None], 3, axis=2)
        return image
