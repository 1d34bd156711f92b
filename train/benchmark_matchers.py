"""Side-by-side benchmark: success rate and milliseconds per query of every matcher and agent.

    MATCHENV_DATA=/path/to/mnist python train/benchmark_matchers.py --dataset ClutteredMNIST \\
        --agent runs/TemplateSearch-v0-seed0/best.zip --out runs/bench/cluttered
    python train/benchmark_matchers.py --dataset ClutteredMNIST --agent ... --scaling --out runs/bench/scaling

What is measured, and how it is kept fair:

* every method answers the same pairs: ``--pairs`` pairs of the dataset's fixed test split, the
  first ones unless ``--first-pair`` says where to start;
* success = IoU(answer, target) > 0.5; the answer never uses the target's box or size;
* each method runs **in its own process** with one CPU thread (``torch.set_num_threads(1)``,
  ``cv2.setNumThreads(1)``); the pairs are generated in memory before timing (no image decoding
  in the timed region); the first ``--warmup`` queries are run and not timed; the reported time
  is the **median** over the timed queries of one ``locate(query, reference)`` call (the table
  and the JSON also have the mean, which differs where a method's cost varies between queries);
* "evaluated" is the number of windows or positions a method scores per query (median);
* a method warms up and times queries until ``--max-seconds`` have passed (the warm-up stops at a
  tenth of it); a worker still running two minutes after that (one query slower than the whole
  budget) is stopped and reported as "no query finished"; a slow method can answer every k-th pair
  only (``--every bbs=20``), and the outputs then compare every method on those pairs too;
* a **speed gauge** (:func:`speed_gauge_ms`: a fixed OpenCV NCC, one thread, in a fresh
  process) is timed at the start and at the end of the run and written with the results: on a
  shared machine the same method's time moves by up to 40% between runs, so times from
  different runs compare only together with it;
* ``centre-box`` is a control, not a matcher: the same centred box for every query, its size
  fitted on training pairs; a method near it has learned the dataset's layout, not the query;
* QATM and the exhaustive embedding search run on the agent's trained siamese CNN
  (``--features-checkpoint``, default: the first ``--agent`` that is a plain agent), because
  ImageNet weights cannot be downloaded here; without a checkpoint they are left out rather than
  run on random features.

``--scaling`` instead measures median ms per query as the reference grows from 100x100 to
2000x2000 pixels with the same 28x28 target (canvases of ``--dataset``, a Noisy MNIST dataset,
Cluttered MNIST by default, of that size with clutter scaled with the area from the dataset's own
density; ``--dataset-kwargs`` adds arguments, e.g. ``'{"n_distractors": [9, 9]}'`` for Mixed MNIST
with a whole digit of every other class on every canvas); a method whose single query exceeds ``--max-seconds`` at some size is not
run at larger sizes (controls are left out: they cost nothing at any size). Outputs: a markdown
table on stdout, ``results.json``, and a PNG plot (accuracy vs log time; or log-log time vs size).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

if TYPE_CHECKING:  # the worker imports matchenv lazily, inside its own process
    from matchenv.datasets import PairDataset

#: Published numbers the table is compared with (success at IoU > 0.5, ms per query), Noisy MNIST.
PUBLISHED = {
    "TranslatedMNIST": {"prototype agent": (0.95, 1), "MTM": (0.68, 2), "BBS": (0.70, 132)},
    "ClutteredMNIST": {"prototype agent": (0.91, 3), "MTM": (0.20, 3), "BBS": (0.11, 141)},
    "MixedMNIST": {"prototype agent": (0.88, 4), "MTM": (0.15, 5), "BBS": (0.08, 148)},
    "FlickrLogos32": {"prototype agent": (0.39, 6), "MTM": (0.28, 230), "BBS": (0.36, 2400)},
    # The prototype was measured on FlickrLogos-32 (on request only); FL-27 is the public stand-in.
    "FlickrLogos27": {"prototype agent (FL-32)": (0.39, 6), "MTM (FL-32)": (0.28, 230), "BBS (FL-32)": (0.36, 2400)},
}
#: Published AUCs (success curve over IoU thresholds 0, 0.05, ..., 0.95; Gao & Spratling 2021, Table).
PUBLISHED_AUC = {
    "KTM": {"NCC (colour)": 0.42, "ZNCC (colour)": 0.48, "BBS (colour)": 0.44, "DDIS (colour)": 0.63,
            "QATM (deep)": 0.64, "Deep-DIM (deep, VGG19, seconds per pair)": 0.71},
}
CLASSIC_METHODS = ["ncc", "ssd", "mtm", "bbs", "ddis"]
FEATURE_METHODS = ["qatm", "embedding-exhaustive"]
#: Controls: answers that look at no image (what a dataset's layout alone gives).
CONTROL_METHODS = ["centre-box"]
#: Training pairs (seeded) on which the centre box's size is chosen.
CENTRE_BOX_FIT_PAIRS = 500


def machine_description(threads: int = 1) -> str:
    """The CPU (model name; family, model and widest vector instructions where /proc/cpuinfo says),
    logical CPUs, threads per method and Python: what timings from different machines need to be
    compared: on two machines that both call their CPU "AMD EPYC" the same learned look took 2x
    as long on one as on the other, NCC 1.3x (two sessions on 2026-11-23)."""
    cpu = platform.processor() or "unknown CPU"
    details: list[str] = []
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():  # the first processor's block ends here
                break
            fields.setdefault(key.strip(), value.strip())
        cpu = fields.get("model name", cpu)
        if "cpu family" in fields and "model" in fields:
            details.append(f"family {fields['cpu family']} model {fields['model']}")
        flags = set(fields.get("flags", "").split())
        widest = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"),
                                               ("sse4_2", "SSE4.2")) if flag in flags), None)
        if widest:
            details.append(widest)
    except OSError:
        pass
    if details:
        cpu = f"{cpu} ({', '.join(details)})"
    per_method = f"{threads} thread{'' if threads == 1 else 's'} per method"
    return f"{cpu}, {os.cpu_count()} logical CPUs, {per_method}, Python {platform.python_version()}"


#: What :func:`speed_gauge_ms` times, for the outputs.
SPEED_GAUGE = ("OpenCV zero-mean NCC of a 32x32 template over a fixed 240x320 image, one thread, median of 50, "
               "in a fresh process importing only numpy and OpenCV")


def speed_gauge_ms(repeats: int = 50) -> float:
    """Median milliseconds of one fixed piece of work (:data:`SPEED_GAUGE`), measured at the start
    and at the end of a run and written beside its results.

    Why: on the shared VM of 2026-11-23 the learned look took a median of 5.6-7.7 ms per query
    in three runs within 15 minutes and 9.0 ms in two runs half an hour earlier (NCC 3.6-3.8
    against 4.0-5.5 ms): a table's times say little against another run's unless the machine's
    speed at the time comes with them. Compare runs only together with this number, and within
    a run compare methods. It tracks the machine roughly: the look's ONNX Runtime convolutions
    varied more than NCC did.

    It runs in a fresh Python process that imports only numpy and OpenCV, the same program every
    time: measured in the caller's process (as it was until 2026-11-24) the same NCC took 1.08 ms
    where torch had been imported and 1.69 ms where it had not, minutes apart. (glibc's malloc
    hands the NCC's large buffers back to the system after every call until the heap has grown,
    which importing torch does; with ``MALLOC_MMAP_THRESHOLD_`` set high it took 1.09 ms too.)
    """
    import subprocess
    import sys

    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import benchmark_matchers; print(benchmark_matchers.speed_gauge_here({int(repeats)}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"the speed gauge's process failed: {done.stderr.strip()[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def speed_gauge_here(repeats: int = 50) -> float:
    """:func:`speed_gauge_ms`'s measurement, in this process (whose imports it depends on)."""
    import cv2

    cv2.setNumThreads(1)
    image = np.random.default_rng(0).integers(0, 256, (240, 320), dtype=np.uint8)
    template = image[100:132, 150:182].copy()
    cv2.matchTemplate(image, template, cv2.TM_CCOEFF_NORMED)  # warm-up
    times = []
    for _ in range(max(1, int(repeats))):
        start = time.perf_counter()
        cv2.matchTemplate(image, template, cv2.TM_CCOEFF_NORMED)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def gauge_note(gauge: dict[str, float]) -> str:
    """``{"start": ms, "end": ms}`` of :func:`speed_gauge_ms` as the outputs state it."""
    return (f"speed gauge {gauge['start']:.3f} ms at the start and {gauge['end']:.3f} ms at the end "
            f"({SPEED_GAUGE}; compare runs' times only together with it)")


