"""RecurrentPPO with the auxiliary contrastive match loss in the same gradient step.

:class:`SearchRecurrentPPO` is sb3-contrib's ``RecurrentPPO`` plus one term: for every window in
a minibatch, the contrastive loss between the query and window embeddings that the PPO loss
already computed (no second CNN pass), with the window's match label (IoU > ``match_iou``).

The labels come from the environment's ``info["iou"]``. They travel next to the observations
in the rollout buffer (so SB3's sequence padding keeps them aligned) and are removed before the
observations reach the policy: the action and value computations never see them.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.utils import explained_variance

from matchenv.agents.policy import SearchLstmPolicy, match_label

#: Key under which match labels ride along with observations inside the rollout buffer only.
MATCH_LABEL_KEY = "match_label"


class MatchLabelRolloutBuffer(RecurrentDictRolloutBuffer):
    """A recurrent rollout buffer that also stores each observation's match label.

    Label of an observation: 1.0 when its window matches the target, 0.0 when it does not,
    -1.0 when it is a reset observation (the whole reference, not a window: no label).
    The algorithm sets :attr:`pending_labels` (``(n_envs,)``) before each :meth:`add`.
    """

    def __init__(self, buffer_size: int, observation_space: spaces.Dict, *args: Any, **kwargs: Any) -> None:
        spaces_with_label = dict(observation_space.spaces)
        spaces_with_label[MATCH_LABEL_KEY] = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        super().__init__(buffer_size, spaces.Dict(spaces_with_label), *args, **kwargs)
        self.pending_labels = -np.ones(self.n_envs, dtype=np.float32)

    def add(self, obs: dict[str, np.ndarray], *args: Any, **kwargs: Any) -> None:
        super().add({**obs, MATCH_LABEL_KEY: self.pending_labels[:, None]}, *args, **kwargs)


class _MatchLabelTracker(BaseCallback):
    """Tracks the match label of each env's current observation from ``info["iou"]``.

    SB3 calls ``on_step`` after ``env.step`` and before ``rollout_buffer.add(last_obs, ...)``:
    the label of ``last_obs`` is the one tracked so far; then the new observation's label is
    read from this step's info (or -1 after an episode end, as the next observation is a reset).
    """

    def __init__(self, match_iou: float) -> None:
        super().__init__()
        self.match_iou = match_iou
        self.current: Optional[np.ndarray] = None

    def reset_labels(self, n_envs: int) -> None:
        self.current = -np.ones(n_envs, dtype=np.float32)

    def _on_step(self) -> bool:
        buffer = self.model.rollout_buffer
        buffer.pending_labels = self.current.copy()
        infos, dones = self.locals["infos"], self.locals["dones"]
        for i, (info, done) in enumerate(zip(infos, dones)):
            self.current[i] = -1.0 if done else match_label(info, self.match_iou)
        return True


class SearchRecurrentPPO(RecurrentPPO):
    """sb3-contrib ``RecurrentPPO`` + the auxiliary contrastive loss of :class:`SearchLstmPolicy`.

    With ``aux_weight=0`` an update is exactly ``RecurrentPPO``'s (tested).

    :param policy: ``"SearchLstmPolicy"`` (default) or a policy class with ``last_embeddings``
        and ``match_distance``.
    :param env: the environment (``TemplateSearch``, pixel observations; its info must hold ``iou``).
    :param aux_weight: weight of the contrastive loss in the PPO loss.
    :param aux_margin: contrastive margin ``m``.
    :param match_iou: IoU above which a window counts as a match.
    :param search_config: how the training environment showed images to the agent
        (``max_trials``, ``scale_range``, ``letterbox``, ``max_side``), saved with the model so
        :class:`~matchenv.agents.searcher.TemplateSearcher` replays it; see :func:`search_config_of`.
    :param kwargs: everything else goes to ``RecurrentPPO``.
    """

    policy_aliases: ClassVar[dict] = {**RecurrentPPO.policy_aliases, "SearchLstmPolicy": SearchLstmPolicy}

    def __init__(
        self,
        policy: Union[str, type[SearchLstmPolicy]] = "SearchLstmPolicy",
        env: Any = None,
        aux_weight: float = 0.5,
        aux_margin: float = 1.0,
        match_iou: float = 0.5,
        search_config: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        self.search_config = dict(search_config or {})
        self.aux_weight = float(aux_weight)
        self.aux_margin = float(aux_margin)
        self.match_iou = float(match_iou)
        super().__init__(policy, env, **kwargs)

    @classmethod
    def load(cls, path: Any, env: Any = None, device: Union[th.device, str] = "auto",
             custom_objects: Optional[dict[str, Any]] = None, **kwargs: Any) -> "SearchRecurrentPPO":
        """SB3's ``load``, without unpickling anything from the file: its pickled fields are decoded by
        :func:`matchenv.agents.safe_checkpoint.safe_custom_objects` (spaces, schedules and this project's classes
        only; a file that needs more is refused, naming the field) and handed to SB3 as ``custom_objects``.

        :param custom_objects: values that replace the file's own (as in SB3).
        """
        from matchenv.agents.safe_checkpoint import safe_custom_objects

        if isinstance(path, (str, os.PathLike)):
            path = Path(path)
            if path.is_dir():
                raise IsADirectoryError(f"{path} is a folder: pass a checkpoint file (e.g. {path / 'best.zip'})")
            if not path.exists() and path.with_suffix(".zip").exists():  # SB3 accepts the name without .zip
                path = path.with_suffix(".zip")
            objects = safe_custom_objects(path)
        else:  # a file object: read it once, decode, then hand SB3 the bytes
            raw = path.read()
            objects = safe_custom_objects(io.BytesIO(raw))
            path = io.BytesIO(raw)
        objects.update(custom_objects or {})
        return super().load(path, env=env, device=device, custom_objects=objects, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        if not isinstance(self.observation_space, spaces.Dict):
            raise ValueError("SearchRecurrentPPO needs TemplateSearch's Dict observations (obs_mode='pixels')")
        lstm = self.policy.lstm_actor
        self.rollout_buffer = MatchLabelRolloutBuffer(
            self.n_steps,
            self.observation_space,
            self.action_space,
            (self.n_steps, lstm.num_layers, self.n_envs, lstm.hidden_size),
            self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
        )
        self._label_tracker = _MatchLabelTracker(self.match_iou)

    def _setup_learn(self, total_timesteps: int, callback: Any = None, reset_num_timesteps: bool = True, *args, **kwargs):
        resets_env = reset_num_timesteps or self._last_obs is None
        out = super()._setup_learn(total_timesteps, callback, reset_num_timesteps, *args, **kwargs)
        if resets_env or self._label_tracker.current is None:
            self._label_tracker.reset_labels(self.n_envs)  # every observation is a reset observation
        return out

    def _init_callback(self, callback: Any, progress_bar: bool = False) -> BaseCallback:
        user_callback = super()._init_callback(callback, progress_bar)
        self._label_tracker.init_callback(self)
        # The tracker runs first so the label is in place before SB3 adds the step to the buffer.
        combined = CallbackList([self._label_tracker, user_callback])
        combined.init_callback(self)
        return combined

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_label_tracker"]

    def train(self) -> None:
        """One PPO update. Identical to ``RecurrentPPO.train`` (sb3-contrib 2.9) except the
        lines marked ``# aux``: the match labels are split off the observations, and the
        contrastive loss on the same forward pass's embeddings is added to the loss."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)

        entropy_losses, pg_losses, value_losses, clip_fractions = [], [], [], []
        aux_losses, match_accuracies = [], []  # aux
        continue_training = True

        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    actions = rollout_data.actions.long().flatten()
                mask = rollout_data.mask > 1e-8
                observations = dict(rollout_data.observations)  # aux
                match_label = observations.pop(MATCH_LABEL_KEY).flatten()  # aux: never reaches the policy

                values, log_prob, entropy = self.policy.evaluate_actions(
                    observations, actions, rollout_data.lstm_states, rollout_data.episode_starts
                )
                values = values.flatten()
                advantages = rollout_data.advantages
                if self.normalize_advantage:
                    advantages = (advantages - advantages[mask].mean()) / (advantages[mask].std() + 1e-8)

                ratio = th.exp(log_prob - rollout_data.old_log_prob)
                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.mean(th.min(policy_loss_1, policy_loss_2)[mask])
                pg_losses.append(policy_loss.item())
                clip_fractions.append(th.mean((th.abs(ratio - 1) > clip_range).float()[mask]).item())

                if self.clip_range_vf is None:
                    values_pred = values
                else:
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                value_loss = th.mean(((rollout_data.returns - values_pred) ** 2)[mask])
                value_losses.append(value_loss.item())

                if entropy is None:
                    entropy_loss = -th.mean(-log_prob[mask])
                else:
                    entropy_loss = -th.mean(entropy[mask])
                entropy_losses.append(entropy_loss.item())

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

                labelled = mask & (match_label >= 0)  # aux: reset views and padding have no label
                if self.aux_weight > 0 and bool(labelled.any()):  # aux
                    query_emb, window_emb = self.policy.last_embeddings
                    aux_loss, accuracy = self.policy.match_loss(query_emb[labelled], window_emb[labelled],
                                                                match_label[labelled], self.aux_margin)
                    loss = loss + self.aux_weight * aux_loss
                    aux_losses.append(aux_loss.item())
                    match_accuracies.append(accuracy.item())

                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean(((th.exp(log_ratio) - 1) - log_ratio)[mask]).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()

            self._n_updates += 1
            if not continue_training:
                break

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if aux_losses:  # aux
            self.logger.record("train/aux_loss", np.mean(aux_losses))
            self.logger.record("train/match_accuracy", np.mean(match_accuracies))
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)


