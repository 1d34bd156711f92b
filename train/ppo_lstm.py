"""Train the recurrent search agent: imitation warm start, then RecurrentPPO fine-tuning.

    python train/ppo_lstm.py                                   # Cluttered MNIST, both stages
    python train/ppo_lstm.py --env-id TemplateSearch-TranslatedMNIST-v0
    python train/ppo_lstm.py --no-imitation                    # RL only (the paper's setting)
    python train/ppo_lstm.py --no-ppo                          # imitation only
    python train/ppo_lstm.py --aux-weight 0                    # without the contrastive head
    python train/ppo_lstm.py --resume runs/<run>/last.zip      # continue an interrupted run
    python train/ppo_lstm.py --env-id TemplateSearch-MixedMNIST-v0 --overview-size 100 --pointer \
        --imitation-steps 2000000 --imitation-lr-final 0.1 --no-ppo        # the shipped Mixed MNIST agent
    python train/ppo_lstm.py --dataset FlickrLogos27 --imitation-lr-final 0.1 --ppo-timesteps 100000
                                                               # the shipped FlickrLogos-27 agent (its box
                                                               # refiner: python train/box_refiner.py)

Stage 1 (imitation, DAgger): the policy plays noisy episodes; a privileged teacher, which reads
the target box from the environment, labels every decision with the window it should have
chosen; the actor regresses onto it, the critic onto the returns, the match head learns
match/no-match from the windows' IoU. Stage 2 (PPO): SearchRecurrentPPO with the paper's sparse
reward (``--reward-mode dense`` for shaping), the contrastive loss, and a small exploration noise.
``--overview-size`` adds the sharper first look (the whole reference at that side, compared with
the query as a similarity map; see agents/siamese.py) that photographs need; ``--pointer`` lets the
actor pick among that map's candidates (agents/policy.py, PointerHead), which references with
look-alikes (Mixed MNIST) need.

Outputs in ``--out-dir``: TensorBoard logs (``tb/``), ``best.zip`` (best test success) and
``last.zip`` checkpoints with ``state.json`` (what ``--resume`` continues from), ``summary.json``
and ``search_paths.png`` (the final model on a few test pairs). Ctrl-C or SIGTERM saves a checkpoint
first. A folder that holds a run is never reused by accident: the default folder
(``runs/<env or dataset>-seed<seed>``) gets a ``-2``, ``-3``, ... suffix, a given ``--out-dir`` is
refused unless ``--resume`` or ``--overwrite``, and a lock file keeps a second run out of a folder
a live run is writing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import CSVOutputFormat, Logger, configure, make_output_format
from stable_baselines3.common.utils import set_random_seed
from tqdm import tqdm

import matchenv
from matchenv.agents.imitation import DAggerTrainer, ImitationConfig
from matchenv.agents.ppo import SearchRecurrentPPO, search_config_of
from matchenv.agents.evaluation import TestSplitEvaluator
from matchenv.agents.run_dir import train_in_run_folder, write_json_atomic
from matchenv.agents.script_args import (cnn_channels_arg, dataclass_parser, given_flags, json_object_arg,
                                             parse_dataclass_args, resumed_args)
from matchenv.datasets import EVALUATION_ONLY
from matchenv.vector import VEC_ENV_KINDS, make_vec_env


@dataclass
class Args:
    """Every hyperparameter of a run, in one place (each is also a command-line flag)."""

    env_id: str = "TemplateSearch-v0"  # a registered TemplateSearch id (one per dataset)
    dataset: str = ""  # instead of --env-id: a dataset name from matchenv.datasets.DATASETS
    dataset_kwargs: str = "{}"  # JSON keyword arguments for --dataset, e.g. '{"root": "data/fl27"}'
    eval_dataset: str = ""  # evaluate (and keep best.zip) on this dataset's test split instead, e.g. KTM (real pairs)
    eval_dataset_kwargs: str = "{}"  # JSON keyword arguments for --eval-dataset
    max_trials: int = 6  # windows per episode
    overview_size: int = 0  # >0: also observe the whole reference at this side (the similarity-map first look)
    seed: int = 0  # seeds the networks, the training episodes and the exploration noise
    out_dir: str = ""  # default: runs/<env_id>-seed<seed>
    device: str = "auto"  # "auto" uses a GPU when torch sees one
    threads: int = 2  # torch CPU threads: the number of physical cores is usually best
    reward_mode: str = "sparse"  # the paper's reward; "dense" = IoU improvement per step
    # model
    lstm_hidden_size: int = 128  # units of the policy's LSTM
    cnn_channels: str = "8,16,32,32,32"  # output channels of the siamese CNN's five conv layers
    aux_weight: float = 0.5  # contrastive match loss weight (0: no contrastive head)
    aux_margin: float = 1.0  # contrastive margin: how far non-matching windows are pushed (embedding units)
    pointer: bool = False  # with --overview-size: the actor picks among similarity-map candidates (PointerHead)
    # stage 1: imitation (DAgger from the privileged teacher)
    imitation: bool = True  # stage 1 on/off
    imitation_steps: int = 400_000  # environment steps (windows placed)
    imitation_envs: int = 64  # episodes per DAgger batch
    imitation_lr: float = 1e-3  # Adam learning rate of imitation (at its start)
    imitation_lr_final: float = 1.0  # the lr at the end of imitation, as a fraction of --imitation-lr (linear decay)
    rollout_noise: float = 0.3  # std of the noise on the policy's actions while collecting
    imitation_epochs: int = 1  # gradient steps per collected batch
    localization_weight: float = 1.0  # similarity-map localisation loss (with --overview-size only)
    teacher: str = "auto"  # "target", "search" (visit look-alikes), "zoom" (coarse to fine), "auto": see teacher_for
    # stage 2: PPO
    ppo: bool = True  # stage 2 on/off
    ppo_timesteps: int = 200_000  # environment steps (windows placed) of PPO
    n_envs: int = 16  # parallel environments PPO collects from
    vec_env: str = "batched"  # how they run: "batched" (one process, fastest on few cores), "subproc" (a process each), "dummy"
    n_steps: int = 48  # per env and update: 8 episodes of 6 windows
    batch_size: int = 256  # PPO minibatch size
    n_epochs: int = 4  # PPO passes over each rollout
    learning_rate: float = 1e-4  # PPO's Adam learning rate
    gamma: float = 0.99  # discount factor
    gae_lambda: float = 0.95  # GAE lambda (bias against variance of the advantages)
    clip_range: float = 0.2  # PPO's clipping of the policy ratio
    ent_coef: float = 0.0  # entropy bonus weight in PPO's loss
    ppo_log_std: float = -2.0  # exploration std exp(-2) = 0.14 action units when PPO starts after imitation
    # evaluation and checkpoints
    eval_pairs: int = 500  # first N pairs of the fixed test split
    eval_every: int = 100_000  # environment steps between evaluations
    checkpoint_every: int = 50_000  # environment steps between last.zip checkpoints
    render_pairs: int = 4  # test pairs drawn in search_paths.png at the end
    resume: str = ""  # a last.zip to continue from (its state.json says how far the run got)
    overwrite: bool = False  # replace the run already in --out-dir (without it, a folder holding a run is refused)


CHOICES = {"reward_mode": ["sparse", "dense"], "teacher": ["auto", "target", "search", "zoom"], "vec_env": list(VEC_ENV_KINDS)}
#: flags that define the task or the network: a resumed run keeps the values of the run it continues
#: (given again with another value, --resume refuses); every other flag may change on resume
FIXED_ON_RESUME = ("env_id", "dataset", "max_trials", "overview_size", "lstm_hidden_size", "cnn_channels", "pointer")


def teacher_for(dataset, pointer: bool = False) -> str:
    """The ``--teacher auto`` choice: search among look-alikes where the data has them (unless the
    pointer head already proposes the candidates: then the target), zoom in on scale-aware
    datasets (photographs, where the first look is too coarse), else go to the target."""
    if pointer:
        return "target"
    if dataset.has_distractors:
        return "search"
    return "zoom" if dataset.scale_range is not None and getattr(dataset, "letterbox", False) else "target"


def window_fraction(env, pairs: int = 32) -> float:
    """Mean side of the nominal window as a fraction of the reference's, over a few training pairs
    (the pointer head's starting point for mapping similarity-map cells to absolute actions)."""
    env = env.unwrapped
    fractions = []
    for i in range(pairs):
        env.reset(seed=i)
        ref_h, ref_w = env.privileged_info()["reference_size"]
        fractions += [env.window_size[0] / ref_h, env.window_size[1] / ref_w]
    return float(np.mean(fractions))


def parse_args() -> Args:
    parser = dataclass_parser(Args, __doc__, CHOICES)
    args = parse_dataclass_args(parser, Args)
    if args.resume:
        if not Path(args.resume).is_file():
            parser.error(f"--resume {args.resume}: no such checkpoint file (a run writes last.zip in its --out-dir)")
        args = resumed_args(args, given_flags(parser), parser, Path(args.resume).parent / "args.json", FIXED_ON_RESUME)
    env_ids = {**matchenv.ENV_IDS, **matchenv.DOWNLOAD_ENV_IDS}
    if args.env_id not in env_ids:
        parser.error(f"unknown --env-id {args.env_id!r}; registered: {', '.join(env_ids)}")
    for flag, name in (("--dataset", args.dataset), ("--eval-dataset", args.eval_dataset)):
        if name and name not in matchenv.DATASETS:
            parser.error(f"unknown {flag} {name!r}; valid names: {', '.join(sorted(matchenv.DATASETS))}")
    if args.dataset in EVALUATION_ONLY or env_ids[args.env_id].get("dataset") in EVALUATION_ONLY:  # never train on them
        parser.error(f"{args.dataset or args.env_id} is for evaluation and model selection only, never for training: "
                     "train on another dataset (e.g. --dataset TwoViewPhotos --dataset-kwargs '{\"images\": ...}') "
                     "and pass --eval-dataset KTM")
    for flag, text in (("--dataset-kwargs", args.dataset_kwargs), ("--eval-dataset-kwargs", args.eval_dataset_kwargs)):
        json_object_arg(parser, flag, text)
    cnn_channels_arg(parser, args.cnn_channels)
    if not (args.imitation or args.ppo):
        parser.error("--no-imitation and --no-ppo together leave nothing to train")
    return args


# ---------------------------------------------------------------------------------------------
# Run state: checkpoints that --resume continues from
# ---------------------------------------------------------------------------------------------
@dataclass
class RunState:
    imitation_steps_done: int = 0
    best_success: float = -1.0
    minutes_imitation: float = 0.0
    minutes_ppo: float = 0.0
    evaluations: list = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def _sigint_deferred():
    """Hold SIGINT inside the block and raise KeyboardInterrupt after it, if one arrived."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    received = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt


class ResumeError(RuntimeError):
    """``--resume`` cannot continue from the file given (its ``state.json`` is missing or damaged)."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is intact."""


class Checkpointer:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def save(self, model: SearchRecurrentPPO, state: RunState, name: str = "last") -> None:
        # Write to a temporary name and rename: a crash mid-write never leaves a broken checkpoint.
        # Ctrl-C is held until the write is done: interrupting torch's zip writer turns the
        # KeyboardInterrupt into a RuntimeError, which would skip the save-on-Ctrl-C handler.
        with _sigint_deferred():
            tmp = self.out_dir / f".{name}.tmp.zip"
            tmp_state = self.out_dir / ".state.json.tmp"
            try:  # both written in full before either replaces its file: last.zip and state.json stay a pair
                model.save(tmp)
                if name == "last":
                    write_json_atomic(tmp_state, dataclasses.asdict(state))
                tmp.replace(self.out_dir / f"{name}.zip")
                if name == "last":
                    tmp_state.replace(self.out_dir / "state.json")
            except OSError as err:  # a full disk, a quota, a folder gone: stop, keeping the last good files
                tmp.unlink(missing_ok=True)
                tmp_state.unlink(missing_ok=True)
                kept = self.out_dir / f"{name}.zip"
                raise CheckpointWriteError(
                    f"could not write {kept} ({err}); "
                    + (f"the previous {kept.name} and state.json are intact: free some space and continue with "
                       f"--resume {self.out_dir / 'last.zip'}" if (self.out_dir / "last.zip").exists()
                       else "no checkpoint of this run was written yet")) from err

    @staticmethod
    def load_state(checkpoint: Path) -> RunState:
        state_file = checkpoint.parent / "state.json"
        if not state_file.exists():
            raise ResumeError(f"--resume needs {state_file} next to the checkpoint (written with last.zip)")
        try:
            return RunState(**json.loads(state_file.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise ResumeError(f"{state_file} is damaged ({err}): resume from a checkpoint whose folder has a whole "
                              "state.json") from err


def evaluate_and_log(model, evaluator, state: RunState, logger: Logger, checkpointer: Checkpointer, step: int) -> dict:
    result = evaluator(model.policy)
    state.evaluations.append({"step": step, **result})
    logger.record("eval/success_rate", result["success_rate"])
    logger.record("eval/mean_iou", result["mean_iou"])
    logger.dump(step)
    if result["success_rate"] > state.best_success:
        state.best_success = result["success_rate"]
        checkpointer.save(model, state, "best")
    return result


# ---------------------------------------------------------------------------------------------
# Stage 2 callback: progress bar, periodic evaluation and checkpoints during PPO
# ---------------------------------------------------------------------------------------------
class PPOProgress(BaseCallback):
    def __init__(self, args: Args, bar: tqdm, evaluator, state: RunState, checkpointer: Checkpointer) -> None:
        super().__init__()
        self.args, self.bar, self.evaluator, self.state, self.checkpointer = args, bar, evaluator, state, checkpointer
        self.last_eval = self.last_ckpt = 0
        self.postfix: dict[str, str] = {}

    def _on_training_start(self) -> None:
        # After --resume, count the intervals from where the run stopped, not from zero.
        self.last_eval = self.last_ckpt = self.model.num_timesteps

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        done = self.model.num_timesteps
        if done - self.last_ckpt >= self.args.checkpoint_every:
            self.last_ckpt = done
            self.checkpointer.save(self.model, self.state)
        if done - self.last_eval >= self.args.eval_every:
            self.last_eval = done
            result = evaluate_and_log(self.model, self.evaluator, self.state, self.model.logger, self.checkpointer,
                                      self.state.imitation_steps_done + done)
            self.postfix["test_success"] = f"{result['success_rate']:.3f}"
            self.bar.set_postfix(self.postfix, refresh=False)
        return True

    def _on_rollout_end(self) -> None:
        self.model.logger.record("data/unreadable_training_pairs", unreadable_draws(self.training_env, [])["skipped"])
        if len(self.model.ep_success_buffer):
            self.postfix["train_success"] = f"{np.mean(self.model.ep_success_buffer):.2f}"
            self.bar.set_postfix(self.postfix, refresh=False)


class AppendingCSVOutputFormat(CSVOutputFormat):
    """SB3's CSV log continued: a resumed run appends to ``progress.csv`` (SB3's own truncates it)."""

    def __init__(self, filename: Path) -> None:  # noqa: D107 (not calling super: it opens with "w+")
        self.file = open(filename, "r+")
        header = self.file.readline().rstrip("\n")
        self.keys: list[str] = header.split(",") if header else []
        self.file.seek(0, os.SEEK_END)
        self.separator, self.quotechar = ",", '"'


def resumed_logger(folder: Path) -> Logger:
    """TensorBoard (a new event file beside the old ones) and ``progress.csv`` appended to."""
    return Logger(str(folder), [make_output_format("tensorboard", str(folder)),
                                AppendingCSVOutputFormat(folder / "progress.csv")])


def unreadable_draws(vec_env, envs: list) -> dict[str, int]:
    """Training pairs drawn and skipped as unreadable (``PairDataset.pair``) over every dataset
    object the run's environments use (one, when they share it)."""
    datasets = {id(d): d for d in [*vec_env.get_attr("dataset"), *(env.dataset for env in envs)]}.values()
    return {"skipped": sum(d.unreadable_draws for d in datasets), "drawn": sum(d.training_draws for d in datasets)}


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    train_in_run_folder(functools.partial(train, args), args.out_dir, f"runs/{args.dataset or args.env_id}-seed{args.seed}",
                        resume=args.resume, overwrite=args.overwrite, errors=(CheckpointWriteError, ResumeError))


def train(args: Args, out_dir: Path) -> None:
    torch.set_num_threads(args.threads)
    set_random_seed(args.seed)
    env_kwargs = {"reward_mode": args.reward_mode, "max_trials": args.max_trials}
    if args.overview_size:
        env_kwargs["overview_size"] = (args.overview_size, args.overview_size)
    if args.dataset:
        # One dataset object shared by every env: photograph datasets cache decoded images.
        env_kwargs["dataset"] = matchenv.make_dataset(args.dataset, **json.loads(args.dataset_kwargs))
    run_name = args.dataset or args.env_id

    # --- the model: one SearchRecurrentPPO object holds the policy through both stages ----------
    ppo_env = make_vec_env(args.env_id, num_envs=args.n_envs, seed=args.seed, kind=args.vec_env, **env_kwargs)
    ppo_kwargs = dict(
        n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.n_epochs, learning_rate=args.learning_rate,
        gamma=args.gamma, gae_lambda=args.gae_lambda, clip_range=args.clip_range, ent_coef=args.ent_coef,
        aux_weight=args.aux_weight, aux_margin=args.aux_margin, device=args.device, seed=args.seed,
        search_config=search_config_of(gym.make(args.env_id, **env_kwargs)),
    )
    if args.resume:
        try:
            model = SearchRecurrentPPO.load(args.resume, env=ppo_env, **ppo_kwargs)
        except (ValueError, OSError) as err:  # not a checkpoint, an unsafe one, unreadable
            raise ResumeError(f"cannot resume from {args.resume}: {err}") from err
        state = Checkpointer.load_state(Path(args.resume))
        print(f"resumed from {args.resume} with {Path(args.resume).parent / 'state.json'}: "
              f"{state.imitation_steps_done} imitation steps, {model.num_timesteps} PPO steps")
        if Path(args.resume).name != "last.zip":  # state.json is written with last.zip only
            print(f"note: {Path(args.resume).name}'s weights continue with the counters, evaluations and best success "
                  f"of last.zip's state.json (imitation steps and minutes may be ahead of these weights)")
    else:
        model = SearchRecurrentPPO(
            "SearchLstmPolicy", ppo_env, **ppo_kwargs,
            policy_kwargs=dict(
                lstm_hidden_size=args.lstm_hidden_size,
                pointer=args.pointer,
                pointer_window_fraction=window_fraction(gym.make(args.env_id, **env_kwargs)) if args.pointer else 0.0,
                features_extractor_kwargs=dict(channels=tuple(int(c) for c in args.cnn_channels.split(","))),
            ),
        )
        state = RunState()
    write_json_atomic(out_dir / "args.json", dataclasses.asdict(args))  # once the arguments proved usable
    logger = (resumed_logger(out_dir / "tb") if args.resume and (out_dir / "tb" / "progress.csv").exists()
              else configure(str(out_dir / "tb"), ["tensorboard", "csv"]))
    model.set_logger(logger)
    checkpointer = Checkpointer(out_dir)
    eval_kwargs = dict(env_kwargs)
    if args.eval_dataset:
        eval_kwargs["dataset"] = matchenv.make_dataset(args.eval_dataset, **json.loads(args.eval_dataset_kwargs))
    evaluator = TestSplitEvaluator(args.env_id, args.eval_pairs, eval_kwargs)
    dataset = evaluator.envs[0].dataset
    data_source = str(getattr(dataset, "source", "") or getattr(dataset, "root", "") or dataset.name)
    print(f"{run_name}: data from {data_source}; {evaluator.n_pairs} test pairs; outputs in {out_dir}")

    imitation_envs: list = []  # the imitation stage's envs, for the count of unreadable pairs
    total = (args.imitation_steps if args.imitation else 0) + (args.ppo_timesteps if args.ppo else 0)
    bar = tqdm(total=total, unit="step", dynamic_ncols=True, desc="train")
    bar.update(state.imitation_steps_done + model.num_timesteps)
    try:
        # --- stage 1: imitation ---------------------------------------------------------------
        if args.imitation and state.imitation_steps_done < args.imitation_steps:
            bar.set_description("imitation")
            envs = [gym.make(args.env_id, **env_kwargs).unwrapped for _ in range(args.imitation_envs)]
            imitation_envs.extend(envs)
            for i, env in enumerate(envs):
                env.reset(seed=args.seed * 100_003 + state.imitation_steps_done + i)  # fresh pairs after a resume
            for group in model.policy.optimizer.param_groups:
                group["lr"] = args.imitation_lr
            teacher = args.teacher
            if teacher == "auto":
                teacher = teacher_for(envs[0].dataset, args.pointer)
            config = ImitationConfig(rollout_noise=args.rollout_noise, epochs=args.imitation_epochs,
                                     aux_weight=args.aux_weight, margin=args.aux_margin, gamma=args.gamma, teacher=teacher,
                                     localization_weight=args.localization_weight)
            trainer = DAggerTrainer(model.policy, envs, config, seed=args.seed + state.imitation_steps_done)
            done_at_start = state.imitation_steps_done
            # after a resume, the next evaluation and checkpoint are the next multiples of their
            # intervals, not every iteration until a count from zero catches up
            start = time.time()
            next_eval = (done_at_start // args.eval_every + 1) * args.eval_every
            next_ckpt = (done_at_start // args.checkpoint_every + 1) * args.checkpoint_every
            successes: list[float] = []
            while state.imitation_steps_done < args.imitation_steps:
                progress = state.imitation_steps_done / args.imitation_steps
                for group in model.policy.optimizer.param_groups:  # a decay steadies the last checkpoints
                    group["lr"] = args.imitation_lr * (1.0 - (1.0 - args.imitation_lr_final) * progress)
                batch, losses = trainer.iteration()
                steps = batch.actions.shape[0] * batch.actions.shape[1]
                state.imitation_steps_done += steps
                successes = (successes + batch.success.tolist())[-500:]
                bar.update(steps)
                bar.set_postfix(train_success=f"{np.mean(successes):.2f}", bc=f"{losses['bc']:.3f}", refresh=False)
                for key, value in losses.items():
                    logger.record(f"imitation/{key}", value)
                logger.record("imitation/success_rate_noisy", float(np.mean(batch.success)))
                logger.record("imitation/mean_iou_noisy", float(np.mean(batch.final_iou)))
                logger.record("data/unreadable_training_pairs", unreadable_draws(ppo_env, envs)["skipped"])
                logger.record("imitation/steps_per_second", (state.imitation_steps_done - done_at_start) / (time.time() - start))
                if state.imitation_steps_done >= next_ckpt:
                    next_ckpt += args.checkpoint_every
                    checkpointer.save(model, state)
                if state.imitation_steps_done >= next_eval or state.imitation_steps_done >= args.imitation_steps:
                    next_eval += args.eval_every
                    result = evaluate_and_log(model, evaluator, state, logger, checkpointer, state.imitation_steps_done)
                    bar.set_postfix(test_success=f"{result['success_rate']:.3f}", refresh=True)
                else:
                    logger.dump(state.imitation_steps_done)
            state.minutes_imitation += (time.time() - start) / 60
            checkpointer.save(model, state)

        # --- stage 2: PPO fine-tuning ---------------------------------------------------------
        if args.ppo and model.num_timesteps < args.ppo_timesteps:
            bar.set_description("ppo")
            if model.num_timesteps == 0 and state.imitation_steps_done > 0:
                # Warm start: the imitated policy is already close, so explore only a little.
                with torch.no_grad():
                    model.policy.log_std.fill_(args.ppo_log_std)
            for group in model.policy.optimizer.param_groups:
                group["lr"] = args.learning_rate
            start = time.time()
            model.learn(
                args.ppo_timesteps - model.num_timesteps,
                callback=PPOProgress(args, bar, evaluator, state, checkpointer),
                reset_num_timesteps=False,
            )
            state.minutes_ppo += (time.time() - start) / 60
            evaluate_and_log(model, evaluator, state, logger, checkpointer, state.imitation_steps_done + model.num_timesteps)
            checkpointer.save(model, state)
    except KeyboardInterrupt:
        checkpointer.save(model, state)
        bar.close()
        print(f"\ninterrupted: saved {out_dir / 'last.zip'}; continue with --resume {out_dir / 'last.zip'}")
        return
    bar.close()

    # --- final evaluation, summary and pictures -------------------------------------------------
    final = evaluator(model.policy)
    paths_png = evaluator.render_paths(model.policy, args.render_pairs, out_dir / "search_paths.png")
    summary = {
        "env_id": args.env_id,
        "dataset": args.dataset or None,
        "data_source": data_source,
        "test_pairs": evaluator.n_pairs,
        "final": final,
        "best_success_rate": state.best_success,
        "minutes": {"imitation": round(state.minutes_imitation, 2), "ppo": round(state.minutes_ppo, 2)},
        "imitation_steps": state.imitation_steps_done,
        "ppo_steps": int(model.num_timesteps),
        "evaluations": state.evaluations,
        "unreadable_training_pairs": unreadable_draws(ppo_env, imitation_envs),
        "args": dataclasses.asdict(args),
    }
    write_json_atomic(out_dir / "summary.json", summary)
    ppo_env.close()  # (--vec-env subproc: its worker processes)
    print(f"final test success {final['success_rate']:.3f} (mean IoU {final['mean_iou']:.2f}) on {evaluator.n_pairs} pairs; "
          f"imitation {state.minutes_imitation:.1f} min, PPO {state.minutes_ppo:.1f} min")
    print(f"model: {out_dir / 'last.zip'} (best: {out_dir / 'best.zip'}); search paths: {paths_png or 'none (--render-pairs 0)'}")


if __name__ == "__main__":
    main()