def make_method(name: str, features_checkpoint: Optional[str], data: "PairDataset"):
    """Build a matcher (or an agent wrapped as one) inside the worker process.

    :param data: the benchmark's :class:`~matchenv.datasets.PairDataset`. Multi-scale matchers
        search a geometric grid over its ``scale_range`` (photographs), else their default grid
        (Noisy MNIST); the centre box's size is fitted on :data:`CENTRE_BOX_FIT_PAIRS` of its
        *training* pairs (seed 0).
    """
    from matchenv.agents.baselines import CentreBox, make_matcher

    scale_range = data.scale_range
    if name.startswith("agent:"):
        return AgentMatcher(name.split(":", 1)[1])
    if name.startswith("load:"):
        return LoadedModel(name.split(":", 1)[1])
    if name in FEATURE_METHODS:
        return make_matcher(name, checkpoint=features_checkpoint)
    if name == "qatm-imagenet":
        return make_matcher(name)
    if name == "ncc-multiscale" and scale_range is not None:
        return make_matcher(name, scales=scale_grid(scale_range))
    if name == "centre-box":  # never unfitted: its size comes from the training pairs
        rng = np.random.default_rng(0)
        prior = CentreBox.fit((data.sample(rng) for _ in range(CENTRE_BOX_FIT_PAIRS)), getattr(data, "window_fraction", None))
        prior.features = f"{CentreBox.features}: scale {prior.scale:g} on {CENTRE_BOX_FIT_PAIRS} training pairs"
        return prior
    return make_matcher(name)


def scale_grid(scale_range: tuple[float, float], step: float = 2 ** 0.25) -> tuple[float, ...]:
    """Factors from ``scale_range[0]`` to ``scale_range[1]`` in geometric steps of ``step``, through 1."""
    lo, hi = scale_range
    down = [step ** -k for k in range(1, 64) if step ** -k >= lo - 1e-9]
    up = [step ** k for k in range(1, 64) if step ** k <= hi + 1e-9]
    return tuple(round(v, 4) for v in sorted(down) + [1.0] + up)


