"""The training scripts' shared skeleton: command-line flags from one ``Args`` dataclass, dataset
options, resuming, the output folder, and the command that reproduces a run.

Each script in ``train/`` keeps every hyperparameter in one ``Args`` dataclass whose fields carry a
trailing ``# comment``; :func:`dataclass_parser` turns it into an :mod:`argparse` parser with one
flag per field (``--field-name``), the comment as the flag's help, ``--flag/--no-flag`` for
booleans, and refuses a field without a comment, so that ``--help`` explains every flag::

    parser = dataclass_parser(Args, __doc__)
    args = parse_dataclass_args(parser, Args)
    dataset_kwargs = json_object_arg(parser, "--dataset-kwargs", args.dataset_kwargs)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import pickle
import shlex
import textwrap
import tokenize
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Sequence, TypeVar, Union

import torch

from matchenv.datasets import EVALUATION_ONLY, make_dataset
from matchenv.datasets.base import PairDataset

ArgsT = TypeVar("ArgsT")
#: How a script reports a bad command line and exits: ``parser.error`` (exit status 2, with the
#: usage) or ``sys.exit`` (the message alone).
Error = Callable[[str], NoReturn]
#: A field's annotation, as ``from __future__ import annotations`` leaves it -> the flag's type.
_FLAG_TYPES: dict[str, type] = {"int": int, "float": float, "str": str}


def flag_name(field_name: str) -> str:
    """``"eval_pairs"`` -> ``"--eval-pairs"``."""
    return "--" + field_name.replace("_", "-")


def field_comments(args_class: type) -> dict[str, str]:
    """The ``# comment`` after each field of a dataclass, read from its source: the flags' help,
    written once beside the defaults. A field written over several lines may have a comment on
    any of them (joined); comment-only lines (section headings) belong to no field.

    :param args_class: a dataclass defined in a source file (its module in ``sys.modules``).
    :return: field name -> comment text, for the fields that have one.
    """
    source = textwrap.dedent(inspect.getsource(args_class))
    by_line = {token.start[0]: token.string.lstrip("#").strip()
               for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    comments = {}
    for statement in ast.parse(source).body[0].body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            text = " ".join(by_line[n] for n in range(statement.lineno, statement.end_lineno + 1) if by_line.get(n))
            if text:
                comments[statement.target.id] = text
    return comments


def _flag_type(field: dataclasses.Field) -> type:
    """The type a non-boolean field's flag converts its value to: the annotation's, else the default's."""
    if isinstance(field.type, type):
        return field.type
    return _FLAG_TYPES.get(str(field.type), type(field.default))


def dataclass_parser(args_class: type, description: Optional[str],
                     choices: Optional[dict[str, list[Any]]] = None) -> argparse.ArgumentParser:
    """A parser with one flag per field of ``args_class``: ``--field-name``, its default the
    field's, its help the field's ``# comment`` (:func:`field_comments`) and ``(default: ...)``;
    a boolean field is a ``--flag/--no-flag`` pair.

    :param args_class: a dataclass whose every field has a default and a trailing ``# comment``.
    :param description: the parser's description (a script's ``__doc__``, shown as written).
    :param choices: field name -> the values its flag accepts.
    :return: the parser (:func:`parse_dataclass_args` reads a command line with it).
    :raises ValueError: for a field without a comment or a default, or ``choices`` naming no field:
        every flag must say what it does.
    """
    fields = dataclasses.fields(args_class)
    comments = field_comments(args_class)
    undocumented = [f.name for f in fields if f.name not in comments]
    if undocumented:
        raise ValueError(f"{args_class.__qualname__} fields without a '# comment' after them: "
                         f"{', '.join(undocumented)} (the comment is the flag's --help: write one on the field's line)")
    no_default = [f.name for f in fields if f.default is dataclasses.MISSING]
    if no_default:
        raise ValueError(f"{args_class.__qualname__} fields without a default: {', '.join(no_default)} "
                         "(each is a flag with a default value)")
    choices = choices or {}
    unknown = sorted(set(choices) - {f.name for f in fields})
    if unknown:
        raise ValueError(f"choices for fields {args_class.__qualname__} does not have: {', '.join(unknown)}")
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in fields:
        if isinstance(field.default, bool):
            action = parser.add_argument(flag_name(field.name), action=argparse.BooleanOptionalAction,
                                         default=field.default)
        else:
            action = parser.add_argument(flag_name(field.name), type=_flag_type(field), default=field.default,
                                         choices=choices.get(field.name))
        # set here, not passed: some Pythons' BooleanOptionalAction append a default of their own
        action.help = f"{comments[field.name]} (default: {field.default!r})".replace("%", "%%")
    return parser


