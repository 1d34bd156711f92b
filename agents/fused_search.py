"""A fixed-size agent's whole search as one ONNX Runtime call.

At batch 1 a search of T windows is ~T CNN calls and T decisions, each a few dozen tiny
operations; from Python every one of them costs a call's overhead (and the working set of the
LSTM and the CNN evicts each other from the cache between calls). :class:`SearchGraph` writes
the whole search -- the opening and first decision on the global view, then for every trial:
the window's placement (the env's own geometry on float64 tensors), the crop, the CNN and the next
decision: the step modules of :mod:`matchenv.agents.search_step` unrolled -- as one PyTorch graph,
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

from matchenv.agents.cnn_runtime import on_0_255_pixels
from matchenv.agents.onnx_export import onnx_session
from matchenv.agents.policy import PolicyStep, SearchLstmPolicy
from matchenv.agents.search_step import SearchOpening, WindowDistance, WindowStep, placed_windows
from matchenv.envs.actions import AbsoluteAction


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
        step = PolicyStep(policy)
        cnn = on_0_255_pixels(policy.features_extractor.cnn)
        # the modules the step-by-step search calls one by one (matchenv.agents.search_step)
        self.opening, self.window_step, self.distance = SearchOpening(step, cnn), WindowStep(step, cnn), WindowDistance(step)
        self.action_map = AbsoluteAction(None)  # windows of the query's size
        self.max_trials = int(max_trials)
        self.window_h, self.window_w = policy.observation_space["query"].shape[1:]

    def forward(self, query, view, reference, image_size, overview: Optional[torch.Tensor] = None):
        n, channels = query.shape[0], query.shape[1]
        bias, query_projection, best, similarity, mean, h, c = self.opening(torch.cat([query, view], dim=0), overview)
        # Windows of the query's size (scale 1), (x, y) pairs in float64 like the env's.
        window_wh = image_size.new_tensor([float(self.window_w), float(self.window_h)]).expand(n, 2)
        image_wh = image_size.expand(n, 2)
        # Flat pixel indices of a window whose top-left corner is (0, 0).
        width_long = image_size[0].to(torch.int64)
        offsets = (torch.arange(self.window_h)[:, None] * width_long + torch.arange(self.window_w)[None, :]).reshape(1, 1, -1)
        flat = reference.flatten(2)
        boxes, window_embs = [], []
        for t in range(self.max_trials):
            box, location = placed_windows(self.action_map, mean, image_wh, window_wh)
            boxes.append(box)
            start = (box[:, 1].to(torch.int64) * width_long + box[:, 0].to(torch.int64)).reshape(-1, 1, 1)
            index = (start + offsets).expand(-1, channels, -1)
            crop = flat.gather(2, index).reshape(n, channels, self.window_h, self.window_w).to(query.dtype)
            if t + 1 < self.max_trials:  # the window and the next decision
                trials_left = query.new_full((n, 1), (self.max_trials - t - 1) / self.max_trials)
                window_emb, mean, h, c = self.window_step(crop, location, trials_left, h, c, bias, query_projection,
                                                          similarity, best)
            else:  # the last window: no decision follows
                window_emb = self.window_step.cnn(crop)
            window_embs.append(window_emb)
        distances = self.distance(query_projection.repeat(self.max_trials, 1), torch.cat(window_embs))
        return torch.stack(boxes), distances.reshape(self.max_trials, n)


class FusedSearch:
    """:class:`SearchGraph` exported to ONNX and run by ONNX Runtime (needs ``onnx`` and ``onnxruntime``).

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
        as_input = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2), dtype=np.float32)  # noqa: E731
        feed = {"query": as_input(queries), "view": as_input(views),
                "reference": np.ascontiguousarray(references.transpose(0, 3, 1, 2)),
                "image_size": np.array([references.shape[2], references.shape[1]], np.float64)}
        if self.has_overview:
            feed["overview"] = as_input(overviews)
        boxes, distances = self.session.run(None, feed)
        return boxes, distances
