"""Train the coarse look of the coarse-to-fine searcher (agents/coarse_to_fine.py).

    MATCHENV_DATA=/path/to/mnist python train/coarse_proposer.py            # the shipped Cluttered MNIST proposer
    MATCHENV_DATA=... python train/coarse_proposer.py --resume runs/coarse-proposer/last.pt
                                         # continue a run (same flags and data: the canvases are regenerated)
    MATCHENV_DATA=... python train/coarse_proposer.py --dataset MixedMNIST --clutter-density 4 \
        --dataset-kwargs '{"n_distractors": [9, 9]}' --query-side 14 --width 32 --fine pretrained:mixed-mnist \
        --threads 1                      # the shipped query-aware look, for references with look-alike digits

A fixed-size agent is trained on small canvases (Cluttered MNIST: 100x100). On a 2000x2000
reference its 28x28 global view shows nothing. The coarse-to-fine searcher first finds, on the
reference shrunk ``--shrink`` times, the cell where the target most probably is, then lets the
agent search a crop of its training canvas size around it. This script trains that coarse look:

1. data: ``--train-pairs`` training-split canvases of ``--train-canvas`` pixels with clutter at
   the agent's training density (``--clutter-density`` fragments per 100x100 px), each shrunk
   as the proposer sees it, labelled with the cell nearest the target's centre;
2. training: cross-entropy over all cells of a canvas (one softmax per canvas), Adam; a
   checkpoint (``last.pt``, with the optimizer) after every epoch, so a crash loses one epoch;
3. evaluation, on the fixed test split at each ``--eval-canvases`` size (clutter at the same
   density, the first ``--eval-pairs`` pairs; the dataset's fixed test seed): how often the crop the agent will search holds
   the whole target ("hit"), and the coarse-to-fine searcher's success (IoU > 0.5) with the
   agent ``--fine``.

Outputs in ``--out-dir``: ``proposer.pt`` (loads with ``CoarseToFineSearcher.load``),
``last.pt``, ``summary.json`` (arguments, losses, evaluation).
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

from matchenv.agents.coarse_to_fine import CoarseProposer, CoarseToFineSearcher, save_proposer_file, target_cell, to_unit_range
from matchenv.agents.model_files import write_model_file
from matchenv.agents.script_args import (checkpoint_state, command_line, dataclass_parser, json_object_arg, parse_dataclass_args,
                                restore_checkpoint, resume_checkpoint, start_run)
from matchenv.agents.searcher import TemplateSearcher
from matchenv.datasets import make_dataset
from matchenv.datasets.noisy_mnist import canvas_kwargs
from matchenv.geometry import iou


@dataclass
class Args:
    """Every hyperparameter of a run, in one place (each is also a command-line flag)."""

    dataset: str = "ClutteredMNIST"  # a Noisy MNIST dataset with canvas_size / n_clutter arguments
    clutter_density: float = 8.0  # clutter fragments per 100x100 px (Cluttered MNIST's default canvas has 8)
    dataset_kwargs: str = "{}"  # further dataset arguments as JSON, e.g. '{"n_distractors": [9, 9]}'
    train_canvas: int = 400  # side of the training canvases (the proposer is convolutional: any size works)
    train_pairs: int = 80_000  # training canvases, generated once from --seed (0.8 GB of memory at the defaults)
    shrink: int = 4  # the proposer sees the reference this many times smaller
    width: int = 8  # channels of its hidden layers
    depth: int = 1  # 3x3 layers after its first convolution
    kernel: int = 8  # the first convolution's kernel side (shrunk-image pixels)
    stride: int = 4  # its stride: a cell is shrink * stride reference pixels
    separable: bool = False  # each 3x3 layer depthwise + 1x1 (cheaper)
    query_side: int = 0  # > 0: a query-aware look, the query shrunk to this side (0: it never sees the query)
    epochs: int = 20  # passes over the training canvases
    batch_size: int = 64  # canvases per Adam step
    learning_rate: float = 3e-3  # Adam, at the start of the cosine decay
    learning_rate_final: float = 0.05  # fraction of --learning-rate reached at the end (cosine decay)
    fine: str = "pretrained:cluttered-mnist"  # the agent that searches the crop (pretrained:<name> or a checkpoint)
    crop_size: int = 100  # the crop it searches: its training canvas side
    eval_canvases: str = "250,500,1000,2000"  # test canvas sides
    eval_pairs: int = 200  # first N pairs of each fixed test split
    seed: int = 0  # seeds the training canvases, the network and the batches
    threads: int = 2  # torch CPU threads for training (evaluation times nothing, so threads do not matter there)
    out_dir: str = "runs/coarse-proposer"  # where proposer.pt, last.pt and summary.json go
    resume: str = ""  # a last.pt to continue from


def dataset_kwargs(args: Args, side: int) -> dict:
    """Dataset arguments for a ``side`` x ``side`` canvas with ``args.clutter_density`` fragments
    per 100x100 px, plus ``args.dataset_kwargs``."""
    return canvas_kwargs(side, args.clutter_density, json.loads(args.dataset_kwargs))


def make_training_set(args: Args, proposer: CoarseProposer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(P, C, h, w)`` uint8 shrunk training canvases (uint8: 80,000 of 100x100 take 0.8 GB, not
    3.2 GB as floats), ``(P, C, s, s)`` uint8 shrunk queries (``s = 0`` for a look that does not
    take them) and ``(P,)`` target cells; seeded by ``args.seed``."""
    data = make_dataset(args.dataset, **dataset_kwargs(args, args.train_canvas))
    rng = np.random.default_rng(args.seed)
    first = data.sample(rng)
    pixels = proposer.shrunk_pixels(first.reference)
    side = proposer.query_side
    example_query = to_unit_range(torch.from_numpy(proposer.shrunk_query_pixels(first.query)))[None] if side else None
    logit_shape = proposer(to_unit_range(torch.from_numpy(pixels))[None], example_query).shape[1:]
    images = np.empty((args.train_pairs, *pixels.shape), np.uint8)
    queries = np.empty((args.train_pairs, pixels.shape[0], side, side), np.uint8)
    labels = np.empty(args.train_pairs, np.int64)
    pair = first
    for i in tqdm(range(args.train_pairs), desc="training canvases", unit="pair"):
        if i:
            pair = data.sample(rng)
        images[i] = proposer.shrunk_pixels(pair.reference)
        if side:
            queries[i] = proposer.shrunk_query_pixels(pair.query)
        labels[i] = target_cell(proposer, pair.target_box, logit_shape, pixels.shape[1:], pair.reference.shape)
    return torch.from_numpy(images), torch.from_numpy(queries), torch.from_numpy(labels)


