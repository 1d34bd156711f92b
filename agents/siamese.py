"""The siamese CNN that embeds the query and the current window with shared weights."""

from __future__ import annotations

from typing import Sequence

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class SiameseCNN(nn.Module):
    """Five Conv-ReLU layers and global average pooling: one embedding per image.

    The defaults (channels 8-16-32-32-32, strides 2-2-1-2-1, 3x3 kernels) were chosen for CPU
    speed on 28x28 inputs: the CNN's backward pass dominates training time.

    :param in_channels: image channels (1 for MNIST, 3 for photographs).
    :param channels: output channels of the five conv layers.
    :param strides: strides of the five conv layers.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (8, 16, 32, 32, 32),
        strides: Sequence[int] = (2, 2, 1, 2, 1),
    ) -> None:
        super().__init__()
        if len(channels) != 5 or len(strides) != 5:
            raise ValueError(f"the siamese CNN has five conv layers: got {len(channels)} channels, {len(strides)} strides")
        layers: list[nn.Module] = []
        prev = in_channels
        for out, stride in zip(channels, strides):
            layers += [nn.Conv2d(prev, out, kernel_size=3, stride=stride, padding=1), nn.ReLU()]
            prev = out
        self.convs = nn.Sequential(*layers)
        self.embedding_dim = int(channels[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """:param images: ``(N, C, H, W)`` float in ``[0, 1]``. :return: ``(N, embedding_dim)``."""
        return self.convs(images).mean(dim=(2, 3))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last conv layer before pooling: ``(N, embedding_dim, H / 8, W / 8)`` with the default strides."""
        return self.convs(images)


