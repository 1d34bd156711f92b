"""README checks: its tables render as tables and the scripts it tells people to run exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def markdown_lines() -> list[tuple[int, str]]:
    """README's lines outside fenced code blocks, with 1-based line numbers."""
    lines, inside = [], False
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("```"):
            inside = not inside
        elif not inside:
            lines.append((number, line))
    return lines


def tables() -> list[list[tuple[int, str]]]:
    """Runs of consecutive lines starting with ``|``."""
    found, current = [], []
    for number, line in markdown_lines():
        if line.startswith("|"):
            current.append((number, line))
        elif current:
            found.append(current)
            current = []
    if current:
        found.append(current)
    return found


def cells(line: str) -> int:
    """Columns of a table row (pipes inside backticks, e.g. ``a|b``, do not split cells)."""
    return len(re.sub(r"`[^`]*`", "code", line.strip()).strip("|").split("|"))


def test_every_readme_table_has_a_rule_under_its_header_and_equal_rows():
    # A table without the |---| rule under its header renders as one paragraph of pipes.
    found = tables()
    assert len(found) > 10
    for table in found:
        (first, header), rule = table[0], table[1][1] if len(table) > 1 else ""
        assert re.fullmatch(r"\|(\s*:?-{3,}:?\s*\|)+", rule), f"README.md:{first}: table without a |---| rule"
        for number, line in table:
            assert cells(line) == cells(header), f"README.md:{number}: {cells(line)} cells, header has {cells(header)}"


def test_scripts_named_in_readme_exist():
    text = README.read_text(encoding="utf-8")
    named = set(re.findall(r"\b((?:train|docs|tests)/[\w/]+\.py)\b", text))
    assert "train/ppo_lstm.py" in named and "train/benchmark_matchers.py" in named
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, f"README names scripts that do not exist: {missing}"
