"""Compare the speed of two or more methods query by query, interleaved: an A/B timing.

    python train/compare_speed.py --dataset MixedMNIST --pairs 200 \\
        --method agent:pretrained:mixed-mnist --method "agent:pretrained:mixed-mnist@/tmp/old"
    python train/compare_speed.py --dataset SelfSupervisedPhotos \\
        --dataset-kwargs '{"images": "<FL27>/flickr_logos_27_dataset_images", "test_size": 100}' --pairs 100 \\
        --method agent:look:photo --method agent:look:photo,candidates=1

Why: on a shared machine the same method's time moves by up to 40% between runs, and by more
within minutes (the benchmark's speed gauge read 1.68 ms and 2.44-2.69 ms in two runs two
minutes apart on 2026-11-24), so "version B is 8% faster" cannot come from two benchmark runs. Here every
contender runs in its own worker process (one thread, pairs generated in memory, warm-up
excluded, as in ``train/benchmark_matchers.py``), and the workers take turns block by block:
the first ``--block`` pairs by each contender (one untimed query first, to win back the caches
the other process took), then the next block by each, the order rotated from block to block,
and so on for ``--rounds`` passes. Only one worker computes at a time, so they share the
machine's fast and slow moments instead of competing for its cores.

A method is any name ``train/benchmark_matchers.py`` takes (``ncc``, ``agent:pretrained:<name>``,
``agent:look:photo,candidates=1``, ``agent:<checkpoint>``, ...), optionally followed by
``@<folder>``: run it with the code of another checkout of this repository (e.g. ``git worktree
add /tmp/old <commit>``), to time two versions of the code on the same pairs.

Printed and written to ``--out`` (``results.json``, ``results.md``): per contender the median and
mean ms per query and the success rate, and against the first contender the **median of the
per-query time ratios** (the paired measure: each ratio compares two runs of the same query moments
apart), the ratio of medians and of means, and how many queries got a different answer (IoU
differing by more than :data:`ANSWER_TOLERANCE`). With the machine and the speed gauge at the start and at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

#: IoU difference from the first contender's answer above which a query's answer counts as
#: different (float rounding in another runtime or order of operations moves boxes by ~1e-4 px).
ANSWER_TOLERANCE = 1e-3

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Contender:
    """One method to time, with the checkout whose code runs it.

    :param method: a ``train/benchmark_matchers.py`` method name.
    :param checkout: the repository folder whose ``agents``, ``matchenv`` and ``train`` are imported.
    """

    method: str
    checkout: Path

    def label(self, name: Optional[str] = None) -> str:
        """``name`` (default: the method) and, for another checkout, ``@ <checkout>``."""
        name = self.method if name is None else name
        return name if self.checkout == ROOT else f"{name} @ {self.checkout}"


def parse_contender(text: str) -> Contender:
    """``"<method>"`` or ``"<method>@<checkout folder>"`` as a :class:`Contender`.

    :raises ValueError: if the folder after ``@`` is not a checkout of this repository.
    """
    method, at, folder = text.rpartition("@")
    if not at:
        return Contender(text, ROOT)
    checkout = Path(folder).expanduser().resolve()
    if not (checkout / "train" / "benchmark_matchers.py").is_file() or not (checkout / "agents").is_dir():
        raise ValueError(f"{folder!r} (after '@' in {text!r}) is not a checkout of this repository: it needs "
                         "agents/ and train/benchmark_matchers.py (make one with `git worktree add <folder> <commit>`)")
    if not method:
        raise ValueError(f"{text!r} names no method before '@'")
    return Contender(method, checkout)


# ---------------------------------------------------------------------------------------------- worker
def serve(job: dict[str, Any]) -> None:
    """Worker: build the method and the pairs, warm up, then time one pair per request.

    Reads a pair index per line on stdin and answers one JSON line on stdout:
    ``{"ms": milliseconds of the locate call, "iou": the answer's IoU}``. The first line it writes
    is ``{"ready": <method's name>}`` (or ``{"error": ...}``).
    """
    import cv2
    import torch

    from benchmark_matchers import make_method, make_pairs
    from matchenv.geometry import iou

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    out = sys.stdout
    sys.stdout = sys.stderr  # whatever the method prints must not mix with the answers
    try:
        # The first pairs generated and dropped, rather than make_pairs(..., first=): checkouts
        # older than that argument time the same pairs.
        pairs, data = make_pairs(job["dataset"], job["first_pair"] + job["pairs"], job["dataset_kwargs"])
        pairs = pairs[job["first_pair"]:]
        method = make_method(job["method"], job["features_checkpoint"], data)
        for pair in pairs[: job["warmup"]]:
            method.locate(pair.matcher_query, pair.reference)
    except Exception as err:  # noqa: BLE001  (reported to the parent, which stops with it)
        out.write(json.dumps({"error": f"{type(err).__name__}: {err}"}) + "\n")
        out.flush()
        return
    # Which checkout's code this worker runs (reported, so that it can be checked): its agents
    # package, matchenv.agents (or a top-level agents in checkouts from before it moved).
    agents_package = sys.modules.get("matchenv.agents") or sys.modules.get("agents")
    code = str(Path(agents_package.__file__).parent.parent) if agents_package else "?"
    out.write(json.dumps({"ready": getattr(method, "name", job["method"]), "pairs": len(pairs), "code": code}) + "\n")
    out.flush()
    for line in sys.stdin:
        first, count = (int(v) for v in line.split())
        block = pairs[first:first + count]
        # Another process ran since this one's last block and took the caches: one untimed query
        # refills them, so that the times are of a method running on its own.
        method.locate(block[0].matcher_query, block[0].reference)
        ms, ious = [], []
        for pair in block:
            start = time.perf_counter()
            result = method.locate(pair.matcher_query, pair.reference)
            ms.append(1000.0 * (time.perf_counter() - start))
            ious.append(float(iou(result.box, pair.target_box)))
        out.write(json.dumps({"ms": ms, "iou": ious}) + "\n")
        out.flush()


class Worker:
    """A contender's worker process (:func:`serve`), started with its checkout's code first on the path."""

    def __init__(self, contender: Contender, job: dict[str, Any]) -> None:
        self.contender = contender
        env = dict(os.environ)
        paths = [str(contender.checkout), str(contender.checkout / "train")]
        env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        # This file's serve(), loaded by path, drives the checkout's own modules: its
        # benchmark_matchers (how its benchmark builds and calls a method), agents and matchenv.
        # The checkout's agents/ folder is its matchenv.agents (setup.py maps it so when installed;
        # here matchenv's search path gets the checkout, or the installed checkout's would load).
        code = ("import importlib.util, json, sys; sys.path[:0] = {paths!r}; "
                "import matchenv; matchenv.__path__.append({checkout!r}); "
                "spec = importlib.util.spec_from_file_location('compare_speed_worker', {file!r}); "
                "worker = sys.modules['compare_speed_worker'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(worker); "
                "worker.serve(json.loads(sys.argv[1]))").format(paths=paths, checkout=str(contender.checkout),
                                                                 file=str(Path(__file__).resolve()))
        self.process = subprocess.Popen([sys.executable, "-c", code, json.dumps({**job, "method": contender.method})],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        first = self._read()
        if "error" in first:
            self.close()
            raise RuntimeError(f"{contender.label()} could not start: {first['error']}")
        self.name, self.pairs, self.code = first["ready"], first["pairs"], first["code"]

    def _read(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"the worker for {self.contender.label()} stopped (exit code {code}); its error is above")
        return json.loads(line)

    def time_block(self, first: int, count: int) -> dict[str, list[float]]:
        """``{"ms": [...], "iou": [...]}`` of pairs ``first`` .. ``first + count - 1``."""
        self.process.stdin.write(f"{first} {count}\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


# ---------------------------------------------------------------------------------------------- summary
def summarise(times: np.ndarray, ious: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """Rows of the table from ``times`` ``(contenders, rounds, pairs)`` ms and ``ious`` ``(contenders, pairs)``.

    Each query's time is its fastest over the rounds (what the machine's interruptions only
    lengthen, as ``timeit`` argues); ratios are against contender 0.
    """
    per_query = np.min(times, axis=1)  # (contenders, pairs)
    rows = []
    for k, label in enumerate(labels):
        row = {"method": label, "pairs": int(per_query.shape[1]), "rounds": int(times.shape[1]),
               "median_ms": float(np.median(per_query[k])), "mean_ms": float(np.mean(per_query[k])),
               "success_rate": float(np.mean(ious[k] > 0.5))}
        if k:
            row.update(median_query_ratio=float(np.median(per_query[k] / per_query[0])),
                       ratio_of_medians=row["median_ms"] / rows[0]["median_ms"],
                       ratio_of_means=row["mean_ms"] / rows[0]["mean_ms"],
                       different_answers=int(np.sum(np.abs(ious[k] - ious[0]) > ANSWER_TOLERANCE)))
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | success | median ms / query | mean ms / query | per-query time ratio to the first (median) "
             f"| ratio of medians | ratio of means | answers that differ from the first's (IoU by > {ANSWER_TOLERANCE:g}) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(rows):
        if i == 0:
            extra = "1 | 1 | 1 | -"
        else:
            extra = (f"{r['median_query_ratio']:.3f} | {r['ratio_of_medians']:.3f} | {r['ratio_of_means']:.3f} | "
                     f"{r['different_answers']}")
        lines.append(f"| {r['method']} | {r['success_rate']:.3f} | {r['median_ms']:.2f} | {r['mean_ms']:.2f} | {extra} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", action="append", required=True, metavar="METHOD[@CHECKOUT]",
                        help="a benchmark method, optionally @ another checkout of this repository (repeat: two or more)")
    parser.add_argument("--dataset", default="ClutteredMNIST")
    parser.add_argument("--dataset-kwargs", default="{}", help="JSON keyword arguments for the dataset")
    parser.add_argument("--pairs", type=int, default=100, help="test pairs timed (each by every method)")
    parser.add_argument("--first-pair", type=int, default=0, help="index of the first test pair")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the pairs; a query's time is its fastest of them")
    parser.add_argument("--block", type=int, default=10,
                        help="consecutive pairs a method times before the next method takes its turn")
    parser.add_argument("--warmup", type=int, default=10, help="untimed queries per worker before timing")
    parser.add_argument("--features-checkpoint", default=None, help="agent checkpoint for qatm / embedding-exhaustive")
    parser.add_argument("--out", default="runs/compare_speed")
    args = parser.parse_args(argv)
    # Imported here, not at the top: a worker loads this file inside another checkout, whose
    # benchmark_matchers may predate the speed gauge.
    from benchmark_matchers import SPEED_GAUGE, gauge_note, machine_description, speed_gauge_ms

    if len(args.method) < 2:
        parser.error("give at least two --method to compare")
    if args.pairs < 1 or args.rounds < 1 or args.block < 1 or args.warmup < 0 or args.first_pair < 0:
        parser.error("--pairs, --rounds and --block must be >= 1, --warmup and --first-pair >= 0")
    try:
        contenders = [parse_contender(text) for text in args.method]
        dataset_kwargs = json.loads(args.dataset_kwargs)
    except (ValueError, json.JSONDecodeError) as err:
        parser.error(str(err))

    job = {"dataset": args.dataset, "dataset_kwargs": dataset_kwargs, "pairs": args.pairs, "first_pair": args.first_pair,
           "warmup": args.warmup, "features_checkpoint": args.features_checkpoint}
    machine = machine_description(1)
    gauge = {"start": speed_gauge_ms()}
    print(f"machine: {machine}\nspeed gauge at the start: {gauge['start']:.3f} ms", flush=True)
    workers: list[Worker] = []
    try:
        for contender in contenders:
            try:
                workers.append(Worker(contender, job))
            except RuntimeError as err:  # a method or checkout that cannot run: one clear line
                parser.exit(1, f"compare_speed.py: error: {err}\n")
        n = min(w.pairs for w in workers)
        labels = [w.contender.label(w.name) for w in workers]
        times = np.zeros((len(workers), args.rounds, n))
        ious = np.zeros((len(workers), n))
        with tqdm(total=args.rounds * n, desc="pairs (each by every method)", unit="pair") as bar:
            for r in range(args.rounds):
                for b, first in enumerate(range(0, n, args.block)):
                    count = min(args.block, n - first)
                    for step in range(len(workers)):
                        k = (b + r + step) % len(workers)  # rotate who goes first
                        answer = workers[k].time_block(first, count)
                        times[k, r, first:first + count], ious[k, first:first + count] = answer["ms"], answer["iou"]
                    bar.update(count)
    finally:
        for worker in workers:
            worker.close()
    gauge["end"] = speed_gauge_ms()
    rows = summarise(times, ious, labels)
    header = (f"{args.dataset}, test pairs {args.first_pair}-{args.first_pair + n - 1}, {args.rounds} round(s), "
              f"interleaved in blocks of {args.block} pairs; {machine}; {gauge_note(gauge)}")
    report = f"{header}\n\n{table(rows)}\n"
    print("\n" + report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(json.dumps(
        {"dataset": args.dataset, "dataset_kwargs": dataset_kwargs, "first_pair": args.first_pair, "machine": machine,
         "speed_gauge_ms": gauge, "speed_gauge": SPEED_GAUGE,
         "methods": [{"method": w.contender.method, "checkout": str(w.contender.checkout), "code_imported_from": w.code}
                     for w in workers],
         "results": rows, "times_ms": times.tolist(), "ious": ious.tolist()}, indent=2))


if __name__ == "__main__":
    main()