def load_trained_model(path: Union[str, "os.PathLike[str]"], device: str = "cpu") -> SearchRecurrentPPO:
    """Load a checkpoint written by ``train/ppo_lstm.py`` (``best.zip`` / ``last.zip``).

    :raises FileNotFoundError: when ``path`` does not exist, saying how to make one.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no agent checkpoint at {path}: train one with `python train/ppo_lstm.py`")
    return SearchRecurrentPPO.load(path, device=device)


def search_config_of(env) -> dict[str, Any]:
    """What :class:`~matchenv.agents.searcher.TemplateSearcher` must know about a training env to replay it.

    :param env: a (possibly wrapped) ``TemplateSearchEnv``.
    :return: ``max_trials``, ``scale_range`` (or ``None``), ``letterbox``, ``max_side`` (the
        photograph working size, or ``None``) and ``window_fraction`` (photographs: the nominal
        window relative to the reference, see :func:`matchenv.datasets.photos.nominal_window`;
        ``None``: the query's size) -- plain Python values, saved inside the model.
    """
    base = env.unwrapped
    max_side = getattr(base.dataset, "max_side", None)
    return {
        "max_trials": int(base.max_trials),
        "scale_range": None if base.scale_range is None else [float(v) for v in base.scale_range],
        "letterbox": bool(base.letterbox),
        "max_side": None if max_side is None else int(max_side),
        "window_fraction": getattr(base.dataset, "window_fraction", None),
    }
