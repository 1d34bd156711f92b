"""The search agent in Ray RLlib (new API stack): the same policy, trained by RLlib's PPO.

- :class:`SearchAgentModule` is a ``TorchRLModule`` that *holds* a
  :class:`~matchenv.agents.policy.SearchLstmPolicy` and runs its own modules (siamese CNN and
  features, actor and critic LSTMs, heads): the network RLlib trains is the one
  ``train/ppo_lstm.py`` trains, so weights move both ways as a plain ``state_dict`` (warm start
  from a shipped agent, export to a checkpoint the searchers load).
- :class:`MatchLabels` is a Learner connector piece: it adds each observation's match label
  (``info["iou"] > match_iou`` for a window, none for the reset view) to the *train batch* from the
  episodes' infos. The env runners never see it and the module's forward never reads it: the
  label reaches only the loss, as in the SB3 path (:class:`~matchenv.agents.ppo.SearchRecurrentPPO`).
- :class:`SearchPPOLearner` adds the contrastive match loss to RLlib's PPO loss.

Needs the ``rllib`` extra (``pip install "matchenv[rllib]"``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
import torch
from gymnasium import spaces
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from matchenv.agents.policy import SearchLstmPolicy, match_label

#: the train batch's column of match labels: 1 (the window matches), 0 (it does not), -1 (no label)
MATCH_LABEL = "match_label"
#: what :meth:`SearchAgentModule._forward_train` returns for the match loss: ``(B, T, E)`` embeddings
QUERY_EMB, WINDOW_EMB = "query_emb", "window_emb"


class SearchAgentModule(TorchRLModule, ValueFunctionAPI):
    """A :class:`~matchenv.agents.policy.SearchLstmPolicy` as an RLlib ``RLModule``.

    ``model_config``: ``policy_kwargs`` (the policy's constructor arguments, as
    ``train/ppo_lstm.py`` passes them: ``lstm_hidden_size``, ``features_extractor_kwargs``,
    ``pointer``, ...) and ``max_seq_len`` (RLlib's sequence length for the LSTM: an episode's
    ``max_trials`` plus one, for the step PPO's learner appends to every episode chunk).

    Batches: ``obs`` is the env's Dict, each entry ``(B, T, ...)`` (``T = 1`` on the env runners,
    ``max_seq_len`` zero-padded in the learner); the state (``h_pi``, ``c_pi`` and, with a critic
    LSTM, ``h_vf``, ``c_vf``) is ``(B, layers, hidden)``, zeros at an episode's start.
    """

    def setup(self) -> None:
        kwargs = dict(self.model_config.get("policy_kwargs", {}))
        self.policy = SearchLstmPolicy(self.observation_space, self.action_space, lambda _: 0.0, **kwargs)
        self.policy.optimizer = None  # RLlib's learner owns the optimiser
        lstm = self.policy.lstm_actor
        self._layers, self._hidden = lstm.num_layers, lstm.hidden_size
        self._critic_lstm = self.policy.lstm_critic is not None
        self._box = isinstance(self.policy.action_space, spaces.Box)

    def get_initial_state(self) -> dict[str, np.ndarray]:
        zeros = np.zeros((self._layers, self._hidden), np.float32)
        names = ["h_pi", "c_pi"] + (["h_vf", "c_vf"] if self._critic_lstm else [])
        return {name: zeros for name in names}

    # ------------------------------------------------------------------ the policy's own modules
    def _features(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int]:
        """``(B * T, features_dim)`` features of ``(B, T, ...)`` observations (rows batch-major)."""
        batch, steps = next(iter(obs.values())).shape[:2]
        flat = {key: value.reshape(batch * steps, *value.shape[2:]) for key, value in obs.items()}
        return self.policy.extract_features(flat), batch, steps

    def _recurrent(self, lstm: torch.nn.LSTM, features: torch.Tensor, batch: int, steps: int,
                   h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``lstm`` over ``(B * T, F)`` features from ``(B, layers, hidden)`` state: ``(B * T, hidden)``
        outputs (batch-major) and the new state."""
        sequence = features.reshape(batch, steps, -1).transpose(0, 1)  # (T, B, F): SB3's LSTMs are seq-first
        out, (h, c) = lstm(sequence, (h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous()))
        return out.transpose(0, 1).reshape(batch * steps, -1), h.transpose(0, 1), c.transpose(0, 1)

    def _actor(self, batch: dict[str, Any]) -> dict[str, Any]:
        features, b, t = self._features(batch[Columns.OBS])
        state = batch[Columns.STATE_IN]
        latent, h, c = self._recurrent(self.policy.lstm_actor, features, b, t, state["h_pi"], state["c_pi"])
        latent_pi = self.policy.mlp_extractor.forward_actor(latent)
        mean = self.policy.action_mean(latent_pi, features)
        if self._box:  # RLlib's TorchDiagGaussian takes [mean, log_std]
            inputs = torch.cat([mean, self.policy.log_std.expand_as(mean)], dim=-1)
        else:  # categorical logits
            inputs = mean
        out = {Columns.ACTION_DIST_INPUTS: inputs.reshape(b, t, -1), Columns.STATE_OUT: {"h_pi": h, "c_pi": c}}
        return out, features, latent, b, t

    def _critic_latent(self, batch: dict[str, Any], features: torch.Tensor, latent_pi: Optional[torch.Tensor], b: int,
                       t: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The critic's latent and its LSTM's new state (as SB3's recurrent policy computes them);
        ``latent_pi``, the actor LSTM's output, is read only with a shared LSTM."""
        if self._critic_lstm:
            state = batch[Columns.STATE_IN]
            latent, h, c = self._recurrent(self.policy.lstm_critic, features, b, t, state["h_vf"], state["c_vf"])
            return latent, {"h_vf": h, "c_vf": c}
        if self.policy.shared_lstm:
            return latent_pi.detach(), {}
        return self.policy.critic(features), {}

    def _critic(self, batch: dict[str, Any], features: torch.Tensor, latent_pi: Optional[torch.Tensor], b: int,
                t: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(B, T)`` values and the critic LSTM's new state."""
        latent, state_out = self._critic_latent(batch, features, latent_pi, b, t)
        values = self.policy.value_net(self.policy.mlp_extractor.forward_critic(latent))
        return values.reshape(b, t), state_out

    # ------------------------------------------------------------------ RLModule API
    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        out, features, latent, b, t = self._actor(batch)
        if self._critic_lstm:  # the critic's state moves along, so that training starts from it (no values needed)
            _, state = self._critic_latent(batch, features, latent, b, t)
            out[Columns.STATE_OUT].update(state)
        return out

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        out, features, latent, b, t = self._actor(batch)
        values, state = self._critic(batch, features, latent, b, t)
        out[Columns.STATE_OUT].update(state)
        out[Columns.EMBEDDINGS] = values  # the values of this pass: compute_values reuses them
        query_emb, window_emb = self.policy.last_embeddings
        out[QUERY_EMB], out[WINDOW_EMB] = query_emb.reshape(b, t, -1), window_emb.reshape(b, t, -1)
        return out

    def compute_values(self, batch: dict[str, Any], embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
        if embeddings is not None:
            return embeddings
        features, b, t = self._features(batch[Columns.OBS])
        latent_pi = None
        if self.policy.shared_lstm:  # only then does the critic read the actor's LSTM
            state = batch[Columns.STATE_IN]
            latent_pi, _, _ = self._recurrent(self.policy.lstm_actor, features, b, t, state["h_pi"], state["c_pi"])
        return self._critic(batch, features, latent_pi, b, t)[0]


class MatchLabels(ConnectorV2):
    """Learner connector piece: each observation's match label into the train batch.

    The label of an observation is that of its window (:func:`~matchenv.agents.policy.match_label`,
    the rule the SB3 path uses too): 1 where ``info["iou"] > match_iou``, 0 where not, and -1 (no
    label) for the reset view of the whole reference and for what the env does not label.
    ``get_infos(t)`` is the info returned with observation
    ``t``; RLlib's later pieces give the column the train batch's ``(B, T)`` layout.

    :param match_iou: the IoU above which a window matches.
    """

    def __init__(self, input_observation_space=None, input_action_space=None, *, match_iou: float = 0.5, **kwargs):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.match_iou = float(match_iou)

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        for episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            steps = len(episode)
            labels = np.array([match_label(info, self.match_iou) for info in episode.get_infos(slice(0, steps))],
                              dtype=np.float32)
            self.add_n_batch_items(batch, MATCH_LABEL, items_to_add=labels, num_items=steps, single_agent_episode=episode)
        return batch


class SearchPPOLearner(PPOTorchLearner):
    """RLlib's PPO loss plus ``aux_weight`` x the contrastive match loss of the labelled windows
    (:meth:`~matchenv.agents.policy.SearchLstmPolicy.match_loss`, margin ``aux_margin``); both weights come
    from ``config.learner_config_dict``. Logs ``match_loss`` and ``match_accuracy``."""

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        loss = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        options = config.learner_config_dict
        weight, margin = float(options.get("aux_weight", 0.5)), float(options.get("aux_margin", 1.0))
        if MATCH_LABEL not in batch:
            return loss
        label = batch[MATCH_LABEL]
        labelled = batch[Columns.LOSS_MASK] & (label >= 0)
        if not bool(labelled.any()):
            return loss
        policy = self.module[module_id].unwrapped().policy
        match_loss, accuracy = policy.match_loss(fwd_out[QUERY_EMB][labelled], fwd_out[WINDOW_EMB][labelled],
                                                 label[labelled], margin)
        self.metrics.log_dict({"match_loss": match_loss.detach(), "match_accuracy": accuracy}, key=module_id, window=1)
        return loss + weight * match_loss


# ---------------------------------------------------------------------------------------------
# Weights in and out: the SB3 checkpoints of train/ppo_lstm.py
# ---------------------------------------------------------------------------------------------
class InitialWeights(NamedTuple):
    """What a warm start takes from a checkpoint (:func:`initial_weights`)."""

    policy_kwargs: dict[str, Any]  # the policy's constructor arguments
    state_dict: dict[str, torch.Tensor]  # its weights
    aux_margin: float  # the contrastive margin it was trained with
    observation_space: spaces.Space  # what it was trained to see and do: the env must give the same
    action_space: spaces.Space
    env_kwargs: dict[str, Any]  # the env arguments its spaces imply: max_trials, overview_size


def initial_weights(spec: str) -> InitialWeights:
    """What a warm start takes from ``pretrained:<name>`` or a ``train/ppo_lstm.py`` checkpoint.
    Read by the safe loader (nothing in the file runs)."""
    from matchenv.agents.ppo import load_trained_model
    from matchenv.agents.pretrained import pretrained_path

    path = pretrained_path(spec.split(":", 1)[1]) if spec.startswith("pretrained:") else spec
    model = load_trained_model(path)
    env_kwargs: dict[str, Any] = {}
    if "max_trials" in getattr(model, "search_config", {}):
        env_kwargs["max_trials"] = int(model.search_config["max_trials"])
    if "overview" in model.observation_space.spaces:
        env_kwargs["overview_size"] = tuple(int(v) for v in model.observation_space["overview"].shape[1:])
    return InitialWeights(dict(model.policy_kwargs), model.policy.state_dict(), float(model.aux_margin),
                          model.observation_space, model.action_space, env_kwargs)


def export_checkpoint(policy: SearchLstmPolicy, policy_kwargs: dict[str, Any], aux_margin: float, env_id: str,
                      env_kwargs: dict[str, Any], path: Path) -> Path:
    """``policy``'s weights as a ``train/ppo_lstm.py`` checkpoint (an SB3 ``.zip``), which
    ``matchenv.load``, ``TemplateSearcher.load`` and ``--init`` take; written beside, then moved
    over ``path`` (a kill while writing leaves the previous file whole).

    :param env_id: / :param env_kwargs: the env it was trained on (the checkpoint records its spaces
        and how the searcher must show it images).
    """
    import gymnasium as gym

    from matchenv.agents.ppo import SearchRecurrentPPO, search_config_of
    from matchenv.vector import make_vec_env

    venv = make_vec_env(env_id, num_envs=1, **env_kwargs)
    model = SearchRecurrentPPO("SearchLstmPolicy", venv, n_steps=8, batch_size=8, policy_kwargs=policy_kwargs,
                               aux_margin=aux_margin, device="cpu", search_config=search_config_of(gym.make(env_id, **env_kwargs)))
    model.policy.load_state_dict({key: value.detach().cpu() for key, value in policy.state_dict().items()})
    path = Path(path)
    partial = path.with_name(path.name + ".partial.zip")
    model.save(partial)
    os.replace(partial, path)
    venv.close()
    return path
