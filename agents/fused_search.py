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

    def _window_sides(self, image_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For windows of the query's size (scale 1) in images of ``image_size`` ``(2,)`` float64
        ``(W, H)``: the ``(2,)`` sides :func:`absolute_window_center` centres with and the
        whole-pixel sides :func:`place_window` gives, both ``(w, h)``."""
        nominal = image_size.new_tensor([float(self.window_w), float(self.window_h)])
        return torch.minimum(nominal, image_size), torch.minimum(torch.clamp(torch.round(nominal), min=1.0), image_size)

    def forward(self, query, view, reference, image_size, overview: Optional[torch.Tensor] = None):
        n, channels = query.shape[0], query.shape[1]
        both = self.cnn(torch.cat([query, view], dim=0))
        query_emb, window_emb = both[:n], both[n:]
        if overview is not None:
            similarity = self.policy.features_extractor.cell_similarity(query_emb, self.feature_map(overview))
        else:
            similarity = query_emb[:, :0]
        constants = self.step.start(query_emb, similarity)
        # The window's geometry for both axes at once, (x, y) pairs in float64: the same
        # arithmetic, element by element, as the step-by-step path's scalar functions.
        centring, side = self._window_sides(image_size)
        size_fraction = (side / image_size).to(query.dtype).expand(n, 2)
        location = query_emb.new_tensor([0.5, 0.5, 1.0, 1.0]).expand(n, 4)
        hidden = self.policy.lstm_actor.hidden_size
        h = query_emb.new_zeros(n, hidden)
        c = query_emb.new_zeros(n, hidden)
        # Flat pixel indices of a window whose top-left corner is (0, 0).
        width_long = image_size[0].to(torch.int64)
        offsets = (torch.arange(self.window_h)[:, None] * width_long + torch.arange(self.window_w)[None, :]).reshape(1, 1, -1)
        flat = reference.flatten(2)
        boxes, window_embs = [], []
        for t in range(self.max_trials):
            trials_left = query_emb.new_full((n, 1), (self.max_trials - t) / self.max_trials)
            mean, h, c = self.step.decide(constants, window_emb, location, trials_left, h, c)
            action = torch.clamp(mean[:, :2], -1.0, 1.0).to(torch.float64)  # (x, y)
            centre = centring / 2 + (action + 1.0) / 2.0 * (image_size - centring)
            corner = torch.minimum(torch.clamp(torch.round(centre - side / 2), min=0.0), image_size - side)  # (x0, y0)
            boxes.append(torch.cat([corner, corner + side], dim=1))
            # The env's (cx, cy) = (x0 + x1) / (2 W): with whole-pixel corners and sides,
            # (x0 + w / 2) / W is the same division of the same exact numbers.
            location = torch.cat([((corner + side / 2) / image_size).to(query.dtype), size_fraction], dim=1)
            pixel = corner.to(torch.int64)
            start = (pixel[:, 1] * width_long + pixel[:, 0]).reshape(-1, 1, 1)
            index = (start + offsets).expand(-1, channels, -1)
            crop = flat.gather(2, index).reshape(n, channels, self.window_h, self.window_w).to(query.dtype)
            window_emb = self.cnn(crop)
            window_embs.append(window_emb)
        distances = self.policy.match_head.projected_distance(constants.query_projection.repeat(self.max_trials, 1),
                                                              torch.cat(window_embs))
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
        as_input = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2), dtype=np.float32)  # noqa: E731
        feed = {"query": as_input(queries), "view": as_input(views),
                "reference": np.ascontiguousarray(references.transpose(0, 3, 1, 2)),
                "image_size": np.array([references.shape[2], references.shape[1]], np.float64)}
        if self.has_overview:
            feed["overview"] = as_input(overviews)
        boxes, distances = self.session.run(None, feed)
        return boxes, distances
