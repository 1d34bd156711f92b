"""Why a searcher fails on real template/target pairs: wrong place, wrong size or wrong aspect, on which pairs.

    python train/diagnose_real_pairs.py --searcher look-agent:photo --searcher look:photo \\
        --searcher photo-search:photo --searcher ncc --out runs/diagnosis     # KTM ($MATCHENV_KTM)

Every searcher answers every pair (a name of ``train/benchmark_matchers.py``'s ``--methods`` or a
spec of its ``--agent``). Outputs, printed and in ``<out>/diagnosis.md`` and ``diagnosis.json``:

* **what went wrong**: success (IoU > 0.5); *right place, wrong box* (the answer's centre inside
  the target, IoU <= 0.5); *wrong place*; the answer's side over the target's (square roots of
  the areas: median, 10th and 90th percentiles) and its aspect over the target's;
* **on which pairs**: success by the template's shorter side, by the target's scale against the
  template (the window-size prior: real pairs keep the template's size), by how much the target's
  appearance changed (colour zero-mean NCC of the template, resized to the target's box, with the
  target), and by whether a look-alike outscores the target for plain NCC (a window elsewhere,
  IoU < 0.3 with the target, with a higher NCC than the best near the target);
* **first look and policy** (searchers that report candidates: the learned look's second look,
  the photograph agent, the photograph search): where the first look ranks the true location (the
  first candidate with IoU > 0.5), and how often the windows after it fixed a wrong first
  candidate or lost a right one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_matchers import AgentMatcher, make_method, make_pairs  # noqa: E402

from matchenv.geometry import iou  # noqa: E402
from matchenv.metrics import success_auc, success_rate  # noqa: E402

#: Bins of the pair attributes: (name, lower edges, labels).
SIDE_BINS = ((0, 16, 32), ("< 16 px", "16-32 px", ">= 32 px"))
SCALE_BINS = ((0, 0.8, 1.25), ("< 0.8x", "0.8-1.25x", "> 1.25x"))
APPEARANCE_BINS = ((-2, 0.3, 0.6), ("NCC < 0.3", "0.3-0.6", ">= 0.6"))


def box_side(box: np.ndarray) -> float:
    """Square root of a box's area."""
    return float(np.sqrt(max(box[2] - box[0], 1e-9) * max(box[3] - box[1], 1e-9)))


def box_aspect(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 1e-9) / max(box[3] - box[1], 1e-9))


def pair_attributes(template: np.ndarray, reference: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """What makes a pair hard: the template's shorter side, the target's scale and aspect against
    the template, the appearance change (NCC at the target) and a look-alike margin."""
    th, tw = template.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in target)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(max(x1, x0 + 1), reference.shape[1]), min(max(y1, y0 + 1), reference.shape[0])
    crop = reference[y0:y1, x0:x1]
    scaled = cv2.resize(template, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_AREA)
    appearance = float(cv2.matchTemplate(crop, scaled, cv2.TM_CCOEFF_NORMED)[0, 0]) if crop.size > 3 else 0.0
    scores = cv2.matchTemplate(reference, template, cv2.TM_CCOEFF_NORMED)
    ys, xs = np.mgrid[0:scores.shape[0], 0:scores.shape[1]]
    # IoU of every template-size window with the target
    ix = np.clip(np.minimum(xs + tw, target[2]) - np.maximum(xs, target[0]), 0, None)
    iy = np.clip(np.minimum(ys + th, target[3]) - np.maximum(ys, target[1]), 0, None)
    inter = ix * iy
    overlap = inter / (tw * th + (target[2] - target[0]) * (target[3] - target[1]) - inter)
    near = scores[overlap >= 0.3]
    far = scores[overlap < 0.3]
    lookalike = float(far.max() - near.max()) if near.size and far.size else 0.0
    target_side, template_side = box_side(target), float(np.sqrt(th * tw))
    return {"template_side": float(min(th, tw)), "scale": target_side / template_side,
            "aspect_change": box_aspect(target) / (tw / th), "appearance_ncc": appearance, "lookalike_margin": lookalike}


def candidate_boxes(result: Any) -> np.ndarray:
    """The first look's candidates of a result, best first, or an empty array: the photograph
    search's ``candidates``; the learned look's and the photograph agent's ``path`` before their answer."""
    if getattr(result, "candidates", None) is not None:
        return np.asarray(result.candidates)
    path = np.asarray(getattr(result, "path", np.zeros((0, 4))))
    return path[:-1] if len(path) > 1 else np.zeros((0, 4))


