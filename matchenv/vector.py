"""A batched Stable-Baselines3 ``VecEnv`` of :class:`~matchenv.envs.TemplateSearchEnv`.

:class:`TemplateSearchVecEnv` runs ``N`` search environments in lockstep and replaces their
per-step Python work (window placement, crop, IoU, reward, observation) by numpy over the
batch. It behaves exactly like ``DummyVecEnv([lambda: TemplateSearchEnv(**kwargs)] * N)``: with
the same seeds it returns the same observations, rewards, dones and infos (``terminal_observation``
and autoreset included), because it reuses the environments themselves for everything but the
hot path::

    from matchenv.vector import make_vec_env

    venv = make_vec_env("TemplateSearch-v0", num_envs=16, seed=0)   # VecMonitor(TemplateSearchVecEnv)
    model = RecurrentPPO("MultiInputLstmPolicy", venv, ...)

Design: the VecEnv owns ``N`` real :class:`TemplateSearchEnv` objects. ``reset`` (which draws the
pair from each env's dataset with each env's own ``np_random``) is the environment's own
``reset``. ``step`` is batched; afterwards every environment's episode state (trial, window
centre and scale, last IoU, placed windows) is written back, so ``get_attr``, ``env_method``,
rendering and :meth:`~TemplateSearchEnv.privileged_info` see what a stepped environment would.
After ``env_method``/``set_attr`` the batch state is reloaded from the environments.

Which parts are batched:

- the action map for ``"absolute"`` and ``"relative"`` actions (others, e.g. ``"discrete"``, call
  ``window_action.apply`` per environment);
- the crop: one gather from the stacked references when all references have the same shape and
  the window is the observation size (fixed-scale windows on MNIST); otherwise
  the environment's own ``window_image`` per environment (which resizes, or letterboxes photographs);
- IoU, reward, ``location``, ``trials_left`` and the dones.

``obs_mode="features"`` encodes each window with the environment's encoder one at a time (so
results are identical to the single environment); ``render_mode="human"`` draws per environment.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from matchenv.envs.actions import AbsoluteAction, RelativeAction
from matchenv.envs.template_search import TemplateSearchEnv
from matchenv.geometry import place_windows, window_locations

#: Key order of a single environment's observation, hence of ``info["terminal_observation"]``.
OBS_KEYS = ("query", "window", "location", "trials_left")


def env_kwargs_for(env_id: str, **env_kwargs: Any) -> dict[str, Any]:
    """The :class:`TemplateSearchEnv` keyword arguments that ``gym.make(env_id, **env_kwargs)`` would use."""
    import matchenv  # noqa: F401  (registers the ids)

    spec = gym.spec(env_id)
    entry = spec.entry_point
    cls = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    if not (isinstance(cls, type) and issubclass(cls, TemplateSearchEnv)):
        raise ValueError(f"{env_id} is not a TemplateSearch environment (entry point {entry!r})")
    if spec.max_episode_steps is not None:
        raise ValueError(f"{env_id} has max_episode_steps={spec.max_episode_steps}: TimeLimit is not supported here")
    return {**spec.kwargs, **env_kwargs}


class TemplateSearchVecEnv(VecEnv):
    """``num_envs`` :class:`TemplateSearchEnv` copies stepped in lockstep with numpy.

    :param num_envs: number of environments ``N``.
    :param env_id: a registered TemplateSearch id (see :data:`matchenv.ENV_IDS`); its registered
        kwargs are used, overridden by ``env_kwargs``.
    :param seed: if given, environment ``i`` is seeded with ``seed + i`` at the first :meth:`reset`
        (as ``DummyVecEnv`` after ``venv.seed(seed)``).
    :param env_kwargs: any :class:`TemplateSearchEnv` argument (``dataset_kwargs``, ``action_type``...).
    """

    def __init__(self, num_envs: int, env_id: str = "TemplateSearch-v0", seed: Optional[int] = None, **env_kwargs: Any):
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        kwargs = env_kwargs_for(env_id, **env_kwargs)
        self.env_id = env_id
        self.envs: list[TemplateSearchEnv] = [TemplateSearchEnv(**kwargs) for _ in range(int(num_envs))]
        env = self.envs[0]
        super().__init__(len(self.envs), env.observation_space, env.action_space)
        self.metadata = env.metadata
        self._keys = list(self.observation_space.spaces)  # DummyVecEnv's key order: the space's (sorted)
        self._env_keys = [key for key in OBS_KEYS + ("overview",) if key in self._keys]  # a single env's order
        self._actions: Optional[np.ndarray] = None
        self._stale: set[int] = set(range(self.num_envs))  # envs whose state the batch must (re)load
        n = self.num_envs
        # Batch episode state; x and y side by side in (N, 2) arrays. Mirrored into the envs every step.
        self._img = np.ones((n, 2))  # reference (width, height)
        self._win = np.ones((n, 2))  # the pair's nominal window (width, height), as its env places it
        self._center = np.zeros((n, 2))
        self._scale = np.ones(n)
        self._trial = np.zeros(n, dtype=np.int64)
        self._last_iou = np.zeros(n)
        self._target = np.zeros((n, 4))
        self._target_area = np.zeros(n)
        self._has_pair = np.zeros(n, dtype=bool)
        self._query = np.zeros((n, *env.observation_space["query"].shape), dtype=env.observation_space["query"].dtype)
        self._overview = None
        if "overview" in env.observation_space.spaces:
            space = env.observation_space["overview"]
            self._overview = np.zeros((n, *space.shape), dtype=space.dtype)
        self._refs: list[Optional[np.ndarray]] = [None] * n
        self._ref_stack: Optional[np.ndarray] = None  # (N, H, W, C) when every reference has one shape
        self._in_stack = np.zeros(n, dtype=bool)
        self._gather_offsets = np.zeros(0, dtype=np.int64)
        self._configure()
        if seed is not None:
            self.seed(seed)

    # ------------------------------------------------------------------ VecEnv API
    def reset(self) -> VecEnvObs:
        obs = self._empty_obs()
        for i, env in enumerate(self.envs):
            maybe_options = {"options": self._options[i]} if self._options[i] else {}
            env_obs, self.reset_infos[i] = env.reset(seed=self._seeds[i], **maybe_options)
            self._write_obs(obs, i, env_obs)
        self._stale = set(range(self.num_envs))
        self._reload()
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        actions, self._actions = self._actions, None
        if actions is None:
            raise RuntimeError("call step_async(actions) before step_wait()")
        if self._stale:
            self._reload()
        if not self._has_pair.all():
            raise RuntimeError("call reset() before step()")
        if np.any(self._trial >= self._max_trials):
            i = int(np.flatnonzero(self._trial >= self._max_trials)[0])
            raise RuntimeError(
                f"env {i}: the episode ended after {self._max_trials[i]} trials: call reset() to start a new one"
            )

        # TemplateSearchEnv.step over the batch: the same float64 operations in the same order,
        # so every number is bit-identical to the single environment's.
        center, scale = self._next_windows(actions)
        p0, p1 = self._place(center, scale)
        boxes = np.concatenate([p0, p1], axis=1)  # (x0, y0, x1, y1)
        windows = self._crop(p0, p1, boxes)
        self._center = (p0 + p1) / 2.0
        self._scale = scale
        self._trial = trial = self._trial + 1
        overlap = self._iou(p0, p1)
        terminated = trial >= self._max_trials
        success = terminated & (overlap > self._iou_threshold)
        reward = success.astype(np.float64)
        if self._any_dense:
            reward = np.where(self._dense, reward + (overlap - self._last_iou), reward)
        self._last_iou = overlap

        parts = {
            "query": self._query.copy(),
            "window": windows,
            "location": window_locations(p0, p1, self._img).astype(np.float32),
            "trials_left": ((self._max_trials - trial) / self._max_trials).astype(np.float32)[:, None],
        }
        if self._overview is not None:
            parts["overview"] = self._overview.copy()
        obs = {key: parts[key] for key in self._keys}

        info_boxes = boxes.copy()  # the infos and the envs' window lists must not share arrays
        ious, trials = overlap.tolist(), trial.tolist()
        centres, scales = self._center.tolist(), scale.tolist()
        done_list = terminated.tolist()
        extras = self._per_env_extras
        infos: list[dict[str, Any]] = []
        for i, env in enumerate(self.envs):
            # Mirror the step into the environment: the state TemplateSearchEnv.step would have left.
            env._centre, env._scale = tuple(centres[i]), scales[i]  # floats, as the env's step leaves them
            env._trial = trials[i]
            env._last_iou = ious[i]
            env._windows.append(boxes[i])
            info: dict[str, Any] = {"window_box": info_boxes[i], "iou": ious[i], "trial": trials[i]}
            if done_list[i]:
                info["is_success"] = bool(success[i])
                info["target_box"] = self._target[i].copy()
            if extras:
                if env.expose_privileged:
                    info["privileged"] = env.privileged_info()
                if env.render_mode == "human":
                    env._render_human()
            info["TimeLimit.truncated"] = False
            infos.append(info)

        if any(done_list):
            for i in np.flatnonzero(terminated).tolist():  # SB3 autoreset, as in DummyVecEnv
                infos[i]["terminal_observation"] = {key: obs[key][i].copy() for key in self._env_keys}
                env_obs, self.reset_infos[i] = self.envs[i].reset()
                self._load(i)
                self._write_obs(obs, i, env_obs)
        return obs, reward.astype(np.float32), terminated, infos

    def close(self) -> None:
        for env in self.envs:
            env.close()

    def get_images(self) -> Sequence[Optional[np.ndarray]]:
        if self.render_mode != "rgb_array":
            gym.logger.warn(f"The render mode is {self.render_mode}, but get_images() needs 'rgb_array'.")
            return [None for _ in self.envs]
        return [env.render() for env in self.envs]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [self.envs[i].get_wrapper_attr(attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for i in self._get_indices(indices):
            setattr(self.envs[i], attr_name, value)
            self._stale.add(i)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        results = []
        for i in self._get_indices(indices):
            self._stale.add(i)  # the method may change the episode (reset, step) or the settings
            results.append(self.envs[i].get_wrapper_attr(method_name)(*method_args, **method_kwargs))
        return results

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        from stable_baselines3.common import env_util

        return [env_util.is_wrapped(self.envs[i], wrapper_class) for i in self._get_indices(indices)]

    # ------------------------------------------------------------------ batch state
    def _configure(self) -> None:
        """Per-env settings as arrays, and which batched path the action map can take."""
        envs = self.envs
        self._max_trials = np.array([e.max_trials for e in envs], dtype=np.int64)
        self._iou_threshold = np.array([e.iou_threshold for e in envs], dtype=np.float64)
        self._dense = np.array([e.reward_mode == "dense" for e in envs], dtype=bool)
        self._any_dense = bool(self._dense.any())
        self._query_size = envs[0].query_size
        if any(e.query_size != self._query_size for e in envs):
            raise ValueError("all environments of a TemplateSearchVecEnv must share one query_size")
        self._query_wh = np.array([self._query_size[1], self._query_size[0]], dtype=np.float64)
        self._encoded = any(e.encoder is not None for e in envs)
        self._per_env_extras = any(e.expose_privileged or e.render_mode == "human" for e in envs)
        first = envs[0].window_action
        self._action = None
        if type(first) in (AbsoluteAction, RelativeAction) and all(
            type(e.window_action) is type(first) and _action_params(e.window_action) == _action_params(first)
            for e in envs[1:]
        ):
            self._action = first

    def _reload(self) -> None:
        """Reload the batch state of the stale environments (after a reset or a delegated call)."""
        self._configure()
        for i in sorted(self._stale):
            self._load(i)
        self._stale = set()

    def _load(self, i: int) -> None:
        """Copy env ``i``'s episode state into the batch arrays."""
        env = self.envs[i]
        pair = env.pair
        self._has_pair[i] = pair is not None
        if pair is not None:
            ref = pair.reference
            self._refs[i] = ref
            self._img[i] = ref.shape[1], ref.shape[0]
            self._target[i] = pair.target_box
            t = self._target[i]
            self._target_area[i] = max(t[2] - t[0], 0.0) * max(t[3] - t[1], 0.0)
            self._win[i] = env._window_wh  # the pair's own window for photographs
            self._center[i] = env._centre
            self._scale[i] = env._scale
            self._trial[i] = env._trial
            self._last_iou[i] = env._last_iou
            self._query[i] = env._query_obs
            if self._overview is not None:
                self._overview[i] = env._overview_obs
            self._stack_reference(i, ref)

    def _stack_reference(self, i: int, ref: np.ndarray) -> None:
        stack = self._ref_stack
        if stack is not None and stack.shape[1:] == ref.shape and stack.dtype == ref.dtype:
            stack[i] = ref
            self._in_stack[i] = True
        elif all(r is not None and r.shape == ref.shape and r.dtype == ref.dtype for r in self._refs):
            self._ref_stack = np.stack(self._refs)  # (first load, or every reference changed shape)
            self._in_stack[:] = True
            _, ref_w, channels = ref.shape
            h, w = self._query_size
            ch, r, c = np.meshgrid(np.arange(channels), np.arange(h), np.arange(w), indexing="ij")
            # flat offsets of a query-sized window at (0, 0) of one reference, in (C, h, w) order
            self._gather_offsets = ((r * ref_w + c) * channels + ch).reshape(-1)
        else:
            self._in_stack[i] = False

    # ------------------------------------------------------------------ the batched step
    def _next_windows(self, actions) -> tuple[np.ndarray, np.ndarray]:
        """Next window centres ``(N, 2)`` and scales ``(N,)``: ``WindowAction.apply`` over the batch."""
        wa = self._action
        if wa is None:  # discrete or mixed action maps: the environments' own code, one by one
            out = [
                env.window_action.apply(
                    actions[i], tuple(self._center[i]), float(self._scale[i]),
                    (int(self._img[i, 1]), int(self._img[i, 0])), env.window_size,
                )
                for i, env in enumerate(self.envs)
            ]
            arr = np.array(out, dtype=np.float64).reshape(self.num_envs, 3)
            return arr[:, :2], arr[:, 2]

        a = np.asarray(actions, dtype=np.float64)
        shape = (self.num_envs, *wa.space.shape)
        if a.shape != shape:
            if a.size != math.prod(shape):
                raise ValueError(f"expected actions of shape {shape}, got shape {np.shape(actions)}")
            a = a.reshape(shape)
        if not np.isfinite(a).all():
            i = int(np.flatnonzero(~np.isfinite(a).all(axis=1))[0])
            raise ValueError(f"action of env {i} contains NaN or inf: {a[i].tolist()}; actions must be finite")
        a = np.minimum(np.maximum(a, -1.0), 1.0)  # == np.clip for finite values, without its overhead
        return wa.move(a, self._center, self._scale, self._img, self._win)

    def _place(self, center: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`matchenv.geometry.place_windows` over the batch: corners ``(x0, y0)`` and ``(x1, y1)``."""
        return place_windows(center, self._win * scale[:, None], self._img)

    def _iou(self, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
        """:func:`matchenv.geometry.iou` of the windows with the targets (same arithmetic, no clip/where overhead)."""
        t = self._target
        inter_wh = np.maximum(np.minimum(p1, t[:, 2:]) - np.maximum(p0, t[:, :2]), 0.0)
        inter = inter_wh[:, 0] * inter_wh[:, 1]
        size = np.maximum(p1 - p0, 0.0)
        union = size[:, 0] * size[:, 1] + self._target_area - inter
        return inter / union  # union >= window area >= 1 pixel

    def _crop(self, p0: np.ndarray, p1: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """The observed windows ``(N, C, h, w)`` (or encoded features): one gather where possible."""
        space = self.observation_space["window"]
        fast = self._in_stack & (p1 - p0 == self._query_wh).all(axis=1)
        if self._encoded:
            fast[:] = False
        if fast.all():  # the common case: every window is query-sized, no resizing
            return self._gather(np.arange(self.num_envs), p0)
        out = np.empty((self.num_envs, *space.shape), dtype=space.dtype)
        idx = np.flatnonzero(fast)
        if idx.size:
            out[idx] = self._gather(idx, p0[idx])
        for i in np.flatnonzero(~fast).tolist():  # other sizes: crop and resize, one env at a time
            env = self.envs[i]
            out[i] = env._to_obs_image(env.window_image(boxes[i]))
        return out

    def _gather(self, idx: np.ndarray, p0: np.ndarray) -> np.ndarray:
        _, ref_h, ref_w, channels = self._ref_stack.shape
        xy = p0.astype(np.int64)
        base = ((idx * ref_h + xy[:, 1]) * ref_w + xy[:, 0]) * channels
        flat = self._ref_stack.reshape(-1).take(base[:, None] + self._gather_offsets)
        return flat.reshape(idx.size, channels, *self._query_size)

    def _empty_obs(self) -> dict[str, np.ndarray]:
        spaces = self.observation_space.spaces
        return {key: np.zeros((self.num_envs, *spaces[key].shape), dtype=spaces[key].dtype) for key in self._keys}

    def _write_obs(self, obs: dict[str, np.ndarray], i: int, env_obs: dict[str, np.ndarray]) -> None:
        for key in self._keys:
            obs[key][i] = env_obs[key]


def _action_params(window_action) -> tuple:
    return (
        window_action.scale_range, getattr(window_action, "max_step", None), getattr(window_action, "max_zoom", None)
    )


#: what :func:`make_vec_env` can build
VEC_ENV_KINDS = ("batched", "dummy", "subproc")


def make_vec_env(
    env_id: str = "TemplateSearch-v0",
    num_envs: int = 1,
    seed: Optional[int] = None,
    batched: bool = True,
    monitor: bool = True,
    kind: Optional[str] = None,
    **env_kwargs: Any,
) -> VecEnv:
    """``num_envs`` TemplateSearch environments as an SB3 ``VecEnv``.

    :param env_id: a registered id (:data:`matchenv.ENV_IDS`).
    :param num_envs: number of environments.
    :param seed: environment ``i`` is seeded with ``seed + i`` at the first reset (and its action space too).
    :param batched: ``kind="batched"`` if true, else ``"dummy"`` (when ``kind`` is not given).
    :param monitor: record episode returns and lengths in ``info["episode"]`` (``VecMonitor`` around
        the batched VecEnv, SB3's ``Monitor`` per env otherwise), as SB3's own ``make_vec_env`` does.
    :param kind: ``"batched"``: :class:`TemplateSearchVecEnv`, every env stepped at once in this
        process (the fastest on one core); ``"dummy"``: SB3's ``DummyVecEnv`` of ``gym.make`` envs
        (the reference implementation; same episodes for the same seed); ``"subproc"``: SB3's
        ``SubprocVecEnv``, each env in its own process (``forkserver``), for machines with cores
        to spare (same episodes for the same seed too; its action spaces are seeded only with
        ``monitor=True``, by SB3).
    :param env_kwargs: :class:`TemplateSearchEnv` arguments.
    """
    kind = kind or ("batched" if batched else "dummy")
    if kind not in VEC_ENV_KINDS:
        raise ValueError(f"kind must be one of {VEC_ENV_KINDS}, got {kind!r}")
    if kind == "batched":
        venv = TemplateSearchVecEnv(num_envs, env_id, seed=seed, **env_kwargs)
        if seed is not None:
            for i, env in enumerate(venv.envs):
                env.action_space.seed(seed + i)
        return VecMonitor(venv) if monitor else venv

    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    vec_env_cls = DummyVecEnv if kind == "dummy" else SubprocVecEnv
    if kind == "subproc" and ":" not in env_id:
        env_id = f"matchenv:{env_id}"  # a fresh worker process imports matchenv (which registers the ids) first
    if monitor:
        # SB3 seeds env i with seed + i at the first reset, and its action space
        return sb3_make_vec_env(env_id, n_envs=num_envs, seed=seed, env_kwargs=env_kwargs, vec_env_cls=vec_env_cls)
    venv = vec_env_cls([functools.partial(gym.make, env_id, **env_kwargs) for _ in range(num_envs)])
    if seed is not None:
        venv.seed(seed)
        for i, env in enumerate(getattr(venv, "envs", [])):  # (a subprocess's env is not reachable)
            env.action_space.seed(seed + i)
    return venv


__all__ = ["VEC_ENV_KINDS", "TemplateSearchVecEnv", "env_kwargs_for", "make_vec_env"]
