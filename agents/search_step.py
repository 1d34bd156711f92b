"""A search's steps as PyTorch modules, for export.

A search opens (the query and the whole reference through the CNN, what every decision shares,
the first decision), then for every window: places it where the last decision asked (the env's
geometry), looks at it (the CNN) and decides again; the match head scores the windows seen.
At batch 1 each part is a few dozen tiny operations, so the parts are grouped into as few
runtime calls as the search allows:

* :class:`SearchOpening`: the opening, one call per search;
* :class:`WindowStep`: a window's pixels through the CNN and the decision after it, one call per
  window (the last window needs the CNN only);
* :class:`WindowDistance`: the match head's verdict on the windows seen, one call per search.

The searcher's step-by-step path (:mod:`matchenv.agents.policy_runtime`) runs them exported and
places windows between calls on Python floats (:meth:`WindowAction.place
<matchenv.envs.actions.WindowAction.place>`: in a graph runtime each of the geometry's few dozen
float64 operations costs about a microsecond, more than all of them together on floats); the
fused search (:mod:`matchenv.agents.fused_search`) unrolls them with the crops and the same
geometry on tensors (:func:`placed_windows`) into one graph.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from matchenv.agents.policy import PolicyStep, SearchConstants
from matchenv.envs.actions import AbsoluteAction
from matchenv.geometry import place_windows, window_locations


class SearchOpening(nn.Module):
    """The start of ``N`` searches, up to their first decision.

    Inputs: ``images`` ``(2 N, C, h, w)`` float pixels 0-255, the queries then the views (the
    whole references at the observation size): one CNN batch; for a policy with an overview,
    ``overview`` ``(N, C, H', W')`` likewise.
    Outputs: the constants every later decision takes (:class:`WindowStep`): ``bias``
    ``(N, 4 * hidden)``, ``query_projection`` ``(N, P)``, ``best`` ``(N, 2)`` (zeros without a
    pointer head), ``similarity`` ``(N, h' * w')`` (``(N, 0)`` without an overview); then the
    first decision ``mean`` ``(N, A)`` and the LSTM state ``h``, ``c`` ``(N, hidden)``.

    :param step: the policy's decision. :param cnn: the policy's siamese CNN taking pixels 0-255
        (e.g. :func:`~matchenv.agents.cnn_runtime.on_0_255_pixels`), with its ``feature_map``.
    """

    def __init__(self, step: PolicyStep, cnn: nn.Module) -> None:
        super().__init__()
        self.step = step
        self.cnn = cnn

    def forward(self, images: torch.Tensor, overview: Optional[torch.Tensor] = None):
        n = images.shape[0] // 2
        both = self.cnn(images)
        query_emb, view_emb = both[:n], both[n:]
        if overview is not None:
            similarity = self.step.policy.features_extractor.cell_similarity(query_emb, self.cnn.feature_map(overview))
        else:
            similarity = query_emb[:, :0]
        constants = self.step.start(query_emb, similarity)
        hidden = self.step.policy.lstm_actor.hidden_size
        location = query_emb.new_tensor([0.5, 0.5, 1.0, 1.0]).expand(n, 4)  # the whole reference
        h = c = query_emb.new_zeros(n, hidden)
        mean, h, c = self.step.decide(constants, view_emb, location, query_emb.new_ones(n, 1), h, c)
        best = query_emb.new_zeros(n, 2) if constants.best is None else constants.best
        return constants.bias, constants.query_projection, best, similarity, mean, h, c


class WindowStep(nn.Module):
    """A window seen and the decision after it.

    Inputs: ``window`` ``(N, C, h, w)`` float pixels 0-255 at the observation size, ``location``
    ``(N, 4)`` its place ``(cx, cy, w, h)`` (fractions of the reference), ``trials_left``
    ``(N, 1)``, ``h`` and ``c`` ``(N, hidden)``; the constants from :class:`SearchOpening`
    (``bias``, ``query_projection``, ``similarity``, ``best``).
    Outputs: ``window_emb`` ``(N, E)``, the decision ``mean`` ``(N, A)`` and the new ``h``, ``c``.

    :param step: the policy's decision. :param cnn: as for :class:`SearchOpening`.
    """

    def __init__(self, step: PolicyStep, cnn: nn.Module) -> None:
        super().__init__()
        self.step = step
        self.cnn = cnn

    def forward(self, window, location, trials_left, h, c, bias, query_projection, similarity, best):
        window_emb = self.cnn(window)
        constants = SearchConstants(bias, self.step.step_weight(), query_projection, similarity,
                                    None if self.step.policy.pointer_head is None else best)
        return (window_emb, *self.step.decide(constants, window_emb, location, trials_left, h, c))


class WindowDistance(nn.Module):
    """The match head's distances ``(M,)`` of ``(M, E)`` window embeddings to ``(M, P)`` queries
    already projected (:class:`SearchOpening`'s ``query_projection``); small means a match."""

    def __init__(self, step: PolicyStep) -> None:
        super().__init__()
        self.match_head = step.policy.match_head

    def forward(self, query_projection: torch.Tensor, window_emb: torch.Tensor) -> torch.Tensor:
        return self.match_head.projected_distance(query_projection, window_emb)


def placed_windows(action_map: AbsoluteAction, mean: torch.Tensor, image_wh: torch.Tensor, window_wh: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows decisions place, on float64 tensors (the env's :meth:`AbsoluteAction.move
    <matchenv.envs.actions.AbsoluteAction.move>`, :func:`~matchenv.geometry.place_windows` and
    :func:`~matchenv.geometry.window_locations`).

    :param mean: ``(N, A)`` decisions (clipped here); ``image_wh`` ``(N, 2)`` float64 references
        ``(width, height)``; ``window_wh`` ``(N, 2)`` float64 nominal windows, pixels.
    :return: ``box`` ``(N, 4)`` float64 whole-pixel windows ``(x0, y0, x1, y1)`` and ``location``
        ``(N, 4)`` what the agent observes of their places, in ``mean``'s dtype.
    """
    action = torch.clamp(mean.to(torch.float64), -1.0, 1.0)
    # (without a scale, the unit scale: a multiplication by one, which ONNX Runtime removes)
    centre, scale = action_map.move(action, None, action.new_ones(1), image_wh, window_wh)
    p0, p1 = place_windows(centre, window_wh * scale[:, None], image_wh)
    return torch.cat([p0, p1], dim=1), window_locations(p0, p1, image_wh).to(mean.dtype)
