"""How much does one TemplateSearch step cost, and is the environment the bottleneck of training?

Prints a markdown table of median timings over ``--repeats`` runs, per environment id:

* the raw environment (``env.unwrapped``): microseconds per ``step`` and per ``reset``, measured
  separately (the query/reference pair is generated in ``reset``), and per env-step with the reset
  amortised over the episode;
* the ``gym.make`` environment with its wrappers (OrderEnforcing, PassiveEnvChecker), per env-step;
* SB3 ``DummyVecEnv`` of ``--num-envs`` ``gym.make`` environments, per env-step (autoreset included);
* the batched :class:`matchenv.vector.TemplateSearchVecEnv`, per env-step, and its speedup over
  ``DummyVecEnv`` (the median of the ratios measured in the same repeat);
* for context, one RecurrentPPO ``MultiInputLstmPolicy`` forward pass (with
  ``matchenv.agents.SearchFeaturesExtractor``) on a batch of ``--num-envs`` observations and LSTM states,
  as in ``collect_rollouts``, per env-step.

Usage::

    MATCHENV_DATA=/path/to/mnist python train/benchmark_env.py --env-id all --json bench.json

Timings on a shared machine are noisy: compare ratios from one run, not numbers across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

import matchenv
from matchenv.vector import TemplateSearchVecEnv

COLUMNS = {  # metric key -> table header
    "raw_step_us": "raw step µs",
    "raw_reset_us": "raw reset µs",
    "raw_env_step_us": "raw µs/env-step",
    "make_env_step_us": "gym.make µs/env-step",
    "dummy_env_step_us": "DummyVecEnv µs/env-step",
    "batched_env_step_us": "TemplateSearchVecEnv µs/env-step",
    "speedup": "batched speedup",
    "policy_env_step_us": "policy forward µs/env-step",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-id", default="TemplateSearch-v0", help='a registered id, or "all" (matchenv.ENV_IDS)')
    parser.add_argument("--episodes", type=int, default=240, help="episodes per measurement (vectorised: in all)")
    parser.add_argument("--num-envs", type=int, default=16, help="N: the vectorised envs and the policy batch")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of every measurement; the table shows medians")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads, for the policy forward pass")
    parser.add_argument("--policy-iters", type=int, default=50, help="policy forward passes per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write every sample and median to this file")
    return parser.parse_args()


def machine_info(threads: int) -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_threads_requested": threads,
        "opencv_threads": cv2.getNumThreads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "gymnasium": gym.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "matchenv": matchenv.__version__,
    }


def sample_actions(space: gym.Space, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniformly random actions (continuous ones as float32, as a policy would send them)."""
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(space.n, size=n)
    return rng.uniform(space.low, space.high, size=(n, *space.shape)).astype(np.float32)


def time_single_env(env: gym.Env, episodes: int, seed: int) -> dict[str, float]:
    """Microseconds per step and per reset (each call timed on its own) and per env-step overall."""
    max_trials = env.unwrapped.max_trials
    actions = sample_actions(env.action_space, episodes * max_trials, np.random.default_rng(seed))
    env.reset(seed=seed)
    step_ns = reset_ns = 0
    k = 0
    clock = time.perf_counter_ns
    for _ in range(episodes):
        t0 = clock()
        env.reset()
        t1 = clock()
        reset_ns += t1 - t0
        terminated = truncated = False
        while not (terminated or truncated):
            t0 = clock()
            _, _, terminated, truncated, _ = env.step(actions[k])
            step_ns += clock() - t0
            k += 1
    return {
        "step_us": step_ns / k / 1e3,
        "reset_us": reset_ns / episodes / 1e3,
        "env_step_us": (step_ns + reset_ns) / k / 1e3,
    }


