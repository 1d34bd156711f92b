"""A fixed-size agent's whole search as one ONNX Runtime call.

At batch 1 a search of T windows is ~T CNN calls and T decisions, each a few dozen tiny
operations; from Python every one of them costs a call's overhead (and the working set of the
LSTM and the CNN evicts each other from the cache between calls). :class:`SearchGraph` writes
the whole search -- the first decision on the global view, then for every trial: the decision,
the window's placement (exactly :func:`~matchenv.envs.actions.absolute_window_center` and
:func:`~matchenv.geometry.place_window`, in float64), the crop, the CNN -- as one PyTorch graph,
exported to ONNX once; :class:`FusedSearch` runs it in ONNX Runtime, so a query is one call.

It covers the common case of fixed-size agents (Noisy MNIST): windows of the query's size in
reference pixels, which is also the observation size, so a crop is a plain copy of pixels;
photograph agents (scale, letterbox, working size) and ``stop_score`` use the searcher's
step-by-step path. Tested to place the same windows as that path.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from agents.cnn_runtime import FeatureMap, on_0_255_pixels, onnx_session
from agents.policy import PolicyStep, SearchLstmPolicy


class SearchGraph(nn.Module):
    """``max_trials`` windows of a trained policy, from pixels to the windows placed.

    Inputs: ``query`` and ``view`` (the whole reference at the query resolution) ``(N, C, h, w)``
    float pixels 0-255, ``reference`` ``(N, C, H, W)`` uint8 (only the windows' pixels are
    converted, so a large reference costs no more than a small one), ``image_size`` ``(2,)``
    float64 ``(W, H)`` and, for a policy with an overview, ``overview`` ``(N, C, H', W')`` float.
    Outputs: ``boxes`` ``(T, N, 4)`` float64 pixel boxes ``(x0, y0, x1, y1)`` and ``distances``
    ``(T, N)`` the match head's query/window distances.

    :param policy: a trained policy with ``"absolute"`` ``(x, y)`` actions and a one-layer actor LSTM.
    :param max_trials: windows per search.
    """

    def __init__(self, policy: SearchLstmPolicy, max_trials: int) -> None:
        super().__init__()
        self.policy = policy
        self.step = PolicyStep(policy)
        self.cnn = on_0_255_pixels(policy.features_extractor.cnn)
        self.feature_map = FeatureMap(self.cnn)
        self.max_trials = int(max_trials)
        self.window_h, self.window_w = policy.observation_space["query"].shape[1:]

    @staticmethod
    def _window_side(side: int, image_side: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For a window of ``side`` pixels (the query's, scale 1) in an image of ``image_side``
        (float64): the side :func:`absolute_window_center` centres with and the whole-pixel side
        :func:`place_window` gives."""
        nominal = image_side.new_tensor(float(side))
        return torch.minimum(nominal, image_side), torch.minimum(torch.clamp(torch.round(nominal), min=1.0), image_side)

    def forward(self, query, view, reference, image_size, overview: Optional[torch.Tensor] = None):
        n, channels = query.shape[0], query.shape[1]
        both = self.cnn(torch.cat([query, view], dim=0))
        query_emb, window_emb = both[:n], both[n:]
        if overview is not None:
            similarity = self.policy.features_extractor.cell_similarity(query_emb, self.feature_map(overview))
        else:
            similarity = query_emb[:, :0]
        img_w, img_h = image_size[0], image_size[1]
        win_w, w = self._window_side(self.window_w, img_w)
        win_h, h_px = self._window_side(self.window_h, img_h)
        location = query_emb.new_tensor([0.5, 0.5, 1.0, 1.0]).expand(n, 4)
        hidden = self.policy.lstm_actor.hidden_size
        h = query_emb.new_zeros(n, hidden)
        c = query_emb.new_zeros(n, hidden)
        # Flat pixel indices of a window whose top-left corner is (0, 0).
        width_long = img_w.to(torch.int64)
        offsets = (torch.arange(self.window_h)[:, None] * width_long + torch.arange(self.window_w)[None, :]).reshape(1, 1, -1)
        flat = reference.flatten(2)
        boxes, window_embs = [], []
        for t in range(self.max_trials):
            trials_left = query_emb.new_full((n, 1), (self.max_trials - t) / self.max_trials)
            mean, h, c = self.step(query_emb, window_emb, location, trials_left, similarity, h, c)
            action = torch.clamp(mean, -1.0, 1.0).to(torch.float64)
            cx = win_w / 2 + (action[:, 0] + 1.0) / 2.0 * (img_w - win_w)
            cy = win_h / 2 + (action[:, 1] + 1.0) / 2.0 * (img_h - win_h)
            x0 = torch.minimum(torch.clamp(torch.round(cx - w / 2), min=0.0), img_w - w)
            y0 = torch.minimum(torch.clamp(torch.round(cy - h_px / 2), min=0.0), img_h - h_px)
            box = torch.stack([x0, y0, x0 + w, y0 + h_px], dim=1)
            boxes.append(box)
            location = torch.stack([(box[:, 0] + box[:, 2]) / (2 * img_w), (box[:, 1] + box[:, 3]) / (2 * img_h),
                                    (box[:, 2] - box[:, 0]) / img_w, (box[:, 3] - box[:, 1]) / img_h], dim=1).to(query.dtype)
            start = (y0.to(torch.int64) * width_long + x0.to(torch.int64)).reshape(-1, 1, 1)
            index = (start + offsets).expand(-1, channels, -1)
            crop = flat.gather(2, index).reshape(n, channels, self.window_h, self.window_w).to(query.dtype)
            window_emb = self.cnn(crop)
            window_embs.append(window_emb)
        distances = self.policy.match_head(query_emb.repeat(self.max_trials, 1), torch.cat(window_embs))
        return torch.stack(boxes), distances.reshape(self.max_trials, n)


