"""Render a few pairs of every built-in dataset into docs/images/<name>.png (the README's pictures).

    MATCHENV_DATA=/path/to/mnist python docs/render_dataset_examples.py

Each picture shows test pairs 0..3: the reference with the target box (green), distractor
boxes (dashed, Mixed MNIST only) and the query in the side panel.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from matchenv.datasets import DATASETS, make_dataset
from matchenv.rendering import frame_strip, render_search, save_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default=str(Path(__file__).parent / "images"))
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()
    variants = {name: {} for name in DATASETS}
    variants["ClutteredMNIST-scale-jitter"] = {"scale_range": (0.7, 1.5), "max_rotation": 15.0}
    for label, kwargs in variants.items():
        dataset = make_dataset(label.split("-")[0], **kwargs)
        frames = []
        for i in range(args.pairs):
            pair = dataset.test_pair(i)
            frames.append(
                render_search(pair.reference, pair.query, [], pair.target_box, distractor_boxes=pair.distractor_boxes,
                              title=f"test pair {i}")
            )
        path = save_frames([frame_strip(frames)], Path(args.out_dir) / f"{label}.png")
        print(f"{path}  ({dataset.source})")


if __name__ == "__main__":
    main()