#: What ``look:<name or file>,key=value,...`` may set: :class:`~matchenv.agents.multiscale_look.LookSearcher`'s target
#: range and its second look (``candidates=1``: none; ``closer_gap=inf``: for every query).
LOOK_OPTIONS = ("smallest", "largest", "candidates", "closer_gap")
#: What ``look-agent:<name or file>,key=value,...`` may set: the first look's target range
#: (:class:`~matchenv.agents.look_agent.LookAgentSearcher`).
LOOK_AGENT_OPTIONS = ("smallest", "largest")
#: What ``photo-search:<name or file>,key=value,...`` may set: the most windows compared
#: (:class:`~matchenv.agents.photo_search.PhotoSearcher`).
PHOTO_SEARCH_OPTIONS = ("windows",)
#: What ``coarse-to-fine:<name or file>,key=value,...`` may set: how many of the coarse look's best
#: cells the agent searches and the similarity that accepts the first answer (``accept=none``: never;
#: :class:`~matchenv.agents.coarse_to_fine.CoarseToFineSearcher`). A shipped proposer's defaults otherwise.
COARSE_TO_FINE_OPTIONS = ("candidates", "accept")


#: What ``pretrained:<name>,key=value`` may set: how many times the agent's shipped box refiner
#: moves each answer (``refine=0``: the search's own answers; agents/box_refiner.py).
AGENT_OPTIONS = ("refine",)
#: Options that are whole numbers (the others are numbers).
WHOLE_NUMBER_OPTIONS = ("candidates", "refine", "windows")


def searcher_options(spec: str, allowed: Sequence[str], example: str) -> tuple[str, dict[str, Any]]:
    """Split a searcher's name or file from its options: ``"photo,smallest=0.05,candidates=1"``
    -> ``("photo", {"smallest": 0.05, "candidates": 1})``. ``candidates`` and ``refine`` are whole
    numbers, every other option a number (or ``none``, where it may be switched off: ``accept``).

    :raises ValueError: for an option not in ``allowed`` or a value of the wrong kind.
    """
    name, *options = spec.split(",")
    kwargs: dict[str, Any] = {}
    for option in options:
        key, _, value = option.partition("=")
        if key not in allowed:
            raise ValueError(f"unknown option {key!r}; this searcher takes {', '.join(allowed)} ({example})")
        if key == "accept" and value.lower() == "none":
            kwargs[key] = None
            continue
        whole = key in WHOLE_NUMBER_OPTIONS
        try:
            kwargs[key] = int(value) if whole else float(value)
        except ValueError:
            raise ValueError(f"{key} must be a {'whole number' if whole else 'number'}, got {value!r}") from None
    return name, kwargs


def look_spec(spec: str) -> tuple[str, dict[str, float]]:
    """What follows ``look:``: the look's name or file and its :data:`LOOK_OPTIONS`."""
    return searcher_options(spec, LOOK_OPTIONS, "look:photo,smallest=0.05")


def coarse_to_fine_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """What follows ``coarse-to-fine:``: the proposer's name or file and its :data:`COARSE_TO_FINE_OPTIONS`."""
    return searcher_options(spec, COARSE_TO_FINE_OPTIONS, "coarse-to-fine:mixed-mnist,candidates=1")


def pretrained_agent_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """What follows ``pretrained:``: the agent's name and its :data:`AGENT_OPTIONS`."""
    return searcher_options(spec, AGENT_OPTIONS, "pretrained:flickrlogos27,refine=0")


def look_agent_spec(spec: str) -> tuple[str, dict[str, float]]:
    """What follows ``look-agent:``: the photograph agent's name or file and its :data:`LOOK_AGENT_OPTIONS`."""
    return searcher_options(spec, LOOK_AGENT_OPTIONS, "look-agent:photo,smallest=0.05")


def photo_search_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """What follows ``photo-search:``: the searcher's name or file and its :data:`PHOTO_SEARCH_OPTIONS`."""
    return searcher_options(spec, PHOTO_SEARCH_OPTIONS, "photo-search:photo,windows=2")


def agent_name(checkpoint: str) -> str:
    """A searcher's name in the tables: "agent (pretrained:flickrlogos27)", "agent (pretrained:flickrlogos27,
    refine=0)", "agent (fl27-zoom/best.zip)", "agent (coarse-to-fine:cluttered-mnist)", "learned look
    (look:photo)", "learned look (look:photo, smallest=0.05)", "photograph agent (look-agent:photo)"."""
    prefix = next((p for p in ("pretrained:", "coarse-to-fine:", "look-agent:", "look:", "photo-search:")
                   if checkpoint.startswith(p)), "")
    spec, options = checkpoint[len(prefix):], ""
    if prefix:
        parse = {"look:": look_spec, "coarse-to-fine:": coarse_to_fine_spec, "pretrained:": pretrained_agent_spec,
                 "look-agent:": look_agent_spec, "photo-search:": photo_search_spec}[prefix]
        spec, kwargs = parse(spec)
        options = "".join(f", {key}={'none' if value is None else format(value, 'g')}" for key, value in kwargs.items())
    if not prefix or "/" in spec:  # a file: its folder and name say which run it is
        spec = "/".join(Path(spec).parts[-2:])
    kind = {"look:": "learned look", "look-agent:": "photograph agent", "photo-search:": "photograph search"}.get(prefix, "agent")
    return f"{kind} ({prefix}{spec}{options})"


