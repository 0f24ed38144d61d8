"""`uvicorn agentsched.api:create_app --factory` with a bad start: one line, non-zero exit.

Before, each case printed 25-46 lines with a Python traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentsched.settings import Settings
from tests.conftest import subprocess_env

HOSTILE = "app: {app}\ntasks:\n  - !!python/object/apply:os.system ['echo pwned']\n"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad_setting", "agentsched: AGENTSCHED_POLL_DELAY: "),
        ("redis_down", "agentsched: Redis unreachable at redis://127.0.0.1:1/0"),
        ("database_down", "agentsched: database unreachable at postgresql+asyncpg://"),
        ("missing_tasks_file", "cannot read the file"),
        ("hostile_tasks_file", "python tags are not allowed"),
    ],
)
def test_a_bad_start_is_one_line_and_a_failed_exit(
    settings: Settings, tmp_path: Path, case: str, expected: str
) -> None:
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(HOSTILE.format(app=settings.app))
    extra = {
        "bad_setting": {"AGENTSCHED_POLL_DELAY": "soon"},
        "redis_down": {"AGENTSCHED_REDIS_URL": "redis://127.0.0.1:1/0"},
        "database_down": {"AGENTSCHED_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"},
        "missing_tasks_file": {"AGENTSCHED_TASKS_FILE": str(tmp_path / "missing.yaml")},
        "hostile_tasks_file": {"AGENTSCHED_TASKS_FILE": str(hostile)},
    }[case]
    env = subprocess_env(settings, **extra)
    command = [sys.executable, "-m", "uvicorn", "agentsched.api:create_app", "--factory",
               "--host", "127.0.0.1", "--port", "0"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output and "File \"" not in output, output
    ours = [line for line in output.splitlines() if line.startswith("agentsched: ")]
    assert len(ours) == 1 and expected in ours[0], output
    assert len(output.splitlines()) <= 4, output  # uvicorn's own start and stop lines at most
    assert "pwned" not in output
