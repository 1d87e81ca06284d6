"""Docs that cannot drift: every Python block of the README and docs/ runs, its printed claims
checked (doctest where a block shows output), and every ``fastnn`` command they show runs."""

from __future__ import annotations

import doctest
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(path: Path, language: str) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == language]


def commands(path: Path) -> list[str]:
    """The ``fastnn ...`` commands of the file's bash blocks (``a && fastnn b`` counts as ``fastnn b``)."""
    found = []
    for _, block in blocks(path, "bash"):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in re.split(r"&&|;", line):
                part = part.strip()
                if part.startswith("fastnn "):
                    found.append(part)
    return found


def test_the_docs_are_found_and_link_each_other():
    names = {path.name for path in DOCS}
    assert {"README.md", "architecture.md", "performance.md", "gpu.md", "guide.md"} <= names
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("architecture.md", "performance.md", "gpu.md", "guide.md"):
        assert f"(docs/{name})" in readme, f"the README does not link docs/{name}"
    for path in DOCS:  # every relative link resolves
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


@pytest.mark.parametrize("path", [p for p in DOCS if blocks(p, "python")], ids=lambda p: p.name)
def test_python_blocks_run_and_print_what_they_say(path, tmp_path, monkeypatch):
    """The blocks of one file run in order in one namespace, in an empty folder; a block with
    ``>>>`` prompts is a doctest whose shown output must match."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for line, block in blocks(path, "python"):
        if ">>>" in block:
            test = parser.get_doctest(block, namespace, f"{path.name}:{line}", str(path), line)
            result = runner.run(test, clear_globs=False)
            namespace.update(test.globs)  # DocTest runs on a copy: carry its names to the next block
            assert result.failed == 0, f"{path.name} line {line}: {result.failed} example(s) print otherwise"
        else:
            exec(compile(block, f"{path.name}:{line}", "exec"), namespace)


COMMANDS = sorted({(path.name, command) for path in DOCS for command in commands(path)})


def test_the_readme_shows_the_commands_a_newcomer_needs():
    shown = {command for _, command in COMMANDS}
    assert {"fastnn train digits", "fastnn info"} <= shown


@pytest.mark.parametrize("doc,command", COMMANDS, ids=[f"{d}: {c}" for d, c in COMMANDS])
def test_every_fastnn_command_shown_runs(doc, command, tmp_path):
    """Run as shown, in an empty folder (files it writes land there), within 10 minutes."""
    exe = shutil.which("fastnn")
    assert exe is not None, "the fastnn console script is not on PATH (pip install -e . installs it)"
    result = subprocess.run([exe, *shlex.split(command)[1:]], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, f"{doc}: `{command}` failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr
