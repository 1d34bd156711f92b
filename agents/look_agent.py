"""The photograph agent: a sequential search that starts from the learned look.

The design card's search for photographs. The agent looks at the whole reference once -- the
learned look's first look (:class:`~matchenv.agents.multiscale_look.LookSearcher`: the query's features
correlated with the reference's over a pyramid of target sizes) -- and takes its best
*candidates* (local maxima of the score maps that do not overlap). It then places up to
``max_trials`` windows one at a time. Each window is a candidate; placing it *compares* it with
the query at twice the look's resolution (the look's second-look comparison: an 80x80 patch
around the candidate scored against the query drawn at 40 px, at the window's centre and two
cells either way) at three sizes: the candidate's level and half a level smaller and larger. A
recurrent policy (a GRU) reads what the windows so far showed and chooses the next window; the
last window is the answer, moved onto the best-scoring cell and size of its own comparison. A
window placed again costs nothing (its comparison is kept), so "stay" is always available.

What is learned here is *where to look next and when to stop moving* -- which candidate to
compare, given the first look's scores and the comparisons so far. The features are
the look's (trained without labels, ``train/multiscale_look.py``); the policy is trained on
self-supervised pairs (``train/look_agent.py``): imitation of a teacher, then policy gradient on
the design card's sparse success reward (IoU > 0.5 of the answer) less a small cost per window
compared, so that it learns to stop moving once its first windows settle the answer.

Compared with the look's own hand-written second stage (compare the four best candidates at one
size when they are close, then resize the best), the agent chooses among more candidates, and
when to stop, from what it has seen: README "The photograph agent: a sequential search on the
learned look".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from matchenv.agents.exported_module import ExportedModule
from matchenv.agents.look_files import config_dict
from matchenv.agents.look_images import fill_colour
from matchenv.agents.look_network import STRIDE, LookConfig, MultiScaleLook
from matchenv.agents.look_peaks import box_at, clip_to_reference, refine_peak
from matchenv.agents.model_files import read_model_file, write_model_file
from matchenv.agents.multiscale_look import CLOSER_MARGIN, CLOSER_ZOOM, LookResult, LookSearcher
from matchenv.agents.searcher import MIN_QUERY_SIDE, prepare_image

#: per candidate: first-look score, its gap below the best candidate's, target side (fraction of
#: the working reference's shorter side), centre x and y (fractions of the width and height), present
CANDIDATE_FEATURES = 6
#: cells of one window's comparison map (the centre and CLOSER_MARGIN cells either way)
COMPARISON_CELLS = (2 * CLOSER_MARGIN + 1) ** 2


@dataclass(frozen=True)
class LookAgentConfig:
    """What the agent's policy sees and may do (saved with its weights).

    :param candidates: how many of the first look's best candidates the windows may go to.
    :param size_steps: the sizes each window is compared at, in half level steps of the look's
        pyramid around its candidate's level (``-1``: half a level smaller, ``0``: the
        candidate's level, ``1``: larger); the answer's size is placed among them.
    :param max_trials: windows per search; the last one is the answer.
    :param hidden: GRU units.
    """

    candidates: int = 8
    size_steps: tuple[int, ...] = (-1, 0, 1)
    max_trials: int = 6
    hidden: int = 64

    def __post_init__(self) -> None:
        if int(self.candidates) < 1:
            raise ValueError(f"candidates must be >= 1, got {self.candidates}")
        if len(self.size_steps) < 1 or len(set(self.size_steps)) != len(self.size_steps):
            raise ValueError(f"size_steps must be distinct half level steps, e.g. (-1, 0, 1), got {self.size_steps}")
        if int(self.max_trials) < 1:
            raise ValueError(f"max_trials must be >= 1, got {self.max_trials}")
        object.__setattr__(self, "size_steps", tuple(int(s) for s in self.size_steps))

    @property
    def windows(self) -> int:
        """Windows the policy chooses among: one per candidate."""
        return self.candidates

    @property
    def window_features(self) -> int:
        """Length of one window's feature vector (:func:`window_features`)."""
        sizes = len(self.size_steps)
        return CANDIDATE_FEATURES + 1 + sizes + sizes * COMPARISON_CELLS


