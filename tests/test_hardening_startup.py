"""A bad start under uvicorn is one line and a non-zero exit: `create_app`, an app of the
user's with `FastAPI(lifespan=scheduler_lifespan())`, and a demo app whose own lifespan
nests `agentsched_context`.

Before, each case printed 25-46 lines with a Python traceback (the apps with their own
FastAPI still did after `create_app` was fixed: Starlette's traceback of the error).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentsched.settings import Settings
from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parent.parent
USER_APP = """
from fastapi import FastAPI

from agentsched.api import scheduler_lifespan, scheduler_router

app = FastAPI(lifespan=scheduler_lifespan())
app.include_router(scheduler_router, prefix="/api/scheduler")
"""
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
    assert_one_line(subprocess.run(command, env=env, capture_output=True, text=True, timeout=60),
                    expected)  # fmt: skip


@pytest.mark.parametrize("target", ["user_app", "demo_app"])
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad_setting", "agentsched: AGENTSCHED_POLL_DELAY: "),
        ("redis_down", "agentsched: Redis unreachable at redis://127.0.0.1:1/0"),
    ],
)
def test_an_app_of_its_own_with_the_lifespan_fails_in_one_line(
    settings: Settings, tmp_path: Path, target: str, case: str, expected: str
) -> None:
    (tmp_path / "userapp.py").write_text(USER_APP)
    extra = {"AGENTSCHED_POLL_DELAY": "soon"} if case == "bad_setting" else {
        "AGENTSCHED_REDIS_URL": "redis://127.0.0.1:1/0"}  # fmt: skip
    if target == "user_app":
        app, app_dir = "userapp:app", tmp_path
    else:  # as `agentsched dev` and compose start it
        app, app_dir = "aiops_bot.main:app", ROOT / "apps" / "aiops-bot"
        extra.update(AGENTSCHED_APP="aiops-bot", AGENTSCHED_TASK_MODULES="aiops_bot.tasks",
                     AGENTSCHED_DATA_DIR=str(tmp_path / "data"))  # fmt: skip
    command = [sys.executable, "-m", "uvicorn", app, "--app-dir", str(app_dir),
               "--host", "127.0.0.1", "--port", "0"]  # fmt: skip
    env = subprocess_env(settings, **extra)
    assert_one_line(subprocess.run(command, env=env, capture_output=True, text=True, timeout=60),
                    expected)  # fmt: skip


def assert_one_line(done: subprocess.CompletedProcess[str], expected: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output and "File \"" not in output, output
    ours = [line for line in output.splitlines() if line.startswith("agentsched: ")]
    assert len(ours) == 1 and expected in ours[0], output
    assert len(output.splitlines()) <= 4, output  # uvicorn's own start and stop lines at most
    assert "pwned" not in output
