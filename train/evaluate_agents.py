"""Evaluate trained agents against the agent issue's bars: accuracy, ms per query, throughput.

    MATCHENV_DATA=/path/to/mnist python train/evaluate_agents.py      # the shipped Noisy MNIST agents
    python train/evaluate_agents.py --agent runs/mixed/last.zip --dataset MixedMNIST --pairs 2000

For each agent, through the inference API (:class:`matchenv.agents.searcher.TemplateSearcher`, not SB3's
``predict``), each agent in a fresh process:

* **accuracy**: success (IoU > 0.5 of the final window, T = the agent's trial limit) and mean IoU
  on the first ``--pairs`` pairs of the dataset's fixed test split (pairs are generated from
  ``(test seed, index)``, so the first N are the same for every N);
* **speed**: the median milliseconds of one ``locate(query, reference)`` call (batch 1) over
  ``--timing-pairs`` queries after ``--warmup`` untimed ones, the median of ``--timing-rounds``
  such medians (each round's is in ``results.json``), with ``--threads`` torch/OpenCV
  threads (1 by default, as the bars ask); images are in memory before timing;
* **throughput**: queries per second of ``locate_batch`` with ``--batch-size`` pairs per call;
* **where the target is gained or lost** (printed and in ``results.json``): the success rate had
  the search answered with each of its windows, and the share of searches in which some window
  was right;
* with ``--query-controls``, **whether it uses the query**: success when each query is replaced by
  a flat grey image or by another label's query (the same references and targets). Close to the
  agent's own success means it finds what the reference gives away (the one salient object, the
  dataset's layout), not what it was asked for;
* the **speed gauge** of ``train/benchmark_matchers.py`` (a fixed OpenCV NCC, one thread) at the
  start and at the end of the run, with the machine: compare times of different runs only
  together with it.

``--stop-score S`` (repeatable; ``none`` is the default protocol) also evaluates each agent with
searches that end at the first window the match head scores at least ``S`` (the searcher's
``stop_score``): the table then shows the windows placed per query next to success and time.

It prints a markdown table next to the published prototype's numbers and the project's goals,
and writes ``results.json`` in ``--out``. Shipped agents are named ``pretrained:<name>``; each
knows the dataset it was trained for. Without ``MATCHENV_DATA`` the Noisy MNIST pairs use the
bundled MNIST subset (its 1,000 test digits), and the output says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from matchenv.agents.pretrained import PRETRAINED
from matchenv.agents.searcher import TemplateSearcher
from benchmark_matchers import SPEED_GAUGE, gauge_note, in_fresh_process, machine_description, make_pairs, speed_gauge_ms
from matchenv.geometry import iou

#: The issues' bars per dataset: (success, ms per query) of the published prototype and our goal
#: (the prototype's logo numbers are on FlickrLogos-32, request-only data: for orientation).
BARS = {
    "TranslatedMNIST": {"prototype": (0.95, 1.0), "goal": (0.98, 1.0)},
    "ClutteredMNIST": {"prototype": (0.91, 3.0), "goal": (0.96, 1.0)},
    "MixedMNIST": {"prototype": (0.88, 4.0), "goal": (0.94, 1.0)},
    "FlickrLogos27": {"prototype": (0.39, 6.0), "goal": (0.50, 6.0)},
}
SHIPPED_MNIST = ["pretrained:translated-mnist", "pretrained:cluttered-mnist", "pretrained:mixed-mnist"]
#: What ``--query-controls`` gives each search instead of its own query (see :func:`control_pairs`).
QUERY_CONTROLS = ("grey", "other-label")


def load_agent(spec: str, stop_score: float | None = None) -> tuple[TemplateSearcher, str | None, dict]:
    """The searcher for ``spec`` (a checkpoint or ``pretrained:<name>``) and, for a shipped agent, its dataset."""
    searcher = TemplateSearcher.from_spec(spec, stop_score=stop_score)
    if spec.startswith("pretrained:"):
        shipped = PRETRAINED[spec.split(":", 1)[1]]
        return searcher, shipped.dataset, dict(shipped.dataset_kwargs)
    return searcher, None, {}


def evaluate(searcher: TemplateSearcher, pairs: list, batch_size: int) -> dict[str, Any]:
    """Success rate and mean IoU of the answers and windows per query, searching ``batch_size`` pairs per call.

    Also where the search gains or loses the target: ``success_by_window[t]`` is the success rate
    if the search had answered with window ``t`` (a search that stopped earlier keeps its last
    window), and ``any_window_success`` the share of searches with *some* window at IoU > 0.5 (what
    a perfect choice among the visited windows would reach).
    """
    ious, windows, by_window = [], [], []
    for start in tqdm(range(0, len(pairs), batch_size), desc="accuracy", leave=False):
        chunk = pairs[start:start + batch_size]
        results = searcher.locate_batch([p.matcher_query for p in chunk], [p.reference for p in chunk])
        ious += [iou(r.box, p.target_box) for r, p in zip(results, chunk)]
        windows += [len(r.path) for r in results]
        for r, p in zip(results, chunk):
            path = [iou(box, p.target_box) for box in r.path]
            by_window.append(path + path[-1:] * (searcher.max_trials - len(path)))
    ious_arr, by_window_arr = np.array(ious), np.array(by_window) > 0.5
    return {"success_rate": float(np.mean(ious_arr > 0.5)), "mean_iou": float(np.mean(ious_arr)),
            "mean_windows": float(np.mean(windows)),
            "success_by_window": [float(v) for v in by_window_arr.mean(axis=0)],
            "any_window_success": float(by_window_arr.any(axis=1).mean())}


def control_pairs(pairs: list, control: str, seed: int = 0) -> list:
    """The same references and targets with each query replaced, to see how much an agent's success
    depends on *what* it is asked to find (against what the reference alone gives away):

    - ``"grey"``: a flat mid-grey query (and template) of the same shape;
    - ``"other-label"``: the query (and template) of another test pair whose target has a different
      label (another digit or brand), drawn with ``seed``.
    """
    if control == "grey":
        return [dataclasses.replace(p, query=np.full_like(p.query, 128),
                                    template=None if p.template is None else np.full_like(p.template, 128)) for p in pairs]
    if control == "other-label":
        rng = np.random.default_rng(seed)
        labels = np.array([p.label for p in pairs], dtype=object)
        swapped = []
        for p in pairs:
            others = np.flatnonzero(labels != p.label)
            if len(others) == 0:
                raise ValueError("the 'other-label' query control needs test pairs of at least two labels")
            other = pairs[int(rng.choice(others))]
            swapped.append(dataclasses.replace(p, query=other.query, template=other.template))
        return swapped
    raise ValueError(f"unknown query control {control!r}; choose from {QUERY_CONTROLS}")


def time_single_queries(searcher: TemplateSearcher, pairs: list, warmup: int, rounds: int = 1) -> list[float]:
    """Median milliseconds of one ``locate`` call (batch 1), one median per round over ``pairs``
    (several rounds show how much the machine's own noise moves the number)."""
    for p in pairs[:warmup]:
        searcher.locate(p.matcher_query, p.reference)
    medians = []
    for _ in range(rounds):
        times = []
        for p in pairs:
            start = time.perf_counter()
            searcher.locate(p.matcher_query, p.reference)
            times.append(time.perf_counter() - start)
        medians.append(1000.0 * statistics.median(times))
    return medians


def throughput(searcher: TemplateSearcher, pairs: list, batch_size: int) -> float:
    """Queries per second of ``locate_batch`` over ``pairs`` in batches of ``batch_size``."""
    searcher.locate_batch([p.matcher_query for p in pairs[:batch_size]], [p.reference for p in pairs[:batch_size]])
    start = time.perf_counter()
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        searcher.locate_batch([p.matcher_query for p in chunk], [p.reference for p in chunk])
    return len(pairs) / (time.perf_counter() - start)


def verdicts(dataset: str, success: float, ms: float) -> str:
    bars = BARS.get(dataset)
    if bars is None:
        return "-"
    words = []
    for name, (bar_success, bar_ms) in bars.items():
        ok = success >= bar_success and ms <= bar_ms
        words.append(f"{name} {'met' if ok else 'not met'}")
    return "; ".join(words)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| agent | dataset | pairs | success | mean IoU | windows / query | ms / query (batch 1) "
        "| queries/s (batched) | prototype (success, ms) | goal (success, ms) | bars |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    stopped = "not judged: the bars are for T = 6 windows"
    for r in rows:
        bars = BARS.get(r["dataset"], {})
        proto = "{:.2f}, {:g}".format(*bars["prototype"]) if bars else "-"
        goal = "{:.2f}, {:g}".format(*bars["goal"]) if bars else "-"
        agent = r["agent"] if r.get("stop_score") is None else f"{r['agent']} (stop at score >= {r['stop_score']:g})"
        lines.append(
            f"| {agent} | {r['dataset']} | {r['pairs']} | {r['success_rate']:.3f} | {r['mean_iou']:.3f} "
            f"| {r['mean_windows']:.2f} | {r['ms_per_query']:.2f} | {r['queries_per_second']:.0f} | {proto} | {goal} "
            f"| {verdicts(r['dataset'], r['success_rate'], r['ms_per_query']) if r.get('stop_score') is None else stopped} |"
        )
    return "\n".join(lines)


def controls_table(rows: list[dict[str, Any]]) -> str:
    """Success with the agent's own query next to the query controls (``--query-controls``)."""
    lines = ["| agent | dataset | own query | " + " | ".join(f"{c} query" for c in QUERY_CONTROLS) + " |",
             "|---|---|---:|" + "---:|" * len(QUERY_CONTROLS)]
    for r in rows:
        if r.get("stop_score") is None and r.get("query_controls"):
            lines.append(f"| {r['agent']} | {r['dataset']} | {r['success_rate']:.3f} | "
                         + " | ".join(f"{r['query_controls'][c]:.3f}" for c in QUERY_CONTROLS) + " |")
    return "\n".join(lines)


def evaluate_agent(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: one agent (with one ``stop_score``) timed and scored; ``job`` holds main's arguments."""
    torch.set_num_threads(job["threads"])
    cv2.setNumThreads(job["threads"])
    spec, stop_score = job["spec"], job["stop_score"]
    searcher, dataset, kwargs = load_agent(spec, stop_score)
    if dataset is None:  # a checkpoint: main checked that --dataset names one
        dataset, kwargs = job["dataset"], job["dataset_kwargs"]
    else:  # a shipped agent: on its own dataset, varied by any --dataset-kwargs
        kwargs.update(job["dataset_kwargs"])
    pairs, data = make_pairs(dataset, job["pairs"], kwargs)
    source = str(getattr(data, "source", "") or getattr(data, "root", "") or dataset)
    stopping = "" if stop_score is None else f", ending searches at match score >= {stop_score:g}"
    print(f"{spec}: {len(pairs)} {dataset} test pairs (data: {source}){stopping}", flush=True)
    # Batch-1 timing first: after large batches PyTorch's JIT re-specialises the traced CNN
    # for a while, which would bill a one-off cost to the single-query median.
    rounds = time_single_queries(searcher, pairs[: job["timing_pairs"]], job["warmup"], job["timing_rounds"])
    ms = statistics.median(rounds)
    accuracy = evaluate(searcher, pairs, job["batch_size"])
    controls = {name: evaluate(searcher, control_pairs(pairs, name), job["batch_size"])["success_rate"]
                for name in (QUERY_CONTROLS if job["query_controls"] else ())}
    qps = throughput(searcher, pairs, job["batch_size"])
    print(f"  success {accuracy['success_rate']:.3f}, mean IoU {accuracy['mean_iou']:.3f}, "
          f"{accuracy['mean_windows']:.2f} windows/query; success if answering with window 1..T "
          f"{' '.join(f'{v:.3f}' for v in accuracy['success_by_window'])}, "
          f"some window right {accuracy['any_window_success']:.3f}; "
          f"ms/query per timing round {', '.join(f'{v:.2f}' for v in rounds)}, "
          f"{ms:.2f} ms/query (batch 1), {qps:.0f} queries/s (batch {job['batch_size']})", flush=True)
    if controls:
        print("  success with its own query replaced: " + ", ".join(f"{k} {v:.3f}" for k, v in controls.items()), flush=True)
    if job["dataset_kwargs"]:  # another task than the bars' (e.g. FlickrLogos27 with beside_other_brand)
        dataset = f"{dataset} {json.dumps(job['dataset_kwargs'])}"
    return {"agent": spec, "stop_score": stop_score, "dataset": dataset, "data": source, "pairs": len(pairs), **accuracy,
            "ms_per_query": ms, "ms_per_round": rounds, "queries_per_second": qps, "max_trials": searcher.max_trials,
            "cnn_runtime": searcher.cnn_runtime, "query_controls": controls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", action="append", default=None,
                        help="checkpoint or pretrained:<name> (repeatable; default: the shipped Noisy MNIST agents)")
    parser.add_argument("--dataset", default=None, help="dataset for --agent checkpoints (shipped agents know theirs)")
    parser.add_argument("--dataset-kwargs", default="{}",
                        help="JSON keyword arguments for --dataset (for a shipped agent: added to its own dataset's, "
                             "e.g. '{\"beside_other_brand\": true}'; the bars are then not judged)")
    parser.add_argument("--pairs", type=int, default=2000, help="test pairs for accuracy (the bars ask >= 2000)")
    parser.add_argument("--timing-pairs", type=int, default=300, help="queries timed one by one")
    parser.add_argument("--warmup", type=int, default=50, help="untimed queries before timing")
    parser.add_argument("--timing-rounds", type=int, default=5,
                        help="timing rounds over the --timing-pairs queries; the table gives the median of their medians")
    parser.add_argument("--batch-size", type=int, default=100, help="pairs per locate_batch call")
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    parser.add_argument("--stop-score", action="append", default=None, metavar="S",
                        help="also evaluate each agent ending searches at the first window the match head scores "
                             ">= S (TemplateSearcher's stop_score; repeatable; 'none' = always T windows, the default)")
    parser.add_argument("--query-controls", action="store_true",
                        help="also score each agent with its queries replaced by a flat grey image and by another "
                             "label's query: how much of its success comes from the query at all")
    parser.add_argument("--out", default="runs/evaluate_agents")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        stop_scores = [None if v.lower() == "none" else float(v) for v in (args.stop_score or ["none"])]
    except ValueError:
        parser.error(f"--stop-score takes a number in (0, 1] or 'none', got {args.stop_score}")
    # The machine's speed at the start and end (a shared machine's speed moves between runs).
    gauge = {"start": speed_gauge_ms()}
    rows = []
    for spec, stop_score in [(spec, stop) for spec in args.agent or SHIPPED_MNIST for stop in stop_scores]:
        if not spec.startswith("pretrained:") and args.dataset is None:
            parser.error(f"{spec} is a checkpoint: say which dataset to evaluate it on with --dataset")
        job = {**vars(args), "spec": spec, "stop_score": stop_score, "dataset_kwargs": json.loads(args.dataset_kwargs)}
        # A fresh process per agent, as the benchmark runs each method: measured here, an agent
        # timed after others in one process ran up to 1.5x slower than on its own.
        rows.append(in_fresh_process(evaluate_agent, job))
    runtimes = ", ".join(sorted({r["cnn_runtime"] for r in rows}))
    machine = f"{machine_description(args.threads)}; CNN runtime: {runtimes}"
    gauge["end"] = speed_gauge_ms()
    report = f"{machine}; {gauge_note(gauge)}\n\n{table(rows)}\n"
    if args.query_controls:
        report += "\n" + controls_table(rows) + "\n"
    print("\n" + report)
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(json.dumps({"machine": machine, "threads": args.threads, "speed_gauge_ms": gauge,
                                                  "speed_gauge": SPEED_GAUGE, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
