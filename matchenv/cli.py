"""The ``matchenv`` command: ``locate``, ``models``, and front doors to the training and benchmark scripts.

    matchenv locate query.png reference.jpg [--model photo] [--json] [--draw out.png]
    matchenv models [--kind baseline]
    matchenv benchmark --dataset KTM ...     # train/benchmark_matchers.py (a source checkout)
    matchenv train --env-id ...              # train/ppo_lstm.py (a source checkout)

Exit codes: 0 done, 1 an error (the message says what was wrong), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

#: the scripts the front doors run, in a source checkout (they are not installed with the package)
SCRIPTS = {"benchmark": "train/benchmark_matchers.py", "train": "train/ppo_lstm.py"}


class CommandError(Exception):
    """An error the command reports in one line (exit code 1)."""


def _read_image(path: str, what: str):
    import cv2

    if not Path(path).is_file():
        raise CommandError(f"no {what} image at {path}")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise CommandError(f"could not read the {what} {path} as an image (OpenCV reads PNG, JPEG, BMP, TIFF, WebP, ...)")
    return image


def _draw(reference, match, path: str) -> None:
    """Write ``reference`` with the answer box (green) and the windows searched (thin, grey) to ``path``."""
    import cv2

    canvas = reference.copy()
    if match.path is not None:
        for window in match.path:
            x0, y0, x1, y1 = (int(round(v)) for v in window)
            cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), (160, 160, 160), 1)
    x0, y0, x1, y1 = (int(round(v)) for v in match.box)
    thickness = max(2, round(max(canvas.shape[:2]) / 300))
    cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), (0, 200, 0), thickness)
    label = f"{match.model} {match.score:.2f}" + ("" if match.found is None else (" found" if match.found else " not found"))
    cv2.putText(canvas, label, (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 200, 0), 1, cv2.LINE_AA)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(path, canvas):
        raise CommandError(f"could not write {path}: use a picture suffix OpenCV knows (.png, .jpg)")


def _locate(args: argparse.Namespace) -> int:
    import matchenv

    query = _read_image(args.query, "query")
    reference = _read_image(args.reference, "reference")
    try:
        searcher = matchenv.load(args.model, channel_order="bgr", threads=args.threads)
        started = time.perf_counter()
        match = searcher.locate(query, reference)
        ms = 1000.0 * (time.perf_counter() - started)
    except (ValueError, FileNotFoundError, IsADirectoryError, ImportError) as err:
        raise CommandError(str(err)) from err
    if args.draw:
        _draw(reference, match, args.draw)
    if args.json:
        print(json.dumps(match.to_dict() | {"ms": round(ms, 3)}))
    else:
        x0, y0, x1, y1 = match.box
        found = "" if match.found is None else f", found: {'yes' if match.found else 'no'}"
        print(f"box (x0, y0, x1, y1): {x0:.1f} {y0:.1f} {x1:.1f} {y1:.1f}; score {match.score:.3f}{found}; "
              f"{match.evaluated} windows/positions evaluated in {ms:.1f} ms ({args.model})")
        if args.draw:
            print(f"wrote {args.draw}")
    return 0


def _models(args: argparse.Namespace) -> int:
    import matchenv

    try:
        infos = matchenv.list_models(args.kind)
    except ValueError as err:
        raise CommandError(str(err)) from err
    width = max(len(info.name) for info in infos)
    kind_width = max(len(info.kind) for info in infos)
    for info in infos:
        print(f"{info.name:<{width}}  {info.kind:<{kind_width}}  {info.description}")
    return 0


def _script(name: str, rest: Sequence[str]) -> int:
    root = Path(__file__).resolve().parents[1]
    script = root / SCRIPTS[name]
    if not script.is_file():
        raise CommandError(f"`matchenv {name}` runs {SCRIPTS[name]} from a source checkout, which this install lacks: "
                           "git clone the repository and pip install -e . there")
    argv, sys.argv = sys.argv, [str(script), *rest]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:  # the script's own exit code, or its message (sys.exit("error: ..."))
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)
        return 1
    finally:
        sys.argv = argv
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matchenv", description="Template matching learned as a search: find a query "
                                     "image in a reference image, list the models, train and benchmark.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    locate = commands.add_parser("locate", help="find QUERY in REFERENCE and print the box",
                                 description="Find the query image in the reference image.")
    locate.add_argument("query", help="the template image file (any format OpenCV reads)")
    locate.add_argument("reference", help="the image file to search")
    locate.add_argument("--model", default="photo", help="a name from `matchenv models` or a model file (default: photo, "
                        "for a template cut from one photograph found in another)")
    locate.add_argument("--json", action="store_true", help="print the result as one JSON object (box, xywh, score, "
                        "found, evaluated, path, ms)")
    locate.add_argument("--draw", metavar="OUT.png", help="also write the reference with the answer box drawn")
    locate.add_argument("--threads", type=_positive_int, default=1,
                        help="torch and OpenCV threads (default 1: the docs' timings)")
    locate.set_defaults(run=_locate)

    models = commands.add_parser("models", help="list every shipped model and baseline",
                                 description="One line per model: name, kind, what it is for.")
    models.add_argument("--kind", help="only this kind (photo-search, agent, coarse-to-fine, look, look-agent, baseline)")
    models.set_defaults(run=_models)

    for name, help_text in (("benchmark", "run train/benchmark_matchers.py with the arguments that follow"),
                            ("train", "run train/ppo_lstm.py with the arguments that follow")):
        front = commands.add_parser(name, help=help_text, add_help=False,
                                    description=f"{help_text}; `matchenv {name} --help` shows the script's own options.")
        front.set_defaults(run=None)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SCRIPTS:  # front doors: every argument goes to the script, --help included
        try:
            return _script(argv[0], argv[1:])
        except CommandError as err:
            print(f"matchenv {argv[0]}: error: {err}", file=sys.stderr)
            return 1
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CommandError as err:
        print(f"matchenv {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
