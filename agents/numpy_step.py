"""The actor's per-window decision in numpy, for fast inference on small batches.

At batch 1 a decision of :class:`~agents.policy.SearchLstmPolicy` is a few dozen tiny tensor
operations (an LSTM cell, a 64-unit MLP, the pointer head's arg-max and soft-argmax over a 13x13
map). PyTorch spends 5-10 us of dispatch per operation, numpy 1-2 us, so the same arithmetic on
the same float32 weights runs several times faster in numpy. :class:`NumpyActorStep` copies the
trained weights once and reproduces :meth:`SearchLstmPolicy.actor_step` (tested to agree to float
rounding); the CNN runs in one of :mod:`agents.cnn_runtime`'s runtimes.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from torch import nn

from agents.policy import SearchLstmPolicy


def _dense(module: nn.Module) -> list[tuple[str, Optional[np.ndarray], Optional[np.ndarray]]]:
    """A ``Sequential`` of ``Linear``/``Tanh``/``ReLU`` (or one ``Linear``) as numpy layers."""
    layers = []
    for m in (module if isinstance(module, nn.Sequential) else [module]):
        if isinstance(m, nn.Linear):
            bias = np.zeros(m.out_features, np.float32) if m.bias is None else m.bias.detach().cpu().numpy().copy()
            layers.append(("linear", np.ascontiguousarray(m.weight.detach().cpu().numpy().T), bias))
        elif isinstance(m, (nn.Tanh, nn.ReLU)):
            layers.append((type(m).__name__.lower(), None, None))
        else:
            raise ValueError(f"NumpyActorStep supports Linear, Tanh and ReLU layers, got {type(m).__name__}")
    return layers


def _apply(layers, x: np.ndarray) -> np.ndarray:
    for kind, weight, bias in layers:
        if kind == "linear":
            x = x @ weight + bias
        elif kind == "tanh":
            x = np.tanh(x)
        else:
            x = np.maximum(x, 0.0)
    return x


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)  # = 1 / (1 + exp(-x)), without overflow for large |x|


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class NumpyActorStep:
    """One decision of a trained policy's actor in numpy: ``(mean, h, c)`` from embeddings.

    Same inputs and outputs as :class:`agents.policy.PolicyStep`, as float32 arrays.
    Supports one-layer actor LSTMs and MLPs of ``Linear``/``Tanh``/``ReLU`` layers (what
    ``SearchLstmPolicy`` builds); raises ``ValueError`` otherwise.

    :param policy: the trained policy; its weights are copied (later training does not change them).
    """

    def __init__(self, policy: SearchLstmPolicy) -> None:
        lstm = policy.lstm_actor
        if lstm.num_layers != 1 or lstm.bias is False:
            raise ValueError("NumpyActorStep supports one-layer actor LSTMs with biases")
        get = lambda t: t.detach().cpu().numpy().astype(np.float32)  # noqa: E731
        n = self.hidden = lstm.hidden_size
        # Gate columns reordered from torch's (i, f, g, o) to (i, f, o, g): one sigmoid call then
        # covers three gates.
        order = np.concatenate([np.arange(0, 2 * n), np.arange(3 * n, 4 * n), np.arange(2 * n, 3 * n)])
        self.w_ih = np.ascontiguousarray(get(lstm.weight_ih_l0).T[:, order])
        self.w_hh = np.ascontiguousarray(get(lstm.weight_hh_l0).T[:, order])
        self.b = (get(lstm.bias_ih_l0) + get(lstm.bias_hh_l0))[order]
        # The input rows that change at every window (window, location, trials left; then h),
        # stacked so that a decision is one matrix product; rows: query (e), window (e),
        # location (4), trials_left (1), similarity.
        e = policy.features_extractor.cnn.embedding_dim
        self.w_step = np.ascontiguousarray(np.concatenate([self.w_ih[e:2 * e + 5], self.w_hh], axis=0))
        self.mlp = _dense(policy.mlp_extractor.policy_net)  # an empty Sequential gives no layers
        self.action = _dense(policy.action_net)
        self.projection = _dense(policy.match_head.projection)  # the match head (verifier)
        self.pointer = policy.pointer_head is not None
        if self.pointer:
            head = policy.pointer_head
            self.sharpness = float(head.log_sharpness.detach().exp())
            self.cell_centres = get(head.cell_centres)
            self.cell_grid = head.cell_grid.detach().cpu().numpy()
            # Each cell's 3x3 neighbourhood as cell indices, padded with index `cells` (a dummy
            # cell with logit -inf and centre 0): the soft-argmax then reads 9 cells, not all.
            cells = len(self.cell_grid)
            near = np.abs(self.cell_grid[:, None, :] - self.cell_grid[None, :, :]).max(axis=-1) <= 1
            self.neighbours = np.full((cells, 9), cells, dtype=np.int64)
            for cell in range(cells):
                found = np.flatnonzero(near[cell])
                self.neighbours[cell, :len(found)] = found
            self.cell_x, self.cell_y = self.cell_centres[:, 0].copy(), self.cell_centres[:, 1].copy()
            self.padded_centres = np.concatenate([self.cell_centres, np.zeros((1, 2), np.float32)])
            self.point_scale, self.point_shift = get(head.point_scale), get(head.point_shift)
            self.gate = _dense(head.gate)
            self.offset = _dense(head.offset)

    def start(self, query_emb: np.ndarray, similarity: np.ndarray) -> "NumpySearch":
        """Begin searches for ``(N, E)`` query embeddings and their ``(N, h' * w')`` (or ``(N, 0)``)
        similarity maps: what is constant over a search is computed here, once."""
        return NumpySearch(self, query_emb, similarity)

    def __call__(
        self,
        query_emb: np.ndarray,
        window_emb: np.ndarray,
        location: np.ndarray,
        trials_left: np.ndarray,
        similarity: np.ndarray,
        h: np.ndarray,
        c: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One decision with :class:`agents.policy.PolicyStep`'s signature (float32 arrays):
        ``(N, A)`` mean and the new ``h``, ``c``."""
        search = self.start(query_emb, similarity)
        search.h, search.c = h, c
        mean = search.step(window_emb, location, trials_left)
        return mean, search.h, search.c

    def _soft_argmax(self, logits: np.ndarray) -> np.ndarray:
        """:meth:`agents.policy.PointerHead.soft_argmax` on already sharpened (and suppressed)
        ``(N, cells)`` logits: the softmax over the arg-max's 3x3 neighbourhood (the cells
        outside it have weight exactly 0 in PyTorch's version too)."""
        n, cells = logits.shape
        near = self.neighbours[logits.argmax(axis=1)]  # (N, 9)
        padded = np.empty((n, cells + 1), np.float32)
        padded[:, :cells], padded[:, cells] = logits, -np.inf
        weights = _softmax(padded.ravel()[near + (cells + 1) * np.arange(n)[:, None]])
        return (weights[:, :, None] * self.padded_centres[near]).sum(axis=1)

    def _anchor(self, points: np.ndarray) -> np.ndarray:
        return (2.0 * points - 1.0) * self.point_scale + self.point_shift


