"""Where a searcher runs the search policy's decisions: :class:`~matchenv.agents.policy.PolicyStep`
exported (:class:`~matchenv.agents.exported_module.ExportedModule`), so the fast path and the trained
module are one definition.

A search calls the policy three ways: once per search for what every decision shares
(:meth:`PolicyStep.start`), once per window for the decision (:meth:`PolicyStep.decide`), and
for the match head's verdict on windows. Each is a small graph with tensor inputs and outputs,
exported on its own.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from matchenv.agents.exported_module import ExportedModule
from matchenv.agents.policy import PolicyStep, SearchConstants, SearchLstmPolicy


class _Start(nn.Module):
    """:meth:`PolicyStep.start` with tensor outputs: ``bias``, ``query_projection``, ``best``
    (``(N, 2)`` zeros without a pointer head)."""

    def __init__(self, step: PolicyStep) -> None:
        super().__init__()
        self.step = step

    def forward(self, query_emb: torch.Tensor, similarity: torch.Tensor):
        constants = self.step.start(query_emb, similarity)
        best = query_emb.new_zeros(query_emb.shape[0], 2) if constants.best is None else constants.best
        return constants.bias, constants.query_projection, best


class _Decide(nn.Module):
    """:meth:`PolicyStep.decide` with the constants as tensor inputs (the weight product,
    the same for every search, is computed in the graph and folded by ONNX Runtime)."""

    def __init__(self, step: PolicyStep) -> None:
        super().__init__()
        self.step = step

    def forward(self, bias, query_projection, similarity, best, window_emb, location, trials_left, h, c):
        policy = self.step.policy
        # A Python number, not window_emb.shape[1]: a traced shape would make the weight product
        # an input-dependent computation instead of a constant the runtime folds once.
        lstm, e = policy.lstm_actor, policy.features_extractor.cnn.embedding_dim
        step_weight = torch.cat([lstm.weight_ih_l0[:, e:2 * e + 5], lstm.weight_hh_l0], dim=1).T
        constants = SearchConstants(bias, step_weight, query_projection, similarity,
                                    None if policy.pointer_head is None else best)
        return self.step.decide(constants, window_emb, location, trials_left, h, c)


class _Distance(nn.Module):
    """The match head's distances of windows to queries already projected."""

    def __init__(self, policy: SearchLstmPolicy) -> None:
        super().__init__()
        self.match_head = policy.match_head

    def forward(self, query_projection: torch.Tensor, window_emb: torch.Tensor) -> torch.Tensor:
        return self.match_head.projected_distance(query_projection, window_emb)


class PolicyRuntime:
    """A trained policy's decisions and match head, from numpy embeddings.

    :param policy: a trained policy with a one-layer actor LSTM.
    :param kind: the runtime (:data:`matchenv.agents.exported_module.KINDS`; a GPU policy runs in PyTorch).
    :param threads: ONNX Runtime's intra-op threads (default ``torch.get_num_threads()``).
    """

    def __init__(self, policy: SearchLstmPolicy, kind: str = "auto", threads: Optional[int] = None) -> None:
        step = PolicyStep(policy).eval()
        e = policy.features_extractor.cnn.embedding_dim
        map_size = policy.features_extractor.map_size
        cells = 0 if map_size is None else map_size[0] * map_size[1]
        self.hidden = policy.lstm_actor.hidden_size
        projection = policy.match_head.projection[-1].out_features
        zeros = lambda *shape: torch.zeros(1, *shape)  # noqa: E731
        self._start = ExportedModule(_Start(step), [zeros(e), zeros(cells)], ["query_emb", "similarity"],
                                     ["bias", "query_projection", "best"], kind, threads)
        self._decide = ExportedModule(
            _Decide(step), [zeros(4 * self.hidden), zeros(projection), zeros(cells), zeros(2), zeros(e), zeros(4), zeros(1),
                            zeros(self.hidden), zeros(self.hidden)],
            ["bias", "query_projection", "similarity", "best", "window_emb", "location", "trials_left", "h", "c"],
            ["mean", "h_next", "c_next"], kind, threads)
        self._distance = ExportedModule(_Distance(policy), [zeros(projection), zeros(e)], ["query_projection", "window_emb"],
                                        ["distance"], kind, threads)
        #: the runtime in use: "onnxruntime", "torchscript" or "torch"
        self.name = self._decide.name

    def start(self, query_emb: np.ndarray, similarity: np.ndarray) -> "RunningSearch":
        """Begin searches for ``(N, E)`` query embeddings and their ``(N, h' * w')`` (or ``(N, 0)``)
        similarity maps."""
        return RunningSearch(self, np.ascontiguousarray(query_emb, np.float32), np.ascontiguousarray(similarity, np.float32))


class RunningSearch:
    """``N`` searches in progress: the LSTM state and what every decision shares.

    :meth:`step` decides the next windows, :meth:`distance` is the match head's verdict on windows.
    """

    def __init__(self, runtime: PolicyRuntime, query_emb: np.ndarray, similarity: np.ndarray) -> None:
        self.runtime = runtime
        bias, self.query_projection, best = runtime._start(query_emb, similarity)
        # what every decision of these searches shares, given to the graph once
        self._decide = runtime._decide.bound(bias=bias, query_projection=self.query_projection, similarity=similarity,
                                             best=best)
        self.h = np.zeros((len(query_emb), runtime.hidden), np.float32)
        self.c = np.zeros_like(self.h)
        self._trials = np.empty((len(query_emb), 1), np.float32)

    def step(self, window_emb: np.ndarray, locations: np.ndarray, trials_left) -> np.ndarray:
        """``(N, A)`` mean actions after seeing ``(N, E)`` window embeddings at ``(N, 4)`` locations
        ``(cx, cy, w, h)`` (fractions of the reference); ``trials_left`` one number for every
        search or an ``(N, 1)`` array."""
        self._trials[:] = np.asarray(trials_left, np.float32).reshape(-1, 1)
        mean, self.h, self.c = self._decide(np.ascontiguousarray(window_emb, np.float32),
                                            np.ascontiguousarray(locations, np.float32), self._trials, self.h, self.c)
        return mean

    def distance(self, window_emb: np.ndarray) -> np.ndarray:
        """``(M,)`` match-head distances of ``(M, E)`` windows to the queries, ``M`` a multiple of
        ``N`` (windows of several trials stacked trial by trial); small means a match."""
        query = self.query_projection
        if len(window_emb) != len(query):
            query = np.tile(query, (len(window_emb) // len(query), 1))
        return self.runtime._distance(query, np.ascontiguousarray(window_emb, np.float32))[0]
