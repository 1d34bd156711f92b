"""Draw the photograph agent's searches on photograph pairs (docs/images/look_agent.png).

    MATCHENV_FLICKRLOGOS27=<folder> python docs/render_look_agent.py

One row per test pair of the FlickrLogos-27-derived self-supervised split (held-out photographs;
pairs 0-5 by default, not selected): the query as given; the reference with the first look's
candidates (white, numbered by rank), the windows the agent compared (yellow, numbered in the
order it placed them), its answer (red, with its IoU) and the target (green); and the first
look's scores at its best level. Uses the shipped ``photo`` agent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from matchenv.agents.look_agent import LookAgentSearcher, glance
from matchenv.agents.look_peaks import box_at
from matchenv.agents.searcher import prepare_image
from matchenv.datasets.logos import find_flickrlogos27
from matchenv.datasets.self_supervised import SelfSupervisedPhotos
from matchenv.geometry import iou
from matchenv.rendering import frame_strip, save_frames
from render_multiscale_look import PANEL, boxed, heat_panel, label, query_panel, stacked_rows  # the look's picture, same folder


def numbered(panel: np.ndarray, boxes: np.ndarray, numbers: list[int], colour: tuple[int, int, int],
             factor: float) -> np.ndarray:
    """``panel`` with each box's number written at its top-left corner."""
    for box, number in zip(boxes, numbers):
        x, y = int(round(box[0] * factor)) + 2, int(round(box[1] * factor)) + 11
        cv2.putText(panel, str(number), (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return panel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="0,1,2,3,4,5", help="test pair indices")
    parser.add_argument("--out", default=str(Path(__file__).parent / "images" / "look_agent.png"))
    args = parser.parse_args()
    agent = LookAgentSearcher.from_pretrained("photo")
    data = SelfSupervisedPhotos(find_flickrlogos27() / "flickr_logos_27_dataset_images", test_size=100)
    rows = []
    for i in (int(v) for v in args.pairs.split(",")):
        pair = data.test_pair(i)
        result = agent.locate(pair.template, pair.reference)
        seen = glance(agent, prepare_image(pair.template, 3, "rgb", "query"), pair.reference, agent.agent_config.candidates)
        candidates = np.stack([box_at(*seen.places[k], seen.aspect) / seen.factor for k in range(seen.count)])
        windows = result.path[:-1]
        # the windows in the order placed, each numbered once (a window placed again costs nothing)
        order = [k for k, box in enumerate(windows) if not any(np.allclose(box, w) for w in windows[:k])]
        factor = PANEL / pair.reference.shape[0]
        found = boxed(pair.reference, [(box, (255, 255, 255), 1) for box in candidates]
                      + [(windows[k], (255, 220, 0), 1) for k in order]
                      + [(pair.target_box, (0, 255, 0), 2), (result.box, (255, 0, 0), 2)], factor)
        found = numbered(found, candidates, list(range(1, len(candidates) + 1)), (255, 255, 255), factor)
        found = numbered(found, windows[order], [n + 1 for n in range(len(order))], (255, 220, 0), factor)
        rows.append(frame_strip([
            label(query_panel(pair.template), f"query {i}"),
            label(found, f"{len(order)} compared; IoU {iou(result.box, pair.target_box):.2f}"),
            label(heat_panel(agent, pair.template, pair.reference, factor), "first look: scores at its best level")]))
    print(save_frames([stacked_rows(rows)], args.out))


if __name__ == "__main__":
    main()
