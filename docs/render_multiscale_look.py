"""Draw the learned multi-scale look on photograph pairs (docs/images/multiscale_look.png).

    MATCHENV_FLICKRLOGOS27=<folder> python docs/render_multiscale_look.py

One row per test pair of the FlickrLogos-27-derived self-supervised split (held-out photographs):
the query as given, the reference with the target (green), the look's answer (red, with its IoU)
and, where the second look ran, the candidates it compared (yellow), and the first look's scores
at its best level over the reference (brighter: more similar). Uses the shipped ``photo`` look.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from matchenv.agents.look_network import STRIDE
from matchenv.agents.multiscale_look import LookSearcher
from matchenv.datasets.logos import find_flickrlogos27
from matchenv.datasets.self_supervised import SelfSupervisedPhotos
from matchenv.geometry import iou
from matchenv.rendering import frame_strip, save_frames

#: height of the reference panels in display pixels
PANEL = 240


def boxed(image: np.ndarray, boxes: list[tuple[np.ndarray, tuple[int, int, int], int]], factor: float) -> np.ndarray:
    """``image`` scaled by ``factor`` with ``(box, colour, line width)`` drawn in order."""
    out = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    for box, colour, thickness in boxes:
        x0, y0, x1, y1 = (int(round(v * factor)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thickness)
    return out


def heat_panel(searcher: LookSearcher, query: np.ndarray, reference: np.ndarray, factor: float) -> np.ndarray:
    """The best level's score map, placed over the reference where each position's centre is."""
    maps, sides = searcher.score_maps(query, reference)
    level = int(np.argmax([m.max() for m in maps]))
    scores = maps[level]
    height, width = reference.shape[:2]
    # position (i, j) is centred at level pixel (4 j + canvas / 2, ...); the level is the reference
    # scaled by side / level side
    scale = searcher.config.side / sides[level]
    half = searcher.config.canvas / 2
    grid_x = (np.arange(scores.shape[1]) * STRIDE + half) / scale
    grid_y = (np.arange(scores.shape[0]) * STRIDE + half) / scale
    out_w, out_h = int(round(width * factor)), int(round(height * factor))
    xs, ys = (np.arange(out_w) + 0.5) / factor, (np.arange(out_h) + 0.5) / factor
    ix = np.clip(np.searchsorted(grid_x, xs) - 1, 0, len(grid_x) - 1)
    iy = np.clip(np.searchsorted(grid_y, ys) - 1, 0, len(grid_y) - 1)
    norm = (scores - scores.min()) / max(float(scores.max() - scores.min()), 1e-6)
    heat = (255 * norm[iy][:, ix]).astype(np.uint8)
    coloured = cv2.applyColorMap(heat, cv2.COLORMAP_INFERNO)[:, :, ::-1]  # to RGB
    grey = cv2.cvtColor(cv2.resize(reference, (out_w, out_h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    return (0.6 * coloured + 0.4 * grey[:, :, None]).astype(np.uint8)


def query_panel(query: np.ndarray) -> np.ndarray:
    """The query enlarged (nearest neighbour, at most 4x) to about a panel's height, at most 120 px wide."""
    factor = min(PANEL / query.shape[0], 120 / query.shape[1], 4.0)
    return cv2.resize(query, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def stacked_rows(rows: list[np.ndarray]) -> np.ndarray:
    """``rows`` one under another, padded white to the widest, 6 px apart."""
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])


def label(panel: np.ndarray, text: str) -> np.ndarray:
    band = np.full((22, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(band, text, (3, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, panel])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="0,1,24,37",
                        help="test pair indices (24 and 37: pairs the second look gets right and the first look alone misses)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "images" / "multiscale_look.png"))
    args = parser.parse_args()
    searcher = LookSearcher.from_pretrained("photo")
    data = SelfSupervisedPhotos(find_flickrlogos27() / "flickr_logos_27_dataset_images", test_size=100)
    rows = []
    for i in (int(v) for v in args.pairs.split(",")):
        pair = data.test_pair(i)
        result = searcher.locate(pair.template, pair.reference)
        factor = PANEL / pair.reference.shape[0]
        candidates = result.path[:-1]  # empty unless the second look ran
        found = boxed(pair.reference, [(box, (255, 220, 0), 1) for box in candidates]
                      + [(pair.target_box, (0, 255, 0), 2), (result.box, (255, 0, 0), 2)], factor)
        second = f"; 2nd look at {len(candidates)} (yellow)" if len(candidates) else "; no 2nd look"
        rows.append(frame_strip([label(query_panel(pair.template), f"query {i}"),
                                 label(found, f"answer (red) IoU {iou(result.box, pair.target_box):.2f}{second}"),
                                 label(heat_panel(searcher, pair.template, pair.reference, factor),
                                       "first look: scores at its best level")]))
    print(save_frames([stacked_rows(rows)], args.out))


if __name__ == "__main__":
    main()
