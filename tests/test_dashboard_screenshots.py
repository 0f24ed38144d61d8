"""The browser tests' screenshot folder is named at the end of the run, with or without
pytest-xdist: the line comes from the controller (`pytest_terminal_summary` in
conftest.py), since what a worker prints never reaches the terminal.

Before, a session fixture printed it on the worker, so `-n 4` never showed it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import screenshot_folder

ROOT = Path(__file__).resolve().parent.parent
PROBE_CONFTEST = (
    "from tests.conftest import pytest_sessionstart, pytest_terminal_summary, screenshots\n"
)
PROBE_TEST = '''
from pathlib import Path


def test_saves_a_screenshot(screenshots: Path) -> None:
    (screenshots / "probe.png").write_bytes(b"not really a png")


def test_saves_nothing() -> None:
    pass
'''


def run_probe(tmp_path: Path, shots: Path, *options: str) -> str:
    """pytest OPTIONS over the probe tests in a folder of their own; its output."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "conftest.py").write_text(PROBE_CONFTEST)
    (run / "test_probe.py").write_text(PROBE_TEST)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "AGENTSCHED_SCREENSHOTS": str(shots)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options, "."]
    done = subprocess.run(command, cwd=run, env=env, capture_output=True, text=True,
                          timeout=90)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("options", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist", "serial"])
def test_the_run_names_the_screenshot_folder(tmp_path: Path, options: list[str]) -> None:
    shots = tmp_path / "shots"
    out = run_probe(tmp_path, shots, *options)
    assert f"dashboard screenshots: {shots}\n" in out, out
    assert (shots / "probe.png").exists()


def test_a_run_without_new_screenshots_names_no_folder(tmp_path: Path) -> None:
    shots = tmp_path / "shots"
    shots.mkdir()
    (shots / "old.png").write_bytes(b"from an earlier run")
    os.utime(shots / "old.png", (time.time() - 3600, time.time() - 3600))
    out = run_probe(tmp_path, shots, "-n", "2", "-k", "nothing")
    assert "dashboard screenshots" not in out, out


def test_the_folder_is_fixed_unless_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTSCHED_SCREENSHOTS", raising=False)
    assert screenshot_folder() == Path(tempfile.gettempdir()) / "agentsched-screenshots"
    monkeypatch.setenv("AGENTSCHED_SCREENSHOTS", "/tmp/elsewhere")
    assert screenshot_folder() == Path("/tmp/elsewhere")
