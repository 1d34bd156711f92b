"""Where a searcher runs the search policy: the step modules of :mod:`matchenv.agents.search_step`
exported (:class:`~matchenv.agents.exported_module.ExportedModule`), so the fast path and the
trained modules are one definition.

A search of ``T`` windows makes ``T + 2`` calls: :class:`~matchenv.agents.search_step.SearchOpening`
(the query and the global view through the CNN, the constants, the first decision), then
:class:`~matchenv.agents.search_step.WindowStep` per window (the CNN and the next decision; the
last window through the CNN alone) and :class:`~matchenv.agents.search_step.WindowDistance` for
the match scores of all of them. At batch 1 a runtime call costs several microseconds besides its
arithmetic, so the parts are grouped into as few calls as the search allows.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from matchenv.agents.cnn_runtime import as_pixels, pixels_0_255_cnn
from matchenv.agents.exported_module import ExportedModule
from matchenv.agents.policy import PolicyStep, SearchLstmPolicy
from matchenv.agents.search_step import SearchOpening, WindowDistance, WindowStep

#: the constants of a search, in the order WindowStep takes them after its varying inputs
_CONSTANTS = ["bias", "query_projection", "similarity", "best"]


class PolicyRuntime:
    """A trained policy's search steps, from numpy arrays.

    :param policy: a trained policy with a one-layer actor LSTM.
    :param kind: the runtime (:data:`matchenv.agents.exported_module.KINDS`; a GPU policy runs in PyTorch).
    :param overview_size: ``(H', W')`` of the overview for a policy that has one, else ``None``.
    :param threads: ONNX Runtime's intra-op threads (default ``torch.get_num_threads()``).
    """

    def __init__(self, policy: SearchLstmPolicy, kind: str = "auto", overview_size: Optional[tuple[int, int]] = None,
                 threads: Optional[int] = None) -> None:
        step = PolicyStep(policy).eval()
        trained = policy.features_extractor.cnn
        cnn = pixels_0_255_cnn(trained, eager=kind == "torch" or policy.device.type != "cpu")
        map_size = policy.features_extractor.map_size
        cells = 0 if map_size is None else map_size[0] * map_size[1]
        if (map_size is None) != (overview_size is None):
            raise ValueError(f"overview_size {overview_size} does not fit a policy {'with' if map_size else 'without'} an overview")
        self.hidden = policy.lstm_actor.hidden_size
        projection = policy.match_head.projection[-1].out_features
        image = policy.observation_space["query"].shape
        zeros = lambda *shape: torch.zeros(1, *shape)  # noqa: E731
        self.has_overview = overview_size is not None
        opening_inputs, names = [torch.zeros(2, *image)], ["images"]
        if self.has_overview:
            opening_inputs.append(zeros(image[0], *overview_size))
            names.append("overview")
        self._opening = ExportedModule(SearchOpening(step, cnn), opening_inputs, names,
                                       ["bias", "query_projection", "best", "similarity", "mean", "h", "c"], kind, threads,
                                       free_axes={"images": {0: "two_n"}})  # queries and views: twice the searches
        self._window = ExportedModule(
            WindowStep(step, cnn),
            [zeros(*image), zeros(4), zeros(1), zeros(self.hidden), zeros(self.hidden),
             zeros(4 * self.hidden), zeros(projection), zeros(cells), zeros(2)],
            ["window", "location", "trials_left", "h", "c", *_CONSTANTS], ["window_emb", "mean", "h_next", "c_next"],
            kind, threads)
        self._distance = ExportedModule(WindowDistance(step), [zeros(projection), zeros(trained.embedding_dim)],
                                        ["query_projection", "window_emb"], ["distance"], kind, threads)
        #: the runtime in use: "onnxruntime", "torchscript" or "torch"
        self.name = self._window.name

    def start(self, images: np.ndarray, overviews: Optional[np.ndarray], max_trials: int) -> "RunningSearch":
        """Open ``N`` searches of ``max_trials`` windows each (the decisions see the trials left).

        :param images: ``(2 N, h, w, C)`` uint8 at the observation size: the queries, then the
            views (the whole references). :param overviews: ``(N, H', W', C)`` uint8 for a policy
            with an overview, else ``None``.
        """
        if (overviews is None) == self.has_overview:
            raise ValueError("pass overviews exactly when the policy has an overview")
        arrays = [as_pixels(images)] if overviews is None else [as_pixels(images), as_pixels(overviews)]
        return RunningSearch(self, self._opening(*arrays), int(max_trials))


class RunningSearch:
    """``N`` searches in progress, in step: the LSTM state and what every decision shares.

    :attr:`actions` is the latest decision; :meth:`look` shows the searches the windows they
    asked for and decides again, :meth:`distance` scores windows.
    """

    def __init__(self, runtime: PolicyRuntime, opened: tuple[np.ndarray, ...], max_trials: int) -> None:
        self.runtime = runtime
        bias, query_projection, best, similarity, mean, self.h, self.c = opened
        self._constants = dict(zip(_CONSTANTS, (bias, query_projection, similarity, best)))
        # what every decision of these searches shares, given to the graph once
        self._window = runtime._window.bound(**self._constants)
        self.max_trials = max_trials
        self.looks = 1  #: windows seen so far (the global view counts)
        #: ``(N, A)`` the latest decision of every search (before clipping)
        self.actions: np.ndarray = mean

    def look(self, images: np.ndarray, locations: np.ndarray, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """Show the searches ``rows`` (all of them by default) the windows they asked for, and
        decide again (:attr:`actions` of those rows).

        :param images: ``(M, h, w, C)`` uint8, one per row, at the observation size; ``locations``
            ``(M, 4)`` their places ``(cx, cy, w, h)``, fractions of the references.
        :return: ``(M, E)`` the windows' embeddings (for :meth:`distance`).
        """
        trials = np.full((len(images), 1), (self.max_trials - self.looks) / self.max_trials, np.float32)
        locations = np.ascontiguousarray(locations, np.float32)  # (a float32 array passes as it is)
        self.looks += 1
        if rows is None:
            window_emb, self.actions, self.h, self.c = self._window(as_pixels(images), locations, trials, self.h, self.c)
            return window_emb
        constants = [self._constants[name][rows] for name in _CONSTANTS]
        window_emb, mean, h, c = self.runtime._window(as_pixels(images), locations, trials, self.h[rows], self.c[rows], *constants)
        self.h[rows], self.c[rows], self.actions[rows] = h, c, mean
        return window_emb

    def distance(self, window_emb: np.ndarray, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """``(M,)`` match-head distances of ``(M, E)`` windows to the queries of ``rows`` (all
        searches by default; ``M`` may be a multiple of their number, windows stacked trial by
        trial); small means a match."""
        query = self._constants["query_projection"]
        if rows is not None:
            query = query[rows]
        if len(window_emb) != len(query):
            query = np.tile(query, (len(window_emb) // len(query), 1))
        return self.runtime._distance(query, np.ascontiguousarray(window_emb, np.float32))[0]