class FusedSearch:
    """:class:`SearchGraph` exported to ONNX and run by ONNX Runtime (needs the ``fast`` extra).

    :param policy: as for :class:`SearchGraph`.
    :param max_trials: windows per search.
    :param overview_size: ``(H', W')`` of the overview for policies that have one, else ``None``.
    :param threads: ONNX Runtime's intra-op threads.
    """

    def __init__(self, policy: SearchLstmPolicy, max_trials: int, overview_size: Optional[tuple[int, int]], threads: int = 1) -> None:
        graph = SearchGraph(policy, max_trials).eval()
        channels, h, w = policy.observation_space["query"].shape
        example = [torch.zeros(1, channels, h, w), torch.zeros(1, channels, h, w),
                   torch.zeros(1, channels, 2 * h, 2 * w, dtype=torch.uint8),
                   torch.tensor([2.0 * w, 2.0 * h], dtype=torch.float64)]
        names = ["query", "view", "reference", "image_size"]
        axes = {"query": {0: "n"}, "view": {0: "n"}, "reference": {0: "n", 2: "H", 3: "W"}, "boxes": {1: "n"}, "distances": {1: "n"}}
        self.has_overview = overview_size is not None
        if self.has_overview:
            example.append(torch.zeros(1, channels, *overview_size))
            names.append("overview")
            axes["overview"] = {0: "n"}
        self.session = onnx_session(graph, tuple(example), names, ["boxes", "distances"], axes, threads)

    def __call__(self, queries: np.ndarray, views: np.ndarray, references: np.ndarray,
                 overviews: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """:param queries: ``(N, h, w, C)`` uint8, like ``views``; ``references`` ``(N, H, W, C)``
        uint8, all the same size. :return: ``boxes`` ``(T, N, 4)`` and ``distances`` ``(T, N)``."""
        as_input = lambda a: a.transpose(0, 3, 1, 2).astype(np.float32)  # noqa: E731
        feed = {"query": as_input(queries), "view": as_input(views),
                "reference": np.ascontiguousarray(references.transpose(0, 3, 1, 2)),
                "image_size": np.array([references.shape[2], references.shape[1]], np.float64)}
        if self.has_overview:
            feed["overview"] = as_input(overviews)
        boxes, distances = self.session.run(None, feed)
        return boxes, distances