class LoadedModel:
    """``load:<name>``: any model as a user gets it, ``matchenv.load(name)`` (one thread), behind the
    matcher interface; with ``train/compare_speed.py`` it times the public API against the class it wraps."""

    def __init__(self, name: str) -> None:
        import matchenv

        self.searcher = matchenv.load(name)
        self.name = f"matchenv.load({name!r})"
        self.features = f"{self.searcher.kind} through matchenv.load"

    def locate(self, query: np.ndarray, reference: np.ndarray):
        from matchenv.agents.baselines.base import MatchResult

        match = self.searcher.locate(query, reference)
        return MatchResult(box=match.box, score=match.score, evaluated=match.evaluated)


class AgentMatcher(LoadedModel):
    """A trained searcher, loaded through :func:`matchenv.load`, behind the matcher interface (one
    query at a time). This class only turns the benchmark's method names into ``load`` calls.

    :param checkpoint: a ``train/ppo_lstm.py`` checkpoint, ``pretrained:<name>`` (a shipped agent),
        ``coarse-to-fine:<name or proposer file>`` (a shipped or trained coarse look with the
        agent it names, :class:`~matchenv.agents.coarse_to_fine.CoarseToFineSearcher`; its candidates may
        follow, :func:`coarse_to_fine_spec`: ``coarse-to-fine:mixed-mnist,candidates=1``), or
        ``look:<name or look file>`` (a learned multi-scale look, :class:`~matchenv.agents.multiscale_look.LookSearcher`;
        its target range may follow, :func:`look_spec`: ``look:photo,smallest=0.05``), or
        ``look-agent:<name or agent file>`` (the photograph agent, :class:`~matchenv.agents.look_agent.LookAgentSearcher`;
        its first look's target range may follow, :func:`look_agent_spec`), or
        ``photo-search:<name or file>`` (:class:`~matchenv.agents.photo_search.PhotoSearcher`, its
        options may follow, :func:`photo_search_spec`).
    """

    #: per prefix: how its spec is parsed, the kind of model it names (``matchenv.list_models(kind)``)
    #: and the suffix of its shipped models' names there
    PREFIXES = {"photo-search:": (photo_search_spec, "photo-search", ""), "look-agent:": (look_agent_spec, "look-agent", "-agent"),
                "look:": (look_spec, "look", "-look"), "coarse-to-fine:": (coarse_to_fine_spec, "coarse-to-fine", "-large"),
                "pretrained:": (pretrained_agent_spec, "agent", "")}
    #: what the error messages call each kind and its files
    KIND_NAMES = {"photo-search": ("photograph searcher", "file from train/photo_search.py"),
                  "look-agent": ("photograph agent", "agent file from train/look_agent.py"),
                  "look": ("look", "look file"), "coarse-to-fine": ("coarse look", "proposer file"),
                  "agent": ("agent", "checkpoint")}

    def __init__(self, checkpoint: str) -> None:
        import matchenv

        self.name = agent_name(checkpoint)
        prefix = next((p for p in self.PREFIXES if checkpoint.startswith(p)), "")
        spec, options = checkpoint[len(prefix):], {}
        if prefix:
            parse, kind, suffix = self.PREFIXES[prefix]
            spec, options = parse(spec)
            names = [info.name[:len(info.name) - len(suffix)] for info in matchenv.list_models(kind)]
            if spec in names:
                spec += suffix
            elif prefix == "pretrained:":
                raise ValueError(f"{spec!r} is not a shipped agent ({', '.join(names)}); pass a checkpoint file "
                                 "without the 'pretrained:' prefix")
            elif not Path(spec).is_file():
                what, file = self.KIND_NAMES[kind]
                raise FileNotFoundError(f"{spec!r} is neither a shipped {what} ({', '.join(names)}) nor a {file}")
        if prefix == "pretrained:":  # refine=k: the shipped box refiner's steps (0: none)
            steps = options.pop("refine", 1)
            if steps < 0:
                raise ValueError(f"refine must be 0 (no refinement) or more steps, got {steps}")
            options.update(refine=steps > 0, refine_steps=max(steps, 1))
        # threads=None: the benchmark sets the process's threads itself (one per method)
        self.searcher = matchenv.load(spec, threads=None, **options)
        self.features = f"{self.searcher.kind}: {checkpoint} ({runtime_description(self.searcher.model)})"


def runtime_description(model: Any) -> str:
    """Where a loaded searcher runs its networks (for the benchmark's method table)."""
    from matchenv.agents.coarse_to_fine import CoarseToFineSearcher

    parts = []
    if isinstance(model, CoarseToFineSearcher):
        parts.append(f"proposer runtime: {model.runtime}")
        model = model.fine
    runtime = getattr(model, "cnn_runtime", None) or getattr(model, "runtime", None)
    parts.insert(0, f"runtime: {getattr(runtime, 'name', runtime)}")
    if getattr(model, "refiner", None) is not None:
        parts.append(f"box refiner: {model.refine_steps} step(s) in {model.refiner_runtime}")
    if getattr(model, "policy", None) is not None and isinstance(model.policy, str):
        parts.append(f"policy: {model.policy}")
    return ", ".join(parts)


def make_pairs(dataset: str, n: int, dataset_kwargs: dict, first: int = 0):
    """``n`` pairs of the dataset's fixed test split from index ``first`` on (as many as it has),
    and the dataset."""
    import inspect

    from matchenv.datasets import DATASETS, make_dataset

    kwargs = dict(dataset_kwargs)
    # Generated datasets (a test_size argument, possibly on a base class): as many pairs as asked.
    inits = [vars(cls)["__init__"] for cls in DATASETS[dataset].__mro__ if "__init__" in vars(cls)]
    if any("test_size" in inspect.signature(init).parameters for init in inits):
        kwargs.setdefault("test_size", max(first + n, 1))
    data = make_dataset(dataset, **kwargs)
    return [data.test_pair(i) for i in range(first, min(first + n, data.test_size))], data


