"""Is the query there at all? The found score on real pairs with and without the query, beside NCC's peak.

    python train/evaluate_found.py --searcher photo-search:photo --out runs/found     # KTM ($MATCHENV_KTM)

*Positives*: every pair of ``--dataset`` (KTM: the template and its own target frame).
*Negatives*: each template searched in the target frame of another pair whose video is another
one (pair ``i`` against the first pair ``j = i + n/2, i + n/2 + 1, ...`` (mod ``n``) of another
sequence, whose frame holds the template): the query is not in it.

For each searcher (an ``--agent`` spec of ``train/benchmark_matchers.py`` whose results carry a
``score`` and a ``found``, e.g. ``photo-search:photo``) and for NCC (OpenCV's zero-mean NCC at
the template's size; its score is the map's peak, which matchers commonly threshold), it prints
and writes (``<out>/found.md``, ``found.json``): the ROC AUC of the score (positives against
negatives: the chance that a positive scores above a negative), and for the searchers the
false-alarm rate at their own threshold (negatives with ``found``), the rate of positives found,
and of positives found *and* right (IoU > 0.5).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_matchers import AgentMatcher, make_pairs  # noqa: E402

from matchenv.geometry import iou  # noqa: E402


def roc_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Chance that a positive scores above a negative (ties count half): the area under the ROC curve."""
    positives, negatives = np.asarray(positives, float), np.asarray(negatives, float)
    scores = np.concatenate([positives, negatives])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    positive_ranks = ranks[: len(positives)].sum()
    return float((positive_ranks - len(positives) * (len(positives) + 1) / 2) / (len(positives) * len(negatives)))


def sequence_of(pair) -> str:
    """The video a pair comes from: its file names' ``<seq>`` (``pair0001_frm1_Airport_0001.jpg`` -> ``Airport``)."""
    name = Path(pair.meta["reference_path"]).name
    return name.split("_", 2)[2].rsplit("_", 1)[0]


def negative_partner(pairs: list, i: int) -> int:
    """The pair whose target frame pair ``i``'s template is searched in (see the module docstring)."""
    n = len(pairs)
    th, tw = pairs[i].template.shape[:2]
    for step in range(n // 2, n // 2 + n):
        j = (i + step) % n
        rh, rw = pairs[j].reference.shape[:2]
        if sequence_of(pairs[j]) != sequence_of(pairs[i]) and th <= rh and tw <= rw:
            return j
    raise ValueError(f"no pair of another sequence can hold pair {i}'s template")


def ncc_peak(template: np.ndarray, reference: np.ndarray) -> float:
    return float(cv2.matchTemplate(reference, template, cv2.TM_CCOEFF_NORMED).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="KTM", help="real template/target pairs from videos (default KTM)")
    parser.add_argument("--dataset-kwargs", default="{}", help="JSON keyword arguments for --dataset")
    parser.add_argument("--searcher", action="append", default=[], help="an --agent spec with a found score, e.g. "
                        "photo-search:photo (repeatable)")
    parser.add_argument("--out", default="runs/found", help="folder for found.md and found.json")
    args = parser.parse_args()
    pairs, _ = make_pairs(args.dataset, 100_000, json.loads(args.dataset_kwargs))
    partners = [negative_partner(pairs, i) for i in range(len(pairs))]
    results = {"dataset": args.dataset, "pairs": len(pairs), "partners": partners, "methods": {}}
    ncc_pos = [ncc_peak(p.template, p.reference) for p in pairs]
    ncc_neg = [ncc_peak(p.template, pairs[j].reference) for p, j in zip(pairs, partners)]
    results["methods"]["NCC peak"] = {"roc_auc": roc_auc(ncc_pos, ncc_neg), "positives": ncc_pos, "negatives": ncc_neg}
    lines = [f"# Found or not: {args.dataset}, {len(pairs)} positives and {len(pairs)} negatives", "",
             "| method | ROC AUC of the score | false alarms at its threshold | positives found | found and right (IoU > 0.5) |",
             "|---|---:|---:|---:|---:|",
             f"| NCC (OpenCV zero-mean, peak of the map) | {results['methods']['NCC peak']['roc_auc']:.3f} | | | |"]
    for spec in args.searcher:
        matcher = AgentMatcher(spec)
        searcher = matcher.searcher
        pos = [searcher.locate(p.template, p.reference) for p in tqdm(pairs, desc=f"{matcher.name} positives")]
        neg = [searcher.locate(p.template, pairs[j].reference)
               for p, j in tqdm(list(zip(pairs, partners)), desc=f"{matcher.name} negatives")]
        scores_pos, scores_neg = [r.score for r in pos], [r.score for r in neg]
        right = [r.found and iou(r.box, p.target_box) > 0.5 for r, p in zip(pos, pairs)]
        row = {"roc_auc": roc_auc(scores_pos, scores_neg), "false_alarms": float(np.mean([r.found for r in neg])),
               "found": float(np.mean([r.found for r in pos])), "found_and_right": float(np.mean(right)),
               "threshold": getattr(searcher, "found_threshold", None), "positives": scores_pos, "negatives": scores_neg}
        results["methods"][matcher.name] = row
        lines.append(f"| {matcher.name} (found: score >= {row['threshold']}) | {row['roc_auc']:.3f} | "
                     f"{row['false_alarms']:.3f} | {row['found']:.3f} | {row['found_and_right']:.3f} |")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "found.md").write_text(text + "\n")
    (out / "found.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
