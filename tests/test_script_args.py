"""The training scripts' shared skeleton (agents/script_args.py): every flag of every training
script has help text, booleans are --flag/--no-flag, JSON options fail clearly, and the shipped
models' commands still parse."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from matchenv.agents import pretrained
from matchenv.agents.script_args import (
    checkpoint_flags,
    command_line,
    dataclass_parser,
    field_comments,
    json_object_arg,
    parse_dataclass_args,
    resume_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
#: the training scripts whose flags come from their Args dataclass
SCRIPTS = ("ppo_lstm", "coarse_proposer", "look_agent", "multiscale_look", "box_refiner", "photo_search")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script_args_test", ROOT / "train" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and inspect look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripts():
    modules = {name: load_script(name) for name in SCRIPTS}
    yield modules
    for module in modules.values():
        sys.modules.pop(module.__name__, None)


def script_parser(module, monkeypatch, capsys) -> tuple[argparse.ArgumentParser, str]:
    """The parser the script's own main() builds, and its --help text."""
    built = []

    def recording(*args, **kwargs):
        built.append(dataclass_parser(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(module, "dataclass_parser", recording)
    monkeypatch.setattr(sys, "argv", [module.__file__, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 0
    assert len(built) == 1
    return built[0], capsys.readouterr().out


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_lists_every_field_with_help_text_and_booleans_as_flags(name, scripts, monkeypatch, capsys):
    module = scripts[name]
    parser, help_text = script_parser(module, monkeypatch, capsys)
    actions = {action.dest: action for action in parser._actions}
    for field in dataclasses.fields(module.Args):
        flag = "--" + field.name.replace("_", "-")
        action = actions[field.name]
        assert flag in action.option_strings and re.search(rf"(^|\s){re.escape(flag)}\b", help_text), flag
        assert action.help and not action.help.startswith(" (default"), f"{name}: {flag} has no help text"
        assert action.default == field.default
        if isinstance(field.default, bool):
            assert isinstance(action, argparse.BooleanOptionalAction), f"{name}: {flag} is not a --flag/--no-flag"
            assert f"--no-{flag[2:]}" in help_text
            assert getattr(parser.parse_args([flag]), field.name) is True
            assert getattr(parser.parse_args([f"--no-{flag[2:]}"]), field.name) is False


def shipped_commands() -> list[str]:
    commands = [entry.command for registry in (pretrained.PRETRAINED, pretrained.PROPOSERS, pretrained.LOOKS,
                                               pretrained.LOOK_AGENTS, pretrained.PHOTO_SEARCHERS)
                for entry in registry.values()]
    commands += [entry.refiner_command for entry in pretrained.PRETRAINED.values() if entry.refiner_command]
    return commands


@pytest.mark.parametrize("command", shipped_commands())
def test_the_shipped_models_commands_parse(command, scripts, monkeypatch, capsys):
    words = shlex.split(re.sub(r"<[^>]*>", "X", command))  # placeholders such as <BSDS500 folder>
    while "=" in words[0]:  # MATCHENV_DATA=... before the command
        words.pop(0)
    assert words[0] == "python" and words[1].startswith("train/"), command
    module = scripts[Path(words[1]).stem]
    parser, _ = script_parser(module, monkeypatch, capsys)
    parse_dataclass_args(parser, module.Args, words[2:])  # exits with status 2 on a flag it does not know


@dataclass
class Toy:
    """A dataclass like a script's Args."""

    # a section heading belongs to no field
    name: str = "a # not a comment"  # the name
    count: int = 3  # how many (100% of them)
    rate: float = 1  # a float flag with an int default
    fast: bool = False  # go fast
    mode: str = "x"  # one of x, y


def test_parser_from_a_dataclass():
    assert field_comments(Toy) == {"name": "the name", "count": "how many (100% of them)",
                                   "rate": "a float flag with an int default", "fast": "go fast", "mode": "one of x, y"}
    parser = dataclass_parser(Toy, "toy", choices={"mode": ["x", "y"]})
    args = parse_dataclass_args(parser, Toy, ["--count", "5", "--rate", "2", "--fast", "--mode", "y"])
    assert args == Toy(count=5, rate=2.0, fast=True, mode="y") and isinstance(args.rate, float)
    assert parse_dataclass_args(parser, Toy, []) == Toy()
    assert "how many (100% of them) (default: 3)" in " ".join(parser.format_help().split())
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "z"])
    with pytest.raises(ValueError, match="choices for fields Toy does not have: nope"):
        dataclass_parser(Toy, "toy", choices={"nope": [1]})


def test_a_field_without_a_comment_is_refused_naming_it():
    @dataclass
    class Undocumented:
        documented: int = 1  # has help
        bare: int = 2

    with pytest.raises(ValueError, match="without a '# comment'.*: bare"):
        dataclass_parser(Undocumented, None)


def test_json_object_flags_fail_with_an_example(capsys):
    parser = argparse.ArgumentParser(prog="script")
    assert json_object_arg(parser, "--dataset-kwargs", '{"root": "data"}') == {"root": "data"}
    for text, message in (("{root", "is not JSON"), ("[1, 2]", "must be a JSON object")):
        with pytest.raises(SystemExit) as exit_info:
            json_object_arg(parser, "--dataset-kwargs", text, '{"augment": true}')
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and """--dataset-kwargs '{"augment": true}'""" in err


def test_command_line_reproduces_the_flags_that_differ():
    parser = dataclass_parser(Toy, None)
    args = Toy(name="two words", count=4, fast=True, mode="-1,1")
    command = command_line("train/toy.py", args, skip=("count",))
    assert command == "python train/toy.py --name 'two words' --fast --mode=-1,1"
    assert parse_dataclass_args(parser, Toy, shlex.split(command)[2:]) == dataclasses.replace(args, count=3)
    assert command_line("train/toy.py", Toy(fast=False)) == "python train/toy.py"


def test_resume_checkpoint_errors_name_the_problem(tmp_path):
    def error(message):
        raise SystemExit(message)

    with pytest.raises(SystemExit, match="no such file .a run writes it."):
        resume_checkpoint(error, tmp_path / "none.pt", "a run writes it")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(SystemExit, match="is not a checkpoint"):
        resume_checkpoint(error, tmp_path / "text.pt", "")
    flags = checkpoint_flags(Toy(count=4))
    assert flags == {"name": "a # not a comment", "count": 4, "rate": 1, "fast": False, "mode": "x"}
    torch.save({"args": flags, "step": 3}, tmp_path / "last.pt")
    assert resume_checkpoint(error, tmp_path / "last.pt", "", flags)["step"] == 3
    with pytest.raises(SystemExit, match=r"other flags \(count, fast differ\): pass the same flags"):
        resume_checkpoint(error, tmp_path / "last.pt", "", checkpoint_flags(Toy(fast=True)))
