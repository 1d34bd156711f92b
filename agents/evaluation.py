"""A search policy on a dataset's fixed test split: the evaluation every training script reports."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import gymnasium as gym
import numpy as np

from matchenv.agents.rollout import EpisodeBatch, run_episodes
from matchenv.rendering import frame_strip, render_search, save_frames


class TestSplitEvaluator:
    """Deterministic policy on test pairs ``0..n-1`` (the same pairs for every run and seed).

    :param env_id: the registered env whose test split is played; :param n_pairs: how many pairs;
    :param env_kwargs: the env's arguments (a ``dataset`` object's ``test_size`` caps ``n_pairs``).
    """

    __test__ = False  # (not a pytest test class)

    def __init__(self, env_id: str, n_pairs: int, env_kwargs: dict, batch: int = 100) -> None:
        first = gym.make(env_id, split="test", **env_kwargs).unwrapped
        self.n_pairs = min(n_pairs, first.dataset.test_size)  # a test split smaller than asked (FlickrLogos-27: 161)
        self.envs = [first] + [gym.make(env_id, split="test", **env_kwargs).unwrapped
                               for _ in range(min(batch, self.n_pairs) - 1)]

    def __call__(self, policy) -> dict[str, float]:
        success, ious = [], []
        for start in range(0, self.n_pairs, len(self.envs)):
            indices = range(start, min(start + len(self.envs), self.n_pairs))
            envs = self.envs[: len(indices)]
            batch = run_episodes(policy, envs, [{"pair_index": i} for i in indices])
            success.append(batch.success)
            ious.append(batch.final_iou)
        return {"success_rate": float(np.mean(np.concatenate(success))), "mean_iou": float(np.mean(np.concatenate(ious)))}

    def render_paths(self, policy, n: int, path: Path) -> Optional[Path]:
        """Save the final frame of the policy's search on test pairs ``0..n-1`` as one PNG strip
        (``None``, nothing written, for ``n = 0``)."""
        if n <= 0:
            return None
        envs = self.envs[:n]
        batch: EpisodeBatch = run_episodes(policy, envs, [{"pair_index": i} for i in range(n)])
        frames = []
        for i, env in enumerate(envs):
            pair = env.dataset.test_pair(i)
            verdict = "found" if batch.success[i] else "missed"
            frames.append(render_search(pair.reference, pair.matcher_query, batch.window_boxes[:, i], pair.target_box,
                                        title=f"test pair {i}: {verdict} (IoU {batch.final_iou[i]:.2f})"))
        return save_frames([frame_strip(frames)], path)
