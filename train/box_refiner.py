"""Train the box refiner: the learned last step that moves a search's final window onto the target.

    python train/box_refiner.py                      # the shipped FlickrLogos-27 refiner
    python train/box_refiner.py --dataset ManifestPairs --dataset-kwargs '{"path": "pairs.csv"}' \
        --searcher runs/<run>/last.zip               # for your own agent and data
    python train/box_refiner.py --resume runs/box-refiner/last.pt   # continue an interrupted run

The refiner (agents/box_refiner.py) sees the query and the surroundings of a window and
regresses where the target's box is relative to the window. It learns from the training split of
any photograph dataset with templates:

1. data: ``--train-samples`` samples, seeded by ``--seed``: a training pair (the dataset's own
   augmentation included) and a window around its target, the target's box disturbed as a
   search's last window is: its centre moved by ``--shift`` window sides (normal, standard
   deviation), its size scaled by ``exp(N(0, --log-scale))``, its aspect the template's half of
   the time (the agents' windows have the query's aspect) and the target's, disturbed, otherwise;
2. training: smooth-L1 loss on the four deltas (centre offset in window units, log size ratios),
   Adam with one-cycle learning-rate decay; a checkpoint (``last.pt``) after every epoch, so a
   crash loses one epoch;
3. evaluation after every epoch on the fixed test split (the first ``--eval-pairs``): success
   (IoU > 0.5) of ``--searcher``'s answers before and after refinement (the searcher's boxes are
   computed once, before training).

Outputs in ``--out-dir``: ``refiner.pt`` (``TemplateSearcher.load(agent, refiner="refiner.pt")``),
``last.pt``, ``summary.json`` (arguments, losses, evaluations).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from matchenv.agents.box_refiner import (BoxRefiner, RefinerConfig, box_deltas, context_crop, refine_boxes, save_refiner_file,
                                to_tensor)
from matchenv.agents.model_files import write_model_file
from matchenv.agents.script_args import (checkpoint_flags, checkpoint_state, command_line, dataclass_parser, json_object_arg,
                                parse_dataclass_args, photo_dataset, restore_checkpoint, resume_checkpoint, start_run)
from matchenv.agents.searcher import TemplateSearcher
from matchenv.datasets.base import PairDataset
from matchenv.geometry import iou, letterbox


@dataclass
class Args:
    """Every hyperparameter of a run, in one place (each is also a command-line flag)."""

    dataset: str = "FlickrLogos27"  # any registered photograph dataset whose pairs have templates
    dataset_kwargs: str = '{"reframe": 1.0}'  # JSON keyword arguments for --dataset
    searcher: str = "pretrained:flickrlogos27"  # whose answers the evaluation refines (TemplateSearcher.from_spec)
    train_samples: int = 40_000  # generated once from --seed (about 0.6 GB of uint8 crops at the defaults)
    shift: float = 0.25  # standard deviation of the training windows' centre offset, in window sides
    log_scale: float = 0.35  # standard deviation of their log size ratio to the target
    crop_size: int = 64  # side (pixels) of the context crop the network sees (a multiple of 16)
    context: float = 2.0  # the context crop is the window scaled by this factor around its centre
    query_side: int = 32  # the query is letterboxed to this side (pixels)
    width: int = 64  # channels of the network's convolutions
    epochs: int = 8  # passes over the training samples
    batch_size: int = 64  # samples per Adam step
    learning_rate: float = 2e-3  # peak of the one-cycle schedule
    eval_pairs: int = 161  # first N pairs of the fixed test split (all of FlickrLogos-27's)
    refine_steps: int = 1  # refinement steps at evaluation
    seed: int = 0  # seeds the training samples and the batches
    threads: int = 2  # torch CPU threads for training
    out_dir: str = "runs/box-refiner"  # where refiner.pt, last.pt and summary.json go
    resume: str = ""  # a last.pt to continue from


def training_window(target: np.ndarray, template_shape: tuple, args: Args, rng: np.random.Generator) -> np.ndarray:
    """A window around ``target`` as a search might end: see the module docstring, step 1."""
    tw, th = target[2] - target[0], target[3] - target[1]
    side = np.sqrt(tw * th) * np.exp(rng.normal(0.0, args.log_scale))
    if rng.random() < 0.5:
        aspect = template_shape[1] / template_shape[0]
    else:
        aspect = tw / th * np.exp(rng.normal(0.0, 0.2))
    ww, wh = side * np.sqrt(aspect), side / np.sqrt(aspect)
    cx = (target[0] + target[2]) / 2 + rng.normal(0.0, args.shift) * ww
    cy = (target[1] + target[3]) / 2 + rng.normal(0.0, args.shift) * wh
    return np.array([cx - ww / 2, cy - wh / 2, cx + ww / 2, cy + wh / 2])


def make_training_set(args: Args, config: RefinerConfig, data: PairDataset) -> dict[str, torch.Tensor]:
    """Queries ``(N, q, q, 3)``, context crops ``(N, S, S, 3)`` (uint8) and deltas ``(N, 4)``, seeded by ``args.seed``."""
    rng = np.random.default_rng(args.seed)
    n, s = args.train_samples, config.crop_size
    queries = np.empty((n,) + config.query_size + (3,), np.uint8)
    crops = np.empty((n, s, s, 3), np.uint8)
    deltas = np.empty((n, 4), np.float32)
    for i in tqdm(range(n), desc="training samples", unit="sample"):
        pair = data.sample(rng)
        window = training_window(pair.target_box, pair.template.shape, args, rng)
        queries[i] = letterbox(pair.template, config.query_size)
        crops[i] = context_crop(pair.reference, window, config)
        deltas[i] = box_deltas(window, pair.target_box)
    return {"queries": torch.from_numpy(queries), "crops": torch.from_numpy(crops), "deltas": torch.from_numpy(deltas)}


def searcher_answers(searcher: TemplateSearcher, data: PairDataset, pairs: int) -> dict:
    """The searcher's boxes on the first test pairs, with the pairs' queries, references and targets."""
    queries, references, targets, boxes = [], [], [], []
    for i in tqdm(range(pairs), desc="searcher on test pairs", unit="pair", leave=False):
        pair = data.test_pair(i)
        queries.append(pair.template)
        references.append(pair.reference)
        targets.append(pair.target_box)
        boxes.append(searcher.locate(pair.template, pair.reference).box)
    return {"queries": queries, "references": references, "targets": np.stack(targets), "boxes": np.stack(boxes)}


def evaluate(refiner: BoxRefiner, answers: dict, steps: int) -> dict:
    """Success (IoU > 0.5) and mean IoU of the searcher's answers after ``steps`` refinements."""
    refiner.eval()
    config = refiner.config
    views = np.stack([letterbox(q, config.query_size) for q in answers["queries"]])
    refined = refine_boxes(refiner, views, answers["references"], answers["boxes"], steps)
    refiner.train()
    ious = np.array([iou(b, t) for b, t in zip(refined, answers["targets"])])
    return {"pairs": len(ious), "success_rate": float(np.mean(ious > 0.5)), "mean_iou": float(np.mean(ious))}