def parse_dataclass_args(parser: argparse.ArgumentParser, args_class: type[ArgsT],
                         argv: Optional[list[str]] = None) -> ArgsT:
    """Read the command line (``argv``, default ``sys.argv[1:]``) into an ``args_class``.

    :param parser: from :func:`dataclass_parser` for the same ``args_class``.
    """
    return args_class(**vars(parser.parse_args(argv)))


def json_object_arg(parser: argparse.ArgumentParser, flag: str, text: str, example: str = '{"root": "data"}') -> dict:
    """The JSON object a flag holds (``--dataset-kwargs '{"root": "data"}'``), or ``parser.error``
    (exit status 2) with an example of one.

    :param flag: the flag, as the message names it (``"--dataset-kwargs"``).
    :param text: its value.
    :param example: a valid value, for the message.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        parser.error(f"{flag} {text!r} is not JSON ({err}): pass a JSON object, e.g. {flag} '{example}'")
    if not isinstance(value, dict):
        parser.error(f"{flag} must be a JSON object, e.g. {flag} '{example}', got {text!r}")
    return value


def require_at_least(parser: argparse.ArgumentParser, args: Any, minimum: float, *names: str) -> None:
    """``parser.error`` naming the first of the fields ``names`` of ``args`` below ``minimum``."""
    for name in names:
        if getattr(args, name) < minimum:
            parser.error(f"{flag_name(name)} must be >= {minimum}, got {getattr(args, name)}")


def photo_dataset(parser: argparse.ArgumentParser, name: str, kwargs: dict, purpose: str, images: str = "",
                  test_size: Optional[int] = None) -> tuple[PairDataset, dict]:
    """The photograph dataset a script trains on (``--dataset``, ``--dataset-kwargs``), or
    ``parser.error`` saying why not: a dataset for evaluation only, a bad argument, not colour.

    For ``SelfSupervisedPhotos``, ``images`` (``--images``; ``""``: FlickrLogos-27's photographs,
    found or downloaded) and ``test_size`` are its defaults where ``kwargs`` does not give them;
    ``--images`` with another dataset is an error.

    :param kwargs: the dataset's keyword arguments (not changed).
    :param purpose: why it must be colour photographs, for the message (``"the look is for colour photographs"``).
    :return: the dataset, and the keyword arguments it was made with.
    """
    if name in EVALUATION_ONLY:
        parser.error(f"--dataset {name} is for evaluation and model selection only, never for training")
    kwargs = dict(kwargs)
    if name == "SelfSupervisedPhotos":
        if "images" not in kwargs:
            from matchenv.datasets.logos import find_flickrlogos27

            kwargs["images"] = images or str(find_flickrlogos27() / "flickr_logos_27_dataset_images")
        if test_size is not None:
            kwargs.setdefault("test_size", test_size)
    elif images:
        parser.error("--images is for --dataset SelfSupervisedPhotos; pass other datasets' data in --dataset-kwargs")
    try:
        data = make_dataset(name, **kwargs)
    except ValueError as err:
        parser.error(str(err))
    if getattr(data, "channels", 1) != 3:
        parser.error(f"--dataset {name} is not a photograph dataset ({purpose})")
    return data, kwargs


def start_run(args: Any) -> Path:
    """A run's start: torch's CPU threads (``args.threads``) and seed (``args.seed``) set, its
    output folder (``args.out_dir``) made.

    :return: the output folder.
    """
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def checkpoint_flags(args: Any, skip: tuple[str, ...] = ("resume", "threads")) -> dict[str, Any]:
    """The flags a checkpoint records and ``--resume`` must be given again: every field of
    ``args`` but ``skip`` (where a run writes and how fast it runs do not change what it trains)."""
    return {name: value for name, value in dataclasses.asdict(args).items() if name not in skip}


def resume_checkpoint(error: Error, path: Union[str, Path], written: str,
                      flags: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The checkpoint ``--resume`` continues from (``torch.load``, weights only), or ``error``
    with a clear reason: no such file, not a checkpoint, or written with other flags.

    :param error: ``parser.error`` or ``sys.exit``.
    :param written: when a run writes it, for the missing-file message (``"a run writes last.pt
        in its --out-dir after every epoch"``).
    :param flags: the flags it must have been written with (:func:`checkpoint_flags`, saved as
        its ``"args"``); ``None``: not checked here.
    """
    path = Path(path)
    if not path.is_file():
        error(f"--resume {path}: no such file ({written})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        error(f"--resume {path} is not a checkpoint this script wrote ({err})")
    if not isinstance(state, dict):
        error(f"--resume {path} is not a checkpoint this script wrote (it holds a {type(state).__name__})")
    if flags is not None and state.get("args") != flags:
        saved = state.get("args") if isinstance(state.get("args"), dict) else {}
        changed = sorted(name for name in set(flags) | set(saved) if saved.get(name) != flags.get(name))
        error(f"--resume {path} was written by a run with other flags ({', '.join(changed)} differ): "
              "pass the same flags as that run")
    return state


def checkpoint_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Any = None,
                     **progress: Any) -> dict[str, Any]:
    """What a training checkpoint holds: the weights (``state_dict``), the optimizer's state, the
    learning-rate schedule's (if any) and ``progress`` (epoch, history, ...)."""
    state = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}
    if schedule is not None:
        state["schedule"] = schedule.state_dict()
    return state | progress


