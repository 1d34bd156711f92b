"""Draw the coarse-to-fine searcher on large Noisy MNIST canvases (docs/images/coarse_to_fine*.png).

    MATCHENV_DATA=/path/to/mnist python docs/render_coarse_to_fine.py
    MATCHENV_DATA=... python docs/render_coarse_to_fine.py --proposer mixed-mnist \
        --out docs/images/coarse_to_fine_mixed.png

One row per test pair: the whole reference shrunk for display with the coarse look's
probabilities over its cells (brighter red: more probable), the 100x100 crop whose search
answered (yellow), the other candidate crops searched, numbered in the look's order (orange),
and the target (green); then the agent's search inside the answering crop (as in the env's
rendering, with the query). Uses a shipped proposer with its shipped options (or a proposer
file, one candidate unless ``--candidates``) and the agent it names, on the dataset it was
trained for (its file records the dataset and its arguments) at ``--canvas`` px.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from matchenv.agents.coarse_to_fine import CoarseToFineResult, CoarseToFineSearcher, load_proposer_file
from matchenv.agents.pretrained import PROPOSERS, proposer_path
from matchenv.datasets import make_dataset
from matchenv.datasets.noisy_mnist import canvas_kwargs
from matchenv.geometry import iou
from matchenv.rendering import frame_strip, render_search, save_frames

#: side of the overview panel in display pixels
PANEL = 300


def overview_panel(searcher: CoarseToFineSearcher, query: np.ndarray, reference: np.ndarray,
                   result: CoarseToFineResult, target: np.ndarray) -> np.ndarray:
    """The reference at ``PANEL`` px with the cell probabilities, the crops searched and the target."""
    height, width = reference.shape[:2]
    logits, _, _ = searcher.cell_logits(reference, query if searcher.query_aware else None)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    grey = cv2.resize(reference[:, :, 0], (PANEL, PANEL), interpolation=cv2.INTER_AREA)
    panel = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    heat = cv2.resize(probs / probs.max(), (PANEL, PANEL), interpolation=cv2.INTER_NEAREST)
    panel[:, :, 0] = np.maximum(panel[:, :, 0], 255 * heat)  # red channel (RGB)
    panel = panel.clip(0, 255).astype(np.uint8)
    sx, sy = PANEL / width, PANEL / height

    def rect(box, colour):
        x0, y0, x1, y1 = box
        cv2.rectangle(panel, (int(x0 * sx), int(y0 * sy)), (int(np.ceil(x1 * sx)), int(np.ceil(y1 * sy))), colour, 1)

    rect(target, (0, 255, 0))
    for rank, proposal in enumerate(result.proposals, start=1):
        if proposal != result.proposal:
            rect(proposal.crop, (255, 140, 0))
        if len(result.proposals) > 1:
            x0, y0 = proposal.crop[:2]
            cv2.putText(panel, str(rank), (int(x0 * sx) + 2, int(y0 * sy) + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (255, 255, 0) if proposal == result.proposal else (255, 140, 0), 1, cv2.LINE_AA)
    rect(result.proposal.crop, (255, 255, 0))
    return panel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--canvas", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--proposer", default="cluttered-mnist", help=f"a shipped proposer ({', '.join(PROPOSERS)}) or a file")
    parser.add_argument("--candidates", type=int, default=None,
                        help="crops the agent searches (default: a shipped proposer's own setting, else 1)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "images" / "coarse_to_fine.png"))
    args = parser.parse_args()
    shipped = args.proposer in PROPOSERS
    path = proposer_path(args.proposer) if shipped else Path(args.proposer)
    searcher = (CoarseToFineSearcher.from_pretrained(args.proposer, candidates=args.candidates) if shipped
                else CoarseToFineSearcher.load(path, candidates=1 if args.candidates is None else args.candidates))
    trained = load_proposer_file(path)["info"].get("args", {})  # the dataset it was trained for
    kwargs = canvas_kwargs(args.canvas, trained.get("clutter_density", 8.0), json.loads(trained.get("dataset_kwargs", "{}")))
    data = make_dataset(trained.get("dataset", "ClutteredMNIST"), test_size=args.pairs, **kwargs)
    rows = []
    for i in range(args.pairs):
        pair = data.test_pair(i)
        result = searcher.locate(pair.query, pair.reference)
        x0, y0, x1, y1 = result.proposal.crop
        shift = np.array([x0, y0, x0, y0], dtype=np.float64)
        searched = (f", crop {result.proposals.index(result.proposal) + 1} of {len(result.proposals)}"
                    if len(result.proposals) > 1 else "")
        fine = render_search(pair.reference[y0:y1, x0:x1], pair.query, result.path - shift, pair.target_box - shift,
                             scale=PANEL // 100, title=f"test pair {i}, {args.canvas}x{args.canvas}\nagent in the crop"
                                   f"{searched}: IoU {iou(result.box, pair.target_box):.2f}")
        overview = overview_panel(searcher, pair.query, pair.reference, result, pair.target_box)
        pad = np.full((max(0, fine.shape[0] - PANEL), PANEL, 3), 255, np.uint8)
        rows.append(frame_strip([np.concatenate([overview, pad]) if len(pad) else overview, fine]))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    print(save_frames([np.concatenate(rows)], args.out))


if __name__ == "__main__":
    main()