def main() -> None:
    parser = dataclass_parser(Args, __doc__)
    args = parse_dataclass_args(parser, Args)
    dataset_kwargs = json_object_arg(parser, "--dataset-kwargs", args.dataset_kwargs, '{"reframe": 1.0}')
    data, _ = photo_dataset(parser, args.dataset, dataset_kwargs, "the refiner is for colour photographs")
    try:
        refiner = BoxRefiner(RefinerConfig(crop_size=args.crop_size, context=args.context,
                                           query_size=(args.query_side, args.query_side), width=args.width))
    except ValueError as err:
        parser.error(str(err))
    config = refiner.config
    out = start_run(args)

    optimizer = torch.optim.Adam(refiner.parameters(), lr=args.learning_rate)
    steps_per_epoch = -(-args.train_samples // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.learning_rate,
                                                   total_steps=args.epochs * steps_per_epoch, pct_start=0.1)
    start_epoch, history = 0, []
    run_args = checkpoint_flags(args, skip=("resume", "threads", "out_dir"))
    if args.resume:
        state = resume_checkpoint(parser.error, args.resume, "a run writes last.pt in its --out-dir after every epoch",
                                  run_args)
        restore_checkpoint(state, refiner, optimizer, schedule)
        start_epoch, history = int(state["epoch"]), list(state["history"])
        print(f"resumed from {args.resume} after epoch {start_epoch}")

    # 1. data, and the searcher's answers to refine in the evaluations
    train = make_training_set(args, config, data)
    searcher = TemplateSearcher.from_spec(args.searcher, refine=False)  # its own answers, not a shipped refiner's
    answers = searcher_answers(searcher, data, min(args.eval_pairs, data.test_size))
    before = evaluate(refiner, answers, steps=0)
    print(f"the searcher alone: test success {before['success_rate']:.3f} (mean IoU {before['mean_iou']:.3f}, "
          f"{before['pairs']} pairs)", flush=True)

    # 2. training, with an evaluation after every epoch
    shuffle = torch.Generator().manual_seed(args.seed)
    for _ in range(start_epoch):  # the same batches a run without the interruption would have seen
        torch.randperm(args.train_samples, generator=shuffle)
    loss_fn = nn.SmoothL1Loss(beta=0.1)
    started = time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        order = torch.randperm(args.train_samples, generator=shuffle)
        total = 0.0
        bar = tqdm(range(0, args.train_samples, args.batch_size), desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch")
        for start in bar:
            batch = order[start:start + args.batch_size]
            predicted = refiner(to_tensor(train["queries"][batch].numpy()), to_tensor(train["crops"][batch].numpy()))
            loss = loss_fn(predicted, train["deltas"][batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        evaluation = evaluate(refiner, answers, args.refine_steps)
        history.append({"epoch": epoch + 1, "loss": total / args.train_samples, "test": evaluation})
        print(f"epoch {epoch + 1}: loss {history[-1]['loss']:.4f}, test success {evaluation['success_rate']:.3f} "
              f"(mean IoU {evaluation['mean_iou']:.3f}; the searcher alone {before['success_rate']:.3f})", flush=True)
        write_model_file(out / "last.pt", checkpoint_state(refiner, optimizer, schedule, epoch=epoch + 1,
                                                           history=history, args=run_args))
    train_minutes = (time.perf_counter() - started) / 60

    info = {"command": command_line("train/box_refiner.py", args),
            "args": dataclasses.asdict(args), "searcher_alone": before,
            "test": history[-1]["test"] if history else None, "train_minutes": train_minutes}
    save_refiner_file(out / "refiner.pt", refiner, info)
    (out / "summary.json").write_text(json.dumps({**info, "history": history}, indent=2))
    print(f"wrote {out / 'refiner.pt'} ({train_minutes:.1f} min of training)")


if __name__ == "__main__":
    main()
