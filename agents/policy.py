"""The recurrent search policy: siamese CNN features -> LSTM -> actor/critic, plus a match head."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import torch
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from torch import nn
from torch.nn import functional as F

from matchenv.agents.siamese import SearchFeaturesExtractor


def contrastive_loss(distance: torch.Tensor, match: torch.Tensor, margin: float) -> torch.Tensor:
    """Squared contrastive loss (Hadsell, Chopra & LeCun 2006) on query/window distances.

    ``match * d^2 + (1 - match) * max(0, margin - d)^2``: pulls matching windows' embeddings onto
    the query's and pushes non-matching ones at least ``margin`` away. The squared form trained
    faster than the linear one in our runs (its gradient vanishes smoothly at the solution).

    :param distance: ``(N,)`` non-negative distances.
    :param match: ``(N,)`` float labels, 1 where the window matches (IoU > 0.5), else 0.
    :param margin: the margin ``m`` in embedding units.
    :return: scalar mean loss.
    """
    return (match * distance.pow(2) + (1.0 - match) * F.relu(margin - distance).pow(2)).mean()


def match_label(info: dict, match_iou: float) -> float:
    """The contrastive loss's label of the observation an env returned with ``info``: 1.0 where its
    window matches the target (``info["iou"] > match_iou``), 0.0 where it does not, -1.0 (no
    label) for the reset view (trial 0, the whole reference) or an info without an IoU."""
    if "iou" not in info or info.get("trial", 0) == 0:
        return -1.0
    return float(info["iou"] > match_iou)


class MatchHead(nn.Module):
    """Projects query and window embeddings into a space where distance means 'does not match'.

    :param embedding_dim: size of the siamese CNN embedding.
    :param projection_dim: size of the projected space.
    """

    def __init__(self, embedding_dim: int, projection_dim: int = 32) -> None:
        super().__init__()
        self.projection = nn.Sequential(nn.Linear(embedding_dim, projection_dim), nn.ReLU(), nn.Linear(projection_dim, projection_dim))

    def forward(self, query_emb: torch.Tensor, window_emb: torch.Tensor) -> torch.Tensor:
        """:return: ``(N,)`` Euclidean distances between the projected embeddings."""
        return self.projected_distance(self.projection(query_emb), window_emb)

    def projected_distance(self, query_projection: torch.Tensor, window_emb: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with the query already projected (``(N, projection_dim)``): a search
        projects its query once, not at every window."""
        diff = query_projection - self.projection(window_emb)
        return torch.sqrt(diff.pow(2).sum(dim=-1) + 1e-8)


