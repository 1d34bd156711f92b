"""What each part of the photograph search adds, on real pairs (docs/real_pairs.md "Ablations").

    MATCHENV_KTM=<folder> python train/ablate_photo_search.py --images <BSDS500>/images --seed 1

Rows, each on ``--eval-dataset``'s pairs (KTM by default):

* the search with **ImageNet weights only** (no training), its first look's best candidate alone
  and every candidate compared in first-look order;
* the **shipped** searcher (``--searcher``), its first look's best candidate alone, every
  candidate in first-look order, and its learned policy;
* on the shipped searcher's tables of ``--table-pairs`` training pairs (made as
  ``train/photo_search.py`` makes them, with the same ``--images`` and ``--seed``), its policy
  **trained by imitation only** and by imitation then policy gradient at ``--window-cost``: what
  the RL stage adds.

Writes ``<out>/ablation.md`` and ``ablation.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import photo_search as training  # noqa: E402  (train/photo_search.py: its stages are the ablation's)

from matchenv.agents.photo_search import PhotoSearcher  # noqa: E402
from matchenv.agents.photo_search_net import PhotoSearchNet, WindowPolicy  # noqa: E402
from matchenv.datasets.two_views import TwoViewPhotos  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--searcher", default="photo", help="a shipped searcher's name or a file from train/photo_search.py")
    parser.add_argument("--images", default="", help="as train/photo_search.py --images (the tables' photographs)")
    parser.add_argument("--no-flickrlogos27", action="store_true", help="as train/photo_search.py --no-flickrlogos27")
    parser.add_argument("--seed", type=int, default=1, help="as train/photo_search.py --seed (the shipped run's: 1)")
    parser.add_argument("--table-pairs", type=int, default=2000, help="training pairs the policies learn from")
    parser.add_argument("--window-cost", type=float, default=0.002, help="the policy gradient's cost per window")
    parser.add_argument("--eval-dataset", default="KTM")
    parser.add_argument("--eval-dataset-kwargs", default="{}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/ablation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_args = training.Args(images=args.images, flickrlogos27=not args.no_flickrlogos27, seed=args.seed,
                               table_pairs=args.table_pairs, eval_dataset=args.eval_dataset,
                               eval_dataset_kwargs=args.eval_dataset_kwargs)
    photos = training.training_photographs(train_args)
    data = TwoViewPhotos(photos, test_fraction=0.05, test_seed=args.seed)
    evaluation, name = training.evaluation_pairs(train_args, data)
    shipped = (PhotoSearcher.from_pretrained(args.searcher) if not Path(args.searcher).is_file()
               else PhotoSearcher.load(args.searcher))
    rows: list[dict] = []

    def search_row(label: str, searcher: PhotoSearcher) -> None:
        windows = []
        original = searcher.locate

        def counting(query, reference):
            result = original(query, reference)
            windows.append(result.windows)
            return result

        searcher.locate = counting
        row = training.evaluate_search(searcher, evaluation) | {"configuration": label, "windows": float(np.mean(windows))}
        rows.append(row)
        print(f"{label}: success {row['success']:.3f}, AUC {row['auc']:.3f}, {row['windows']:.2f} windows", flush=True)

    imagenet = PhotoSearchNet.from_imagenet(shipped.config).eval()
    search_row("ImageNet weights only: the first look's best candidate", PhotoSearcher(imagenet, policy="first-look order", windows=1))
    search_row("ImageNet weights only: every candidate in first-look order", PhotoSearcher(imagenet, policy="first-look order"))
    net = shipped.net
    search_row("shipped: the first look's best candidate", PhotoSearcher(net, policy="first-look order", windows=1))
    search_row("shipped: every candidate in first-look order", PhotoSearcher(net, policy="first-look order"))
    search_row("shipped: its learned policy", PhotoSearcher(net, policy="learned"))

    rng = np.random.default_rng([args.seed, 1])  # the training run's table pairs
    pairs = [data.sample(rng) for _ in range(args.table_pairs)]
    tables_searcher = PhotoSearcher(net, policy="first-look order")
    with torch.no_grad():
        train = training.make_tables(tables_searcher, pairs)
        test = training.make_tables(tables_searcher, evaluation)
    policy_rows = [{"policy": "every candidate in first-look order",
                    "success": training.table_success(test, training.first_look_order(net, test)),
                    "windows": float(test["valid"].float().sum(1).mean())}]
    for label, pg_steps in (("imitation only", 0), (f"imitation, then policy gradient (window cost {args.window_cost:g})",
                                                    train_args.pg_steps)):
        torch.manual_seed(args.seed)
        net.policy = WindowPolicy(net.config.candidates, net.config.hidden)
        training.train_policy(net, train, dataclasses.replace(train_args, pg_steps=pg_steps), args.window_cost)
        with torch.no_grad():
            searched = training.rollout(net, test, greedy=True)
        policy_rows.append({"policy": label, "success": training.table_success(test, searched["answer"]),
                            "windows": float(searched["windows"].mean())})
        print(f"tables, {label}: success {policy_rows[-1]['success']:.3f}, {policy_rows[-1]['windows']:.2f} windows", flush=True)
    lines = [f"# Ablation on {name}", "", "| configuration | success | AUC | windows compared |", "|---|---:|---:|---:|"]
    lines += [f"| {r['configuration']} | {r['success']:.3f} | {r['auc']:.3f} | {r['windows']:.2f} |" for r in rows]
    lines += ["", f"Policies on the searcher's tables ({args.table_pairs} training pairs to learn from; candidate windows "
              "before the answer's refinement):", "", "| policy | success | windows |", "|---|---:|---:|"]
    lines += [f"| {r['policy']} | {r['success']:.3f} | {r['windows']:.2f} |" for r in policy_rows]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(text + "\n")
    (out / "ablation.json").write_text(json.dumps({"searches": rows, "policies": policy_rows}, indent=1))


if __name__ == "__main__":
    main()