class SearchFeaturesExtractor(BaseFeaturesExtractor):
    """SB3 features extractor for ``TemplateSearch`` pixel observations.

    Embeds ``query`` and ``window`` with one :class:`SiameseCNN` (shared weights) and
    concatenates ``[query_emb, window_emb, location, trials_left]``:
    ``features_dim = 2 * embedding_dim + 5``. With an ``overview`` observation (the whole
    reference at a higher resolution) it also appends the **similarity map**: the cosine
    similarity of the query embedding with every cell of the overview's CNN feature map,
    flattened (``h' * w'`` more features). That map is where the query probably is: the policy
    reads its first window off it, and its gradient teaches the CNN features that localise.
    Works with SB3's ``MultiInputPolicy``
    (``policy_kwargs=dict(features_extractor_class=SearchFeaturesExtractor)``), whose default
    NatureCNN cannot take 28x28 images.

    SB3 has already divided uint8 images by 255 when ``normalize_images=True`` (the default).
    """

    def __init__(self, observation_space: spaces.Dict, **cnn_kwargs) -> None:
        for key in ("query", "window", "location", "trials_left"):
            if key not in observation_space.spaces:
                raise ValueError(f"SearchFeaturesExtractor needs a TemplateSearch pixel observation; missing {key!r}")
        in_channels = observation_space["query"].shape[0]
        cnn = SiameseCNN(in_channels=in_channels, **cnn_kwargs)
        extra = observation_space["location"].shape[0] + observation_space["trials_left"].shape[0]
        self.map_size: tuple[int, int] | None = None
        if "overview" in observation_space.spaces:
            with torch.no_grad():
                cells = cnn.feature_map(torch.zeros(1, *observation_space["overview"].shape)).shape[2:]
            self.map_size = (int(cells[0]), int(cells[1]))
            extra += self.map_size[0] * self.map_size[1]
        super().__init__(observation_space, features_dim=2 * cnn.embedding_dim + extra)
        self.cnn = cnn

        #: ``(query_emb, window_emb)`` of the latest :meth:`forward`, kept (with their graph) so an
        #: auxiliary loss can reuse this CNN pass instead of running a second one.
        self.last_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
        #: ``(N, features_dim)`` output of the latest :meth:`forward`/:meth:`combine`: SB3 hands the
        #: action distribution only the LSTM latent, a pointer head also needs the similarity map.
        self.last_features: torch.Tensor | None = None
        #: ``(overviews, cells)`` of the last no-gradient :meth:`overview_cells` call.
        self._inference_cells: tuple[torch.Tensor, torch.Tensor] | None = None
        #: where the location and the similarity map sit in the features (see :meth:`feature_slices`).
        self.location_start = 2 * cnn.embedding_dim

    def embed(self, observations: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Query and window embeddings, each ``(N, embedding_dim)``, from one batched CNN pass."""
        n = observations["query"].shape[0]
        both = self.cnn(torch.cat([observations["query"], observations["window"]], dim=0))
        return both[:n], both[n:]

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        query_emb, window_emb = self.embed(observations)
        similarity = None
        if self.map_size is not None:
            similarity = self.similarity_map(query_emb, observations["overview"])
        return self.combine(query_emb, window_emb, observations, similarity)

    def similarity_map(self, query_emb: torch.Tensor, overview: torch.Tensor) -> torch.Tensor:
        """``(N, h' * w')`` cosine similarity of each query embedding with its overview's feature cells.

        :param query_emb: ``(N, embedding_dim)``.
        :param overview: ``(N, C, H', W')`` float images in ``[0, 1]``.
        """
        return self.cell_similarity(query_emb, self.overview_cells(overview))

    @staticmethod
    def cell_similarity(query_emb: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """``(N, h' * w')`` cosine similarity of ``(N, E)`` query embeddings with ``(N, E, h', w')``
        overview feature maps (:meth:`similarity_map` on maps computed elsewhere, e.g. the searcher's runtime)."""
        return torch.nn.functional.cosine_similarity(cells, query_emb[:, :, None, None], dim=1, eps=1e-6).flatten(1)

    def overview_cells(self, overview: torch.Tensor) -> torch.Tensor:
        """``(N, E, h', w')`` CNN feature maps of the overviews, one CNN pass per run of equal rows.

        The overview is the same at every step of an episode, and PPO's minibatches keep an
        episode's steps together: running the CNN on each run of identical overviews once (and
        sharing the result, gradients included) removes most of the overview's cost in training.
        Without gradients (rollouts), the maps of the last batch are also reused while the same
        batch of overviews comes back, i.e. for every step after the first of a batch of episodes.
        """
        if not torch.is_grad_enabled():
            # Rollouts (DAgger, PPO's collection, evaluation) show the same overviews at every step
            # of a batch of episodes: keep the last batch's maps and reuse them while it repeats.
            cached = self._inference_cells
            if cached is not None and cached[0].shape == overview.shape and torch.equal(cached[0], overview):
                return cached[1]
            cells = self._cells_per_run(overview)
            self._inference_cells = (overview, cells)
            return cells
        return self._cells_per_run(overview)

    def _cells_per_run(self, overview: torch.Tensor) -> torch.Tensor:
        n = overview.shape[0]
        if n > 1:
            repeats = (overview[1:] == overview[:-1]).flatten(1).all(dim=1)
            if bool(repeats.any()):
                starts = torch.cat([repeats.new_ones(1), ~repeats])
                return self.cnn.feature_map(overview[starts])[torch.cumsum(starts, 0) - 1]
        return self.cnn.feature_map(overview)

    def combine(
        self,
        query_emb: torch.Tensor,
        window_emb: torch.Tensor,
        observations: dict[str, torch.Tensor],
        similarity: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Features from precomputed embeddings (lets a caller embed each episode's query and
        overview once): ``similarity`` is :meth:`similarity_map`'s output, needed with an overview."""
        self.last_embeddings = (query_emb, window_emb)
        parts = [query_emb, window_emb, observations["location"], observations["trials_left"]]
        if self.map_size is not None:
            if similarity is None:
                raise ValueError("this extractor has an overview: pass combine() its similarity_map")
            parts.append(similarity)
        self.last_features = torch.cat(parts, dim=1)
        return self.last_features

    def feature_slices(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split features ``(..., features_dim)`` back into ``query_emb``, ``window_emb``,
        ``location`` ``(..., 4)``, ``trials_left`` ``(..., 1)`` and ``similarity`` ``(..., h' * w')``
        (``(..., 0)`` without an overview)."""
        e, loc = self.cnn.embedding_dim, self.location_start
        cells = 0 if self.map_size is None else self.map_size[0] * self.map_size[1]
        return {"query_emb": features[..., :e], "window_emb": features[..., e:loc], "location": features[..., loc:loc + 4],
                "trials_left": features[..., loc + 4:loc + 5], "similarity": features[..., features.shape[-1] - cells:]}