def window_features(candidates: torch.Tensor, comparisons: torch.Tensor, seen: torch.Tensor,
                    config: LookAgentConfig) -> torch.Tensor:
    """What the policy knows about each window: ``(B, W, F)``.

    :param candidates: ``(B, K, CANDIDATE_FEATURES)`` the first look's candidates.
    :param comparisons: ``(B, W, S * COMPARISON_CELLS)`` every window's comparison scores at its
        ``S`` sizes; only those of ``seen`` windows are shown (the others are zeros, never read).
    :param seen: ``(B, W)`` bool, windows already placed.
    :return: per window ``[its candidate's features, seen, best comparison score per size,
        comparison scores]``, ``F = config.window_features``.
    """
    sizes = len(config.size_steps)
    shown = comparisons * seen[..., None].to(comparisons.dtype)  # (B, W, sizes * cells)
    best = shown.unflatten(-1, (sizes, COMPARISON_CELLS)).amax(dim=-1)
    return torch.cat([candidates, seen[..., None].to(candidates.dtype), best, shown], dim=-1)


class LookAgentPolicy(nn.Module):
    """Chooses the next window from what the search has seen.

    A GRU cell reads, after each window, that window's features (:func:`window_features`) and
    the trials left; each window's logit is a small MLP of its own features and the GRU state
    (the same MLP for every window, so the choice does not depend on the candidates' order).
    Windows of candidates the first look did not find are never chosen.

    :param config: what the policy sees and may do.
    """

    def __init__(self, config: LookAgentConfig = LookAgentConfig()) -> None:
        super().__init__()
        self.config = config
        features = config.window_features
        self.cell = nn.GRUCell(features + 1, config.hidden)
        self.score = nn.Sequential(nn.Linear(features + config.hidden, 64), nn.ReLU(), nn.Linear(64, 1))

    def initial_state(self, batch: int) -> torch.Tensor:
        """Zeros: the GRU state ``(B, hidden)`` before anything is seen."""
        return self.score[0].weight.new_zeros(batch, self.config.hidden)

    def step(self, features: torch.Tensor, valid: torch.Tensor, state: torch.Tensor,
             last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One decision: logits over the windows and the new GRU state.

        :param features: ``(B, W, F)`` :func:`window_features` now.
        :param valid: ``(B, W)`` bool, windows that may be chosen (their candidate exists).
        :param state: ``(B, hidden)`` GRU state. :param last: ``(B, F + 1)`` the features of the
            window placed last and the trials left (zeros before the first).
        :return: ``(B, W)`` logits (``-inf`` where not valid) and ``(B, hidden)`` state.
        """
        state = self.cell(last, state)
        joined = torch.cat([features, state[:, None, :].expand(-1, features.shape[1], -1)], dim=-1)
        logits = self.score(joined).squeeze(-1)
        return logits.masked_fill(~valid, float("-inf")), state

    def decide(self, candidates: torch.Tensor, comparisons: torch.Tensor, seen: torch.Tensor, valid: torch.Tensor,
               state: torch.Tensor, last_window: torch.Tensor, trials_left: torch.Tensor,
               started: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One decision from what the search has seen: the one place it is written (training's
        :func:`rollout` calls it; :class:`LookAgentSearcher` runs it exported).

        :param candidates: ``(B, K, CANDIDATE_FEATURES)``; ``comparisons`` ``(B, W, S * COMPARISON_CELLS)``;
            ``seen`` ``(B, W)`` bool, windows placed so far; ``valid`` ``(B, W)`` bool.
        :param state: ``(B, hidden)`` GRU state (zeros before the first decision).
        :param last_window: ``(B,)`` int64, the window placed last; ``trials_left`` ``(B, 1)``
            float, the fraction of windows left; ``started`` ``(B, 1)`` float, 0 before the first
            window (the GRU then reads zeros), else 1.
        :return: ``(B, W)`` logits (``-inf`` where not valid) and the new ``(B, hidden)`` state.
        """
        features = window_features(candidates, comparisons, seen, self.config)
        # What the last window showed, now that it is placed, and the trials left (a gather, not
        # features[rows, last_window]: an exported graph would fix the rows to the example's).
        placed = features.gather(1, last_window[:, None, None].expand(-1, 1, features.shape[2]))[:, 0]
        last = torch.cat([placed, trials_left], dim=-1) * started
        return self.step(features, valid, state, last)


def rollout(policy: LookAgentPolicy, candidates: torch.Tensor, comparisons: torch.Tensor, valid: torch.Tensor,
            greedy: bool = False, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
    """Searches of a batch of pairs whose every window's comparison was computed beforehand
    (training and evaluation: the policy sees a comparison only once it placed the window).

    :param candidates: ``(B, K, CANDIDATE_FEATURES)``. :param comparisons: ``(B, W, S * COMPARISON_CELLS)``.
    :param valid: ``(B, W)`` bool. :param greedy: take the most likely window (inference) instead of sampling.
    :return: ``actions`` ``(T, B)``, ``log_probs`` and ``entropy`` ``(T, B)``, ``logits`` ``(T, B, W)``.
    """
    config = policy.config
    batch, windows = valid.shape
    seen = torch.zeros(batch, windows, dtype=torch.bool, device=valid.device)
    state = policy.initial_state(batch)
    rows = torch.arange(batch, device=valid.device)
    last_window = torch.zeros(batch, dtype=torch.long, device=valid.device)
    actions, log_probs, entropy, all_logits = [], [], [], []
    for t in range(config.max_trials):
        trials_left = state.new_full((batch, 1), (config.max_trials - t) / config.max_trials)
        logits, state = policy.decide(candidates, comparisons, seen, valid, state, last_window, trials_left,
                                      state.new_full((batch, 1), float(t > 0)))
        log_p = torch.log_softmax(logits, dim=-1)
        if greedy:
            action = logits.argmax(dim=-1)
        else:
            action = torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(-1)
        seen = seen.clone()
        seen[rows, action] = True
        last_window = action
        actions.append(action)
        log_probs.append(log_p[rows, action])
        entropy.append(-(log_p.exp() * log_p.masked_fill(~valid, 0.0)).sum(dim=-1))
        all_logits.append(logits)
    return {"actions": torch.stack(actions), "log_probs": torch.stack(log_probs), "entropy": torch.stack(entropy),
            "logits": torch.stack(all_logits)}


class LookDecision(nn.Module):
    """:meth:`LookAgentPolicy.decide` as a module's forward (what export takes)."""

    def __init__(self, policy: LookAgentPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.policy.decide(*inputs)


# ------------------------------------------------------------------------ windows and answers
@dataclass
class Glance:
    """What the agent takes from its look at the whole reference (one query and reference).

    :param candidates: ``(K, CANDIDATE_FEATURES)`` float32; rows past the first look's candidates are zeros.
    :param places: ``(K, 3)`` each candidate's ``(centre x, centre y, target side)``, working pixels.
    :param count: how many candidates the first look found (``<= K``).
    :param aspect: the query's width / height.
    :param working: the reference at working size; ``factor``: working pixels per given pixel.
    :param level_sides: ``(L,)`` the pyramid's target sides, pixels of the reference as given;
        ``level_scores``: ``(L,)`` each level's best first-look score; ``positions``: positions scored.
    :param kernel: the query's kernel for the comparisons; ``fill``: the working reference's mean colour.
    """

    candidates: np.ndarray
    places: np.ndarray
    count: int
    aspect: float
    working: np.ndarray
    factor: float
    level_sides: np.ndarray
    level_scores: np.ndarray
    positions: int
    kernel: Any
    fill: np.ndarray


def glance(searcher: LookSearcher, query: np.ndarray, reference: np.ndarray, count: int) -> Glance:
    """The first look at the whole reference and its best ``count`` candidates (best first).

    :param searcher: the look (its first look and comparisons); it finds up to ``searcher.candidates``.
    :param query: prepared ``(h, w, 3)`` uint8 RGB query. :param reference: the reference as given.
    """
    maps, sides, scales, factor, working = searcher._score_maps(query, reference)
    peaks = searcher._peaks(query, maps, sides, scales)[:count]
    height, width = working.shape[:2]
    short = min(height, width)
    candidates = np.zeros((count, CANDIDATE_FEATURES), np.float32)
    places = np.zeros((count, 3))
    places[:] = (width / 2, height / 2, short * searcher.config.smallest)  # never chosen: not valid
    for k, (score, level, row, col) in enumerate(peaks):
        centre_x, centre_y = searcher._centre(scales, level, row, col)
        places[k] = (centre_x, centre_y, sides[level])
        candidates[k] = (score, peaks[0][0] - score, sides[level] / short, centre_x / width, centre_y / height, 1.0)
    return Glance(candidates, places, len(peaks), query.shape[1] / query.shape[0], working, factor,
                  sides / factor, np.array([float(m.max()) for m in maps]), int(sum(m.size for m in maps)),
                  searcher._closer_kernel(query), fill_colour(working))


def compare(searcher: LookSearcher, seen: Glance, windows: Sequence[int], config: LookAgentConfig) -> np.ndarray:
    """``(len(windows), S * COMPARISON_CELLS)`` float32: each window compared with the query at its
    ``S`` sizes (:attr:`LookAgentConfig.size_steps`), in one call of the look's network."""
    half_step = math.sqrt(searcher.config.level_step)
    places = [(seen.places[k, 0], seen.places[k, 1], seen.places[k, 2] * half_step ** step)
              for k in windows for step in config.size_steps]
    scores = searcher._closer_scores(seen.kernel, seen.working, seen.fill, places)
    return scores.reshape(len(windows), -1).astype(np.float32)


def answer_box(searcher: LookSearcher, seen: Glance, window: int, comparison: np.ndarray,
               config: LookAgentConfig) -> np.ndarray:
    """The answer at ``window`` (working pixels, clipped to the reference): its size placed
    among the compared sizes by the parabola through their best scores (the end size when the
    best is at an end), its centre on the best cell of the nearest size's map, placed between
    cells likewise (:func:`~matchenv.agents.look_peaks.refine_peak`)."""
    maps = comparison.reshape(len(config.size_steps), 2 * CLOSER_MARGIN + 1, 2 * CLOSER_MARGIN + 1)
    best = maps.max(axis=(1, 2))
    at = int(np.argmax(best))
    step = float(config.size_steps[at])
    if 0 < at < len(best) - 1:
        step += refine_peak(float(best[at - 1]), float(best[at]), float(best[at + 1]))
    score_map = maps[at]
    row, col = np.unravel_index(int(np.argmax(score_map)), score_map.shape)
    last = score_map.shape[0] - 1
    d_row = refine_peak(*score_map[row - 1:row + 2, col].tolist()) if 0 < row < last else 0.0
    d_col = refine_peak(*score_map[row, col - 1:col + 2].tolist()) if 0 < col < last else 0.0
    centre_x, centre_y, side = seen.places[window]
    half_step = math.sqrt(searcher.config.level_step)
    # a comparison cell is STRIDE pixels of a patch scaled so the window's side is the closer side
    cell = STRIDE * side * half_step ** config.size_steps[at] / (CLOSER_ZOOM * searcher.config.side)
    box = box_at(centre_x + (col + d_col - CLOSER_MARGIN) * cell, centre_y + (row + d_row - CLOSER_MARGIN) * cell,
                 side * half_step ** step, seen.aspect)
    return clip_to_reference(box, seen.working)


# ------------------------------------------------------------------------------- files
def save_look_agent_file(path: Union[str, Path], policy: LookAgentPolicy, look: MultiScaleLook,
                         info: Optional[dict[str, Any]] = None) -> Path:
    """Write an agent (its policy, and the look it searches with, so the file stands alone) to ``path``."""
    return write_model_file(path, {"kind": "look-agent", "config": asdict(policy.config) | {"size_steps": list(policy.config.size_steps)},
                                   "state_dict": policy.state_dict(), "look_config": config_dict(look.config),
                                   "look_state_dict": look.state_dict(), "info": info or {}})


def load_look_agent_file(path: Union[str, Path]) -> tuple[LookAgentPolicy, MultiScaleLook, dict[str, Any]]:
    """The policy, its look and ``info`` from a file written by :func:`save_look_agent_file`."""
    saved = read_model_file(path, "photograph agent", "train/look_agent.py",
                            {"kind", "config", "state_dict", "look_config", "look_state_dict", "info"})
    if saved["kind"] != "look-agent":
        raise ValueError(f"{path} is a {saved['kind']!r} file, not a photograph agent written by train/look_agent.py")
    policy = LookAgentPolicy(LookAgentConfig(**saved["config"]))
    policy.load_state_dict(saved["state_dict"])
    look = MultiScaleLook(LookConfig(**saved["look_config"]))
    look.load_state_dict(saved["look_state_dict"])
    return policy.eval(), look.eval(), saved["info"]


# ------------------------------------------------------------------------------- inference
class LookAgentSearcher(LookSearcher):
    """Find a query in a photograph with a trained photograph agent (module docstring).

        searcher = LookAgentSearcher.from_pretrained("photo", channel_order="bgr")   # cv2.imread gives BGR
        result = searcher.locate(query, reference)      # any sizes
        x0, y0, x1, y1 = result.box                     # pixels of the reference as given
        result.path                                     # the windows placed, in order (grid boxes)

    :param policy: the trained policy. :param look: the look it was trained with.
    :param channel_order: ``"rgb"`` or ``"bgr"``. :param threads: ONNX Runtime threads (default:
        ``torch.get_num_threads()``). :param smallest: / :param largest: the first look's target
        range (:class:`~matchenv.agents.multiscale_look.LookSearcher`; the policy was trained with the look's own).
    """

    def __init__(self, policy: LookAgentPolicy, look: MultiScaleLook, channel_order: str = "rgb",
                 threads: Optional[int] = None, smallest: Optional[float] = None, largest: Optional[float] = None) -> None:
        self.policy = policy.eval()
        self.agent_config = policy.config
        super().__init__(look, channel_order=channel_order, threads=threads, smallest=smallest, largest=largest,
                         candidates=policy.config.candidates)
        config = policy.config
        windows, cells = config.windows, len(config.size_steps) * COMPARISON_CELLS
        example = [torch.zeros(1, config.candidates, CANDIDATE_FEATURES), torch.zeros(1, windows, cells),
                   torch.zeros(1, windows, dtype=torch.bool), torch.ones(1, windows, dtype=torch.bool),
                   torch.zeros(1, config.hidden), torch.zeros(1, dtype=torch.long), torch.zeros(1, 1), torch.zeros(1, 1)]
        # The policy's decision, exported (ONNX Runtime when installed): one definition for
        # training and inference, without PyTorch's per-call overhead at batch 1.
        self._decide = ExportedModule(LookDecision(policy), example, ["candidates", "comparisons", "seen", "valid", "state",
                                                                       "last_window", "trials_left", "started"],
                                      ["logits", "state_next"], threads=self._runtime.threads)

    def _closer_batches(self) -> set[int]:
        """The comparison's one call: a window at every size (never the look's candidates at once)."""
        return {len(self.agent_config.size_steps)}

    @classmethod
    def load(cls, path: Union[str, Path], **kwargs) -> "LookAgentSearcher":
        """Load an agent file written by ``train/look_agent.py``."""
        policy, look, _ = load_look_agent_file(path)
        return cls(policy, look, **kwargs)

    @classmethod
    def from_pretrained(cls, name: str, **kwargs) -> "LookAgentSearcher":
        """Load an agent shipped with matchenv: see :data:`matchenv.agents.pretrained.LOOK_AGENTS`."""
        from matchenv.agents.pretrained import look_agent_path

        return cls.load(look_agent_path(name), **kwargs)

    def locate(self, query: np.ndarray, reference: np.ndarray) -> LookResult:
        """Find ``query`` (``(h, w, 3)`` or grayscale uint8, any size from
        :data:`~matchenv.agents.searcher.MIN_QUERY_SIDE` (4) pixels a side) in ``reference`` (any size).

        :return: a :class:`~matchenv.agents.multiscale_look.LookResult`: the answer (the last window, moved
            by its comparison) in pixels of ``reference`` as given, clipped to it; ``path`` the
            windows placed (the candidates' boxes at their level, in pixels of ``reference``),
            then the answer; ``scores`` each one's best comparison score (clipped to ``[0, 1]``);
            ``positions`` the first look's positions and the comparisons' cells.
        """
        query = prepare_image(query, 3, self.channel_order, "query", MIN_QUERY_SIDE)
        self._warn_if_smaller_than_searched(query, reference)
        config = self.agent_config
        seen_view = glance(self, query, reference, config.candidates)
        valid = np.arange(config.candidates) < seen_view.count
        comparisons = np.zeros((config.candidates, len(config.size_steps) * COMPARISON_CELLS), np.float32)
        seen = np.zeros(config.candidates, bool)
        state = np.zeros((1, config.hidden), np.float32)
        placed: list[int] = []
        decide = self._decide.bound(candidates=seen_view.candidates[None], valid=valid[None])  # the same all search
        for t in range(config.max_trials):
            last_window = np.array([placed[-1] if placed else 0], np.int64)
            trials_left = np.full((1, 1), (config.max_trials - t) / config.max_trials, np.float32)
            logits, state = decide(comparisons[None], seen[None], state, last_window, trials_left,
                                   np.full((1, 1), float(t > 0), np.float32))
            window = int(np.argmax(logits[0]))
            if not seen[window]:
                comparisons[window] = compare(self, seen_view, [window], config)[0]
                seen[window] = True
            placed.append(window)
        answer = placed[-1]
        box = answer_box(self, seen_view, answer, comparisons[answer], config)
        box = clip_to_reference(box / seen_view.factor, reference)
        grid = np.stack([box_at(*seen_view.places[k], seen_view.aspect) for k in placed]) / seen_view.factor
        best = comparisons.max(axis=1)
        scores = np.clip(np.append(best[placed], best[answer]), 0.0, 1.0)
        compared = int(seen.sum()) * len(config.size_steps) * COMPARISON_CELLS
        return LookResult(box=box, path=np.concatenate([clip_to_reference(grid, reference), box[None]]),
                          scores=scores, level_sides=seen_view.level_sides, level_scores=seen_view.level_scores,
                          positions=seen_view.positions + compared)
