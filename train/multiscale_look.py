"""Train the learned multi-scale look for photographs (agents/multiscale_look.py).

    python train/multiscale_look.py                       # the shipped "photo" look (FlickrLogos-27 photos)
    python train/multiscale_look.py --images my_photos/   # on your own photos: no labels needed
    python train/multiscale_look.py --resume runs/multiscale-look/last.pt
                                 # continue an interrupted run (same flags: the training pairs are regenerated)
    python train/multiscale_look.py --dataset FlickrLogos27 --dataset-kwargs '{"augment": true}' \
        --init agents/pretrained/photo_look.pt --largest 1.0     # fine-tune on labelled pairs

The look embeds query and reference with one small CNN and scores every position of a pyramid
of target sizes by the mean cosine similarity of their features (README "A learned look for
photographs"). It learns from self-supervised pairs of any folder of photographs
(:class:`~matchenv.datasets.self_supervised.SelfSupervisedPhotos`: a random textured region,
changed in appearance and rescaled, is the query; the photograph is the reference), or from any
photograph dataset with templates (``--dataset``, e.g. FlickrLogos-27's labelled logo pairs):

1. data: ``--train-pairs`` pairs from the training images, seeded by ``--seed``; each becomes the
   query's canvas and ``--crop``-pixel crops of the reference at the target's level and
   ``--level-offsets`` around it (:func:`~matchenv.agents.look_training.training_sample`), kept as uint8;
2. training: softmax cross-entropy over every position of every level of a pair (one right
   answer: the target's position at its level), Adam with one-cycle learning-rate decay; a
   checkpoint (``last.pt``, with the optimizer) after every epoch, so a crash loses one epoch;
3. evaluation after every epoch, on the fixed test split (pairs from held-out photographs, the
   first ``--eval-pairs``, the dataset's test seed): success (IoU > 0.5) of the full-image search
   (``LookSearcher``'s defaults, its second look included).

Outputs in ``--out-dir``: ``look.pt`` (loads with ``LookSearcher.load``), ``last.pt``,
``summary.json`` (arguments, losses, evaluations).
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

from matchenv.agents.look_files import config_dict, load_look_file, save_look_file
from matchenv.agents.look_network import LookConfig, MultiScaleLook
from matchenv.agents.look_training import training_sample
from matchenv.agents.model_files import write_model_file
from matchenv.agents.multiscale_look import LookSearcher
from matchenv.agents.script_args import (checkpoint_state, command_line, dataclass_parser, json_object_arg, parse_dataclass_args,
                                photo_dataset, restore_checkpoint, resume_checkpoint, start_run)
from matchenv.datasets.base import PairDataset
from matchenv.geometry import iou


@dataclass
class Args:
    """Every hyperparameter of a run, in one place (each is also a command-line flag)."""

    dataset: str = "SelfSupervisedPhotos"  # any registered photograph dataset (its pairs must have templates)
    dataset_kwargs: str = "{}"  # JSON keyword arguments for --dataset, e.g. '{"augment": true}'
    images: str = ""  # SelfSupervisedPhotos' folder of photographs; "" = FlickrLogos-27's images (found or downloaded)
    init: str = ""  # a look file to start from (fine-tuning), instead of random weights
    train_pairs: int = 60_000  # generated once from --seed (5.8 GB of uint8 crops at the defaults)
    crop: int = 80  # side of the training crops, pixels of their level
    level_offsets: str = "-2,-1,0,1,2"  # levels around the target's whose crops compete in the softmax
    channels: str = "16,48,48,48"  # the CNN's four convolutions
    separable: bool = True  # the last two convolutions depthwise-separable (faster)
    separable_stem: bool = False  # the strided second convolution depthwise-separable too (faster, less accurate)
    side: int = 20  # the query's geometric-mean side on its canvas, pixels (16 with --canvas 24: 30% less time per query, 0.07 less success)
    canvas: int = 32  # the query canvas side, pixels (a multiple of 4, >= side * sqrt(2))
    smallest: float = 0.125  # the search's smallest target side, a fraction of the shorter side (saved; training ignores it)
    largest: float = 0.8  # the search's largest target side, a fraction of the shorter side (saved; training ignores it)
    epochs: int = 4  # passes over the training pairs
    batch_size: int = 32  # pairs per Adam step
    learning_rate: float = 3e-3  # peak of the one-cycle schedule
    eval_pairs: int = 100  # first N pairs of the fixed test split (the benchmark's FlickrLogos-27-derived pairs)
    seed: int = 0  # seeds the training pairs, the network and the batches
    threads: int = 2  # torch CPU threads for training
    out_dir: str = "runs/multiscale-look"  # where look.pt, last.pt and summary.json go
    resume: str = ""  # a last.pt to continue from


def make_training_set(args: Args, config: LookConfig, data: PairDataset) -> dict[str, torch.Tensor]:
    """Canvases ``(P, s, s, 3)``, cell masks ``(P, K, K)``, crops ``(P, L, c, c, 3)`` (uint8) and
    labels ``(P,)``, seeded by ``args.seed``."""
    offsets = [int(o) for o in args.level_offsets.split(",")]
    rng = np.random.default_rng(args.seed)
    k = config.kernel_cells
    canvases = np.empty((args.train_pairs, config.canvas, config.canvas, 3), np.uint8)
    cells = np.empty((args.train_pairs, k, k), np.float32)
    crops = np.empty((args.train_pairs, len(offsets), args.crop, args.crop, 3), np.uint8)
    labels = np.empty(args.train_pairs, np.int64)
    for i in tqdm(range(args.train_pairs), desc="training pairs", unit="pair"):
        sample = training_sample(data.sample(rng), config, rng, crop=args.crop, offsets=offsets)
        canvases[i], cells[i], crops[i], labels[i] = sample.canvas, sample.cells, sample.crops, sample.label
    return {"canvases": torch.from_numpy(canvases), "cells": torch.from_numpy(cells), "crops": torch.from_numpy(crops),
            "labels": torch.from_numpy(labels)}


def channels_first(images: torch.Tensor) -> torch.Tensor:
    """``(..., H, W, 3)`` uint8 -> ``(..., 3, H, W)`` float pixels in 0-255."""
    return images.movedim(-1, -3).float()


def evaluate(look: MultiScaleLook, data: PairDataset, pairs: int) -> dict:
    """Success (IoU > 0.5) and mean IoU of the search on the first test pairs, as
    :class:`~matchenv.agents.multiscale_look.LookSearcher` searches by default (second look included)."""
    searcher = LookSearcher(look, threads=1)
    ious = []
    pairs = min(pairs, data.test_size)
    for i in tqdm(range(pairs), desc="test pairs", unit="pair", leave=False):
        pair = data.test_pair(i)
        ious.append(iou(searcher.locate(pair.template, pair.reference).box, pair.target_box))
    look.train()
    return {"pairs": pairs, "success_rate": float(np.mean(np.asarray(ious) > 0.5)), "mean_iou": float(np.mean(ious))}


def main() -> None:
    parser = dataclass_parser(Args, __doc__)
    args = parse_dataclass_args(parser, Args)
    try:
        config = LookConfig(channels=tuple(int(c) for c in args.channels.split(",")), separable=args.separable,
                            separable_stem=args.separable_stem, side=args.side, canvas=args.canvas,
                            smallest=args.smallest, largest=args.largest)
        offsets = [int(o) for o in args.level_offsets.split(",")]
    except ValueError as err:
        parser.error(str(err))
    dataset_kwargs = json_object_arg(parser, "--dataset-kwargs", args.dataset_kwargs, '{"augment": true}')
    if 0 not in offsets:
        parser.error(f"--level-offsets must include 0 (the target's level), got {args.level_offsets}")
    if args.crop < config.canvas + 4:
        parser.error(f"--crop ({args.crop}) must exceed --canvas ({config.canvas}) by at least one cell (4 px)")
    out = start_run(args)
    data, _ = photo_dataset(parser, args.dataset, dataset_kwargs, "the look is for colour photographs",
                            images=args.images, test_size=args.eval_pairs)

    look = MultiScaleLook(config)
    if args.init:
        start, _ = load_look_file(args.init)
        network = lambda c: (c.channels, c.separable, c.separable_stem, c.side, c.canvas)  # noqa: E731  (what the weights mean)
        if network(start.config) != network(config):
            parser.error(f"--init {args.init} holds a look {start.config}, but the flags ask for {config}: pass its "
                         "--channels/--separable/--separable-stem/--side/--canvas")
        look.load_state_dict(start.state_dict())
    optimizer = torch.optim.Adam(look.parameters(), lr=args.learning_rate)
    steps_per_epoch = -(-args.train_pairs // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.learning_rate, total_steps=args.epochs * steps_per_epoch,
                                                   pct_start=0.05)
    start_epoch, history = 0, []
    if args.resume:
        state = resume_checkpoint(parser.error, args.resume, "a run writes last.pt in its --out-dir after every epoch")
        if state.get("epochs", args.epochs) != args.epochs:
            parser.error(f"--resume {args.resume} continues a run of {state['epochs']} epochs (its learning-rate "
                         f"schedule spans them): pass --epochs {state['epochs']}; to train a finished look further, "
                         "start a new run from it with --init <its look.pt>")
        try:  # through LookConfig: a run saved before a field existed has that field's default
            saved_config = config_dict(LookConfig(**state.get("config", {})))
        except (TypeError, ValueError):  # not a look's configuration
            saved_config = None
        if saved_config != config_dict(config):
            parser.error(f"--resume {args.resume} holds a look {state.get('config')}, but the flags ask for "
                         f"{dataclasses.asdict(config)}: pass the same --channels/--separable/--separable-stem/--side/--canvas "
                         "as that run")
        restore_checkpoint(state, look, optimizer, schedule)
        start_epoch, history = int(state["epoch"]), list(state["history"])
        print(f"resumed from {args.resume} after epoch {start_epoch}")

    # 1. data
    train = make_training_set(args, config, data)

    # 2. training, with an evaluation after every epoch
    shuffle = torch.Generator().manual_seed(args.seed)
    for _ in range(start_epoch):  # the same batches a run without the interruption would have seen
        torch.randperm(args.train_pairs, generator=shuffle)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        order = torch.randperm(args.train_pairs, generator=shuffle)
        total, correct = 0.0, 0
        bar = tqdm(range(0, args.train_pairs, args.batch_size), desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch")
        for start in bar:
            batch = order[start:start + args.batch_size]
            logits = look(channels_first(train["canvases"][batch]), train["cells"][batch],
                          channels_first(train["crops"][batch]))
            loss = loss_fn(logits, train["labels"][batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
            correct += int((logits.argmax(1) == train["labels"][batch]).sum())
            bar.set_postfix(loss=f"{loss.item():.2f}")
        evaluation = evaluate(look, data, args.eval_pairs)
        history.append({"epoch": epoch + 1, "loss": total / args.train_pairs,
                        "train_position_accuracy": correct / args.train_pairs, "test": evaluation})
        print(f"epoch {epoch + 1}: loss {history[-1]['loss']:.3f}, test success {evaluation['success_rate']:.3f} "
              f"(mean IoU {evaluation['mean_iou']:.3f}, {args.eval_pairs} pairs)", flush=True)
        write_model_file(out / "last.pt", checkpoint_state(look, optimizer, schedule, config=config_dict(config),
                                                           epoch=epoch + 1, epochs=args.epochs, history=history))
    train_minutes = (time.perf_counter() - started) / 60

    info = {"command": command_line("train/multiscale_look.py", args),
            "args": dataclasses.asdict(args), "test": history[-1]["test"] if history else None,
            "train_minutes": train_minutes}
    save_look_file(out / "look.pt", look, info)
    (out / "summary.json").write_text(json.dumps({**info, "history": history}, indent=2))
    print(f"wrote {out / 'look.pt'} ({train_minutes:.1f} min of training)")


if __name__ == "__main__":
    main()