def evaluate(args: Args, searcher: CoarseToFineSearcher) -> list[dict]:
    """Hit rate of the coarse look and success of the whole search, per test canvas size, with
    one candidate (the look's best cell: what the look itself is worth; the shipped searchers'
    extra candidates are chosen afterwards, README "Inference")."""
    rows = []
    for side in (int(s) for s in args.eval_canvases.split(",")):
        data = make_dataset(args.dataset, test_size=args.eval_pairs, **dataset_kwargs(args, side))
        hits, ious = [], []
        for i in tqdm(range(args.eval_pairs), desc=f"test {side}x{side}", unit="pair", leave=False):
            pair = data.test_pair(i)
            result = searcher.locate(pair.query, pair.reference)
            crop = (np.array([0, 0, side, side]) if result.proposal is None else np.array(result.proposal.crop))
            box = pair.target_box
            hits.append(bool(box[0] >= crop[0] and box[1] >= crop[1] and box[2] <= crop[2] and box[3] <= crop[3]))
            ious.append(iou(result.box, box))
        row = {"canvas": side, "pairs": args.eval_pairs, "hit_rate": float(np.mean(hits)),
               "success_rate": float(np.mean(np.asarray(ious) > 0.5)), "mean_iou": float(np.mean(ious))}
        print(f"{side}x{side}: target inside the searched crop {row['hit_rate']:.3f}, success {row['success_rate']:.3f} "
              f"({args.eval_pairs} test pairs)", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = dataclass_parser(Args, __doc__)
    args = parse_dataclass_args(parser, Args)
    json_object_arg(parser, "--dataset-kwargs", args.dataset_kwargs, '{"n_distractors": [9, 9]}')
    if args.crop_size >= args.train_canvas:
        parser.error(f"--train-canvas ({args.train_canvas}) must be larger than --crop-size ({args.crop_size}): "
                     "the proposer is for references larger than the agent's canvas")
    out = start_run(args)

    # The agent that will search the crops, loaded first so that a wrong --fine fails before training.
    fine = TemplateSearcher.from_spec(args.fine)
    proposer = CoarseProposer(channels=fine.channels, width=args.width, shrink=args.shrink, depth=args.depth,
                              kernel=args.kernel, stride=args.stride, separable=args.separable,
                              query_side=args.query_side)
    optimizer = torch.optim.Adam(proposer.parameters(), lr=args.learning_rate)
    steps_per_epoch = -(-args.train_pairs // args.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * steps_per_epoch,
                                                          eta_min=args.learning_rate * args.learning_rate_final)
    start_epoch, losses = 0, []
    if args.resume:
        state = resume_checkpoint(parser.error, args.resume, "a run writes last.pt in its --out-dir after every epoch")
        if {"query_side": 0, **state.get("config", {})} != proposer.config:  # files older than query_side have none
            parser.error(f"--resume {args.resume} holds a proposer {state.get('config')}, but the flags ask for "
                         f"{proposer.config}: pass the same --shrink/--width/--depth/--kernel/--stride/--query-side "
                         "as that run")
        restore_checkpoint(state, proposer, optimizer, schedule)
        start_epoch, losses = int(state["epoch"]), list(state["losses"])
        print(f"resumed from {args.resume} after epoch {start_epoch}")

    # 1. data
    images, queries, labels = make_training_set(args, proposer)

    # 2. training
    shuffle = torch.Generator().manual_seed(args.seed)
    for _ in range(start_epoch):  # the same batches a run without the interruption would have seen
        torch.randperm(len(labels), generator=shuffle)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        order = torch.randperm(len(labels), generator=shuffle)
        total, correct = 0.0, 0
        bar = tqdm(range(0, len(labels), args.batch_size), desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch")
        for start in bar:
            batch = order[start:start + args.batch_size]
            logits = proposer(to_unit_range(images[batch]),
                              to_unit_range(queries[batch]) if proposer.query_aware else None).flatten(1)
            loss = loss_fn(logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
            correct += int((logits.argmax(1) == labels[batch]).sum())
        losses.append({"epoch": epoch + 1, "loss": total / len(labels), "train_cell_accuracy": correct / len(labels)})
        print(f"epoch {epoch + 1}: loss {losses[-1]['loss']:.3f}, best cell right on {losses[-1]['train_cell_accuracy']:.3f} "
              "of the training canvases", flush=True)
        write_model_file(out / "last.pt", checkpoint_state(proposer, optimizer, schedule, config=proposer.config,
                                                           epoch=epoch + 1, losses=losses))
    train_minutes = (time.perf_counter() - started) / 60

    # 3. evaluation with the agent
    torch.set_num_threads(1)
    fine_path = out / "proposer.pt"
    save_proposer_file(fine_path, proposer, (args.crop_size, args.crop_size), args.fine)
    searcher = CoarseToFineSearcher.load(fine_path, fine=fine)
    evaluation = evaluate(args, searcher)
    info = {"command": command_line("train/coarse_proposer.py", args, skip=()),
            "args": dataclasses.asdict(args), "evaluation": evaluation, "train_minutes": train_minutes}
    save_proposer_file(fine_path, proposer, (args.crop_size, args.crop_size), args.fine, info)
    (out / "summary.json").write_text(json.dumps({**info, "losses": losses}, indent=2))
    print(f"wrote {fine_path} ({train_minutes:.1f} min of training)")


if __name__ == "__main__":
    main()