class NumpySearch:
    """The running state of ``N`` searches: the LSTM state and the per-search constants.

    The LSTM input is ``[query_emb, window_emb, location, trials_left, similarity]``; the query
    and similarity parts of its product with the input weights (and the biases) are the same at
    every window, so they are computed once; so are the query's projection in the match head and,
    with a pointer head, the "best cell" candidate.
    """

    def __init__(self, step: NumpyActorStep, query_emb: np.ndarray, similarity: np.ndarray) -> None:
        self.s = step
        n, e = query_emb.shape
        w = step.w_ih
        self.constant = query_emb @ w[:e] + step.b
        if similarity.shape[1]:
            self.constant = self.constant + similarity @ w[2 * e + 5:]
        self.h = np.zeros((n, step.hidden), np.float32)
        self.c = np.zeros((n, step.hidden), np.float32)
        self.query_projection = _apply(step.projection, query_emb)
        if step.pointer:
            self.logits = similarity * np.float32(step.sharpness)
            self.best = step._anchor(step._soft_argmax(self.logits))

    def step(self, window_emb: np.ndarray, location: np.ndarray, trials_left) -> np.ndarray:
        """One decision: ``(N, A)`` mean action for the windows just seen.

        :param window_emb: ``(N, E)``. :param location: ``(N, 4)`` the current windows.
        :param trials_left: ``(N, 1)`` array, or one number for every search.
        """
        s, n = self.s, self.s.hidden
        if np.ndim(trials_left) == 0:
            trials = np.full((len(window_emb), 1), trials_left, np.float32)
        else:
            trials = np.asarray(trials_left, np.float32).reshape(-1, 1)
        z = self.constant + np.concatenate([window_emb, location, trials, self.h], axis=1) @ s.w_step
        gates = _sigmoid(z[:, :3 * n])  # i, f, o
        self.c = gates[:, n:2 * n] * self.c + gates[:, :n] * np.tanh(z[:, 3 * n:])
        self.h = gates[:, 2 * n:] * np.tanh(self.c)
        latent = _apply(s.mlp, self.h)
        out = _apply(s.action, latent)
        if not s.pointer:
            return out
        return np.concatenate([self._pointer(latent, out[:, :2], window_emb, location), out[:, 2:]], axis=1)

    def distance(self, window_emb: np.ndarray) -> np.ndarray:
        """``(M,)`` match-head distances (:class:`agents.policy.MatchHead`) of ``(M, E)`` window
        embeddings to the searches' queries, ``M`` a multiple of ``N`` (several trials' windows
        stacked trial by trial): small means the window matches."""
        query = self.query_projection
        if len(window_emb) != len(query):
            query = np.tile(query, (len(window_emb) // len(query), 1))
        diff = query - _apply(self.s.projection, window_emb)
        return np.sqrt((diff * diff).sum(axis=1) + 1e-8)

    def _pointer(self, latent, free, window_emb, location) -> np.ndarray:
        """:meth:`agents.policy.PointerHead.forward` with the match head's distance."""
        s = self.s
        distance = self.distance(window_emb)
        covered = ((np.abs(s.cell_x - location[:, 0:1]) < location[:, 2:3] / 2)
                   & (np.abs(s.cell_y - location[:, 1:2]) < location[:, 3:4] / 2))
        elsewhere = s._anchor(s._soft_argmax(self.logits - covered * np.float32(1e4)))
        stay = s._anchor(location[:, :2])
        anchors = np.stack([self.best, elsewhere, stay, free], axis=1)
        gate = _apply(s.gate, np.concatenate([latent, distance[:, None]], axis=1))
        return anchors[np.arange(len(anchors)), gate.argmax(axis=1)] + _apply(s.offset, latent)
