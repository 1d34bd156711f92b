"""Train the photograph searcher (agents/photo_search.py) on unlabelled photographs; choose it on real pairs.

    python train/photo_search.py --images <BSDS500>/images       # the shipped "photo" searcher (see below)
    python train/photo_search.py --images my_photos/ --no-flickrlogos27
    python train/photo_search.py --out-dir runs/photo-search --resume   # continue an interrupted run

Every pair it trains on is made from one photograph without labels
(:class:`~matchenv.datasets.TwoViewPhotos`: a template from one view, the target in a second,
warped, deformed, occluded, relit view). The photographs are those of ``--images`` (folders,
comma-separated) and, with ``--flickrlogos27`` (the default), FlickrLogos-27's training-split
photographs (found or downloaded; its logo benchmark's test photographs stay unseen). The shipped
searcher was trained with BSDS500's 500 photographs (``--images``) and FlickrLogos-27's.

Checkpoints are chosen on ``--eval-dataset`` (KTM by default: real template/target pairs from
tracking videos; found through ``$MATCHENV_KTM``, the cache or a download). KTM is used to
*choose* only: no KTM frame is ever trained on (a training image named like a KTM or BBS pair
file is refused). Without it (``--eval-dataset ""``) checkpoints are chosen on held-out
self-made pairs, which on this project once ranked methods the wrong way round.

Stages, each resumable (``last.pt`` every ``--eval-every`` steps holds every weight, optimizer
and random state, so a crash loses at most that interval):

1. **look**: the first look's features (EfficientNet-Lite0's first ``--look-blocks`` blocks, from
   ImageNet) learn to peak at the target: a softmax over every position of the cosine map of the
   template against a search region of the second view, its label the target's position
   (InfoNCE, temperature ``--temperature``); the best first-look evaluation is kept;
2. **verifier**: the window verifier (the first ``--verifier-blocks`` blocks, from ImageNet)
   learns to tell the target window from the look's other candidates and random windows (InfoNCE
   over one positive and ``--negatives`` negatives); the best evaluation of the whole search
   (``--candidates`` windows in first-look order) is kept;
3. **tables**: for ``--table-pairs`` training pairs, the first look's candidates, their scores,
   the verifier's scores and IoUs, and as many pairs whose query is in another photograph;
4. **found score**: a logistic fit of "the answer is right" (IoU > 0.5) on the answer's score;
5. **policy**: the window policy (a GRU) learns which candidate to compare next and when to
   stop: imitation of comparing in first-look order, then policy gradient on success less a cost
   per window, once for each of ``--window-costs``; the policy that finds most evaluation pairs
   (then with fewest windows) is kept, and it is the searcher's default if it is at least as
   accurate as comparing every candidate in first-look order (it then compares fewer windows;
   else the file says first-look order). Every policy's numbers are reported.

Outputs in ``--out-dir``: ``photo_search.pt`` (``PhotoSearcher.load``), ``last.pt``,
``summary.json`` (every evaluation, the final searches for real, the command).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from matchenv.agents.model_files import write_model_file
from matchenv.agents.photo_search import PhotoSearcher, resized, save_photo_search_file, verifier_size
from matchenv.agents.photo_search_net import PhotoSearchConfig, PhotoSearchNet, WindowPolicy, cosine_map
from matchenv.agents.script_args import (checkpoint_flags, command_line, dataclass_parser, json_object_arg, parse_dataclass_args,
                                require_at_least, resume_checkpoint)
from matchenv.datasets import make_dataset
from matchenv.datasets.base import PairDataset, SearchPair
from matchenv.datasets.self_supervised import find_images
from matchenv.datasets.two_views import TwoViewPhotos
from matchenv.geometry import iou
from matchenv.metrics import success_auc, success_rate

#: A training image named like a KTM or BBS pair file (``pair0001_frm1_<seq>_<frame>.jpg``).
PAIR_FILE = re.compile(r"^pair\d+_frm[12]_.+_\d+\.[A-Za-z]+$")
STAGES = ("look", "verifier", "tables", "found", "policy", "done")


@dataclass
class Args:
    """Every hyperparameter of a run, in one place (each is also a command-line flag)."""

    images: str = ""  # folders of photographs to train on, comma-separated (BSDS500's images for the shipped run)
    flickrlogos27: bool = True  # also FlickrLogos-27's training-split photographs (found or downloaded)
    eval_dataset: str = "KTM"  # real pairs on which checkpoints are chosen (never trained on); "" = held-out self-made pairs
    eval_dataset_kwargs: str = "{}"  # JSON keyword arguments for --eval-dataset, e.g. '{"path": "data/KTMdata"}'
    eval_pairs: int = 200  # evaluation pairs (the first ones of the evaluation set's test split)
    look_steps: int = 750  # batches of the look stage
    look_batch: int = 8  # pairs per batch
    look_lr: float = 1e-4  # Adam
    temperature: float = 0.05  # of the look's and the verifier's softmax over cosine similarities
    verifier_steps: int = 750  # batches of the verifier stage
    verifier_batch: int = 4  # pairs per batch
    verifier_lr: float = 5e-5  # Adam
    negatives: int = 7  # windows per pair that are not the target (the look's candidates first, then random)
    table_pairs: int = 2000  # training pairs whose candidates and scores the found score and the policy learn from
    imitation_steps: int = 300  # policy stage: steps of imitating first-look order, for each window cost
    pg_steps: int = 1000  # policy stage: steps of policy gradient after imitation, for each window cost
    policy_batch: int = 256  # searches (on the tables) per policy step
    policy_lr: float = 3e-3  # Adam, policy stage
    window_costs: str = "0.002,0.005,0.01,0.02"  # reward lost per window compared: one policy per cost, the best kept
    eval_every: int = 250  # steps between evaluations and checkpoints (a crash loses at most this)
    look_blocks: int = 2  # EfficientNet-Lite0 blocks of the first look's features (2: stride 4, 24 channels)
    verifier_blocks: int = 11  # EfficientNet-Lite0 blocks of the window verifier (11: stride 16, 112 channels)
    verifier_side: int = 64  # longer side (pixels, a multiple of 16) of the query and windows as the verifier sees them
    look_min_side: float = 16.0  # the first look runs with the query's shorter side shrunk to this many pixels (never enlarged)
    candidates: int = 8  # local maxima of the first look that windows may be placed at
    look_weight: float = 0.5  # weight of the first look's score beside the verifier's in a window's score
    seed: int = 0  # seeds the pairs, the networks' training and the held-out split of the photographs
    threads: int = 2  # torch CPU threads for training (evaluations' timings are not taken here)
    out_dir: str = "runs/photo-search"  # where photo_search.pt, last.pt and summary.json go (never an earlier run's)
    resume: bool = False  # continue the run in --out-dir (same flags) from its last.pt


# ---------------------------------------------------------------------------------- data
def training_photographs(args: Args) -> list[Path]:
    """The photographs to train on (``--images`` folders and FlickrLogos-27's training split).

    :raises ValueError: for no photographs, or a file named like a KTM/BBS pair frame (never train on those).
    """
    photos: list[Path] = []
    for folder in [f for f in args.images.split(",") if f.strip()]:
        root = Path(folder.strip()).expanduser()
        if not root.is_dir():
            raise ValueError(f"--images: {root} is not a folder of photographs")
        photos += find_images(root)
    if args.flickrlogos27:
        from matchenv.datasets.logos import flickrlogos27_photos

        photos += flickrlogos27_photos("train")
    if not photos:
        raise ValueError("no photographs to train on: give --images <folder>[,<folder>...] or keep --flickrlogos27")
    pair_frames = [p.name for p in photos if PAIR_FILE.match(p.name)]
    if pair_frames:
        raise ValueError(f"{len(pair_frames)} training images are named like KTM/BBS pair frames ({pair_frames[0]}, ...): "
                         "those sets are for evaluation and model selection only; remove them from --images")
    return photos


def evaluation_pairs(args: Args, photos: TwoViewPhotos) -> tuple[list[SearchPair], str]:
    """The pairs checkpoints are chosen on, and what they are."""
    if not args.eval_dataset:
        warnings.warn("choosing checkpoints on held-out self-made pairs (--eval-dataset ''): such pairs ranked "
                      "methods the wrong way round on this project; prefer real pairs (KTM)", stacklevel=2)
        return [photos.test_pair(i) for i in range(min(args.eval_pairs, photos.test_size))], "TwoViewPhotos test pairs"
    data: PairDataset = make_dataset(args.eval_dataset, **json.loads(args.eval_dataset_kwargs))
    count = min(args.eval_pairs, data.test_size)
    return [data.test_pair(i) for i in range(count)], f"{args.eval_dataset} test pairs 0-{count - 1}"


def search_region(pair: SearchPair, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A square crop of the reference holding the target (side 4x the template's longer side,
    128-256 px, at a random offset), and the target box in it: a first look's training view."""
    th, tw = pair.template.shape[:2]
    rh, rw = pair.reference.shape[:2]
    side = int(min(max(4 * max(th, tw), 128), 256))
    ch, cw = min(side, rh), min(side, rw)
    x0t, y0t, x1t, y1t = pair.target_box
    lo_x, hi_x = sorted((max(0, int(x1t) - cw), min(rw - cw, int(x0t))))
    lo_y, hi_y = sorted((max(0, int(y1t) - ch), min(rh - ch, int(y0t))))
    x0, y0 = int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1))
    return pair.reference[y0:y0 + ch, x0:x0 + cw], pair.target_box - [x0, y0, x0, y0]