def scaling_kwargs(dataset: str, size: int, extra: dict) -> dict:
    """Arguments of a ``size`` x ``size`` canvas of the Noisy MNIST ``dataset``: clutter at the
    dataset's own density (its default fragments per its default canvas area) scaled with the
    area, plus ``extra``.

    :raises ValueError: for a dataset that is not a Noisy MNIST variant (photographs).
    """
    from matchenv.datasets import DATASETS
    from matchenv.datasets.noisy_mnist import NoisyMNIST, canvas_kwargs, default_clutter_density

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    if not issubclass(DATASETS[dataset], NoisyMNIST):
        raise ValueError(f"--scaling needs a Noisy MNIST dataset (canvas_size and n_clutter arguments), not {dataset}")
    return canvas_kwargs(size, default_clutter_density(DATASETS[dataset]), extra)


def run_method(job: dict[str, Any], progress: Optional[Any] = None) -> dict[str, Any]:
    """Worker: time one method on the pairs (runs in a fresh process, single-threaded).

    :param progress: a queue that receives ``("start", name, features)`` once the method is built and
        ``("pair", test index, IoU, seconds, evaluated)`` after every timed query, so that the
        caller keeps the answers of a worker it has to stop (:func:`in_own_process`).
    """
    import cv2
    import torch

    from matchenv.geometry import iou

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    pairs, data = make_pairs(job["dataset"], job["pairs"], job["dataset_kwargs"], job.get("first_pair", 0))
    method = make_method(job["method"], job["features_checkpoint"], data)
    name, features = getattr(method, "name", job["method"]), getattr(method, "features", None)
    if progress is not None:
        progress.put(("start", name, features))
    # Photograph pairs: every method gets the template at its natural size (agents letterbox it).
    # The warm-up counts in the budget, so a worker ends about one query after max_seconds_total.
    started = time.perf_counter()
    for pair in pairs[: job["warmup"]]:
        method.locate(pair.matcher_query, pair.reference)
        if time.perf_counter() > started + job["max_seconds_total"] / 10:  # slow methods (BBS, DDIS) warm up once
            break
    rows = []
    deadline = started + job["max_seconds_total"]
    every = max(int(job.get("every", 1)), 1)  # a slow method answers every k-th pair (see --every)
    for index, pair in enumerate(pairs):
        if index % every:
            continue
        start = time.perf_counter()
        result = method.locate(pair.matcher_query, pair.reference)
        row = (job.get("first_pair", 0) + index, iou(result.box, pair.target_box), time.perf_counter() - start,
               result.evaluated)
        rows.append(row)
        if progress is not None:
            progress.put(("pair", *row))
        if time.perf_counter() > deadline:
            break
    return method_result(job, name, features, rows)


def method_result(job: dict[str, Any], name: str, features: Optional[str], rows: list[tuple]) -> dict[str, Any]:
    """One method's line of the results from its answered pairs ``(test index, IoU, seconds, evaluated)``."""
    from matchenv.metrics import success_auc, success_rate

    indices, ious, times, evaluated = (list(column) for column in zip(*rows))
    return {
        "method": name,
        "key": job["method"],
        "pairs": len(rows),
        "success_rate": success_rate(ious),
        "auc": success_auc(ious),
        "mean_iou": float(np.mean(ious)),
        "median_ms": 1000 * statistics.median(times),
        # searches whose cost varies per query (a look's second look runs on some) differ here
        "mean_ms": 1000 * statistics.fmean(times),
        "evaluated": int(statistics.median(evaluated)),
        "features": features,
        # per answered pair (test indices), so that methods can be compared on a common subset
        "pair_indices": [int(i) for i in indices],
        "ious": [float(v) for v in ious],
        "ms": [1000 * t for t in times],
    }


#: seconds a worker may run beyond its method's ``max_seconds_total`` (loading data, warm-up)
#: before it is stopped: a method whose single query outlasts that keeps the pairs it answered
#: (or is reported as not finished).
GRACE_SECONDS = 120.0


def in_fresh_process(worker, job: dict[str, Any], timeout: Optional[float] = None):
    """``worker(job)`` in a fresh (spawned) process; raises ``multiprocessing.TimeoutError`` (the
    process stopped) if it has not returned within ``timeout`` seconds."""
    with mp.get_context("spawn").Pool(1) as pool:  # leaving the block terminates the process
        return pool.apply_async(worker, (job,)).get(timeout=timeout)


def _reporting_worker(job: dict[str, Any], progress: Any) -> None:
    """:func:`run_method` sending its answers, its result (``("done", result)``) or its error (``("error", text)``)."""
    import traceback

    try:
        progress.put(("done", run_method(job, progress)))
    except Exception:  # noqa: BLE001  (the parent raises it with the worker's traceback)
        progress.put(("error", traceback.format_exc()))


