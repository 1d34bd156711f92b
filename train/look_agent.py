"""Train the photograph agent (agents/look_agent.py): a sequential search on the learned look.

    python train/look_agent.py                        # the shipped "photo" agent (FlickrLogos-27 photos, no labels)
    python train/look_agent.py --images my_photos/    # on your own photos
    python train/look_agent.py --resume runs/look-agent/last.pt   # continue an interrupted run (same flags)

The agent looks at the whole reference once (the look's first look), then places up to
``--max-trials`` windows at the first look's best ``--candidates``, each compared with the
query at twice the look's resolution, and answers with its last window (README "The
photograph agent"). The look stays as it is; this script trains the policy that chooses the
windows:

1. data: ``--train-pairs`` self-supervised pairs from the training photographs (seeded by
   ``--seed``) and the test pairs ``--eval-first`` .. ``+ --eval-pairs`` (held-out photographs;
   the benchmark's FlickrLogos-27-derived pairs are the first 100, which this run never sees).
   For each pair the first look and *every* candidate's comparison are computed once, with the
   answer each candidate would give and its IoU with the target (cached in ``--out-dir``); a
   search during training reveals a comparison to the policy only once it placed that window;
2. imitation (``--imitation-steps``): a teacher that compares the candidates in the first
   look's order and answers with the compared candidate of highest IoU (DAgger: the policy's own
   sampled searches, the teacher's choice as the label at every step);
3. policy gradient (``--pg-steps``, REINFORCE with the greedy search as baseline): the reward is
   the design card's sparse success (IoU > 0.5 of the answer) less ``--comparison-cost`` per
   window compared, so the agent learns to stop moving when its first windows settle it;
4. an evaluation every ``--eval-every`` steps (greedy searches on the test pairs' tables) and a
   checkpoint (``last.pt``, with the optimizer), so a crash loses at most that interval; at the end,
   the saved agent searched for real (``LookAgentSearcher.locate``) on the same pairs.

Outputs in ``--out-dir``: ``look_agent.pt`` (loads with ``LookAgentSearcher.load``; the last
step, not the best evaluation), ``last.pt``, ``tables-*.pt``, ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from matchenv.agents.look_agent import (
    LookAgentConfig,
    LookAgentPolicy,
    LookAgentSearcher,
    answer_box,
    compare,
    glance,
    rollout,
    save_look_agent_file,
)
from matchenv.agents.model_files import write_model_file
from matchenv.agents.multiscale_look import LookSearcher
from matchenv.agents.script_args import (checkpoint_flags, checkpoint_state, command_line, dataclass_parser, json_object_arg,
                                parse_dataclass_args, photo_dataset, require_at_least, restore_checkpoint,
                                resume_checkpoint, start_run)
from matchenv.agents.searcher import prepare_image
from matchenv.datasets.base import PairDataset
from matchenv.geometry import iou


@dataclass
class Args:
    """Every hyperparameter of a run, in one place (each is also a command-line flag)."""

    look: str = "photo"  # a shipped look's name or a look file from train/multiscale_look.py
    dataset: str = "SelfSupervisedPhotos"  # any registered photograph dataset (its pairs must have templates)
    dataset_kwargs: str = "{}"  # JSON keyword arguments for --dataset
    images: str = ""  # SelfSupervisedPhotos' folder of photographs; "" = FlickrLogos-27's images (found or downloaded)
    train_pairs: int = 12_000  # generated once from --seed (~20 ms each: the first look and every comparison)
    eval_first: int = 400  # test pairs evaluated: eval_first .. eval_first + eval_pairs - 1 (the benchmark uses 0-99)
    eval_pairs: int = 600  # how many test pairs are evaluated, from --eval-first on
    candidates: int = 8  # the first look's best candidates the windows may go to
    max_trials: int = 6  # windows per search; the last is the answer
    hidden: int = 64  # GRU units
    imitation_steps: int = 1_000  # steps (batches of searches) of imitation
    pg_steps: int = 2_000  # steps of policy gradient after imitation
    batch_size: int = 256  # searches per step
    learning_rate: float = 3e-3  # Adam, imitation
    pg_learning_rate: float = 5e-4  # Adam, policy gradient (at 3e-3 the number of windows swung between 1 and 4)
    comparison_cost: float = 0.02  # reward lost per window compared (policy gradient): speed against success
    entropy_weight: float = 0.01  # policy gradient's entropy bonus
    eval_every: int = 500  # steps between evaluations and checkpoints
    seed: int = 0  # seeds the training pairs, the policy and its searches
    threads: int = 1  # torch CPU threads (the look's comparisons run on one thread either way)
    out_dir: str = "runs/look-agent"  # where look_agent.pt, last.pt, the tables and summary.json go
    resume: str = ""  # a last.pt to continue from


def make_tables(searcher: LookSearcher, data: PairDataset, config: LookAgentConfig, split: str, count: int,
                first: int, seed: int) -> dict[str, torch.Tensor]:
    """Every candidate's features, comparison and answer IoU for ``count`` pairs: ``candidates``
    ``(N, K, 6)``, ``comparisons`` ``(N, K, S * 25)``, ``iou`` ``(N, K)``, ``valid`` ``(N, K)`` bool.

    :param split: ``"train"`` (pairs drawn with ``seed``) or ``"test"`` (test pairs ``first`` on).
    """
    rng = np.random.default_rng(seed)
    k = config.candidates
    tables = {"candidates": [], "comparisons": [], "iou": [], "valid": []}
    for i in tqdm(range(count), desc=f"{split} tables", unit="pair"):
        pair = data.sample(rng) if split == "train" else data.test_pair(first + i)
        query = prepare_image(pair.template, 3, "rgb", "template")
        seen = glance(searcher, query, pair.reference, k)
        comparisons = compare(searcher, seen, range(k), config)
        ious = np.zeros(k, np.float32)
        for window in range(seen.count):
            box = answer_box(searcher, seen, window, comparisons[window], config) / seen.factor
            ious[window] = iou(box, pair.target_box)
        tables["candidates"].append(seen.candidates)
        tables["comparisons"].append(comparisons)
        tables["iou"].append(ious)
        tables["valid"].append(np.arange(k) < seen.count)
    return {key: torch.from_numpy(np.stack(value)) for key, value in tables.items()}


def cached_tables(path: Path, key: dict, make) -> dict[str, torch.Tensor]:
    """The tables saved at ``path`` if they were made with ``key``, else ``make()`` (and saved)."""
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            return saved["tables"]
    tables = make()
    write_model_file(path, {"key": key, "tables": tables})
    return tables


def distinct_windows(actions: torch.Tensor, windows: int) -> torch.Tensor:
    """``(B,)`` how many different windows each search of ``(T, B)`` actions compared."""
    placed = torch.zeros(actions.shape[1], windows)
    placed.scatter_(1, actions.T, 1.0)
    return placed.sum(dim=1)


def evaluate(policy: LookAgentPolicy, tables: dict[str, torch.Tensor]) -> dict:
    """Greedy searches on the tables: success (IoU > 0.5), mean IoU, windows compared per search."""
    with torch.no_grad():
        actions = rollout(policy, tables["candidates"], tables["comparisons"], tables["valid"], greedy=True)["actions"]
    rows = torch.arange(actions.shape[1])
    ious = tables["iou"][rows, actions[-1]]
    return {"success_rate": float((ious > 0.5).float().mean()), "mean_iou": float(ious.mean()),
            "windows_compared": float(distinct_windows(actions, policy.config.windows).mean())}


def imitation_loss(out: dict[str, torch.Tensor], ious: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Cross-entropy toward the teacher at every step of the policy's own searches: compare the
    next uncompared candidate (first-look order) until the last step, then answer with the
    compared candidate of highest IoU (no label where none has IoU > 0.5)."""
    log_p = torch.log_softmax(out["logits"], dim=-1)  # (T, B, W); -inf where not valid
    steps, batch = out["actions"].shape
    rows = torch.arange(batch)
    seen = torch.zeros_like(valid)
    loss = log_p.new_zeros(())
    for t in range(steps):
        if t < steps - 1:
            left = valid & ~seen
            label, labelled = left.float().argmax(dim=1), left.any(dim=1)
        else:
            shown = ious.masked_fill(~seen, -1.0)
            label, labelled = shown.argmax(dim=1), shown.amax(dim=1) > 0.5
        loss = loss - (log_p[t, rows, label].masked_fill(~labelled, 0.0)).mean()
        seen = seen.clone()
        seen[rows, out["actions"][t]] = True
    return loss / steps