def time_vec_env(venv: VecEnv, episodes: int, max_trials: int, seed: int) -> float:
    """Microseconds per env-step of a VecEnv over ``episodes`` episodes in all (autoresets included)."""
    n = venv.num_envs
    vec_steps = max(1, -(-episodes // n)) * max_trials
    actions = sample_actions(venv.action_space, vec_steps * n, np.random.default_rng(seed)).reshape(vec_steps, n, -1)
    if isinstance(venv.action_space, gym.spaces.Discrete):
        actions = actions[..., 0]
    venv.seed(seed)
    venv.reset()
    t0 = time.perf_counter()
    for k in range(vec_steps):
        venv.step(actions[k])
    return (time.perf_counter() - t0) / (vec_steps * n) * 1e6


def make_policy(venv: VecEnv, seed: int):
    from sb3_contrib import RecurrentPPO

    from matchenv.agents import SearchFeaturesExtractor

    model = RecurrentPPO(
        "MultiInputLstmPolicy", venv, policy_kwargs={"features_extractor_class": SearchFeaturesExtractor}, seed=seed,
        device="cpu",
    )
    return model.policy


def time_policy(policy, venv: VecEnv, iters: int) -> float:
    """Microseconds per env-step of the rollout forward pass: obs to tensor, policy(obs, lstm, starts), actions back."""
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    n = venv.num_envs
    obs = venv.reset()
    shape = (policy.lstm_actor.num_layers, n, policy.lstm_actor.hidden_size)
    states = RNNStates((torch.zeros(shape), torch.zeros(shape)), (torch.zeros(shape), torch.zeros(shape)))
    starts = np.zeros(n, dtype=bool)
    policy.set_training_mode(False)

    def forward(states):
        with torch.no_grad():
            obs_tensor = obs_as_tensor(obs, policy.device)
            episode_starts = torch.tensor(starts, dtype=torch.float32)
            actions, _, _, states = policy(obs_tensor, states, episode_starts)
        if isinstance(venv.action_space, gym.spaces.Box):
            np.clip(actions.numpy(), venv.action_space.low, venv.action_space.high)
        return states

    states = forward(states)  # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        states = forward(states)
    return (time.perf_counter() - t0) / (iters * n) * 1e6


def measure(env_id: str, args: argparse.Namespace, repeat: int, policy_cache: dict) -> dict[str, float]:
    seed = args.seed + 1000 * repeat
    out: dict[str, float] = {}
    raw = time_single_env(gym.make(env_id).unwrapped, args.episodes, seed)
    out.update(raw_step_us=raw["step_us"], raw_reset_us=raw["reset_us"], raw_env_step_us=raw["env_step_us"])
    out["make_env_step_us"] = time_single_env(gym.make(env_id), args.episodes, seed)["env_step_us"]

    max_trials = gym.make(env_id).unwrapped.max_trials
    dummy = DummyVecEnv([lambda: gym.make(env_id) for _ in range(args.num_envs)])
    batched = TemplateSearchVecEnv(args.num_envs, env_id)
    out["dummy_env_step_us"] = time_vec_env(dummy, args.episodes, max_trials, seed)
    out["batched_env_step_us"] = time_vec_env(batched, args.episodes, max_trials, seed)
    out["speedup"] = out["dummy_env_step_us"] / out["batched_env_step_us"]

    if "policy" not in policy_cache:
        policy_cache["policy"] = make_policy(batched, args.seed)
    out["policy_env_step_us"] = time_policy(policy_cache["policy"], batched, args.policy_iters)
    return out


def markdown_table(medians: dict[str, dict[str, float]]) -> str:
    lines = ["| env id | " + " | ".join(COLUMNS.values()) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for env_id, row in medians.items():
        cells = [f"{row[k]:.2f}x" if k == "speedup" else f"{row[k]:.1f}" for k in COLUMNS]
        lines.append(f"| {env_id} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)  # deliberate: a rollout worker's CPU budget, not every core
    env_ids = list(matchenv.ENV_IDS) if args.env_id == "all" else [args.env_id]
    info = machine_info(args.threads)
    probe = gym.make(env_ids[0]).unwrapped
    info["mnist"] = getattr(probe.dataset, "source", "n/a")

    # Warm up once per id: loads MNIST, fills caches, imports lazily loaded modules.
    for env_id in env_ids:
        time_single_env(gym.make(env_id), 2, args.seed)

    samples: dict[str, dict[str, list[float]]] = {env_id: {k: [] for k in COLUMNS} for env_id in env_ids}
    policy_cache: dict = {}
    for repeat in range(args.repeats):
        for env_id in env_ids:  # interleaved, so that a slow spell of the machine hits every id
            for key, value in measure(env_id, args, repeat, policy_cache).items():
                samples[env_id][key].append(value)
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
    medians = {env_id: {k: statistics.median(v) for k, v in rows.items()} for env_id, rows in samples.items()}

    print()
    print(
        f"Machine: {info['cpu']}, {info['usable_cpus']} usable of {info['logical_cpus']} logical CPUs, "
        f"torch {info['torch']} with {info['torch_threads']} thread(s), OpenCV threads {info['opencv_threads']}, "
        f"numpy {info['numpy']}, gymnasium {info['gymnasium']}, SB3 {info['stable_baselines3']}."
    )
    print(f"MNIST: {info['mnist']}")
    print(
        f"Medians of {args.repeats} repeats, {args.episodes} episodes per measurement, N = {args.num_envs} envs "
        "(vectorised envs and policy batch)."
    )
    print()
    print(markdown_table(medians))
    print()
    print(
        "µs/env-step includes the episode's reset spread over its steps (one reset per max_trials steps); "
        "raw step / raw reset time each call alone. DummyVecEnv holds gym.make envs; batched speedup is "
        "DummyVecEnv / TemplateSearchVecEnv, the median of per-repeat ratios. The policy column is one "
        "RecurrentPPO MultiInputLstmPolicy forward (SearchFeaturesExtractor, LSTM states, no grad) on N "
        "observations divided by N: what collect_rollouts spends per env-step besides the env."
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "medians": medians, "samples": samples}, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
