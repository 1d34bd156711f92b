"""Draw the photograph search on real pairs (docs/images/photo_search.png).

    MATCHENV_KTM=<folder> python docs/render_photo_search.py

One row per KTM pair (pairs 0, 40, 80, 120, 160, 199 by default: one of every eighth sequence,
not selected by result): the template; the reference with the first look's candidates (white,
numbered by rank), the windows compared (yellow), the answer (red, with its IoU and found score)
and the target (green); and the first look's cosine map (brighter: more alike). Uses the shipped
``photo`` searcher. KTM's frames are research-use only: the picture stays in the repository's docs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from matchenv.agents.photo_search import PhotoSearcher, resized
from matchenv.datasets import make_dataset
from matchenv.geometry import iou
from matchenv.rendering import frame_strip, save_frames
from render_look_agent import numbered  # the photograph agent's picture, same folder
from render_multiscale_look import PANEL, boxed, label, query_panel, stacked_rows


def cosine_panel(searcher: PhotoSearcher, template: np.ndarray, reference: np.ndarray, factor: float) -> np.ndarray:
    """The first look's cosine map as a heat map over the reference, ``PANEL`` pixels high: each
    position drawn at the centre of the window it scores (black where no window is centred)."""
    look = searcher.first_look(template, reference)
    small = lambda image: resized(image, (max(int(round(image.shape[0] * look.scale)), 1),  # noqa: E731
                                          max(int(round(image.shape[1] * look.scale)), 1)))
    kernel = searcher.runtime.look_features(small(template))
    features = searcher.runtime.look_features(small(reference))
    scores = searcher.runtime.cosine_map(features, kernel[:, : features.shape[1], : features.shape[2]])
    heat = np.clip((scores - scores.min()) / max(float(np.ptp(scores)), 1e-6) * 255, 0, 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)
    height, width = reference.shape[:2]
    cell = searcher.net.look.stride / look.scale  # reference pixels per position
    canvas = np.zeros((height, width, 3), np.uint8)
    top, left = template.shape[0] // 2, template.shape[1] // 2
    h = min(int(round(scores.shape[0] * cell)), height - top)
    w = min(int(round(scores.shape[1] * cell)), width - left)
    canvas[top:top + h, left:left + w] = cv2.resize(heat, (int(round(scores.shape[1] * cell)),
                                                           int(round(scores.shape[0] * cell))),
                                                    interpolation=cv2.INTER_NEAREST)[:h, :w]
    return cv2.resize(canvas, (int(round(width * factor)), int(round(height * factor))), interpolation=cv2.INTER_NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="0,40,80,120,160,199", help="KTM test pair indices")
    parser.add_argument("--out", default=str(Path(__file__).parent / "images" / "photo_search.png"))
    args = parser.parse_args()
    searcher = PhotoSearcher.from_pretrained("photo")
    data = make_dataset("KTM")
    rows = []
    for i in (int(v) for v in args.pairs.split(",")):
        pair = data.test_pair(i)
        result = searcher.locate(pair.template, pair.reference)
        factor = PANEL / pair.reference.shape[0]
        found = boxed(pair.reference, [(box, (255, 255, 255), 1) for box in result.candidates]
                      + [(box, (255, 220, 0), 1) for box in result.path]
                      + [(pair.target_box, (0, 255, 0), 2), (result.box, (255, 0, 0), 2)], factor)
        found = numbered(found, result.candidates, list(range(1, len(result.candidates) + 1)), (255, 255, 255), factor)
        rows.append(frame_strip([
            label(query_panel(pair.template), f"{i}"),
            label(found, f"{result.windows} compared; IoU {iou(result.box, pair.target_box):.2f}; score {result.score:.2f}"),
            label(cosine_panel(searcher, pair.template, pair.reference, factor), "first look: cosine map (at window centres)")]))
    print(save_frames([stacked_rows(rows)], args.out))


if __name__ == "__main__":
    main()
