"""The recurrent search policy: siamese CNN features -> LSTM -> actor/critic, plus a match head."""

from __future__ import annotations

from typing import Any, Optional

import torch
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from torch import nn
from torch.nn import functional as F

from agents.siamese import SearchFeaturesExtractor


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
        diff = self.projection(query_emb) - self.projection(window_emb)
        return torch.sqrt(diff.pow(2).sum(dim=1) + 1e-8)


class SearchLstmPolicy(RecurrentActorCriticPolicy):
    """Recurrent actor-critic for ``TemplateSearch``: the design card's agent.

    - features: :class:`~agents.siamese.SearchFeaturesExtractor` -- one siamese CNN embeds the query
      and the window (shared weights); the LSTM input is ``[query_emb, window_emb, location, trials_left]``;
    - an LSTM (``lstm_hidden_size`` units) drives the actor (a Gaussian over the next window for
      ``Box`` actions, categorical for ``Discrete``) and, through its own LSTM, the critic;
    - :attr:`match_head`: the auxiliary contrastive head on the query/window embeddings. It is
      trained from the environment's IoU labels by the training loop; the action and value
      computations never see those labels (they only take observations).

    The embeddings of the most recent forward pass are kept in :attr:`last_embeddings` so that
    the auxiliary loss reuses the same CNN pass as the PPO or imitation loss.

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
        **kwargs: Any,
    ) -> None:
        if net_arch is None:
            net_arch = dict(pi=[64], vf=[64])
        self.match_projection_dim = match_projection_dim
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

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(match_projection_dim=self.match_projection_dim)
        return data

    @property
    def last_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(query_emb, window_emb)``, each ``(N, embedding_dim)``, from the latest features pass."""
        return self.features_extractor.last_embeddings

    def match_distance(self, query_emb: torch.Tensor, window_emb: torch.Tensor) -> torch.Tensor:
        """``(N,)`` distances of the match head; small means the window matches the query."""
        return self.match_head(query_emb, window_emb)

    def actor_step(
        self, features: torch.Tensor, lstm_state: Optional[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One recurrent step of the actor for a batch of episodes.

        :param features: ``(B, features_dim)`` LSTM inputs of this step.
        :param lstm_state: ``(h, c)`` from the previous step, or ``None`` at an episode start.
        :return: ``(B, A)`` action means (or logits for discrete actions) and the new ``(h, c)``.
        """
        lstm = self.lstm_actor
        if lstm.num_layers != 1:
            latent, lstm_state = lstm(features.unsqueeze(0), lstm_state)
            return self.action_net(self.mlp_extractor.forward_actor(latent[0])), lstm_state
        # One step of a one-layer LSTM as an LSTM cell: the same arithmetic (equal up to float
        # rounding) at a quarter of nn.LSTM's per-call overhead, which dominates at batch 1.
        if lstm_state is None:
            zeros = features.new_zeros(features.shape[0], lstm.hidden_size)
            h, c = zeros, zeros
        else:
            h, c = lstm_state[0][0], lstm_state[1][0]
        h, c = torch.lstm_cell(features, (h, c), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
        return self.action_net(self.mlp_extractor.forward_actor(h)), (h.unsqueeze(0), c.unsqueeze(0))