def restore_checkpoint(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       schedule: Any = None) -> None:
    """Load what :func:`checkpoint_state` saved back into ``model``, ``optimizer`` and ``schedule``."""
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    if schedule is not None:
        schedule.load_state_dict(state["schedule"])


def command_line(script: str, args: Any, skip: tuple[str, ...] = ("resume", "out_dir", "threads")) -> str:
    """The command that reproduces a run: ``python <script>`` and the flags of ``args`` that
    differ from their defaults (but ``skip``), quoted for a shell, booleans as ``--flag`` /
    ``--no-flag``.

    :param script: the script's path from the repository root (``"train/look_agent.py"``).
    """
    parts = [f"python {script}"]
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if value == field.default or field.name in skip:
            continue
        flag = flag_name(field.name)
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{flag[2:]}")
        else:  # "--flag=-1,1": argparse takes a separate "-1,1" for a flag of its own
            parts.append(f"{flag}={shlex.quote(str(value))}" if str(value).startswith("-")
                         else f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def given_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The fields named on the command line (not left at their defaults)."""
    quiet = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:  # the same flags, without defaults
        if action.option_strings and action.dest != "help":
            kwargs = {"action": argparse.BooleanOptionalAction} if isinstance(action, argparse.BooleanOptionalAction) else {"type": action.type}
            quiet.add_argument(*[o for o in action.option_strings if not o.startswith("--no-")], dest=action.dest,
                               default=argparse.SUPPRESS, **kwargs)
    return set(vars(quiet.parse_known_args()[0]))


def resumed_args(args: Any, given: set[str], parser: argparse.ArgumentParser, saved_file: Path,
                 fixed: Sequence[str]) -> Any:
    """``args`` continuing the run whose arguments are in ``saved_file`` (its ``args.json``): every
    flag not given on the command line takes that run's value (its dataset options, learning
    rates, step counts...); a flag of ``fixed`` (the task and the network) given with another
    value is an error naming it.

    :param args: the parsed dataclass (it has ``resume``, ``out_dir`` and ``overwrite``, which never carry over).
    """
    if not saved_file.is_file():
        print(f"note: no {saved_file} beside the checkpoint: the task and network flags are taken as given")
        return args
    try:
        saved = json.loads(saved_file.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        parser.error(f"{saved_file} is damaged ({err}): cannot tell which task {args.resume} was trained on")
    changed = [f"--{name.replace('_', '-')} {getattr(args, name)!r} (the run used {saved[name]!r})"
               for name in fixed if name in given and name in saved and getattr(args, name) != saved[name]]
    if changed:
        parser.error("--resume continues a run on its own task and network; these flags change them: "
                     + "; ".join(changed) + ". Start a new run (another --out-dir) to change them.")
    fields = {f.name for f in dataclasses.fields(args)} - {"resume", "out_dir", "overwrite"}
    return dataclasses.replace(args, **{name: saved[name] for name in fields if name in saved and name not in given})


def cnn_channels_arg(parser: argparse.ArgumentParser, text: str) -> tuple[int, ...]:
    """``--cnn-channels``: the siamese CNN's five conv layers' output channels, or a parser error."""
    try:
        channels = tuple(int(c) for c in text.split(","))
        if len(channels) != 5 or min(channels) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--cnn-channels must be five positive integers like 8,16,32,32,32, got {text!r}")
    return channels