def binned(values: list[float], successes: list[bool], edges: tuple, labels: tuple) -> list[str]:
    cells = []
    for i, label in enumerate(labels):
        lo = edges[i]
        hi = edges[i + 1] if i + 1 < len(edges) else np.inf
        picked = [s for v, s in zip(values, successes) if lo <= v < hi]
        cells.append(f"{label}: {np.mean(picked):.2f} ({len(picked)})" if picked else f"{label}: - (0)")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="KTM", help="a dataset of real template/target pairs (default KTM)")
    parser.add_argument("--dataset-kwargs", default="{}", help="JSON keyword arguments for --dataset")
    parser.add_argument("--searcher", action="append", default=[],
                        help="a matcher name (ncc, ncc-multiscale, ...) or an --agent spec of train/benchmark_matchers.py "
                             "(look-agent:photo, look:photo,candidates=8, photo-search:photo, ...); repeatable")
    parser.add_argument("--pairs", type=int, default=1000, help="at most this many test pairs (all of KTM's 200 by default)")
    parser.add_argument("--out", default="runs/diagnosis", help="folder for diagnosis.md and diagnosis.json")
    args = parser.parse_args()
    if not args.searcher:
        parser.error("give at least one --searcher")
    pairs, data = make_pairs(args.dataset, args.pairs, json.loads(args.dataset_kwargs))
    attributes = [pair_attributes(p.template, p.reference, p.target_box) for p in tqdm(pairs, desc="pair attributes")]
    scales = np.array([a["scale"] for a in attributes])
    lines = [f"# {args.dataset}: {len(pairs)} pairs", "",
             f"Target side / template side (square roots of areas): median {np.median(scales):.2f}, 10th-90th percentile "
             f"{np.percentile(scales, 10):.2f}-{np.percentile(scales, 90):.2f}; within 0.8-1.25x for "
             f"{np.mean((scales >= 0.8) & (scales <= 1.25)):.2f} of the pairs.", ""]
    report: dict[str, Any] = {"dataset": args.dataset, "pairs": len(pairs), "attributes": attributes, "searchers": {}}
    for spec in args.searcher:
        method = AgentMatcher(spec) if ":" in spec else make_method(spec, None, data)
        name = getattr(method, "name", spec)
        searcher = getattr(method, "searcher", None)
        rows = []
        for pair in tqdm(pairs, desc=name):
            result = (searcher or method).locate(pair.template, pair.reference)
            box = np.asarray(result.box, dtype=np.float64)
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            t = pair.target_box
            inside = t[0] <= centre[0] <= t[2] and t[1] <= centre[1] <= t[3]
            candidates = candidate_boxes(result) if searcher is not None else np.zeros((0, 4))
            hits = [iou(c, t) > 0.5 for c in candidates]
            rows.append({"iou": iou(box, t), "centre_inside": bool(inside), "side_ratio": box_side(box) / box_side(t),
                         "aspect_ratio": box_aspect(box) / box_aspect(t), "box": box.tolist(),
                         "first_hit": hits.index(True) if True in hits else None, "candidates": len(candidates),
                         "first_candidate_right": bool(hits[0]) if hits else None})
        ious = [r["iou"] for r in rows]
        ok = [v > 0.5 for v in ious]
        wrong_box = sum(1 for r in rows if r["iou"] <= 0.5 and r["centre_inside"])
        wrong_place = sum(1 for r in rows if r["iou"] <= 0.5 and not r["centre_inside"])
        sides = [r["side_ratio"] for r in rows]
        aspects = [r["aspect_ratio"] for r in rows]
        lines += [f"## {name}", "",
                  f"success {success_rate(ious):.3f}, AUC {success_auc(ious):.3f}, mean IoU {np.mean(ious):.3f}; "
                  f"failures: {wrong_place} wrong place, {wrong_box} right place but IoU <= 0.5; answer side / target side: "
                  f"median {statistics.median(sides):.2f} (10th-90th {np.percentile(sides, 10):.2f}-{np.percentile(sides, 90):.2f}); "
                  f"answer aspect / target aspect: 10th-90th {np.percentile(aspects, 10):.2f}-{np.percentile(aspects, 90):.2f}", "",
                  "| pairs by | success (pairs) |", "|---|---|",
                  "| template's shorter side | " + " · ".join(binned([a["template_side"] for a in attributes], ok, *SIDE_BINS)) + " |",
                  "| target scale vs template | " + " · ".join(binned(list(scales), ok, *SCALE_BINS)) + " |",
                  "| appearance (NCC at the target) | " + " · ".join(binned([a["appearance_ncc"] for a in attributes], ok, *APPEARANCE_BINS)) + " |",
                  "| an NCC look-alike outscores the target | " + " · ".join(binned([float(a["lookalike_margin"] > 0) for a in attributes], ok, (0, 0.5), ("no", "yes"))) + " |",
                  ""]
        with_candidates = [r for r in rows if r["candidates"]]
        if with_candidates:
            k = max(r["candidates"] for r in with_candidates)
            ranks = [r["first_hit"] for r in with_candidates]
            at = [np.mean([rk is not None and rk < j for rk in ranks]) for j in range(1, k + 1)]
            fixed = sum(1 for r in with_candidates if r["first_candidate_right"] is False and r["iou"] > 0.5)
            lost = sum(1 for r in with_candidates if r["first_candidate_right"] and r["iou"] <= 0.5)
            lines += [f"First look: a candidate with IoU > 0.5 among the first 1..{k}: "
                      + ", ".join(f"{v:.2f}" for v in at)
                      + f". After it, the windows fixed {fixed} answers whose first candidate was wrong and lost {lost} "
                        "whose first candidate was right.", ""]
        report["searchers"][name] = {"spec": spec, "rows": rows, "success": success_rate(ious), "auc": success_auc(ious)}
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnosis.md").write_text(text + "\n")
    (out / "diagnosis.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
