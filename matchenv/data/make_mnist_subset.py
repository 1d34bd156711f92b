"""Build ``mnist_subset.npz``, the small real MNIST subset bundled with matchenv.

Usage (from the repository root)::

    python matchenv/data/make_mnist_subset.py --mnist-dir /path/to/mnist

``--mnist-dir`` must hold the four original MNIST IDX files (checked against their MD5s).
The subset is class-balanced and deterministic (fixed seed): 300 digits per class from MNIST's
training files and 100 per class from its test files, each split sorted by original index.
Test digits whose pixels exactly equal a chosen training digit are skipped, so the two
splits share no image.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

try:
    from matchenv.datasets.mnist_files import MNISTDigits, load_mnist
except ImportError:  # run as a script from a checkout: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from matchenv.datasets.mnist_files import MNISTDigits, load_mnist

FULL_SIZES = {"train": 60_000, "test": 10_000}


def pick_balanced(
    labels: np.ndarray, per_class: int, rng: np.random.Generator, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Pick ``per_class`` indices of each class 0..9 without replacement.

    :param labels: ``(N,)`` uint8 class of each digit.
    :param per_class: how many digits to take per class.
    :param rng: the generator that makes the choice (seeded by the caller).
    :param exclude: ``(N,)`` bool, ``True`` for digits that must not be picked.
    :return: ``(10 * per_class,)`` int32 indices into ``labels``, sorted ascending.
    """
    allowed = np.ones(len(labels), bool) if exclude is None else ~exclude
    chosen = [rng.choice(np.flatnonzero((labels == c) & allowed), size=per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(chosen)).astype(np.int32)


def image_hashes(images: np.ndarray) -> list[bytes]:
    """One digest per ``(28, 28)`` uint8 image, to find exact duplicates."""
    return [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images]


def build_subset(train: MNISTDigits, test: MNISTDigits, train_per_class: int, test_per_class: int, seed: int) -> dict:
    """The arrays of ``mnist_subset.npz`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    train_idx = pick_balanced(train.labels, train_per_class, rng)
    train_hashes = set(image_hashes(train.images[train_idx]))
    duplicates = np.array([h in train_hashes for h in image_hashes(test.images)], bool)
    test_idx = pick_balanced(test.labels, test_per_class, rng, exclude=duplicates)
    return {
        "train_images": train.images[train_idx],
        "train_labels": train.labels[train_idx],
        "train_indices": train_idx,
        "test_images": test.images[test_idx],
        "test_labels": test.labels[test_idx],
        "test_indices": test_idx,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", required=True, type=Path, help="folder with the four MNIST IDX files")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "mnist_subset.npz")
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    train = load_mnist("train", data_dir=args.mnist_dir, download=False)
    test = load_mnist("test", data_dir=args.mnist_dir, download=False)
    for digits in (train, test):
        if len(digits) != FULL_SIZES[digits.split]:
            parser.error(f"{digits.source} has {len(digits)} {digits.split} digits, expected full MNIST")

    arrays = build_subset(train, test, args.train_per_class, args.test_per_class, args.seed)
    np.savez_compressed(args.output, **arrays)
    size_kb = args.output.stat().st_size / 1024
    sys.stdout.write(
        f"wrote {args.output} ({size_kb:.0f} KiB): {len(arrays['train_labels'])} train / "
        f"{len(arrays['test_labels'])} test digits from {train.source}\n"
    )


if __name__ == "__main__":
    main()