def in_own_process(job: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_method` in a fresh process, stopped after ``max_seconds_total`` + :data:`GRACE_SECONDS`;
    a stopped method keeps the pairs it answered (``stopped_after_s`` says it was stopped).

    :raises RuntimeError: with the worker's traceback, if the method fails.
    """
    import queue

    limit = job["max_seconds_total"] + GRACE_SECONDS
    context = mp.get_context("spawn")
    progress = context.Queue()
    process = context.Process(target=_reporting_worker, args=(job, progress), daemon=True)
    process.start()
    ends = time.monotonic() + limit
    name, features, rows = None, None, []
    try:
        while time.monotonic() < ends:
            try:
                message = progress.get(timeout=min(1.0, max(ends - time.monotonic(), 0.01)))
            except queue.Empty:
                if not process.is_alive():
                    raise RuntimeError(f"the worker of {job['method']} died (exit code {process.exitcode})") from None
                continue
            if message[0] == "start":
                name, features = message[1], message[2]
            elif message[0] == "pair":
                rows.append(message[1:])
            elif message[0] == "done":
                return message[1]
            else:
                raise RuntimeError(f"{job['method']} failed in its worker:\n{message[1]}")
    finally:
        process.terminate()
        process.join()
    if rows:
        return method_result(job, name, features, rows) | {"stopped_after_s": limit}
    name = job["method"]
    if name.startswith("agent:"):
        name = agent_name(name.split(":", 1)[1])
    return {"method": name, "key": job["method"], "pairs": 0, "success_rate": float("nan"), "auc": float("nan"),
            "mean_iou": float("nan"), "median_ms": float("nan"), "mean_ms": float("nan"), "evaluated": 0,
            "features": None, "timed_out_after_s": limit, "pair_indices": [], "ious": [], "ms": []}


def accuracy_table(results: list[dict], dataset: str) -> str:
    # the mean beside the median: a method whose cost varies by query (the look's second look runs
    # on some queries only) has a median that hides it
    lines = ["| method | success (IoU>0.5) | AUC | mean IoU | median ms / query | mean ms / query | windows or positions evaluated | pairs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(results, key=lambda r: -r["success_rate"] if r["pairs"] else 1.0):
        if not r["pairs"]:  # stopped before its first query finished (see in_own_process)
            lines.append(f"| {r['method']} | - | - | - | no query finished in {r['timed_out_after_s']:.0f} s | | | 0 |")
            continue
        name = r["method"] + (f" (stopped after {r['stopped_after_s']:.0f} s)" if r.get("stopped_after_s") else "")
        lines.append(f"| {name} | {r['success_rate']:.3f} | {r.get('auc', float('nan')):.3f} | {r['mean_iou']:.2f} | "
                     f"{r['median_ms']:.2f} | {r.get('mean_ms', float('nan')):.2f} | {r['evaluated']} | {r['pairs']} |")
    for name, (success, ms) in PUBLISHED.get(dataset, {}).items():
        lines.append(f"| published: {name} | {success:.2f} | | | {ms} | | | |")
    for name, auc in PUBLISHED_AUC.get(dataset, {}).items():
        lines.append(f"| published: {name} | | {auc:.2f} | | | | | |")
    return "\n".join(lines)


def subset_table(results: list[dict]) -> str:
    """Every method on the pairs that the method answering fewest pairs answered (a slow method run
    with ``--every``, or stopped by ``--max-seconds``), so that it is compared on equal terms; ``""``
    when every method answered the same pairs."""
    from matchenv.metrics import success_auc, success_rate

    answered = [r for r in results if r["pairs"] and r.get("pair_indices")]
    if not answered:
        return ""
    fewest = min(answered, key=lambda r: r["pairs"])
    common = set(fewest["pair_indices"])
    if all(set(r["pair_indices"]) == common for r in answered):
        return ""
    lines = [f"On the {len(common)} pairs that {fewest['method']} answered:", "",
             "| method | success (IoU>0.5) | AUC | pairs |", "|---|---:|---:|---:|"]
    rows = []
    for r in answered:
        ious = [v for i, v in zip(r["pair_indices"], r["ious"]) if i in common]
        if len(ious) == len(common):  # a method stopped earlier has no answer on some of them
            rows.append((success_rate(ious), success_auc(ious), r["method"], len(ious)))
    for success, auc, name, n in sorted(rows, key=lambda row: (-row[0], -row[1])):
        lines.append(f"| {name} | {success:.3f} | {auc:.3f} | {n} |")
    return "\n".join(lines)


def plot_accuracy(results: list[dict], path: Path, title: str, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    # A legend, not labels beside the points: methods often share a success rate and a time.
    markers, colours = "os^Dv<>PX*", [f"C{k}" for k in (0, 1, 2, 3, 4, 5, 6, 8, 9)]  # C7 is the controls' grey
    shown = sorted((r for r in results if r["pairs"]), key=lambda r: (-r["success_rate"], r["median_ms"]))
    for i, r in enumerate(shown):
        control = r.get("key") in CONTROL_METHODS  # drawn apart: a floor, not a competitor
        style = dict(marker="x", color="gray") if control else dict(marker=markers[i % len(markers)], color=colours[i % len(colours)])
        name = f"{r['method']} (control)" if control else r["method"]
        ax.scatter(r["median_ms"], r["success_rate"], s=45, alpha=0.85,
                   label=f"{name}: {r['success_rate']:.2f}, {r['median_ms']:.3g} ms", **style)
    for name, (success, ms) in PUBLISHED.get(dataset, {}).items():
        ax.scatter(ms, success, s=40, facecolors="none", edgecolors="gray")
        ax.annotate(f"published {name}", (ms, success), textcoords="offset points", xytext=(4, -12), fontsize=7, color="gray")
    ax.set_xscale("log")
    ax.set_xlabel("median ms per query (1 CPU thread, log scale)")
    ax.set_ylabel("success rate (IoU > 0.5)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scaling_tables(rows: list[dict]) -> tuple[str, str]:
    """Markdown tables of median ms per query and of success (with the pairs answered) per size."""
    sizes = sorted({r["size"] for r in rows})
    names = list(dict.fromkeys(r["method"] for r in rows))
    header = ["| method | " + " | ".join(f"{s}x{s}" for s in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    times, success = list(header), list(header)
    for name in names:
        mine = {r["size"]: r for r in rows if r["method"] == name}
        times.append(f"| {name} | " + " | ".join(f"{mine[s]['median_ms']:.1f}" if s in mine else "-" for s in sizes) + " |")
        success.append(f"| {name} | " + " | ".join(
            f"{mine[s]['success_rate']:.2f} ({mine[s]['pairs']})" if s in mine else "-" for s in sizes) + " |")
    return "\n".join(times), "\n".join(success)


def dataset_label(dataset: str, extra: dict) -> str:
    """``ClutteredMNIST`` or ``MixedMNIST {"n_distractors": [9, 9]}``: the canvases of a scaling run."""
    return dataset + (f" {json.dumps(extra)}" if extra else "")


def write_scaling(rows: list[dict], machine: str, out: Path, dataset: str = "ClutteredMNIST") -> None:
    """Print and write the scaling tables (``scaling.md``), ``scaling.json`` and ``scaling.png``.

    :param dataset: what the canvases are (:func:`dataset_label`)."""
    times, success = scaling_tables(rows)
    text = (f"median ms per query vs reference size ({dataset} canvases, target 28x28); {machine}\n\n{times}\n\n"
            f"success (IoU > 0.5) and pairs answered per size\n\n{success}\n")
    print("\n" + text)
    (out / "scaling.json").write_text(json.dumps({"dataset": dataset, "machine": machine, "rows": rows}, indent=2))
    (out / "scaling.md").write_text(text)
    plot_scaling(rows, out / "scaling.png")


def plot_scaling(rows: list[dict], path: Path) -> None:
    """Two panels against the reference side: median ms per query (log-log) and success."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    fig, (cost, success) = plt.subplots(1, 2, figsize=(12.5, 4.4))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    # tab10 repeats after ten methods; tab20 keeps eleven or more apart. Searchers get squares.
    colours = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20").colors
    for i, method in enumerate(methods):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["size"])
        sizes = [r["size"] for r in mine]
        style = dict(marker="s" if method.startswith("agent") else "o", color=colours[i % len(colours)], label=method)
        cost.plot(sizes, [r["median_ms"] for r in mine], **style)
        success.plot(sizes, [r["success_rate"] for r in mine], **style)
    cost.set_yscale("log")
    cost.set_ylabel("median ms per query (1 CPU thread)")
    success.set_ylabel("success (IoU > 0.5)")
    success.set_ylim(-0.02, 1.02)
    all_sizes = sorted({r["size"] for r in rows})
    for ax in (cost, success):
        ax.set_xscale("log")
        ax.set_xticks(all_sizes, [str(s) for s in all_sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("reference side (pixels; target 28x28)")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = cost.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.68, 0.5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.68, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ClutteredMNIST", help="a name from matchenv.datasets.DATASETS")
    parser.add_argument("--dataset-kwargs", default="{}", help='JSON keyword arguments, e.g. \'{"root": "data/fl27"}\'')
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--first-pair", type=int, default=0,
                        help="index of the first test pair (e.g. 1000: pairs no earlier run has chosen anything on)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--methods", default=",".join(CONTROL_METHODS + CLASSIC_METHODS + FEATURE_METHODS),
                        help="comma-separated matcher names (see matchenv.agents.baselines.MATCHERS)")
    parser.add_argument("--agent", action="append", default=[],
                        help="trained checkpoint, pretrained:<name>, coarse-to-fine:<name or proposer.pt>"
                             "[,candidates=N][,accept=F|none] (the CoarseToFineSearcher options of that name), or "
                             "look:<name or look.pt>[,smallest=F][,largest=F][,candidates=N][,closer_gap=F] (the "
                             "LookSearcher options of that name), or look-agent:<name or look_agent.pt>"
                             "[,smallest=F][,largest=F] (the photograph agent), or photo-search:<name or "
                             "photo_search.pt>[,windows=N] (the photograph searcher), to include (repeatable)")
    parser.add_argument("--every", action="append", default=[], metavar="METHOD=K",
                        help="a slow method answers every K-th pair only (e.g. ddis=4: pairs 0, 4, 8, ...); the "
                             "outputs then add a table of every method on those pairs (repeatable)")
    parser.add_argument("--features-checkpoint", default=None, help="agent checkpoint whose CNN QATM/embedding use")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="time budget per method (and size)")
    parser.add_argument("--scaling", action="store_true", help="run the cost-versus-reference-size benchmark")
    parser.add_argument("--sizes", default="100,250,500,1000,2000")
    parser.add_argument("--scaling-pairs", type=int, default=20)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--replot", action="store_true",
                        help="redraw tables and plot from <out>/results.json (with --scaling: <out>/scaling.json)")
    args = parser.parse_args()
    if args.first_pair < 0:
        parser.error(f"--first-pair must be >= 0 (an index into the test split), got {args.first_pair}")
    every: dict[str, int] = {}
    for item in args.every:
        method, _, k = item.partition("=")
        if not method or not k.isdigit() or int(k) < 1:
            parser.error(f"--every takes METHOD=K with K a whole number >= 1 (e.g. ddis=4), got {item!r}")
        every[method] = int(k)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot and args.scaling:
        saved = json.loads((out / "scaling.json").read_text())
        write_scaling(saved["rows"], saved["machine"], out, saved.get("dataset", "ClutteredMNIST"))
        return
    if args.replot:
        saved = json.loads((out / "results.json").read_text())
        plot_accuracy(saved["results"], out / "accuracy_vs_time.png", f"{saved['dataset']}: success vs time per query",
                      saved["dataset"])
        subset = subset_table(saved["results"])
        (out / "results.md").write_text(f"{saved['dataset']}; {saved['machine']}\n\n{accuracy_table(saved['results'], saved['dataset'])}\n"
                                        + (f"\n{subset}\n" if subset else ""))
        return
    for agent in args.agent:
        if agent.startswith(("look:", "pretrained:", "look-agent:", "photo-search:")):
            try:  # a bad name, option or range: one clear line here, not a worker's traceback (loads in ~1 s)
                AgentMatcher(agent)
            except (ValueError, OSError) as err:
                parser.error(f"--agent {agent}: {err}")
    plain_agents = [a for a in args.agent if not a.startswith(("coarse-to-fine:", "look:", "look-agent:", "photo-search:"))]
    features_checkpoint = args.features_checkpoint or (plain_agents[0] if plain_agents else None)
    if features_checkpoint and features_checkpoint.startswith("pretrained:"):
        from matchenv.agents.pretrained import pretrained_path

        features_checkpoint = str(pretrained_path(pretrained_agent_spec(features_checkpoint.split(":", 1)[1])[0]))
    methods = [m for m in args.methods.split(",") if m]
    if features_checkpoint is None:
        skipped = [m for m in methods if m in FEATURE_METHODS]
        methods = [m for m in methods if m not in FEATURE_METHODS]
        if skipped:
            print(f"left out {skipped}: they need a trained agent checkpoint (--agent or --features-checkpoint)")
    if args.scaling:
        methods = [m for m in methods if m not in CONTROL_METHODS]
    methods += [f"agent:{path}" for path in args.agent]
    try:  # bad --dataset/--dataset-kwargs: one clear line here, not a worker's traceback
        extra = json.loads(args.dataset_kwargs)
        make_pairs(args.dataset, 1, scaling_kwargs(args.dataset, 250, extra) if args.scaling else extra)
    except (ValueError, TypeError, OSError) as err:
        parser.error(f"--dataset {args.dataset} --dataset-kwargs {args.dataset_kwargs}: {err}")
    machine = machine_description()
    gauge = {"start": speed_gauge_ms()}
    print(f"machine: {machine}\nspeed gauge at the start: {gauge['start']:.3f} ms ({SPEED_GAUGE})", flush=True)

    if not args.scaling:
        results = []
        for method in methods:
            job = dict(method=method, dataset=args.dataset, pairs=args.pairs, first_pair=args.first_pair, warmup=args.warmup,
                       dataset_kwargs=extra, every=every.get(method, 1),
                       features_checkpoint=features_checkpoint, max_seconds_total=args.max_seconds)
            result = in_own_process(job)
            if not result["pairs"]:
                print(f"{result['method']}: no query finished in {result['timed_out_after_s']:.0f} s", flush=True)
            else:
                print(f"{result['method']}: success {result['success_rate']:.3f}, {result['median_ms']:.2f} ms/query "
                      f"(mean {result['mean_ms']:.2f}; {result['pairs']} pairs)", flush=True)
            results.append(result)
        gauge["end"] = speed_gauge_ms()
        setting = f"{machine}; {gauge_note(gauge)}"
        table = accuracy_table(results, args.dataset)
        subset = subset_table(results)
        if subset:
            table = f"{table}\n\n{subset}"
        print(f"\n{args.dataset}, test pairs {args.first_pair}-{args.first_pair + args.pairs - 1}; {setting}\n\n{table}")
        (out / "results.json").write_text(json.dumps({"dataset": args.dataset, "first_pair": args.first_pair, "machine": machine, "speed_gauge_ms": gauge,
                                                      "speed_gauge": SPEED_GAUGE, "results": results}, indent=2))
        (out / "results.md").write_text(f"{args.dataset}; {setting}\n\n{table}\n")
        plot_accuracy(results, out / "accuracy_vs_time.png", f"{args.dataset}: success vs time per query", args.dataset)
        return

    rows, too_slow = [], set()
    for size in (int(s) for s in args.sizes.split(",")):
        kwargs = scaling_kwargs(args.dataset, size, extra)
        for method in methods:
            if method in too_slow:
                continue
            job = dict(method=method, dataset=args.dataset, pairs=args.scaling_pairs, warmup=1, dataset_kwargs=kwargs,
                       features_checkpoint=features_checkpoint, max_seconds_total=args.max_seconds)
            result = in_own_process(job)
            if not result["pairs"]:
                print(f"{size}x{size} {result['method']}: no query finished in {result['timed_out_after_s']:.0f} s", flush=True)
                too_slow.add(method)
                continue
            result["size"] = size
            rows.append(result)
            print(f"{size}x{size} {result['method']}: {result['median_ms']:.2f} ms/query ({result['pairs']} pairs)", flush=True)
            if result["median_ms"] / 1000 > args.max_seconds / max(args.scaling_pairs, 1):
                too_slow.add(method)
    gauge["end"] = speed_gauge_ms()
    write_scaling(rows, f"{machine}; {gauge_note(gauge)}", out, dataset_label(args.dataset, extra))


if __name__ == "__main__":
    main()