def policy_gradient_loss(policy: LookAgentPolicy, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                         args: Args) -> torch.Tensor:
    """REINFORCE with the greedy search's reward as baseline ("self-critical"); the reward is
    success less ``comparison_cost`` per window compared."""
    rows = torch.arange(out["actions"].shape[1])
    windows = policy.config.windows

    def reward(actions: torch.Tensor) -> torch.Tensor:
        hit = (batch["iou"][rows, actions[-1]] > 0.5).float()
        return hit - args.comparison_cost * distinct_windows(actions, windows)

    with torch.no_grad():
        greedy = rollout(policy, batch["candidates"], batch["comparisons"], batch["valid"], greedy=True)["actions"]
        advantage = reward(out["actions"]) - reward(greedy)
    return -(advantage[None] * out["log_probs"]).sum(dim=0).mean() - args.entropy_weight * out["entropy"].mean()


def main() -> None:
    parser = dataclass_parser(Args, __doc__)
    args = parse_dataclass_args(parser, Args)
    try:
        config = LookAgentConfig(candidates=args.candidates, max_trials=args.max_trials, hidden=args.hidden)
    except ValueError as err:
        parser.error(str(err))
    dataset_kwargs = json_object_arg(parser, "--dataset-kwargs", args.dataset_kwargs, '{"test_size": 1000}')
    require_at_least(parser, args, 1, "train_pairs", "eval_pairs", "batch_size", "eval_every")
    require_at_least(parser, args, 0, "eval_first", "imitation_steps", "pg_steps", "comparison_cost")
    out = start_run(args)
    data, dataset_kwargs = photo_dataset(parser, args.dataset, dataset_kwargs, "the agent searches colour photographs",
                                         images=args.images, test_size=args.eval_first + args.eval_pairs)
    if args.eval_first + args.eval_pairs > data.test_size:
        parser.error(f"--eval-first + --eval-pairs ({args.eval_first + args.eval_pairs}) exceeds the dataset's "
                     f"{data.test_size} test pairs: pass a larger test_size in --dataset-kwargs")
    try:
        searcher = (LookSearcher.from_pretrained(args.look, candidates=config.candidates, threads=1) if "/" not in args.look
                    and not args.look.endswith(".pt") else LookSearcher.load(args.look, candidates=config.candidates, threads=1))
    except (ValueError, FileNotFoundError) as err:
        parser.error(f"--look {args.look}: {err}")

    policy = LookAgentPolicy(config)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)
    step, history = 0, []
    generator = torch.Generator().manual_seed(args.seed)
    # what a checkpoint must have been written with to be resumed (not where it runs or from what)
    run_args = checkpoint_flags(args)
    if args.resume:
        state = resume_checkpoint(parser.error, args.resume,
                                  "a run writes last.pt in its --out-dir every --eval-every steps", run_args)
        restore_checkpoint(state, policy, optimizer)
        generator.set_state(state["generator"])
        step, history = int(state["step"]), list(state["history"])
        print(f"resumed from {args.resume} after step {step}")

    # 1. data: the first look and every comparison, once per pair
    key = {"look": args.look, "dataset": args.dataset, "dataset_kwargs": dataset_kwargs, "candidates": config.candidates,
           "size_steps": list(config.size_steps)}
    train = cached_tables(out / "tables-train.pt", key | {"pairs": args.train_pairs, "seed": args.seed},
                          lambda: make_tables(searcher, data, config, "train", args.train_pairs, 0, args.seed))
    test = cached_tables(out / "tables-test.pt", key | {"first": args.eval_first, "pairs": args.eval_pairs},
                         lambda: make_tables(searcher, data, config, "test", args.eval_pairs, args.eval_first, 0))
    teacher_bound = float((test["iou"].amax(dim=1) > 0.5).float().mean())
    print(f"test pairs {args.eval_first}-{args.eval_first + args.eval_pairs - 1}: some candidate's answer has IoU > 0.5 "
          f"for {teacher_bound:.3f}; the first look's best alone: {float((test['iou'][:, 0] > 0.5).float().mean()):.3f}")

    # 2-3. imitation, then policy gradient; evaluations and checkpoints every eval_every steps
    total = args.imitation_steps + args.pg_steps
    started = time.perf_counter()
    bar = tqdm(range(step, total), initial=step, total=total, desc="training", unit="step")
    for step in bar:
        batch_rows = torch.randint(len(train["iou"]), (args.batch_size,), generator=generator)
        batch = {name: table[batch_rows] for name, table in train.items()}
        out_rollout = rollout(policy, batch["candidates"], batch["comparisons"], batch["valid"], generator=generator)
        imitating = step < args.imitation_steps
        for group in optimizer.param_groups:
            group["lr"] = args.learning_rate if imitating else args.pg_learning_rate
        if imitating:
            loss = imitation_loss(out_rollout, batch["iou"], batch["valid"])
        else:
            loss = policy_gradient_loss(policy, out_rollout, batch, args)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == total:
            result = evaluate(policy, test) | {"step": step + 1, "loss": loss.item()}
            history.append(result)
            bar.write(f"step {step + 1}: test success {result['success_rate']:.3f}, mean IoU {result['mean_iou']:.3f}, "
                      f"windows compared {result['windows_compared']:.2f}")
            write_model_file(out / "last.pt", checkpoint_state(policy, optimizer, args=run_args, step=step + 1,
                                                               generator=generator.get_state(), history=history))
    minutes = (time.perf_counter() - started) / 60

    # 4. the saved agent, searching for real on the same test pairs
    command = command_line("train/look_agent.py", args)
    path = save_look_agent_file(out / "look_agent.pt", policy.eval(), searcher.look,
                                {"command": command, "history": history})
    agent = LookAgentSearcher.load(path, threads=1)
    ious = []
    for i in tqdm(range(args.eval_pairs), desc="agent on test pairs", unit="pair", leave=False):
        pair = data.test_pair(args.eval_first + i)
        ious.append(iou(agent.locate(pair.template, pair.reference).box, pair.target_box))
    searched = {"success_rate": float(np.mean(np.asarray(ious) > 0.5)), "mean_iou": float(np.mean(ious))}
    tables_success = (history[-1] if history else evaluate(policy, test))["success_rate"]
    print(f"saved {path}; searching the test pairs for real: success {searched['success_rate']:.3f} "
          f"(on the tables: {tables_success:.3f})")
    summary = {"args": dataclasses.asdict(args), "command": command, "history": history, "searched": searched,
               "some_candidate_right": teacher_bound, "training_minutes": minutes}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
