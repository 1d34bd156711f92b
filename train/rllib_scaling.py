"""How RLlib training of the search agent scales with env runners: what one step costs, where.

    python train/rllib_scaling.py --runners 0,1,2 --num-envs-per-env-runner 8 --iterations 6

For each number of remote env runners (0: the driver samples itself), with the same PPO settings
as ``train/rllib_ppo.py``'s defaults, prints and writes (``--out``: ``results.json``,
``results.md``):

- **training** env steps per second: ``algo.train()`` iterations (sampling, then the learner's
  update; RLlib's PPO does one after the other), the median of ``--iterations`` after one warm-up;
- from RLlib's own timers: an iteration's sampling and the learner's update, per env step; and
  a sampled step's parts: the vector env's ``step``, the module's forward pass (both on
  ``--num-envs-per-env-runner`` envs at once, per env) and RLlib's connectors.

And the back-of-envelope for bigger machines: with ``C`` CPUs, ``C - 1`` env runners each
sampling at the driver's measured rate, then one CPU learner at the measured update cost. The
machine's cores are shared by all of it: only compare rates measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runners", default="0,1,2", help="comma-separated numbers of remote env runners to measure")
    parser.add_argument("--num-envs-per-env-runner", type=int, default=8, help="environments each runner steps at once")
    parser.add_argument("--iterations", type=int, default=6, help="timed training iterations per setting (after one warm-up)")
    parser.add_argument("--env-id", default="TemplateSearch-TranslatedMNIST-v0", help="a registered TemplateSearch id")
    parser.add_argument("--extrapolate", default="8,64", help="CPU counts for the back-of-envelope")
    parser.add_argument("--out", default="runs/rllib_scaling", help="folder for results.json and results.md")
    options = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    sys.path.insert(0, str(HERE))
    import ray
    import torch

    import matchenv  # noqa: F401
    from rllib_ppo import Args, build_algorithm, policy_kwargs_of

    torch.set_num_threads(1)
    args = Args(env_id=options.env_id, num_envs_per_env_runner=options.num_envs_per_env_runner)
    policy_kwargs = policy_kwargs_of(args)
    rows = []
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    try:
        for runners in [int(r) for r in options.runners.split(",")]:
            args.num_env_runners = runners
            algo = build_algorithm(args, policy_kwargs, args.aux_margin)
            algo.train()  # warm-up: workers started, caches and allocators warm
            rates, result = [], None
            for _ in range(options.iterations):
                start = time.perf_counter()
                result = algo.train()
                rates.append(int(result["env_runners"]["num_env_steps_sampled"]) / (time.perf_counter() - start))
            rows.append(split(result, runners, args.num_envs_per_env_runner, statistics.median(rates)))
            print(json.dumps(rows[-1]), flush=True)
            algo.stop()
    finally:
        ray.shutdown()
    write(rows, options, args)


def split(result: dict, runners: int, envs: int, training_rate: float) -> dict:
    """One setting's row from RLlib's own timers (moving averages over the last iterations):
    an iteration's sampling and update, and a sampled step's parts (per env step: the vector
    env's ``step`` and the module's forward pass run on ``envs`` envs at once)."""
    timers, runner = result["timers"], result["env_runners"]
    steps = int(runner["num_env_steps_sampled"])
    connectors = (runner["env_to_module_connector"]["connector_pipeline_timer"]
                  + runner["module_to_env_connector"]["connector_pipeline_timer"])
    return {"env_runners": runners, "envs_per_runner": envs, "training_steps_per_s": training_rate,
            "sampling_us_per_step": 1e6 * timers["env_runner_sampling_timer"] / steps,
            "update_us_per_step": 1e6 * timers["learner_update_timer"] / steps,
            "env_us_per_step": 1e6 * runner["env_step_timer"] / envs,
            "inference_us_per_step": 1e6 * runner["rlmodule_inference_timer"] / envs,
            "connectors_us_per_step": 1e6 * connectors / envs}


def write(rows: list[dict], options, args) -> None:
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"
    lines = [f"RLlib PPO on {options.env_id}, {args.num_envs_per_env_runner} envs per runner, train batch "
             f"{args.train_batch_size}, learner on the driver (1 torch thread); {machine}", "",
             "| remote env runners | training env steps/s | sampling, us per env step | learner update, us per env step "
             "| of a sampled step: env / module forward / connectors, us |",
             "|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['env_runners']} | {row['training_steps_per_s']:.0f} | {row['sampling_us_per_step']:.0f} | "
                     f"{row['update_us_per_step']:.0f} | {row['env_us_per_step']:.0f} / {row['inference_us_per_step']:.0f}"
                     f" / {row['connectors_us_per_step']:.0f} |")
    local = next((row for row in rows if row["env_runners"] == 0), None)
    if local:
        # One runner samples at the driver's rate; with C CPUs: C - 1 runners sampling at once,
        # then the learner's update (RLlib's PPO does one after the other).
        sample, update = local["sampling_us_per_step"] / 1e6, local["update_us_per_step"] / 1e6
        lines += ["", "Back-of-envelope from the 0-runner row (C - 1 runners sampling in parallel at its rate, "
                      "then one CPU learner at its update cost):", "",
                  "| CPUs | env runners | sampling env steps/s | training env steps/s (CPU learner) |",
                  "|---:|---:|---:|---:|"]
        for cpus in [int(c) for c in options.extrapolate.split(",")]:
            sampling = (cpus - 1) / sample
            lines.append(f"| {cpus} | {cpus - 1} | {sampling:.0f} | {1 / (1 / sampling + update):.0f} |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"rows": rows, "env_id": options.env_id}, indent=2))
    print("\n" + text)


if __name__ == "__main__":
    main()
