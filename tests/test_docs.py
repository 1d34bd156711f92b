"""README and docs checks: tables render as tables, the scripts they name exist, the README's
Python examples run, the README stays short, and clock times and speed gauges stay in docs/results.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: every Markdown file a user reads: the README and the docs
MARKDOWN = [README, *sorted((ROOT / "docs").glob("*.md"))]
#: README's size limit in bytes (user documentation; measurements live in docs/)
README_LIMIT = 25_000


def markdown_lines(path: Path = README) -> list[tuple[int, str]]:
    """``path``'s lines outside fenced code blocks, with 1-based line numbers."""
    lines, inside = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("```"):
            inside = not inside
        elif not inside:
            lines.append((number, line))
    return lines


def tables(path: Path = README) -> list[list[tuple[int, str]]]:
    """Runs of consecutive lines starting with ``|``."""
    found, current = [], []
    for number, line in markdown_lines(path):
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


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.name)
def test_every_table_has_a_rule_under_its_header_and_equal_rows(path):
    # A table without the |---| rule under its header renders as one paragraph of pipes.
    for table in tables(path):
        (first, header), rule = table[0], table[1][1] if len(table) > 1 else ""
        assert re.fullmatch(r"\|(\s*:?-{3,}:?\s*\|)+", rule), f"{path.name}:{first}: table without a |---| rule"
        for number, line in table:
            assert cells(line) == cells(header), f"{path.name}:{number}: {cells(line)} cells, header has {cells(header)}"


def test_scripts_named_in_the_docs_exist():
    named = set()
    for path in MARKDOWN:
        named |= set(re.findall(r"\b((?:train|docs|tests)/[\w/]+\.py)\b", path.read_text(encoding="utf-8")))
    assert "train/ppo_lstm.py" in named and "train/benchmark_matchers.py" in named
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, f"the docs name scripts that do not exist: {missing}"


def test_links_between_docs_resolve():
    for path in MARKDOWN:
        for _, line in markdown_lines(path):
            for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", line):
                if "://" in target or target.startswith("mailto:"):
                    continue
                assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"


def test_readme_is_short_and_reaches_inference_early():
    size = README.stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}: move detail to docs/"
    first_lines = README.read_text(encoding="utf-8").splitlines()[:80]
    assert any("matchenv.locate(" in line or "matchenv.load(" in line for line in first_lines), \
        "the inference example must start within README's first 80 lines"


def test_clock_times_and_speed_gauges_only_in_results():
    for path in MARKDOWN:
        if path.name == "results.md":
            continue
        text = path.read_text(encoding="utf-8")
        clock = re.findall(r"\b\d{1,2}:\d{2}(?::\d{2})? ?UTC\b", text)
        assert not clock, f"{path.name} has clock times {clock[:3]}: dated measurements go to docs/results.md"
        assert not re.search(r"speed gauge \d", text), f"{path.name} quotes a speed gauge: that goes to docs/results.md"


def readme_python_blocks() -> list[tuple[int, str]]:
    """README's ```python blocks not marked ``<!-- not-run: why -->`` on the line before, with their line."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, start = [], None
    for number, line in enumerate(lines, start=1):
        if start is None and line.strip() == "```python":
            marked = number >= 2 and lines[number - 2].strip().startswith("<!-- not-run")
            start = (number, marked)
        elif start is not None and line.strip() == "```":
            if not start[1]:
                blocks.append((start[0], "\n".join(lines[start[0] : number - 1])))
            start = None
    return blocks


@pytest.mark.parametrize("line, code", readme_python_blocks() or [(0, "")], ids=lambda v: str(v)[:12])
def test_readme_python_examples_run(line, code, tmp_path, monkeypatch):
    """Every README example runs as written (offline, bundled data) unless marked not-run."""
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": f"readme_{line}"})