class PointerHead(nn.Module):
    """The next window's centre as a learned choice among candidate points (a multimodal head).

    A Gaussian policy that regresses "where is the target" averages the look-alike candidates
    and lands between them. This head instead builds the mean from four *anchors*, each a point
    the search may want to go to, and a gate that picks among them, plus a small offset:

    - ``best``: the overview cell most like the query, refined by a local soft-argmax (a
      spatial soft-argmax as in Levine et al., "End-to-End Training of Deep Visuomotor
      Policies", 2016, restricted to the arg-max's neighbourhood), with a learned sharpness;
    - ``next``: the same with the cells under the current window suppressed -- the best
      candidate *elsewhere*, where to go when the current window does not match;
    - ``stay``: the current window's centre;
    - ``free``: the actor's own output (what the policy without this head would do).

    The gate reads the LSTM latent and the match head's query/window distance (detached: the
    verifier is trained only by the contrastive loss; here it is the stay/move signal), and
    the mean action is its most likely anchor plus the offset.
    Everything comes from observations: the similarity map, the window location and the
    embeddings. A point ``p`` (fraction of the reference) is the absolute action
    ``(2 p - 1) / (1 - f)`` for a window that spans the fraction ``f`` of the reference (the
    absolute action keeps the window inside the image); that per-axis scale is learned, starting
    from ``window_fraction``, so that it also fits datasets whose window size varies.

    :param latent_dim: size of the actor latent (after the MLP).
    :param map_size: ``(h', w')`` cells of the similarity map.
    :param window_fraction: typical window side as a fraction of the reference side
        (0.28 for a 28 px digit in a 100 px canvas).
    :param sharpness: initial multiplier of the cosine similarities in the soft-argmax.
    """

    ANCHORS = ("best", "next", "stay", "free")

    def __init__(
        self, latent_dim: int, map_size: tuple[int, int], window_fraction: float = 0.0, sharpness: float = 20.0
    ) -> None:
        if not 0.0 <= window_fraction < 1.0:
            raise ValueError(f"window_fraction must be in [0, 1), got {window_fraction}")
        super().__init__()
        rows, cols = map_size
        ys, xs = torch.meshgrid((torch.arange(rows) + 0.5) / rows, (torch.arange(cols) + 0.5) / cols, indexing="ij")
        #: ``(h' * w', 2)`` cell centres ``(x, y)`` as fractions of the overview, row-major like the map.
        self.register_buffer("cell_centres", torch.stack([xs.flatten(), ys.flatten()], dim=1))
        rr, cc = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        #: ``(h' * w', 2)`` integer ``(row, col)`` of each cell.
        self.register_buffer("cell_grid", torch.stack([rr.flatten(), cc.flatten()], dim=1))
        self.log_sharpness = nn.Parameter(torch.tensor(math.log(sharpness)))
        self.gate = nn.Linear(latent_dim + 1, len(self.ANCHORS))
        self.offset = nn.Linear(latent_dim, 2)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.point_scale = nn.Parameter(torch.full((2,), 1.0 / (1.0 - window_fraction)))
        self.point_shift = nn.Parameter(torch.zeros(2))

    def soft_argmax(self, similarity: torch.Tensor, suppress: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(..., 2)`` the best cell, refined to sub-cell precision: the arg-max cell, then the
        ``softmax(sharpness * similarity)``-weighted centre of it and its 8 neighbours.

        A soft-argmax over the whole map would average look-alikes (a distractor with a similar
        score pulls the point halfway to it); restricting the softmax to the arg-max's neighbourhood
        keeps the mode and stays differentiable in the similarities.

        :param similarity: ``(..., h' * w')`` cosine similarities.
        :param suppress: optional ``(..., h' * w')`` bool mask of cells to leave out.
        """
        logits = similarity * self.log_sharpness.exp()
        if suppress is not None:
            # A large finite penalty: if every cell is suppressed (the whole-image view) the
            # choice is unchanged instead of undefined.
            logits = logits - 1e4 * suppress.to(logits.dtype)
        best = self.cell_grid[logits.argmax(dim=-1)]  # (..., 2) row, col
        # "any coordinate more than 1 cell away" as a max: the same test in fewer ONNX operations
        # (a boolean any/all exports as casts, a sum and a comparison), run at every window.
        outside = (self.cell_grid - best[..., None, :]).abs().amax(dim=-1) > 1
        logits = logits - 1e4 * outside.to(logits.dtype)
        return torch.softmax(logits, dim=-1) @ self.cell_centres

    def candidates(
        self,
        latent: torch.Tensor,
        free_action: torch.Tensor,
        similarity: torch.Tensor,
        location: torch.Tensor,
        match_distance: torch.Tensor,
        best: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The anchors and the gate's logits.

        :param latent: ``(..., latent_dim)``.
        :param free_action: ``(..., 2)`` the actor's own ``(x, y)`` action.
        :param similarity: ``(..., h' * w')``.
        :param location: ``(..., 4)`` the current window ``(cx, cy, w, h)`` as fractions of the reference.
        :param match_distance: ``(...,)`` the match head's query/window distance.
        :param best: ``(..., 2)`` :meth:`soft_argmax` of ``similarity``, if already computed (it is
            the same at every step of a search).
        :return: anchors ``(..., 4, 2)`` in absolute-action units (order :attr:`ANCHORS`) and gate
            logits ``(..., 4)``.
        """
        centre, size = location[..., None, :2], location[..., None, 2:]
        covered = ((self.cell_centres - centre).abs() - size / 2).amax(dim=-1) < 0  # |d| < size / 2 on both axes
        if best is None:
            best = self.soft_argmax(similarity)
        points = torch.stack([best, self.soft_argmax(similarity, covered), location[..., :2]], dim=-2)
        anchors = torch.cat([(2.0 * points - 1.0) * self.point_scale + self.point_shift, free_action[..., None, :]], dim=-2)
        logits = self.gate(torch.cat([latent, match_distance.detach()[..., None]], dim=-1))
        return anchors, logits

    def forward(
        self,
        latent: torch.Tensor,
        free_action: torch.Tensor,
        similarity: torch.Tensor,
        location: torch.Tensor,
        match_distance: torch.Tensor,
        best: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``(..., 2)`` mean ``(x, y)`` absolute action: the gate's most likely anchor plus the
        offset (arguments as in :meth:`candidates`).

        The choice is hard: a probability-weighted *average* of two candidates is a point between
        them, which is exactly the regression-to-the-mean failure this head exists to avoid. The
        gate is therefore trained by classification during imitation (see
        :func:`matchenv.agents.imitation.imitation_losses`); PPO's gradient reaches the chosen anchor
        (through the similarity map, hence the CNN) and the offset, not the choice.
        """
        anchors, logits = self.candidates(latent, free_action, similarity, location, match_distance, best)
        # The chosen anchor as a one-hot weighted sum (exactly that anchor: the others are finite
        # and weighted by 0): a gather of a batch-sized index exports to ONNX as a dozen shape
        # operations, and the fused search graph runs this at every window.
        choice = F.one_hot(logits.argmax(dim=-1), len(self.ANCHORS)).to(anchors.dtype)
        chosen = (anchors * choice[..., None]).sum(dim=-2)
        return chosen + self.offset(latent)


class SearchLstmPolicy(RecurrentActorCriticPolicy):
    """Recurrent actor-critic for ``TemplateSearch``: the design card's agent.

    - features: :class:`~matchenv.agents.siamese.SearchFeaturesExtractor` -- one siamese CNN embeds the query
      and the window (shared weights); the LSTM input is ``[query_emb, window_emb, location, trials_left]``;
    - an LSTM (``lstm_hidden_size`` units) drives the actor (a Gaussian over the next window for
      ``Box`` actions, categorical for ``Discrete``) and, through its own LSTM, the critic;
    - :attr:`match_head`: the auxiliary contrastive head on the query/window embeddings. It is
      trained from the environment's IoU labels by the training loop; the action and value
      computations never see those labels (they only take observations).

    The embeddings of the most recent forward pass are kept in :attr:`last_embeddings` so that
    the auxiliary loss reuses the same CNN pass as the PPO or imitation loss.

    With ``pointer=True`` (needs the ``overview`` observation and ``Box`` actions) the actor's
    ``(x, y)`` mean comes from a :class:`PointerHead` that picks among similarity-map candidates;
    ``pointer_window_fraction`` is its starting guess of the window side as a fraction of the
    reference's (``train/ppo_lstm.py`` measures it on training pairs).

    Defaults differ from SB3's for speed and for this task: a 128-unit LSTM, one 64-unit layer
    in each head, and a small initial exploration noise (``log_std_init=-1.5``: std 0.22 in
    action units, about 8 px on a 100x100 reference) because a success needs the final window
    within about 9 px of the target.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        lr_schedule,
        net_arch: Optional[Any] = None,
        lstm_hidden_size: int = 128,
        log_std_init: float = -1.5,
        features_extractor_class: type = SearchFeaturesExtractor,
        match_projection_dim: int = 32,
        pointer: bool = False,
        pointer_window_fraction: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if net_arch is None:
            net_arch = dict(pi=[64], vf=[64])
        if pointer and "overview" not in observation_space.spaces:
            raise ValueError("pointer=True reads the similarity map: create the env with overview_size=... (the overview observation)")
        if pointer and not isinstance(action_space, spaces.Box):
            raise ValueError(f"pointer=True needs continuous 'absolute' actions, got {action_space}")
        self.match_projection_dim = match_projection_dim
        self.pointer = bool(pointer)
        self.pointer_window_fraction = float(pointer_window_fraction)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            lstm_hidden_size=lstm_hidden_size,
            log_std_init=log_std_init,
            features_extractor_class=features_extractor_class,
            **kwargs,
        )

    def _build(self, lr_schedule) -> None:
        # The match head must exist before the optimizer is created (in super()._build) so it trains.
        self.match_head = MatchHead(self.features_extractor.cnn.embedding_dim, self.match_projection_dim)
        super()._build(lr_schedule)
        # Created after the MLP (it needs its latent size); sb3-contrib builds the optimizer again
        # once the LSTMs exist, so these parameters train too.
        self.pointer_head = None
        if self.pointer:
            self.pointer_head = PointerHead(
                self.mlp_extractor.latent_dim_pi, self.features_extractor.map_size, self.pointer_window_fraction
            )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(match_projection_dim=self.match_projection_dim, pointer=self.pointer, pointer_window_fraction=self.pointer_window_fraction)
        return data

    def head_mean(
        self,
        latent_pi: torch.Tensor,
        similarity: torch.Tensor,
        location: torch.Tensor,
        distance: Callable[[], torch.Tensor],
        best: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Mean action (or logits) ``(..., A)`` from the actor latent ``(..., latent_dim_pi)``: the
        action net, its ``(x, y)`` replaced by the pointer head's choice when there is one.

        :param similarity: ``(..., h' * w')`` (``(..., 0)`` without an overview) and
            :param location: ``(..., 4)``: what the pointer head reads.
        :param distance: returns the match head's ``(...,)`` query/window distances; called only
            by a pointer head (a search computes them its own way, see :class:`PolicyStep`).
        :param best: the pointer head's best cell if already computed (:class:`SearchConstants`).
        """
        out = self.action_net(latent_pi)
        if self.pointer_head is None:
            return out
        xy = self.pointer_head(latent_pi, out[..., :2], similarity, location, distance(), best)
        return torch.cat([xy, out[..., 2:]], dim=-1)

    def action_mean(self, latent_pi: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """:meth:`head_mean` for the actor latent ``(..., latent_dim_pi)`` and the features
        ``(..., features_dim)`` of the same steps."""
        parts = self.features_extractor.feature_slices(features)
        return self.head_mean(latent_pi, parts["similarity"], parts["location"],
                              lambda: self.match_head(parts["query_emb"], parts["window_emb"]))

    def pointer_candidates(
        self, latent_pi: torch.Tensor, out: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`PointerHead.candidates` for the actor latent, its ``action_net`` output ``out`` and
        the features of the same steps."""
        parts = self.features_extractor.feature_slices(features)
        distance = self.match_head(parts["query_emb"], parts["window_emb"])
        return self.pointer_head.candidates(latent_pi, out[..., :2], parts["similarity"], parts["location"], distance)

    def _get_action_dist_from_latent(self, latent_pi: torch.Tensor):
        if self.pointer_head is None:
            return super()._get_action_dist_from_latent(latent_pi)
        # SB3 passes only the latent; the features of the same forward pass were kept by the extractor.
        mean = self.action_mean(latent_pi, self.features_extractor.last_features)
        return self.action_dist.proba_distribution(mean, self.log_std)

    @property
    def last_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(query_emb, window_emb)``, each ``(N, embedding_dim)``, from the latest features pass."""
        return self.features_extractor.last_embeddings

    def match_distance(self, query_emb: torch.Tensor, window_emb: torch.Tensor) -> torch.Tensor:
        """``(N,)`` distances of the match head; small means the window matches the query."""
        return self.match_head(query_emb, window_emb)

    def match_loss(self, query_emb: torch.Tensor, window_emb: torch.Tensor, label: torch.Tensor,
                   margin: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The contrastive loss (:func:`contrastive_loss`) of ``(N, E)`` labelled windows and the
        match head's accuracy on them (no gradient; a window counts as a match where its distance
        is under ``margin / 2``). :param label: ``(N,)`` float, 1 for a match, 0 for none."""
        distance = self.match_distance(query_emb, window_emb)
        with torch.no_grad():
            accuracy = ((distance < margin / 2).float() == label).float().mean()
        return contrastive_loss(distance, label, margin), accuracy

    def actor_step(
        self, features: torch.Tensor, lstm_state: Optional[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One recurrent step of the actor for a batch of episodes.

        :param features: ``(B, features_dim)`` LSTM inputs of this step.
        :param lstm_state: ``(h, c)`` ``(layers, B, hidden)`` from the previous step, or ``None``
            at an episode start.
        :return: ``(B, A)`` action means (or logits for discrete actions) and the new ``(h, c)``.
        """
        lstm = self.lstm_actor
        if lstm.num_layers != 1:
            latent, lstm_state = lstm(features.unsqueeze(0), lstm_state)
            return self.action_mean(self.mlp_extractor.forward_actor(latent[0]), features), lstm_state
        # A one-layer actor decides as the searchers do (PolicyStep): one place holds the decision.
        parts = self.features_extractor.feature_slices(features)
        if lstm_state is None:
            h = c = features.new_zeros(features.shape[0], lstm.hidden_size)
        else:
            h, c = lstm_state[0][0], lstm_state[1][0]
        mean, h, c = PolicyStep(self)(parts["query_emb"], parts["window_emb"], parts["location"], parts["trials_left"],
                                      parts["similarity"], h, c)
        return mean, (h.unsqueeze(0), c.unsqueeze(0))


class SearchConstants(NamedTuple):
    """What :class:`PolicyStep` computes once per search (:meth:`PolicyStep.start`), not per window.

    ``bias`` ``(N, 4 * hidden)``: the LSTM's input product with the query embedding and the
    similarity map, plus both biases; ``step_weight`` ``(2 E + 5 + hidden, 4 * hidden)``: the
    input weights of what changes at every window (window embedding, location, trials left) over
    the recurrent weights, so that a decision is one matrix product; ``query_projection``
    ``(N, projection_dim)``: the query in the match head's space; ``similarity`` ``(N, h' * w')``
    (or ``(N, 0)``); ``best`` ``(N, 2)``: the pointer head's best cell, or ``None`` without one.
    """

    bias: torch.Tensor
    step_weight: torch.Tensor
    query_projection: torch.Tensor
    similarity: torch.Tensor
    best: Optional[torch.Tensor]


class PolicyStep(nn.Module):
    """One decision of the actor from precomputed embeddings: ``(mean, h, c)``.

    The one place the actor's decision is written: :meth:`SearchLstmPolicy.actor_step` (rollouts
    and evaluation) calls it, the searchers run it exported (:mod:`matchenv.agents.policy_runtime`: ONNX
    Runtime on the CPU, the module itself on a GPU), and the fused search graph
    (:mod:`matchenv.agents.fused_search`) unrolls it. It computes what SB3's training forward computes
    (the LSTM, the actor MLP, :meth:`SearchLstmPolicy.head_mean`) from the parts of the features
    :meth:`~matchenv.agents.siamese.SearchFeaturesExtractor.combine` builds, equal up to float rounding
    (tested). A search calls :meth:`start` once (what every decision shares), then :meth:`decide`
    per window; calling the module does both.

    :param policy: a trained policy with a one-layer actor LSTM.
    """

    def __init__(self, policy: SearchLstmPolicy) -> None:
        super().__init__()
        if policy.lstm_actor.num_layers != 1:
            raise ValueError("PolicyStep supports one-layer actor LSTMs")
        self.policy = policy

    def start(self, query_emb: torch.Tensor, similarity: torch.Tensor) -> SearchConstants:
        """What every decision of the searches of ``(N, E)`` query embeddings with ``(N, h' * w')``
        (or ``(N, 0)``) similarity maps shares (see :class:`SearchConstants`). The fused search
        graph unrolls every decision of a search, so what is computed here once is ``max_trials``
        times fewer operations there."""
        # The embedding size as a Python number (not query_emb.shape[1]): in an exported graph the
        # weight slices below are then constants, folded once, not computed at every call.
        lstm, e = self.policy.lstm_actor, self.policy.features_extractor.cnn.embedding_dim
        # LSTM input rows: query (E), window (E), location (4), trials left (1), similarity.
        w_ih = lstm.weight_ih_l0
        bias = query_emb @ w_ih[:, :e].T + lstm.bias_ih_l0 + lstm.bias_hh_l0
        if self.policy.features_extractor.map_size is not None:  # (a fixed choice: no branch in a traced graph)
            bias = bias + similarity @ w_ih[:, 2 * e + 5:].T
        head = self.policy.pointer_head
        best = None if head is None else head.soft_argmax(similarity)
        return SearchConstants(bias, self.step_weight(), self.policy.match_head.projection(query_emb), similarity, best)

    def step_weight(self) -> torch.Tensor:
        """:attr:`SearchConstants.step_weight`: the same for every search (a graph that takes the
        other constants as inputs computes it from the weights, and its runtime folds it once)."""
        # The embedding size as a Python number (not a tensor's shape): see start().
        lstm, e = self.policy.lstm_actor, self.policy.features_extractor.cnn.embedding_dim
        return torch.cat([lstm.weight_ih_l0[:, e:2 * e + 5], lstm.weight_hh_l0], dim=1).T

    def decide(
        self,
        constants: SearchConstants,
        window_emb: torch.Tensor,
        location: torch.Tensor,
        trials_left: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decision of the searches :meth:`start` began: ``(N, A)`` mean and the new ``h``, ``c``.

        :param window_emb: ``(N, E)``; ``location`` ``(N, 4)``; ``trials_left`` ``(N, 1)``.
        :param h: ``(N, hidden)`` and ``c``: the LSTM state (zeros at the first decision).
        """
        k = self.policy.lstm_actor.hidden_size
        # torch.lstm_cell written out (gates i, f, g, o): its ONNX export splits the gates with a
        # chunk ONNX cannot size, and the fused search exports this step.
        z = constants.bias + torch.cat([window_emb, location, trials_left, h], dim=1) @ constants.step_weight
        i, f, g, o = torch.sigmoid(z[:, :k]), torch.sigmoid(z[:, k:2 * k]), torch.tanh(z[:, 2 * k:3 * k]), torch.sigmoid(z[:, 3 * k:])
        c = f * c + i * g
        h = o * torch.tanh(c)
        policy = self.policy
        mean = policy.head_mean(policy.mlp_extractor.forward_actor(h), constants.similarity, location,
                                lambda: policy.match_head.projected_distance(constants.query_projection, window_emb),
                                constants.best)
        return mean, h, c

    def forward(
        self,
        query_emb: torch.Tensor,
        window_emb: torch.Tensor,
        location: torch.Tensor,
        trials_left: torch.Tensor,
        similarity: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decision from scratch (:meth:`start`, then :meth:`decide`).

        :param similarity: ``(N, h' * w')``, or ``(N, 0)`` for a policy without an overview.
        :param h: ``(N, hidden)`` and ``c``: the LSTM state (zeros at the first decision)."""
        return self.decide(self.start(query_emb, similarity), window_emb, location, trials_left, h, c)
