"""Every Python and shell block of the README runs as written, in order, against the
test services, so the README cannot drift from the code.

A Python block whose first line is `# name.py` is written to that file (later blocks
import it, e.g. `mytasks.py`) and, unless it is a plain module of definitions, run;
a block after `<!-- readme-test: background -->` runs in the background until the end
(the worker); one after `<!-- readme-test: skip: REASON -->` is not run, and says why.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from agentsched.settings import Settings
from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^( *)```(\w+)\n(.*?)^\1```$", re.S | re.M)
MARK = re.compile(r"<!-- readme-test: (skip: .+?|background) -->\s*$")
RUN_TIMEOUT = 60.0


@dataclass
class Block:
    line: int
    language: str
    code: str
    mark: str

    @property
    def file_name(self) -> str | None:
        first = self.code.splitlines()[0] if self.code else ""
        found = re.match(r"# (\w+\.py)\b", first)
        return found.group(1) if found else None


def readme_blocks() -> list[Block]:
    text = (ROOT / "README.md").read_text()
    blocks = []
    for match in FENCE.finditer(text):
        indent, language, body = match.groups()
        if language not in ("python", "bash", "sh"):
            continue
        before = text[: match.start()].rstrip().splitlines()
        mark = MARK.search(before[-1]) if before else None
        code = "\n".join(line.removeprefix(indent) for line in body.splitlines()) + "\n"
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(line, language, code, mark.group(1) if mark else ""))
    return blocks


def test_readme_blocks_are_found_and_skips_give_a_reason() -> None:
    blocks = readme_blocks()
    assert sum(b.language == "python" for b in blocks) >= 6
    for block in blocks:
        if block.mark.startswith("skip"):
            assert len(block.mark.removeprefix("skip:").strip()) > 10, block.line


def _is_module(block: Block) -> bool:
    """A file of definitions only (imported by later blocks), not a script."""
    return (
        block.file_name is not None
        and "asyncio.run(" not in block.code
        and ("uvicorn" not in block.code)
    )


@pytest.mark.slow
def test_every_readme_block_runs(settings: Settings, tmp_path: Path) -> None:
    env = subprocess_env(settings, AGENTSCHED_TASK_MODULES="mytasks")
    env.update(
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        AGENTSCHED_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/readme.db",
    )
    background: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []
    try:
        for block in readme_blocks():
            if block.mark.startswith("skip"):
                continue
            name = (
                block.file_name
                or f"block_{block.line}.{'py' if block.language == 'python' else 'sh'}"
            )
            path = tmp_path / name
            path.write_text(block.code)
            if block.language == "python" and _is_module(block):
                argv = [sys.executable, "-c", f"import {name.removesuffix('.py')}"]
            elif block.language == "python":
                argv = [sys.executable, str(path)]
            else:
                argv = ["bash", "-euo", "pipefail", str(path)]
            if block.mark == "background":
                log = (tmp_path / f"{name}.log").open("wb")
                logs.append(log)
                background.append(subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log,
                                                   stderr=subprocess.STDOUT,
                                                   start_new_session=True))  # fmt: skip
                continue
            result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True,
                                    text=True, timeout=RUN_TIMEOUT)  # fmt: skip
            assert result.returncode == 0, (
                f"README.md line {block.line} ({name}) failed:\n{result.stdout}\n{result.stderr}"
            )
            _check_comments(block, result.stdout)
    finally:
        for proc in background:  # the whole group: bash and the worker it started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            deadline = time.monotonic() + 30
            while _group_alive(proc.pid):  # the worker finishes its own SIGTERM shutdown
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                time.sleep(0.1)
        for log in logs:
            log.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _check_comments(block: Block, stdout: str) -> None:
    """A `print(...)  # value (note)` line's comment is what it printed."""
    expected = [
        line.split("#", 1)[1].split(" (")[0].strip()
        for line in block.code.splitlines()
        if line.strip().startswith("print(") and "#" in line
    ]
    printed = stdout.splitlines()
    assert len(printed) == len(expected), (block.line, printed, expected)
    for want, got in zip(expected, printed, strict=True):
        assert got == want, f"README.md line {block.line}: printed {got!r}, says {want!r}"
