"""Run a recurrent search policy on a batch of environments, one whole episode at a time.

Every ``TemplateSearch`` episode has exactly ``max_trials`` steps, so a batch of episodes is a
dense ``(T + 1, B)`` grid of observations: no padding, no masks. Imitation, evaluation and the
inference API all use this runner; PPO uses SB3's own rollout buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from matchenv.agents.policy import SearchLstmPolicy
from matchenv.agents.teacher import env_search_action, env_target_action, env_zoom_action

TEACHERS = {"target": env_target_action, "search": env_search_action, "zoom": env_zoom_action}


@dataclass
class EpisodeBatch:
    """``B`` complete episodes of ``T`` windows.

    :param observations: per key, ``(T + 1, B, ...)`` arrays: the reset observation, then one per window.
    :param actions: ``(T, B, A)`` actions taken.
    :param teacher_actions: ``(T, B, A)`` privileged teacher's actions at each decision (``None`` if not asked).
    :param ious: ``(T + 1, B)`` IoU of each observed window with the target (index 0: the whole image).
    :param rewards: ``(T, B)`` rewards.
    :param window_boxes: ``(T, B, 4)`` pixel boxes of the placed windows.
    :param success: ``(B,)`` bool, final window's IoU above the env's ``iou_threshold``.
    :param target_in_overview: ``(B, 2)`` privileged target centres ``(x, y)`` in pixels of the
        ``overview`` observation (for the localisation loss; ``None`` unless ``with_teacher`` and
        the envs have an overview).
    """

    observations: dict[str, np.ndarray]
    actions: np.ndarray
    teacher_actions: Optional[np.ndarray]
    ious: np.ndarray
    rewards: np.ndarray
    window_boxes: np.ndarray
    success: np.ndarray
    target_in_overview: Optional[np.ndarray] = None

    @property
    def final_iou(self) -> np.ndarray:
        return self.ious[-1]


def policy_step(
    policy: SearchLstmPolicy, obs: dict[str, np.ndarray], state: Optional[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One step of the actor: ``(B, A)`` action means (or logits) and the new LSTM state."""
    obs_t, _ = policy.obs_to_tensor(obs)
    return policy.actor_step(policy.extract_features(obs_t), state)


@torch.no_grad()
def run_episodes(
    policy: SearchLstmPolicy,
    envs: Sequence,
    reset_options: Optional[Sequence[Optional[dict]]] = None,
    noise_std: float = 0.0,
    rng: Optional[np.random.Generator] = None,
    with_teacher: bool = False,
    teacher: str = "target",
) -> EpisodeBatch:
    """Play one episode in each of ``envs`` (``TemplateSearchEnv`` instances, already seeded).

    :param policy: the search policy (continuous ``"absolute"``/``"relative"`` actions).
    :param envs: ``B`` environments with the same ``max_trials``.
    :param reset_options: per env ``reset(options=...)``, e.g. ``{"pair_index": i}`` for test pairs.
    :param noise_std: std of Gaussian noise added to the action means (0: deterministic policy).
    :param rng: generator for that noise.
    :param with_teacher: also record the privileged teacher's action at every decision.
    :param teacher: ``"target"`` (go to the target), ``"search"`` (visit look-alike candidates
        left to right until the target is covered; see :func:`matchenv.agents.teacher.search_target_box`)
        or ``"zoom"`` (coarse to fine: windows around the target shrinking onto it; see
        :func:`matchenv.agents.teacher.zoom_target_box`).
    """
    teacher_fn = TEACHERS[teacher]
    policy.set_training_mode(False)
    n = len(envs)
    options = reset_options or [None] * n
    rng = rng if rng is not None else np.random.default_rng()
    first = [env.reset(options=opt) for env, opt in zip(envs, options)]
    steps = envs[0].unwrapped.max_trials
    obs_seq = [_stack([o for o, _ in first])]
    ious = [np.array([info["iou"] for _, info in first])]
    actions, teacher_actions, rewards, boxes = [], [], [], []
    state = None
    for _ in range(steps):
        if with_teacher:
            teacher_actions.append(np.stack([teacher_fn(env) for env in envs]))
        mean, state = policy_step(policy, obs_seq[-1], state)
        action = mean.cpu().numpy()
        if noise_std > 0:
            action = action + rng.normal(0.0, noise_std, size=action.shape).astype(np.float32)
        action = np.clip(action, -1.0, 1.0)
        results = [env.step(a) for env, a in zip(envs, action)]
        actions.append(action)
        obs_seq.append(_stack([r[0] for r in results]))
        rewards.append(np.array([r[1] for r in results], dtype=np.float32))
        ious.append(np.array([r[4]["iou"] for r in results]))
        boxes.append(np.stack([r[4]["window_box"] for r in results]))
    observations = {k: np.stack([o[k] for o in obs_seq]) for k in obs_seq[0]}
    target_in_overview = None
    if with_teacher and envs[0].unwrapped.overview_size is not None:
        target_in_overview = np.zeros((n, 2))
        for i, env in enumerate(envs):
            x0, y0, x1, y1 = env.unwrapped.privileged_info()["target_box"]
            target_in_overview[i] = env.unwrapped.overview_point((x0 + x1) / 2, (y0 + y1) / 2)
    return EpisodeBatch(
        observations=observations,
        actions=np.stack(actions),
        teacher_actions=np.stack(teacher_actions) if with_teacher else None,
        ious=np.stack(ious),
        rewards=np.stack(rewards),
        window_boxes=np.stack(boxes),
        success=ious[-1] > envs[0].unwrapped.iou_threshold,
        target_in_overview=target_in_overview,
    )


def _stack(observations: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([o[k] for o in observations]) for k in observations[0]}
