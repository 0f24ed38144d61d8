"""The public surface: names users import, and import without any environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import agentsched
from agentsched.errors import ConfigError
from agentsched.registry import get_task, task, validate_name
from agentsched.settings import load_settings, mask_url

ROOT = Path(__file__).resolve().parent.parent


def test_public_names_are_pinned() -> None:
    assert sorted(agentsched.__all__) == sorted(
        [
            "AgentschedError",
            "ErrorKind",
            "EventBus",
            "EventMessage",
            "Execution",
            "Settings",
            "TaskQueue",
            "TaskStatus",
            "WorkerSettings",
            "get_settings",
            "progress",
            "task",
        ]
    )
    assert [s.value for s in agentsched.TaskStatus] == [
        "queued",
        "running",
        "success",
        "failed",
        "cancelled",
    ]


def test_import_needs_no_environment() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSCHED_")}
    env["AGENTSCHED_REDIS_URL"] = "not a url"  # would fail if read at import
    code = "import agentsched, agentsched.api, agentsched.events; print('ok')"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"redis_url": "http://x"}, "AGENTSCHED_REDIS_URL"),
        ({"database_url": "mysql://x"}, "AGENTSCHED_DATABASE_URL"),
        ({"app": "UPPER"}, "AGENTSCHED_APP"),
        ({"poll_delay": 0}, "AGENTSCHED_POLL_DELAY"),
        ({"log_level": "LOUD"}, "AGENTSCHED_LOG_LEVEL"),
    ],
)
def test_bad_settings_name_the_variable(overrides: dict[str, object], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**overrides)
    message = str(info.value)
    assert message.startswith(variable + ":")
    assert "\n" not in message


def test_settings_parse_lists_and_normalise_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSCHED_TASK_MODULES", "a.tasks, b.tasks,,")
    monkeypatch.setenv("AGENTSCHED_DATABASE_URL", "postgresql://u@h/db")
    settings = load_settings()
    assert settings.task_modules == ["a.tasks", "b.tasks"]
    assert settings.database_url == "postgresql+asyncpg://u@h/db"
    assert mask_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"


@task
async def double(x: int) -> int:
    return 2 * x


def test_task_decorator_names_and_options() -> None:
    @task(name="public.sync_job", timeout=3, max_retries=2, retry_backoff=0.5)
    def sync_job(user_id: int, folder: str = "INBOX") -> None:
        """Moves mail."""

    assert get_task(double).name == "tests.test_public.double"
    assert get_task("tests.test_public.double").func is double
    with pytest.raises(ConfigError, match="name="):

        @task
        async def nested() -> None: ...
    definition = get_task("public.sync_job")
    assert definition.is_async is False and definition.timeout == 3 and definition.max_tries == 3
    assert [p["name"] for p in definition.parameters] == ["user_id", "folder"]
    assert definition.backoff(1) == 0.5 and definition.backoff(3) == 2.0
    assert definition.description == "Moves mail."


@pytest.mark.parametrize(
    "name", ["os.system; rm", "a..b", "__import__", "x.__class__", "", "a" * 300, "bad\x00name"]
)
def test_unsafe_names_are_rejected(name: str) -> None:
    with pytest.raises(agentsched.errors.InvalidInput):
        validate_name(name)


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [
        name
        for name in agentsched.Settings.model_fields
        if f"| `AGENTSCHED_{name.upper()}` |" not in readme
    ]
    assert not missing, f"README settings table lacks {missing}"