def pixels(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` float pixels 0-255."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))[None]


# ---------------------------------------------------------------------------------- losses
def look_loss(net: PhotoSearchNet, pair: SearchPair, rng: np.random.Generator, temperature: float) -> Optional[torch.Tensor]:
    """Cross-entropy of the softmax over the cosine map's positions toward the target's position
    (bilinear weights on the four cells around it), at the resolution the search looks at
    (``look_min_side``); ``None`` for a pair too small to use."""
    th, tw = pair.template.shape[:2]
    if min(th, tw) < 6:
        return None
    region, target = search_region(pair, rng)
    template = pair.template
    # as the search looks: at the resolution where the query's shorter side is look_min_side
    scale = min(1.0, net.config.look_min_side / min(th, tw))
    if scale < 1.0:
        th, tw = max(int(round(th * scale)), 1), max(int(round(tw * scale)), 1)
        template = resized(template, (th, tw))
        region = resized(region, (max(int(round(region.shape[0] * scale)), 1), max(int(round(region.shape[1] * scale)), 1)))
        target = target * scale
    features, kernel = net.look_features(pixels(region)), net.look_features(pixels(template))
    if kernel.shape[2] >= features.shape[2] or kernel.shape[3] >= features.shape[3]:
        return None
    logits = cosine_map(features, kernel) / temperature
    stride = net.look.stride
    # the window whose centre is the target's centre: its top-left cell, between cells
    gx = ((target[0] + target[2]) / 2 - tw / 2) / stride
    gy = ((target[1] + target[3]) / 2 - th / 2) / stride
    rows, cols = logits.shape
    gx, gy = min(max(gx, 0.0), cols - 1.0), min(max(gy, 0.0), rows - 1.0)
    x0, y0 = int(math.floor(gx)), int(math.floor(gy))
    ax, ay = gx - x0, gy - y0
    label = torch.zeros(rows, cols)
    for dx, dy, weight in ((0, 0, (1 - ax) * (1 - ay)), (1, 0, ax * (1 - ay)), (0, 1, (1 - ax) * ay), (1, 1, ax * ay)):
        if x0 + dx < cols and y0 + dy < rows:
            label[y0 + dy, x0 + dx] += weight
    label /= label.sum()
    return -(label.flatten() * F.log_softmax(logits.flatten(), 0)).sum()


def verifier_loss(net: PhotoSearchNet, searcher: PhotoSearcher, pair: SearchPair, rng: np.random.Generator,
                  negatives: int, temperature: float) -> Optional[torch.Tensor]:
    """Cross-entropy of the softmax over one positive window (the template's size, centred on the
    target, jittered by 3% of its side) and ``negatives`` windows of IoU < 0.3 with the target
    (the look's candidates first: the look-alikes the verifier must reject)."""
    th, tw = pair.template.shape[:2]
    if min(th, tw) < 6:
        return None
    rh, rw = pair.reference.shape[:2]
    target = pair.target_box

    def corner(x: float, y: float) -> tuple[int, int]:
        return int(min(max(round(x), 0), rw - tw)), int(min(max(round(y), 0), rh - th))

    def far(x: int, y: int) -> bool:
        return iou(np.array([x, y, x + tw, y + th], float), target) < 0.3

    cx, cy = (target[0] + target[2]) / 2, (target[1] + target[3]) / 2
    corners = [corner(cx - tw / 2 + rng.normal(0, 0.03 * tw), cy - th / 2 + rng.normal(0, 0.03 * th))]
    with torch.no_grad():
        look = searcher.first_look(pair.template, pair.reference)
    corners += [c for c in (corner(x, y) for x, y in look.corners) if far(*c)][:negatives]
    while len(corners) < negatives + 1:
        x, y = int(rng.integers(0, rw - tw + 1)), int(rng.integers(0, rh - th + 1))
        if far(x, y):
            corners.append((x, y))
    size = verifier_size(th, tw, net.config.verifier_side)
    crops = [pair.template] + [pair.reference[y:y + th, x:x + tw] for x, y in corners]
    batch = torch.from_numpy(np.ascontiguousarray(np.stack([resized(c, size) for c in crops]).transpose(0, 3, 1, 2),
                                                  dtype=np.float32))
    embeddings = net.embed(batch)
    logits = (embeddings[1:] @ embeddings[0]) / temperature
    return F.cross_entropy(logits[None], torch.zeros(1, dtype=torch.long))


# ---------------------------------------------------------------------------------- evaluation
def evaluate_search(searcher: PhotoSearcher, pairs: list[SearchPair]) -> dict[str, float]:
    """Success, AUC and mean IoU of ``searcher`` on ``pairs`` (answers with their own box size)."""
    ious = [iou(searcher.locate(p.template, p.reference).box, p.target_box) for p in pairs]
    return {"success": success_rate(ious), "auc": success_auc(ious), "mean_iou": float(np.mean(ious))}


def make_tables(searcher: PhotoSearcher, pairs: list[SearchPair], other: Optional[list[SearchPair]] = None
                ) -> dict[str, torch.Tensor]:
    """For each pair, the first look's candidates in first-look order: ``look`` ``(N, K)`` scores,
    ``verified`` ``(N, K)`` verifier scores, ``iou`` ``(N, K)`` (0 where the query is not in the
    reference), ``valid`` ``(N, K)``; with ``other``, pair ``i``'s query is searched in
    ``other[i]``'s reference (it is not there)."""
    k = searcher.config.candidates
    out = {name: torch.zeros(len(pairs), k) for name in ("look", "verified", "iou")}
    out["valid"] = torch.zeros(len(pairs), k, dtype=torch.bool)
    for i, pair in enumerate(tqdm(pairs, desc="tables" if other is None else "tables (query elsewhere)",
                                  unit="pair", leave=False)):
        reference = pair.reference if other is None else other[i].reference
        if min(reference.shape[:2]) < max(pair.template.shape[:2]) and other is not None:
            continue  # the query does not fit in that reference
        look = searcher.first_look(pair.template, reference)
        n = len(look.scores)
        out["look"][i, :n] = torch.from_numpy(look.scores)
        out["verified"][i, :n] = torch.from_numpy(searcher.verify(pair.template, reference, look.corners).astype(np.float32))
        out["valid"][i, :n] = True
        if other is None:
            th, tw = pair.template.shape[:2]
            out["iou"][i, :n] = torch.tensor([iou(np.array([x, y, x + tw, y + th]), pair.target_box)
                                              for x, y in look.corners])
    return out


# ---------------------------------------------------------------------------------- policy
def rollout(net: PhotoSearchNet, tables: dict[str, torch.Tensor], greedy: bool,
            generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
    """Searches over the tables: the policy chooses windows until it stops (or every valid one is
    compared). Returns the answer (``(B,)`` candidate index: best combined score among those
    compared), ``windows`` ``(B,)`` compared, ``log_prob`` ``(B,)`` of the choices made, and the
    teacher's label at each step for imitation (``labels`` ``(T, B)``: the next candidate in
    first-look order, or stop once the best compared window is right or none is left)."""
    policy, weight = net.policy, net.config.look_weight
    look, verified, valid, ious = tables["look"], tables["verified"], tables["valid"], tables["iou"]
    batch, k = look.shape
    rows = torch.arange(batch)
    seen = ~valid  # candidates that do not exist count as seen: never chosen
    compared = torch.zeros(batch, k, dtype=torch.bool)
    state = policy.initial_state(batch)
    done = torch.zeros(batch, dtype=torch.bool)
    log_prob = torch.zeros(batch)
    step_logits, labels = [], []
    for _ in range(k + 1):
        logits = policy.logits(look, torch.where(compared, verified, torch.zeros_like(verified)), seen, state, weight)
        combined = torch.where(compared, verified + weight * look, torch.full_like(look, -9.0))
        answer_right = ious[rows, combined.argmax(1)] > 0.5
        left = (~seen).float()
        label = torch.where(compared.any(1) & (answer_right | (left.sum(1) == 0)), torch.full((batch,), k),
                            left.argmax(1))
        if greedy:
            choice = logits.argmax(1)
        else:
            choice = torch.multinomial(torch.softmax(logits, 1), 1, generator=generator)[:, 0]
        choice = torch.where((~seen).any(1), choice, torch.full_like(choice, k))  # nothing left: stop
        log_prob = log_prob + torch.where(done, torch.zeros(batch), torch.log_softmax(logits, 1)[rows, choice])
        step_logits.append(logits)
        labels.append(torch.where(done, torch.full_like(label, -1), label))
        acting = ~done & (choice < k)
        index = choice.clamp_max(k - 1)
        chosen = F.one_hot(index, k).bool() & acting[:, None]
        seen, compared = seen | chosen, compared | chosen
        state = torch.where(acting[:, None], policy.step(state, look, verified, index), state)
        done = done | (choice == k)
        if bool(done.all()):
            break
    combined = torch.where(compared, verified + weight * look, torch.full_like(look, -9.0))
    return {"answer": combined.argmax(1), "windows": compared.float().sum(1), "log_prob": log_prob,
            "logits": torch.stack(step_logits), "labels": torch.stack(labels)}


def table_success(tables: dict[str, torch.Tensor], answer: torch.Tensor) -> float:
    return float((tables["iou"][torch.arange(len(answer)), answer] > 0.5).float().mean())


def first_look_order(net: PhotoSearchNet, tables: dict[str, torch.Tensor]) -> torch.Tensor:
    """The answer of comparing every candidate in first-look order: best combined score."""
    combined = torch.where(tables["valid"], tables["verified"] + net.config.look_weight * tables["look"],
                           torch.full_like(tables["look"], -9.0))
    return combined.argmax(1)


# ---------------------------------------------------------------------------------- checkpoints
def save_state(path: Path, state: dict[str, Any]) -> None:
    write_model_file(path, state)


def parse_args() -> Args:
    parser = dataclass_parser(Args, __doc__)
    args = parse_dataclass_args(parser, Args)
    require_at_least(parser, args, 1, "eval_pairs", "look_batch", "verifier_batch", "table_pairs", "policy_batch",
                     "eval_every", "threads")
    require_at_least(parser, args, 0, "look_steps", "verifier_steps", "imitation_steps", "pg_steps", "negatives")
    try:
        if not window_costs(args) or min(window_costs(args)) < 0:
            raise ValueError
    except ValueError:
        parser.error(f"--window-costs must be numbers >= 0, comma-separated, got {args.window_costs!r}")
    try:
        config_of(args)
    except ValueError as err:
        parser.error(str(err))
    json_object_arg(parser, "--eval-dataset-kwargs", args.eval_dataset_kwargs, '{"path": "data/KTMdata"}')
    return args


def window_costs(args: Args) -> list[float]:
    return [float(v) for v in args.window_costs.split(",") if v.strip()]


def config_of(args: Args) -> PhotoSearchConfig:
    return PhotoSearchConfig(look_blocks=args.look_blocks, verifier_blocks=args.verifier_blocks,
                             verifier_side=args.verifier_side, look_min_side=args.look_min_side,
                             candidates=args.candidates, look_weight=args.look_weight)


# ---------------------------------------------------------------------------------- main
def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    run_args = checkpoint_flags(args)
    last = out / "last.pt"
    if args.resume:
        state = resume_checkpoint(sys.exit, last, "--resume continues the run in --out-dir, whose last.pt a run writes "
                                  "every --eval-every steps", run_args)
    else:
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"{out} already holds a run: pass --resume to continue it, or another --out-dir "
                             "(an earlier run's results are never overwritten)")
        state = None
    out.mkdir(parents=True, exist_ok=True)

    photos = training_photographs(args)
    data = TwoViewPhotos(photos, test_fraction=0.05, test_seed=args.seed)
    evaluation, evaluation_name = evaluation_pairs(args, data)
    print(f"training on {len(photos)} photographs ({len(data.train_indices)} for training pairs); "
          f"choosing on {evaluation_name}", flush=True)

    net = PhotoSearchNet.from_imagenet(config_of(args))
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    # where the run is: its stage, the steps done in it, every evaluation, each stage's best weights
    progress: dict[str, Any] = {"stage": "look", "step": 0, "history": [], "best": {}}
    optimizer_state = None
    if state is not None:
        if state["stage"] == "done":
            raise SystemExit(f"--resume: the run in {out} is finished ({out / 'photo_search.pt'})")
        net.load_state_dict(state["net"])
        progress = {key: state[key] for key in ("stage", "step", "history", "best")}
        rng.bit_generator.state = json.loads(state["rng"])
        optimizer_state = state.get("optimizer")
        print(f"resumed at stage {progress['stage']}, step {progress['step']}", flush=True)
    history, best = progress["history"], progress["best"]

    def checkpoint(optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        save_state(last, {"args": run_args, "net": net.state_dict(), **progress, "rng": json.dumps(rng.bit_generator.state),
                          "optimizer": optimizer.state_dict() if optimizer is not None else None})

    def searcher_now(**kwargs: Any) -> PhotoSearcher:
        return PhotoSearcher(net, onnx=False, threads=args.threads, **kwargs)

    started = time.perf_counter()
    # 1-2. the look, then the verifier: InfoNCE, evaluations, the best kept
    for name, steps, lr, batch_size in (("look", args.look_steps, args.look_lr, args.look_batch),
                                        ("verifier", args.verifier_steps, args.verifier_lr, args.verifier_batch)):
        if STAGES.index(progress["stage"]) > STAGES.index(name):
            continue
        module = net.look if name == "look" else net.verifier
        optimizer = torch.optim.Adam(module.parameters(), lr=lr)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        # the look is judged by its best candidate alone; the verifier by the whole search
        judge = dict(windows=1) if name == "look" else {}

        def evaluation_of(done: int) -> dict[str, Any]:
            result = evaluate_search(searcher_now(**judge), evaluation) | {"stage": name, "step": done}
            history.append(result)
            if name not in best or result["auc"] > best[name]["auc"]:
                best[name] = {"auc": result["auc"], "step": done,
                              "state": {k: v.clone() for k, v in module.state_dict().items()}}
            return result

        if progress["step"] == 0:
            result = evaluation_of(0)
            print(f"{name} step 0: {evaluation_name} success {result['success']:.3f}, AUC {result['auc']:.3f}", flush=True)
        net.frozen_batch_norm()
        searcher = searcher_now(windows=net.config.candidates)
        bar = tqdm(range(progress["step"], steps), initial=progress["step"], total=steps, desc=name, unit="step")
        for step in bar:
            losses = []
            for _ in range(batch_size):
                pair = data.sample(rng)
                loss = (look_loss(net, pair, rng, args.temperature) if name == "look" else
                        verifier_loss(net, searcher, pair, rng, args.negatives, args.temperature))
                if loss is not None:
                    losses.append(loss)
            if losses:
                loss = torch.stack(losses).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
            done = step + 1
            if done % args.eval_every == 0 or done == steps:
                result = evaluation_of(done)
                bar.write(f"{name} step {done}: {evaluation_name} success {result['success']:.3f}, "
                          f"AUC {result['auc']:.3f} (best AUC {best[name]['auc']:.3f} at step {best[name]['step']})")
                net.frozen_batch_norm()
                progress["step"] = done
                checkpoint(optimizer)
        module.load_state_dict(best[name]["state"])
        print(f"{name}: kept step {best[name]['step']} (AUC {best[name]['auc']:.3f})", flush=True)
        progress.update(stage=STAGES[STAGES.index(name) + 1], step=0)
        optimizer_state = None
        checkpoint()

    # 3. tables of the training pairs (and of the same queries in other photographs), and of the evaluation pairs
    net.eval()
    searcher = searcher_now()
    table_rng = np.random.default_rng([args.seed, 1])
    train_pairs = [data.sample(table_rng) for _ in range(args.table_pairs)]
    others = [data.sample(table_rng) for _ in range(args.table_pairs)]
    with torch.no_grad():
        train = make_tables(searcher, train_pairs)
        elsewhere = make_tables(searcher, train_pairs, others)
        test = make_tables(searcher, evaluation)

    # 4. the found score: P(answer right | its combined score), a logistic fit on the training tables
    answer = first_look_order(net, train)
    rows = torch.arange(len(answer))
    score = torch.cat([(train["verified"] + net.config.look_weight * train["look"])[rows, answer],
                       (elsewhere["verified"] + net.config.look_weight * elsewhere["look"])[rows, first_look_order(net, elsewhere)]])
    label = torch.cat([(train["iou"][rows, answer] > 0.5).float(), torch.zeros(len(answer))])
    usable = torch.cat([train["valid"][:, 0], elsewhere["valid"][:, 0]])
    fit = torch.optim.LBFGS(net.found.parameters(), lr=0.5, max_iter=200)

    def found_loss() -> torch.Tensor:
        fit.zero_grad()
        loss = F.binary_cross_entropy_with_logits(net.found(score[usable][:, None])[:, 0], label[usable])
        loss.backward()
        return loss

    fit.step(found_loss)
    print(f"found score: P(right) = sigmoid({net.found.weight.item():.2f} x score + {net.found.bias.item():.2f})", flush=True)

    # 5. the policy: imitation, then policy gradient, once per window cost; the one that finds most of the
    # evaluation pairs (then with fewest windows) is kept, and it is the default if it is as accurate
    # as comparing every candidate in first-look order (it then compares fewer windows)
    policies: dict[str, dict[str, Any]] = {}
    kept_policy, kept_key = None, None
    for cost in window_costs(args):
        torch.manual_seed(args.seed)
        net.policy = WindowPolicy(net.config.candidates, net.config.hidden)
        train_policy(net, train, args, cost)
        with torch.no_grad():
            searched = rollout(net, test, greedy=True)
        key = f"learned, window cost {cost:g}"
        policies[key] = {"success": table_success(test, searched["answer"]), "windows": float(searched["windows"].mean())}
        if kept_key is None or (policies[key]["success"], -policies[key]["windows"]) > (
                policies[kept_key]["success"], -policies[kept_key]["windows"]):
            kept_policy, kept_key = {k: v.clone() for k, v in net.policy.state_dict().items()}, key
    net.policy.load_state_dict(kept_policy)
    policies["first-look order"] = {"success": table_success(test, first_look_order(net, test)),
                                    "windows": float(test["valid"].float().sum(1).mean())}
    default_policy = "learned" if policies[kept_key]["success"] >= policies["first-look order"]["success"] else "first-look order"
    print(f"policies on {evaluation_name} (tables): " + "; ".join(
        f"{k}: success {v['success']:.3f} with {v['windows']:.2f} windows" for k, v in policies.items())
        + f" -> kept {kept_key}; default policy: {default_policy}", flush=True)

    # 6. the file, and the saved searcher searching the evaluation pairs for real
    minutes = (time.perf_counter() - started) / 60
    info = {"command": command_line("train/photo_search.py", args), "policy": default_policy,
            "chosen_on": evaluation_name,
            "kept_steps": {k: v["step"] for k, v in best.items()}, "kept_policy": kept_key,
            "policies_on_tables": policies}
    path = save_photo_search_file(out / "photo_search.pt", net, info)
    final = {}
    for policy in ("first-look order", "learned"):
        searcher = PhotoSearcher.load(path, policy=policy)
        final[policy] = evaluate_search(searcher, evaluation)
        print(f"saved searcher, policy {policy}: {evaluation_name} success {final[policy]['success']:.3f}, "
              f"AUC {final[policy]['auc']:.3f}", flush=True)
    progress.update(stage="done", step=0)
    checkpoint()
    summary = {"args": dataclasses.asdict(args), "command": info["command"], "history": history, "info": info,
               "final": final, "training_minutes": minutes, "photographs": len(photos)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {path} and {out / 'summary.json'} ({minutes:.1f} min)")


def train_policy(net: PhotoSearchNet, train: dict[str, torch.Tensor], args: Args, cost: float) -> None:
    """Imitation (``--imitation-steps``: the teacher compares in first-look order and stops once the
    best compared window is right), then REINFORCE (``--pg-steps``) on success less ``cost`` per
    window, with the greedy search's reward as baseline (self-critical)."""
    optimizer = torch.optim.Adam(net.policy.parameters(), lr=args.policy_lr)
    generator = torch.Generator().manual_seed(args.seed)
    for step in tqdm(range(args.imitation_steps + args.pg_steps), desc=f"policy (window cost {cost:g})", unit="step",
                     leave=False):
        pick = torch.randint(len(train["look"]), (args.policy_batch,), generator=generator)
        batch = {key: value[pick] for key, value in train.items()}
        searched = rollout(net, batch, greedy=False, generator=generator)
        if step < args.imitation_steps:
            mask = searched["labels"] >= 0
            loss = F.cross_entropy(searched["logits"][mask], searched["labels"][mask])
        else:
            with torch.no_grad():
                greedy = rollout(net, batch, greedy=True)
                advantage = ((table_success_rows(batch, searched["answer"]) - cost * searched["windows"])
                             - (table_success_rows(batch, greedy["answer"]) - cost * greedy["windows"]))
            loss = -(advantage * searched["log_prob"]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def table_success_rows(tables: dict[str, torch.Tensor], answer: torch.Tensor) -> torch.Tensor:
    """``(B,)`` 1 where the answer's IoU is above 0.5."""
    return (tables["iou"][torch.arange(len(answer)), answer] > 0.5).float()


if __name__ == "__main__":
    main()
