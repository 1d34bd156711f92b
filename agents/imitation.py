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

from matchenv.agents.policy import SearchLstmPolicy, contrastive_loss
from matchenv.agents.rollout import EpisodeBatch, run_episodes


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
    :param teacher: ``"target"`` (go straight to the target), ``"search"`` (visit look-alike
        candidates until the target is found; for datasets with distractors such as Mixed MNIST)
        or ``"zoom"`` (coarse to fine, for photographs).
    :param localization_weight: weight of the similarity-map localisation loss (policies with an
        ``overview`` only; see :func:`localization_loss`).
    :param localization_temperature: multiplies the cosine similarities before the softmax.
    """

    rollout_noise: float = 0.3
    epochs: int = 1
    aux_weight: float = 0.5
    margin: float = 1.0
    value_weight: float = 0.5
    gamma: float = 0.99
    match_iou: float = 0.5
    teacher: str = "target"
    localization_weight: float = 1.0
    localization_temperature: float = 10.0


def imitation_losses(
    policy: SearchLstmPolicy, batch: EpisodeBatch, config: ImitationConfig
) -> dict[str, torch.Tensor]:
    """Behaviour-cloning, value and contrastive losses on whole episodes (one CNN pass).

    :return: dict of scalar tensors: ``bc``, ``value``, ``aux``, ``loss`` (their weighted sum),
        and the detached ``match_accuracy`` of the match head (distance < margin / 2).
    """
    steps_plus_one, n = batch.ious.shape
    features, similarity = episode_features(policy, batch.observations, return_similarity=True)
    query_emb, window_emb = policy.last_embeddings

    latent_pi, _ = policy.lstm_actor(features)
    latent_pi = policy.mlp_extractor.forward_actor(latent_pi)
    teacher = torch.as_tensor(batch.teacher_actions, device=policy.device)
    pointer_logs = {}
    if policy.pointer_head is None:
        bc = F.mse_loss(policy.action_mean(latent_pi, features)[:-1], teacher)
    else:
        # Winner-takes-all (multiple-choice learning): the gate classifies which candidate is
        # nearest the teacher's window, and only that candidate (plus the offset) regresses onto
        # it. Regressing the chosen or the averaged candidate instead would drag every candidate
        # towards the targets of the episodes where it was the wrong one.
        out = policy.action_net(latent_pi)[:-1]
        anchors, logits = policy.pointer_candidates(latent_pi[:-1], out, features[:-1])
        nearest = (anchors.detach() - teacher[..., None, :2]).pow(2).sum(dim=-1).argmin(dim=-1)
        winner = anchors.take_along_dim(nearest[..., None, None], dim=-2).squeeze(-2)
        xy = winner + policy.pointer_head.offset(latent_pi[:-1])
        bc = F.mse_loss(torch.cat([xy, out[..., 2:]], dim=-1), teacher)
        gate = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), nearest.reshape(-1))
        free = F.mse_loss(out[..., :2], teacher[..., :2])  # the "free" anchor learns too
        bc = bc + gate + free
        with torch.no_grad():
            pointer_logs = {"gate": gate, "gate_accuracy": (logits.argmax(dim=-1) == nearest).float().mean()}

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
    logs = {"bc": bc, "value": value, "aux": aux, "match_accuracy": match_accuracy, **pointer_logs}
    if similarity is not None and batch.target_in_overview is not None and config.localization_weight > 0:
        overview_hw = policy.observation_space["overview"].shape[1:]
        localization, hit = localization_loss(
            similarity, batch.target_in_overview, policy.features_extractor.map_size, overview_hw,
            config.localization_temperature,
        )
        loss = loss + config.localization_weight * localization
        logs.update(localization=localization, localization_accuracy=hit)
    return {"loss": loss, **logs}


def localization_loss(
    similarity: torch.Tensor,
    target_xy: np.ndarray,
    map_size: tuple[int, int],
    overview_size: tuple[int, int],
    temperature: float = 10.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the softmax over the similarity map against the cell holding the target.

    This teaches the siamese CNN features with which the query's embedding lights up where the
    target is in the overview -- the part of "where to look" that regressing onto the teacher's
    action learns only slowly. The target's cell is a privileged label, used only in this loss.

    :param similarity: ``(B, h' * w')`` cosine similarities (one map per episode, row-major).
    :param target_xy: ``(B, 2)`` target centres in overview pixels.
    :param map_size: ``(h', w')`` cells of the similarity map.
    :param overview_size: ``(H', W')`` pixels of the overview.
    :param temperature: multiplies the similarities before the softmax.
    :return: the loss and the (detached) fraction of episodes whose arg-max cell is the target's.
    """
    map_h, map_w = map_size
    cols = np.clip((target_xy[:, 0] * map_w / overview_size[1]).astype(np.int64), 0, map_w - 1)
    rows = np.clip((target_xy[:, 1] * map_h / overview_size[0]).astype(np.int64), 0, map_h - 1)
    cells = torch.as_tensor(rows * map_w + cols, device=similarity.device)
    loss = F.cross_entropy(similarity * temperature, cells)
    with torch.no_grad():
        hit = (similarity.argmax(dim=1) == cells).float().mean()
    return loss, hit


def episode_features(policy: SearchLstmPolicy, observations: dict[str, np.ndarray], return_similarity: bool = False):
    """LSTM inputs ``(T + 1, B, F)`` for whole episodes, embedding each episode's query only once.

    With ``return_similarity``, also the ``(B, h' * w')`` similarity maps (``None`` without an overview).

    The query (and the overview, if any) is the same at every step of an episode, so embedding
    it once instead of ``T + 1`` times saves ~40% of the CNN's forward and backward work.
    """
    steps_plus_one, n = observations["location"].shape[:2]
    flat = {k: v.reshape(steps_plus_one * n, *v.shape[2:]) for k, v in observations.items()}
    obs_t = preprocess_obs(policy.obs_to_tensor(flat)[0], policy.observation_space, policy.normalize_images)
    extractor = policy.features_extractor
    first_query_emb = extractor.cnn(obs_t["query"][:n])
    query_emb = first_query_emb.repeat(steps_plus_one, 1)
    window_emb = extractor.cnn(obs_t["window"])
    similarity = None
    if extractor.map_size is not None:  # the overview is constant over an episode too
        similarity = extractor.similarity_map(first_query_emb, obs_t["overview"][:n]).repeat(steps_plus_one, 1)
    features = extractor.combine(query_emb, window_emb, obs_t, similarity).view(steps_plus_one, n, -1)
    if return_similarity:
        return features, None if similarity is None else similarity[:n]
    return features


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
