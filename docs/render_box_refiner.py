"""Draw the box refiner on FlickrLogos-27 test pairs (docs/images/box_refiner_flickrlogos27.png).

    MATCHENV_FLICKRLOGOS27=<folder> python docs/render_box_refiner.py

One panel per held-out test pair: the query (top left), the reference with the target (green),
the shipped agent's windows (thin yellow, numbered by the order it placed them), its own answer
(its last window, blue) and where the shipped box refiner moved that answer (red), each with its
IoU. Uses ``TemplateSearcher.from_pretrained("flickrlogos27")``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from matchenv.agents.searcher import TemplateSearcher
from matchenv.datasets.logos import FlickrLogos27
from matchenv.geometry import iou
from matchenv.rendering import frame_strip, save_frames

#: height of the reference panels in display pixels
PANEL = 240


def panel(pair, result) -> np.ndarray:
    """The reference with target, windows, the agent's answer and the refined answer; the query inset."""
    factor = PANEL / pair.reference.shape[0]
    out = cv2.resize(pair.reference, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)

    def draw(box, colour, thickness):
        x0, y0, x1, y1 = (int(round(v * factor)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thickness)
        return x0, y0

    for t, box in enumerate(result.path[:-1]):
        x0, y0 = draw(box, (255, 220, 0), 1)
        cv2.putText(out, str(t + 1), (x0 + 2, y0 + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 220, 0), 1, cv2.LINE_AA)
    draw(pair.target_box, (0, 255, 0), 2)
    draw(result.refined_from, (0, 120, 255), 2)
    draw(result.box, (255, 0, 0), 2)
    query = pair.template
    qf = min(70 / query.shape[0], 90 / query.shape[1])
    inset = cv2.resize(query, None, fx=qf, fy=qf, interpolation=cv2.INTER_AREA)
    inset = np.pad(inset, ((2, 2), (2, 2), (0, 0)), constant_values=255)
    out[:inset.shape[0], :inset.shape[1]] = inset
    band = np.full((36, out.shape[1], 3), 255, np.uint8)
    before, after = iou(result.refined_from, pair.target_box), iou(result.box, pair.target_box)
    cv2.putText(band, f"agent (blue) IoU {before:.2f}", (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 90, 200), 1, cv2.LINE_AA)
    cv2.putText(band, f"refined (red) IoU {after:.2f}", (3, 31), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (200, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, out])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="0,1,2,3,4,5", help="test pair indices")
    parser.add_argument("--per-row", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "images" / "box_refiner_flickrlogos27.png"))
    args = parser.parse_args()
    searcher = TemplateSearcher.from_pretrained("flickrlogos27")
    data = FlickrLogos27()
    panels = []
    for i in (int(v) for v in args.pairs.split(",")):
        pair = data.test_pair(i)
        panels.append(panel(pair, searcher.locate(pair.template, pair.reference)))
    rows = [frame_strip(panels[k:k + args.per_row]) for k in range(0, len(panels), args.per_row)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    print(save_frames([np.concatenate(rows)], args.out))


if __name__ == "__main__":
    main()
