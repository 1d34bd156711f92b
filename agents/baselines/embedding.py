"""The exhaustive upper bound of the agent's learned features: embed every window, pick the closest.

The search agent looks at ``T`` windows (6 by default) and judges each one with its siamese CNN
(and match head). This matcher spends the opposite budget: it embeds *every* query-size window of
the reference with the same CNN and answers with the window whose embedding is nearest the
query's. It isolates how good the learned features are from how well the policy searches: the
agent cannot beat it by having better features, only by being cheaper. It is the siamese
matching of Bromley et al., "Signature Verification using a Siamese Time Delay Neural Network",
NIPS 1993 (shared weights, distance of embeddings), applied as a sliding window.

Shared helpers for matchers built on the agent's CNN (:mod:`matchenv.agents.baselines.qatm` uses them) live
here too: loading a trained checkpoint, and turning images into the CNN's input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import cv2
import numpy as np
import torch

from matchenv.agents.baselines.base import Matcher, MatchResult, check_pair
from matchenv.agents.siamese import SiameseCNN
from matchenv.geometry import resize_image

#: :attr:`features` label of a matcher built on a CNN that did not come from a trained checkpoint.
#: Results of such a matcher test the mechanics only and must never be reported as the method's.
UNTRAINED = "untrained (random init): testing only"

#: ``(query_emb, window_emb) -> distance``: ``(N, E), (N, E) -> (N,)``, small means "matches".
DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def load_agent_policy(path: Union[str, Path], device: str = "cpu"):
    """Load the :class:`~matchenv.agents.policy.SearchLstmPolicy` of a checkpoint written by ``train/ppo_lstm.py``.

    :param path: ``best.zip`` / ``last.zip`` of a training run.
    :return: the policy (in eval mode) on ``device``.
    :raises FileNotFoundError: when ``path`` does not exist.
    """
    from matchenv.agents.ppo import load_trained_model  # heavy (sb3-contrib): only when a checkpoint is loaded

    return load_trained_model(path, device=device).policy.eval()


def cnn_input(image: np.ndarray, in_channels: int, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """A channel-last uint8 image as the siamese CNN's input.

    :param image: ``(H, W, 1|3)`` uint8 (as returned by :func:`~matchenv.agents.baselines.base.check_pair`).
    :param in_channels: the CNN's input channels: colour is converted with ``BGR2GRAY`` for a
        grayscale CNN, grayscale repeated for a colour one.
    :return: ``(1, in_channels, H, W)`` float32 in ``[0, 1]``: SB3 divides uint8 observations by
        255 before the CNN, so the CNN was trained on that range.
    """
    if in_channels == 1 and image.shape[2] == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2GRAY)[:, :, None]
    elif in_channels == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] != in_channels:
        raise ValueError(f"cannot feed a {image.shape[2]}-channel image to a {in_channels}-channel CNN")
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(device=device, dtype=torch.float32)
    return tensor.div_(255.0).unsqueeze(0)


class EmbeddingSlidingWindow(Matcher):
    """Exhaustive sliding window in the siamese CNN's embedding space.

    Every window of the query's size (every ``stride`` pixels) is embedded with ``cnn`` and
    compared with the query's embedding, by Euclidean distance or by ``match_distance`` (the
    policy's contrastive match head, :meth:`~matchenv.agents.policy.SearchLstmPolicy.match_distance`).
    The answer is the window of least distance; ``score = -distance``.

    The CNN sees what the agent sees: images at its input resolution ``input_size``. A query of
    another size is resized to it, and the reference by the same factor first, so that the
    windows are crops of the rescaled reference (one resize of the reference instead of one per
    window); the box is mapped back to reference pixels. For Noisy MNIST the query is 28x28, the
    CNN's resolution, and nothing is resized.

    Use :meth:`from_checkpoint` for reportable results: it takes the trained agent's CNN and match
    head. Constructing it with any other CNN is for tests of the mechanics (:attr:`features` says so).

    :param cnn: the siamese CNN (``(N, C, h, w)`` in ``[0, 1]`` -> ``(N, E)``).
    :param stride: step between windows in (rescaled) reference pixels.
    :param match_distance: ``(query_emb, window_emb) -> (N,)`` distance, or ``None`` for Euclidean.
    :param input_size: ``(height, width)`` the CNN was trained at (the agent's query resolution).
    :param device: torch device for the CNN.
    :param chunk_size: at most this many windows per CNN batch, bounding memory
        (``chunk_size * C * h * w`` floats of windows plus the activations).
    :param features: provenance of ``cnn``, reported with results; :meth:`from_checkpoint` sets it.
    """

    name = "embedding-exhaustive"

    def __init__(
        self,
        cnn: SiameseCNN,
        stride: int = 1,
        match_distance: Optional[DistanceFn] = None,
        input_size: tuple[int, int] = (28, 28),
        device: Union[str, torch.device] = "cpu",
        chunk_size: int = 1024,
        features: str = UNTRAINED,
    ) -> None:
        if int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride}")
        if int(chunk_size) != chunk_size or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
        self.cnn = cnn.to(device)
        self.stride = int(stride)
        self.match_distance = match_distance
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.device = torch.device(device)
        self.chunk_size = int(chunk_size)
        self.features = features
        self.in_channels = int(next(m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)).in_channels)

    @classmethod
    def from_checkpoint(
        cls, path: Union[str, Path], use_match_head: bool = True, stride: int = 1, device: str = "cpu", chunk_size: int = 1024
    ) -> "EmbeddingSlidingWindow":
        """The matcher on a trained agent's CNN (and, by default, its contrastive match head).

        :param path: agent checkpoint (``best.zip``) written by ``train/ppo_lstm.py``.
        :param use_match_head: compare embeddings through the policy's match head (the distance
            the agent was trained to threshold) instead of raw Euclidean distance.
        """
        policy = load_agent_policy(path, device)
        return cls(
            policy.features_extractor.cnn,
            stride=stride,
            match_distance=policy.match_distance if use_match_head else None,
            input_size=tuple(policy.observation_space["query"].shape[1:]),
            device=device,
            chunk_size=chunk_size,
            features=f"trained agent CNN: {path}" + (" (+ match head)" if use_match_head else ""),
        )

    @torch.inference_mode()
    def distance_map(self, query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """Embedding distance of every window.

        :return: ``(nY, nX)`` float32 distances, entry ``[i, j]`` for the window whose top-left is
            ``(j * stride, i * stride)`` in the *rescaled* reference, and the ``(fy, fx)`` factors
            from reference pixels to rescaled pixels (``(1, 1)`` when the query is at the CNN's resolution).
        """
        q, r = check_pair(query, reference)
        in_h, in_w = self.input_size
        fy, fx = in_h / q.shape[0], in_w / q.shape[1]
        if (fy, fx) != (1.0, 1.0):
            # Rescale the reference so the query becomes in_h x in_w; never below the window size.
            size = (max(in_h, int(round(r.shape[0] * fy))), max(in_w, int(round(r.shape[1] * fx))))
            q, r = resize_image(q, (in_h, in_w)), resize_image(r, size)
        q_emb = self.cnn(cnn_input(q, self.in_channels, self.device))  # (1, E)
        ref = cnn_input(r, self.in_channels, self.device)
        # (1, C, nY, nX, h, w): a strided view of every window, no copy until a chunk is gathered.
        windows = ref.unfold(2, in_h, self.stride).unfold(3, in_w, self.stride)[0]
        n_y, n_x = windows.shape[1:3]
        rows = max(1, self.chunk_size // n_x)
        out = []
        for y0 in range(0, n_y, rows):
            chunk = windows[:, y0 : y0 + rows].permute(1, 2, 0, 3, 4).reshape(-1, ref.shape[1], in_h, in_w)
            w_emb = self.cnn(chunk)
            if self.match_distance is not None:
                out.append(self.match_distance(q_emb.expand(len(w_emb), -1), w_emb))
            else:
                out.append(torch.linalg.vector_norm(w_emb - q_emb, dim=1))
        return torch.cat(out).reshape(n_y, n_x).float().cpu().numpy(), (fy, fx)

    def locate(self, query: np.ndarray, reference: np.ndarray) -> MatchResult:
        """Find ``query`` in ``reference``: the window whose embedding is nearest the query's.

        :param query: ``(h, w[, C])`` uint8 template. :param reference: ``(H, W[, C])`` uint8 image.
        :return: box of the query's size in reference pixels, ``score = -distance``,
            ``evaluated`` = number of windows embedded.
        """
        dist, (fy, fx) = self.distance_map(query, reference)
        i, j = np.unravel_index(int(np.argmin(dist)), dist.shape)
        h, w = query.shape[:2]
        img_h, img_w = reference.shape[:2]
        # Back to reference pixels; rounding of the rescaled size can put the last window a
        # fraction of a pixel past the border, so keep the box inside.
        x = min(j * self.stride / fx, img_w - w)
        y = min(i * self.stride / fy, img_h - h)
        return MatchResult(
            box=np.array([x, y, x + w, y + h], dtype=np.float64), score=float(-dist[i, j]), evaluated=int(dist.size)
        )

    def __repr__(self) -> str:
        metric = "match head" if self.match_distance is not None else "euclidean"
        return f"EmbeddingSlidingWindow(stride={self.stride}, metric={metric!r}, features={self.features!r})"
