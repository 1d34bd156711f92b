"""Imitation warm start: DAgger from a privileged teacher, with the contrastive match loss.

The policy plays noisy episodes itself (so it learns from the windows *it* places); at every
decision the teacher, which reads the target box from the environment, says where the window
should go. The actor regresses onto the teacher's action, the critic onto the episode's
discounted sparse return (a warm start for PPO), and the match head learns, from each window's
IoU label, whether the window shows the query. The labels and teacher actions are targets of
the losses only: the policy's inputs are observations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from stable_baselines3.common.preprocessing import preprocess_obs
from torch.nn import functional as F

from agents.policy import SearchLstmPolicy, contrastive_loss
from agents.rollout import EpisodeBatch, run_episodes


@dataclass
class ImitationConfig:
    """Hyperparameters of the DAgger stage.

    :param rollout_noise: std of the Gaussian noise on the policy's actions while collecting
        (action units; the absolute action spans the image with [-1, 1]).
    :param epochs: gradient steps per collected batch (each on the whole batch).
    :param aux_weight: weight of the contrastive match loss (0 switches it off).
    :param margin: contrastive margin ``m``.
    :param value_weight: weight of the critic's regression loss.
    :param gamma: discount of the returns the critic learns (use PPO's).
    :param match_iou: IoU above which a window counts as a match for the contrastive labels.
    :param teacher: ``"target"`` (go straight to the target) or ``"search"`` (visit look-alike
        candidates until the target is found; for datasets with distractors such as Mixed MNIST).
    """

    rollout_noise: float = 0.3
    epochs: int = 1
    aux_weight: float = 0.5
    margin: float = 1.0
    value_weight: float = 0.5
    gamma: float = 0.99
    match_iou: float = 0.5
    teacher: str = "target"


def imitation_losses(
    policy: SearchLstmPolicy, batch: EpisodeBatch, config: ImitationConfig
) -> dict[str, torch.Tensor]:
    """Behaviour-cloning, value and contrastive losses on whole episodes (one CNN pass).

    :return: dict of scalar tensors: ``bc``, ``value``, ``aux``, ``loss`` (their weighted sum),
        and the detached ``match_accuracy`` of the match head (distance < margin / 2).
    """
    steps_plus_one, n = batch.ious.shape
    features = episode_features(policy, batch.observations)
    query_emb, window_emb = policy.last_embeddings

    latent_pi, _ = policy.lstm_actor(features)
    means = policy.action_net(policy.mlp_extractor.forward_actor(latent_pi))
    teacher = torch.as_tensor(batch.teacher_actions, device=policy.device)
    bc = F.mse_loss(means[:-1], teacher)

    # Discounted return from each decision, of whatever reward the env pays (sparse or dense).
    returns_np = np.zeros_like(batch.rewards)
    running = np.zeros(n, dtype=np.float32)
    for t in range(steps_plus_one - 2, -1, -1):
        running = batch.rewards[t] + config.gamma * running
        returns_np[t] = running
    returns = torch.as_tensor(returns_np, device=policy.device)
    latent_vf, _ = policy.lstm_critic(features)
    values = policy.value_net(policy.mlp_extractor.forward_critic(latent_vf)).squeeze(-1)
    value = F.mse_loss(values[:-1], returns)

    # Index 0 is the whole-image view, not a window: it gets no match label.
    labels = torch.as_tensor((batch.ious > config.match_iou).astype(np.float32), device=policy.device)
    distance = policy.match_distance(query_emb, window_emb).view(steps_plus_one, n)
    aux = contrastive_loss(distance[1:].reshape(-1), labels[1:].reshape(-1), config.margin)
    with torch.no_grad():
        predicted = (distance[1:] < config.margin / 2).float()
        match_accuracy = (predicted == labels[1:]).float().mean()

    loss = bc + config.value_weight * value + config.aux_weight * aux
    return {"loss": loss, "bc": bc, "value": value, "aux": aux, "match_accuracy": match_accuracy}


def episode_features(policy: SearchLstmPolicy, observations: dict[str, np.ndarray]) -> torch.Tensor:
    """LSTM inputs ``(T + 1, B, F)`` for whole episodes, embedding each episode's query only once.

    The query is the same at every step of an episode, so embedding it once instead of
    ``T + 1`` times saves ~40% of the CNN's forward and backward work.
    """
    steps_plus_one, n = observations["location"].shape[:2]
    flat = {k: v.reshape(steps_plus_one * n, *v.shape[2:]) for k, v in observations.items()}
    obs_t = preprocess_obs(policy.obs_to_tensor(flat)[0], policy.observation_space, policy.normalize_images)
    extractor = policy.features_extractor
    query_emb = extractor.cnn(obs_t["query"][:n]).repeat(steps_plus_one, 1)
    window_emb = extractor.cnn(obs_t["window"])
    return extractor.combine(query_emb, window_emb, obs_t).view(steps_plus_one, n, -1)


class DAggerTrainer:
    """Alternates collecting noisy episodes with the current policy and fitting them.

    :param policy: the policy to train (its own optimizer is used).
    :param envs: training environments (``TemplateSearchEnv``, absolute actions), seeded.
    :param config: hyperparameters.
    :param seed: seed of the rollout noise.
    """

    def __init__(self, policy: SearchLstmPolicy, envs, config: ImitationConfig, seed: int = 0) -> None:
        self.policy = policy
        self.envs = envs
        self.config = config
        self.rng = np.random.default_rng(seed)

    def iteration(self) -> tuple[EpisodeBatch, dict[str, float]]:
        """Collect one batch of episodes and take :attr:`ImitationConfig.epochs` gradient steps on it.

        :return: the batch (its success rate is that of the *noisy* rollout policy) and mean losses.
        """
        batch = run_episodes(
            self.policy, self.envs, noise_std=self.config.rollout_noise, rng=self.rng, with_teacher=True,
            teacher=self.config.teacher,
        )
        self.policy.set_training_mode(True)
        logs: dict[str, list[float]] = {}
        for _ in range(self.config.epochs):
            losses = imitation_losses(self.policy, batch, self.config)
            self.policy.optimizer.zero_grad()
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 0.5)
            self.policy.optimizer.step()
            for key, value in losses.items():
                logs.setdefault(key, []).append(float(value.detach()))
        return batch, {key: float(np.mean(values)) for key, values in logs.items()}
