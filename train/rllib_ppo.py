"""Train or fine-tune the search agent with Ray RLlib's PPO, on one machine or a Ray cluster.

    pip install -e ".[rllib]"
    python train/rllib_ppo.py                                      # Translated MNIST, dense reward, from scratch
    python train/rllib_ppo.py --init pretrained:cluttered-mnist \\
        --env-id TemplateSearch-ClutteredMNIST-v0 --reward-mode sparse --lr 1e-5   # fine-tune a shipped agent
    python train/rllib_ppo.py --address auto --num-env-runners 16  # on a Ray cluster (docs/rllib.md)

The network is the project's agent (``SearchLstmPolicy``: siamese CNN, LSTM, actor and critic
heads, contrastive match head) inside an RLlib ``RLModule`` (``matchenv/agents/rllib_agent.py``);
the contrastive match loss is added to PPO's by a custom Learner, its labels read from the
episodes' infos and never given to the network. ``--init`` starts from a ``train/ppo_lstm.py``
checkpoint or a shipped agent; every evaluation writes ``export.zip``, an ordinary checkpoint
that ``matchenv.load(path)`` and ``TemplateSearcher.load(path)`` take (``best.zip``: the best
evaluated).

Writes into ``--out-dir`` (default ``runs/rllib-<env>-seed<seed>``): ``checkpoint/`` (RLlib's,
what ``--resume`` continues from), ``state.json``, ``export.zip``, ``best.zip``, ``tb/``
(TensorBoard and ``progress.jsonl``), ``args.json`` and ``summary.json``. A folder that holds a run
is never reused unless ``--resume`` continues it or ``--overwrite`` replaces it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # (ray is imported only when a run starts)
    from matchenv.agents.rllib_agent import InitialWeights


@dataclass
class Args:
    """Every hyperparameter of a run, in one place (each is also a command-line flag)."""

    env_id: str = "TemplateSearch-TranslatedMNIST-v0"  # a registered TemplateSearch id (one per dataset)
    reward_mode: str = "dense"  # "dense" = IoU improvement per step; "sparse" = the paper's success reward
    max_trials: int = 6  # windows per episode (with --init: the checkpoint's)
    overview_size: int = 0  # >0: also observe the whole reference at this side (with --init: the checkpoint's)
    seed: int = 0  # seeds the network, the env runners' episodes and RLlib's sampling
    out_dir: str = ""  # default: runs/rllib-<env>-seed<seed>
    overwrite: bool = False  # replace the run already in --out-dir (without it, a folder holding a run is refused)
    resume: str = ""  # a run's checkpoint folder (<out-dir>/checkpoint) to continue from
    init: str = ""  # warm start: pretrained:<name> or a train/ppo_lstm.py .zip (its network replaces the flags below)
    timesteps: int = 300_000  # environment steps (windows placed) to train for, in all
    # Ray: where it runs
    address: str = ""  # a Ray cluster to join ("auto" after `ray start`); empty: a Ray on this machine only
    num_cpus: int = 0  # CPUs of the local Ray (0: all of this machine's)
    num_env_runners: int = 0  # remote env runner processes (0: sample in this process)
    num_envs_per_env_runner: int = 8  # environments each runner steps at once
    num_learners: int = 0  # learner processes (0: in this process; more: data-parallel, each with its GPU if given)
    num_gpus_per_learner: float = 0.0  # 1: each learner on a GPU (the env runners stay on CPUs)
    threads: int = 1  # torch CPU threads of this process (the learner, and sampling with 0 runners)
    # model (ignored with --init: the checkpoint's network)
    lstm_hidden_size: int = 128  # units of the policy's LSTM
    cnn_channels: str = "8,16,32,32,32"  # output channels of the siamese CNN's five conv layers
    # PPO
    train_batch_size: int = 1536  # environment steps per update (split among --num-learners)
    minibatch_size: int = 256  # steps per gradient step (split among --num-learners)
    num_epochs: int = 4  # passes over each batch
    lr: float = 3e-4  # Adam learning rate
    gamma: float = 0.99  # discount factor
    gae_lambda: float = 0.95  # GAE lambda
    clip_param: float = 0.2  # PPO's clipping of the policy ratio
    entropy_coeff: float = 0.0  # entropy bonus weight
    vf_loss_coeff: float = 0.5  # value loss weight (SB3's default)
    aux_weight: float = 0.5  # contrastive match loss weight (0: off)
    aux_margin: float = 1.0  # contrastive margin (with --init: the checkpoint's)
    # evaluation and checkpoints
    eval_pairs: int = 500  # first N pairs of the fixed test split
    eval_every: int = 50_000  # environment steps between evaluations (each also writes export.zip)
    checkpoint_every: int = 25_000  # environment steps between checkpoint/ writes


CHOICES = {"reward_mode": ["sparse", "dense"]}
#: flags that define the task or the network: a resumed run keeps the values of the run it continues
FIXED_ON_RESUME = ("env_id", "reward_mode", "max_trials", "overview_size", "init", "lstm_hidden_size", "cnn_channels")
#: RLlib's name for the env creator (any TemplateSearch id, chosen by env_config["env_id"])
RLLIB_ENV = "matchenv-template-search"


def make_env(env_config: dict):
    """The env creator RLlib calls in every env runner (a remote one too): importing matchenv
    there registers the ids."""
    import gymnasium as gym

    import matchenv  # noqa: F401

    kwargs = dict(env_config)
    kwargs.pop("num_envs", None)
    return gym.make(kwargs.pop("env_id"), **kwargs)


def env_kwargs_of(args: Args) -> dict:
    """The env's arguments (beside its id) for a run's flags."""
    kwargs = {"reward_mode": args.reward_mode, "max_trials": args.max_trials}
    if args.overview_size:
        kwargs["overview_size"] = (args.overview_size, args.overview_size)
    return kwargs


def policy_kwargs_of(args: Args) -> dict:
    """The policy's arguments for a run's network flags (a new run; ``--init`` takes the checkpoint's)."""
    return {"lstm_hidden_size": args.lstm_hidden_size,
            "features_extractor_kwargs": {"channels": [int(c) for c in args.cnn_channels.split(",")]}}


def parse_args() -> tuple[Args, Optional[InitialWeights]]:
    """The run's flags, checked, and with ``--init`` the checkpoint's weights (read here once, to
    check them against the env before Ray starts)."""
    import gymnasium as gym

    import matchenv
    from matchenv.agents.script_args import (cnn_channels_arg, dataclass_parser, given_flags, parse_dataclass_args,
                                             resumed_args)

    parser = dataclass_parser(Args, __doc__, CHOICES)
    args = parse_dataclass_args(parser, Args)
    given = given_flags(parser)
    start = None
    if args.resume:  # the run's own flags, unless given again (its task and network cannot change)
        folder = Path(args.resume).parent
        if not (Path(args.resume) / "rllib_checkpoint.json").is_file():
            parser.error(f"--resume {args.resume}: not an RLlib checkpoint folder (a run writes <out-dir>/checkpoint)")
        if args.out_dir and Path(args.out_dir).resolve() != folder.resolve():
            parser.error(f"--resume continues the run in its own folder {folder}: leave --out-dir out (or pass that folder)")
        if not (folder / "args.json").is_file() or not (folder / "state.json").is_file():
            parser.error(f"--resume {args.resume}: {folder} has no args.json and state.json beside the checkpoint, "
                         "so the run's network and counters are unknown")
        if "init" in given:
            parser.error("--init starts a new run from a checkpoint's weights; --resume continues a run: pass one")
        args = resumed_args(args, given, parser, folder / "args.json", FIXED_ON_RESUME)
    env_ids = {**matchenv.ENV_IDS, **matchenv.DOWNLOAD_ENV_IDS}
    if args.env_id not in env_ids:
        parser.error(f"unknown --env-id {args.env_id!r}; registered: {', '.join(env_ids)}")
    if args.init and not args.resume:
        if not args.init.startswith("pretrained:") and not Path(args.init).is_file():
            parser.error(f"--init {args.init}: no such checkpoint (pass pretrained:<name> or a train/ppo_lstm.py .zip)")
        from matchenv.agents.rllib_agent import initial_weights

        try:
            start = initial_weights(args.init)
        except (ValueError, OSError, KeyError) as err:  # an unknown name, an unsafe or unreadable file
            parser.error(f"--init {args.init}: {err}")
        # the checkpoint's episode length and overview, unless given; then its spaces must be the env's
        if "max_trials" in start.env_kwargs and "max_trials" not in given:
            args = dataclasses.replace(args, max_trials=start.env_kwargs["max_trials"])
        if "overview_size" in start.env_kwargs and "overview_size" not in given:
            args = dataclasses.replace(args, overview_size=start.env_kwargs["overview_size"][0])
        env = gym.make(args.env_id, **env_kwargs_of(args))
        if env.observation_space != start.observation_space or env.action_space != start.action_space:
            parser.error(f"--init {args.init} was trained on observations {start.observation_space} and actions "
                         f"{start.action_space}; --env-id {args.env_id} gives {env.observation_space} and "
                         f"{env.action_space}: pass the --env-id (and --overview-size) it was trained on")
    if args.minibatch_size > args.train_batch_size:
        parser.error(f"--minibatch-size {args.minibatch_size} is larger than --train-batch-size {args.train_batch_size}")
    cnn_channels_arg(parser, args.cnn_channels)
    return args, start


def build_algorithm(args: Args, policy_kwargs: dict, aux_margin: float):
    """RLlib's PPO with the project's module, learner and label connector."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.tune.registry import register_env

    from matchenv.agents.rllib_agent import MatchLabels, SearchAgentModule, SearchPPOLearner

    register_env(RLLIB_ENV, make_env)
    config = (
        PPOConfig()
        .environment(RLLIB_ENV, env_config={"env_id": args.env_id, **env_kwargs_of(args)})
        .env_runners(num_env_runners=args.num_env_runners, num_envs_per_env_runner=args.num_envs_per_env_runner,
                     rollout_fragment_length="auto")
        .learners(num_learners=args.num_learners, num_gpus_per_learner=args.num_gpus_per_learner,
                  learner_class=SearchPPOLearner,
                  learner_connector=lambda observation_space, action_space: MatchLabels(observation_space, action_space),
                  learner_config_dict={"aux_weight": args.aux_weight, "aux_margin": aux_margin})
        # max_seq_len: a whole episode and the step PPO's learner appends to it, in one sequence
        .rl_module(rl_module_spec=RLModuleSpec(module_class=SearchAgentModule,
                                               model_config={"policy_kwargs": policy_kwargs, "max_seq_len": args.max_trials + 1}))
        # (RLlib's sizes are per learner: the flags are the update's, split among the learners)
        .training(train_batch_size_per_learner=args.train_batch_size // max(1, args.num_learners),
                  minibatch_size=args.minibatch_size // max(1, args.num_learners),
                  num_epochs=args.num_epochs, lr=args.lr, gamma=args.gamma, lambda_=args.gae_lambda,
                  clip_param=args.clip_param, entropy_coeff=args.entropy_coeff, vf_loss_coeff=args.vf_loss_coeff)
        # several learners: DDP must allow parameters without a gradient in a step (the pointer
        # head's gate is trained by imitation only; the match head when --aux-weight is 0)
        .framework(torch_ddp_kwargs={"find_unused_parameters": True})
        .debugging(seed=args.seed, log_level="WARN")
    )
    return config.build_algo()


def main() -> None:
    args, start = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from matchenv.agents.run_dir import train_in_run_folder

    run_name = args.env_id.replace("TemplateSearch-", "").replace("-v0", "").lower()
    # errors: a checkpoint that cannot start this run (an unsafe or wrong file)
    train_in_run_folder(functools.partial(train, args, start), args.out_dir, f"runs/rllib-{run_name}-seed{args.seed}",
                        resume=args.resume, overwrite=args.overwrite, checkpoint="checkpoint", errors=(ValueError,))


def train(args: Args, start: Optional[InitialWeights], out_dir: Path) -> None:
    """The run: ``start`` is ``--init``'s weights (:func:`parse_args`), else ``None``."""
    import numpy as np
    import ray
    import torch
    from ray.rllib.core import DEFAULT_MODULE_ID
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from matchenv.agents.evaluation import TestSplitEvaluator
    from matchenv.agents.policy import SearchLstmPolicy
    from matchenv.agents.rllib_agent import export_checkpoint
    from matchenv.agents.run_dir import terminate_as_interrupt, write_json_atomic

    torch.set_num_threads(args.threads)
    state_file = out_dir / "state.json"
    state = {"timesteps": 0, "best_success": -1.0, "evaluations": [], "minutes": 0.0}
    if args.resume:  # (parse_args: out_dir is the checkpoint's folder, with state.json and args.json)
        state = json.loads(state_file.read_text())
        saved = json.loads((out_dir / "args.json").read_text())
        policy_kwargs, aux_margin = saved["policy_kwargs"], saved["aux_margin"]
    elif start is not None:
        policy_kwargs, aux_margin = start.policy_kwargs, start.aux_margin
    else:
        policy_kwargs, aux_margin = policy_kwargs_of(args), args.aux_margin
    write_json_atomic(out_dir / "args.json", {**dataclasses.asdict(args), "policy_kwargs": policy_kwargs,
                                              "aux_margin": aux_margin})
    env_kwargs = env_kwargs_of(args)

    # The workers inherit this process's environment (MATCHENV_DATA, ...) at ray.init.
    ray.init(address=args.address or None, num_cpus=(args.num_cpus or None) if not args.address else None,
             include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    # after ray.init, which installs a SIGTERM handler of its own that ends the process at once
    signal.signal(signal.SIGTERM, terminate_as_interrupt)
    try:
        algo = build_algorithm(args, policy_kwargs, aux_margin)
        if args.resume:
            algo.restore_from_path(str(Path(args.resume).resolve()))
            print(f"resumed from {args.resume} at {state['timesteps']} environment steps")
        elif start is not None:
            algo.learner_group.set_weights({DEFAULT_MODULE_ID: {f"policy.{k}": v for k, v in start.state_dict.items()}})
            algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)
            print(f"starting from the weights of {args.init}")
        evaluator = TestSplitEvaluator(args.env_id, args.eval_pairs, env_kwargs)
        writer = SummaryWriter(str(out_dir / "tb"))
        log = (out_dir / "tb" / "progress.jsonl").open("a")  # one JSON object per iteration (keys vary)

        # The learner's weights (in this process, another, or on a GPU) copied into a local policy.
        local_policy = SearchLstmPolicy(evaluator.envs[0].observation_space, evaluator.envs[0].action_space,
                                        lambda _: 0.0, **policy_kwargs)

        def learner_policy() -> SearchLstmPolicy:
            weights = algo.learner_group.get_weights()[DEFAULT_MODULE_ID]
            local_policy.load_state_dict({key[len("policy."):]: torch.as_tensor(np.asarray(value))
                                          for key, value in weights.items()})
            return local_policy

        def evaluate(step: int) -> dict:
            policy = learner_policy()
            scores = evaluator(policy)
            export_checkpoint(policy, policy_kwargs, aux_margin, args.env_id, env_kwargs, out_dir / "export.zip")
            if scores["success_rate"] > state["best_success"]:
                state["best_success"] = scores["success_rate"]
                shutil.copyfile(out_dir / "export.zip", out_dir / "best.zip")
            state["evaluations"].append({"timesteps": step, **scores})
            writer.add_scalar("eval/success_rate", scores["success_rate"], step)
            writer.add_scalar("eval/mean_iou", scores["mean_iou"], step)
            return scores

        def save_checkpoint() -> None:
            # written beside, then swapped in: a kill while writing leaves the previous checkpoint whole
            fresh, old = out_dir / "checkpoint.new", out_dir / "checkpoint.old"
            shutil.rmtree(fresh, ignore_errors=True)
            algo.save_to_path(str(fresh.resolve()))
            if (out_dir / "checkpoint").exists():
                os.replace(out_dir / "checkpoint", old)
            os.replace(fresh, out_dir / "checkpoint")
            shutil.rmtree(old, ignore_errors=True)
            write_json_atomic(state_file, state)

        if not args.resume:
            first = evaluate(0)
            print(f"test success before training {first['success_rate']:.3f} on {evaluator.n_pairs} pairs")
        start, started_at = state["timesteps"], time.time()
        next_eval = (start // args.eval_every + 1) * args.eval_every
        next_checkpoint = (start // args.checkpoint_every + 1) * args.checkpoint_every
        bar = tqdm(total=args.timesteps, initial=start, unit="step", desc="RLlib PPO", dynamic_ncols=True)
        try:
            while state["timesteps"] < args.timesteps:
                result = algo.train()
                step = state["timesteps"] + int(result["env_runners"]["num_env_steps_sampled"])  # this iteration's
                bar.update(step - state["timesteps"])
                state["timesteps"] = step
                state["minutes"] = round(state["minutes"] + (time.time() - started_at) / 60, 3)
                started_at = time.time()
                row = {"timesteps": step, "episode_return_mean": result["env_runners"].get("episode_return_mean", np.nan)}
                for key, value in result["learners"][DEFAULT_MODULE_ID].items():
                    if key in ("policy_loss", "vf_loss", "entropy", "mean_kl_loss", "match_loss", "match_accuracy"):
                        row[key] = float(value)
                for key, value in row.items():
                    if key != "timesteps":
                        writer.add_scalar(f"train/{key}", value, step)
                log.write(json.dumps(row) + "\n")
                log.flush()
                if step >= next_eval:
                    scores = evaluate(step)
                    bar.write(f"{step} steps: test success {scores['success_rate']:.3f}")
                    next_eval += args.eval_every
                if step >= next_checkpoint:
                    save_checkpoint()
                    next_checkpoint += args.checkpoint_every
        except KeyboardInterrupt:
            bar.close()
            save_checkpoint()
            print(f"interrupted: saved {out_dir / 'checkpoint'}; continue with --resume {out_dir / 'checkpoint'}")
            return
        bar.close()
        last = state["evaluations"][-1] if state["evaluations"] else {}
        final = ({k: last[k] for k in ("success_rate", "mean_iou")} if last.get("timesteps") == state["timesteps"]
                 else evaluate(state["timesteps"]))
        save_checkpoint()
        writer.close()
        log.close()
        summary = {"env_id": args.env_id, "timesteps": state["timesteps"], "minutes": state["minutes"], "final": final,
                   "best_success_rate": state["best_success"], "evaluations": state["evaluations"],
                   "init": args.init or None, "args": dataclasses.asdict(args)}
        write_json_atomic(out_dir / "summary.json", summary)
        print(f"final test success {final['success_rate']:.3f} (mean IoU {final['mean_iou']:.2f}) on "
              f"{evaluator.n_pairs} pairs after {state['timesteps']} steps, {state['minutes']:.1f} min")
        print(f"model: {out_dir / 'export.zip'} (best: {out_dir / 'best.zip'}; matchenv.load(path) takes either)")
        algo.stop()
    except KeyboardInterrupt:  # before the training loop (or after it): the loop's own handler saves
        print("interrupted outside the training loop: nothing new saved"
              + (f"; the last checkpoint is {out_dir / 'checkpoint'}" if (out_dir / "checkpoint").exists() else ""))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
