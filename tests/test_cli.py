"""The `agentsched` command: help, validate (with line numbers), and the commands that
talk to real Redis and PostgreSQL (enqueue, executions, tasks, events tail, worker)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from agentsched import EventBus, TaskQueue
from agentsched.cli import main
from agentsched.jobs.runtime import Runtime
from agentsched.scheduling.service import Scheduler
from agentsched.settings import Settings
from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parent.parent
CLEAN_ENV = {"PATH": "/usr/bin:/bin"}


async def cli(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run `python -m agentsched.cli ARGS` in the repo root; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentsched.cli", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:  # timed out: leave no process behind
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None  # for the type checker: the process has ended
    return proc.returncode, out.decode(), err.decode()


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("agentsched: ")
    return lines[0]


# --- help ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "validate"),
        (["dev"], "--base-port"),
        (["worker"], "--app-dir"),
        (["validate"], "--modules"),
        (["enqueue"], "--kwargs"),
        (["tasks"], "--app-dir"),
        (["executions"], "--status"),
        (["events"], "tail"),
        (["events", "tail"], "--from"),
    ],
)
def test_help_everywhere(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert expected in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "usage: agentsched" in capsys.readouterr().err


# --- validate ------------------------------------------------------------------------------
@pytest.fixture
def app_copy(tmp_path: Path) -> Path:
    """A copy of email-agent (app.env, package, tasks.yaml) in a temp dir."""
    app = tmp_path / "email-agent"
    shutil.copytree(
        ROOT / "apps" / "email-agent", app, ignore=shutil.ignore_patterns("__pycache__")
    )
    return app


async def test_validate_accepts_a_good_file(app_copy: Path) -> None:
    code, out, err = await cli(CLEAN_ENV, "validate", str(app_copy / "tasks.yaml"))
    assert (code, err) == (0, "")
    assert out == f"ok: {app_copy / 'tasks.yaml'} (2 tasks)\n"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'cron: "0 7 * * mon-fri"',
            'cron: "0 25 * * mon-fri"',
            "task 'daily-digest': cron: invalid expression (out of range) (line 8)",
        ),
        (
            "function: email.send_digest",
            "function: email.nope",
            "task 'daily-digest': function: 'email.nope' is not a registered task (line 7)",
        ),
        (
            "interval: 1m",
            "interval: 1m\n    cron: '* * * * *'",
            "task 'check-inbox': interval: give exactly one of cron or interval (line 5)",
        ),
        ("app: email-agent", "app: rag-chat", "app.env says 'email-agent' (line 1)"),
    ],
)
async def test_validate_reports_file_task_field_and_line(
    app_copy: Path, old: str, new: str, expected: str
) -> None:
    path = app_copy / "tasks.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    code, _, err = await cli(CLEAN_ENV, "validate", str(path))
    assert code == 1
    line = one_error_line(err)
    assert line.startswith(f"agentsched: {path}: ")
    assert expected in line


async def test_validate_refuses_a_task_of_another_app(app_copy: Path) -> None:
    path = app_copy / "tasks.yaml"
    path.write_text(path.read_text().replace("email.send_digest", "rag.refresh_stale"))
    rag = ROOT / "apps" / "rag-chat" / "tasks.yaml"  # imports rag_chat.tasks first
    code, out, err = await cli(CLEAN_ENV, "validate", str(rag), str(path))
    assert code == 1 and out == f"ok: {rag} (1 task)\n"
    assert one_error_line(err) == (
        f"agentsched: {path}: task 'daily-digest': function: 'rag.refresh_stale' is a task of "
        "rag_chat.tasks, not of email_agent.tasks (line 7)"
    )


async def test_validate_checks_every_file_and_fails_if_any_fails(app_copy: Path) -> None:
    bad = app_copy / "tasks.yaml"
    bad.write_text("app: email-agent\ntasks:\n  - name: x\n    function: [unclosed\n")
    good = ROOT / "apps" / "rag-chat" / "tasks.yaml"
    code, out, err = await cli(CLEAN_ENV, "validate", str(good), str(bad))
    assert code == 1
    assert out == f"ok: {good} (1 task)\n"
    assert one_error_line(err) == (
        f"agentsched: {bad}: expected ',' or ']', but got '<stream end>' (line 5)"
    )


async def test_validate_without_app_env_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "tasks.yaml"
    path.write_text("app: x\ntasks: []\n")
    code, _, err = await cli(CLEAN_ENV, "validate", str(path))
    assert code == 1
    assert "no app.env beside it" in one_error_line(err)
    code, out, err = await cli(
        {**CLEAN_ENV, "PYTHONPATH": str(ROOT)},
        "validate",
        "--modules",
        "tests.sample_tasks",
        str(path),
    )
    assert (code, out) == (0, f"ok: {path} (0 tasks)\n")


# --- against real Redis and PostgreSQL -------------------------------------------------------
async def test_enqueue_wait_prints_the_result(settings: Settings, run_worker: Any) -> None:
    await run_worker()
    env = subprocess_env(settings)
    code, out, err = await cli(
        env, "enqueue", "tests.sample_tasks.add", "--args", "[2, 3]", "--wait"
    )
    assert (code, err) == (0, "")
    record = json.loads(out)
    assert (record["status"], record["result"], record["function"]) == (
        "success",
        5,
        "tests.sample_tasks.add",
    )
    code, out, _ = await cli(
        env, "enqueue", "tests.boom", "--kwargs", '{"message": "bad"}', "--wait"
    )
    assert code == 1
    failed = json.loads(out)
    assert failed["status"] == "failed" and failed["error"].startswith("ValueError: bad")


async def test_enqueue_then_executions_lists_it(settings: Settings, run_worker: Any) -> None:
    await run_worker()
    env = subprocess_env(settings)
    code, out, _ = await cli(env, "enqueue", "tests.sync_mul", "--kwargs", '{"a": 6, "b": 7}')
    assert code == 0
    queued = json.loads(out)
    assert queued["status"] == "queued"
    async with TaskQueue(settings) as queue:
        assert await queue.get_result(queued["id"], timeout=10) == {"product": 42}
    for _ in range(50):  # the history reaches SQL through the recorder, within moments
        code, out, _ = await cli(env, "executions", "--status", "success")
        if queued["id"] in out:
            break
        await asyncio.sleep(0.2)
    assert code == 0
    row = next(line for line in out.splitlines() if queued["id"] in line)
    assert "tests.sync_mul" in row and "success" in row
    code, out, _ = await cli(env, "executions", "--status", "failed")
    assert queued["id"] not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enqueue", "nope.nope"], "agentsched: function: 'nope.nope' is not a registered task"),
        (["enqueue", "tests.noop", "--args", "[1,"], "agentsched: --args: not JSON"),
        (
            ["enqueue", "tests.noop", "--kwargs", "[]"],
            "agentsched: --kwargs: must be a JSON object",
        ),
    ],
)
async def test_enqueue_mistakes_are_one_line(
    settings: Settings, args: list[str], message: str
) -> None:
    code, out, err = await cli(subprocess_env(settings), *args)
    assert code == 1 and out == ""
    assert one_error_line(err).startswith(message)


async def test_unreachable_redis_is_one_line(settings: Settings) -> None:
    env = subprocess_env(settings, AGENTSCHED_REDIS_URL="redis://127.0.0.1:1/0")
    code, _, err = await cli(env, "executions")
    assert code == 1
    assert one_error_line(err).startswith("agentsched: Redis unreachable at redis://127.0.0.1:1/0")


async def test_tasks_lists_the_apps_schedules(settings: Settings) -> None:
    async with Runtime(settings) as runtime:
        await Scheduler(runtime).create(
            {
                "name": "every-minute",
                "function": "tests.noop",
                "cron": "* * * * *",
                "timezone": "Europe/Berlin",
            }
        )
    code, out, err = await cli(subprocess_env(settings), "tasks")
    assert (code, err) == (0, "")
    row = next(line for line in out.splitlines() if line.startswith("every-minute"))
    assert row.split()[:5] == ["every-minute", "tests.noop", "*", "*", "*"]
    assert "Europe/Berlin" in row and out.endswith("1 schedule(s)\n")


async def test_events_tail_prints_matching_events(settings: Settings) -> None:
    async with EventBus("cli-test", settings=settings) as bus:
        await bus.publish("other.thing", payload={"n": 0})
        await bus.publish("demo.hello", payload={"n": 1}, target_agent="rag-chat")
    args = ("events", "tail", "demo.*", "--from", "0")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentsched.cli", *args, cwd=ROOT, env=subprocess_env(settings),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        proc.send_signal(signal.SIGINT)  # Ctrl-C is how a tail ends: exit code 0
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert ' demo.hello cli-test->rag-chat {"n": 1}' in line
    assert b"other.thing" not in rest


async def test_worker_alias_runs_queued_jobs(settings: Settings) -> None:
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.sample_tasks.add", args=[20, 22])
    code, _, err = await cli(subprocess_env(settings), "worker", "--", "--burst", timeout=90)
    assert code == 0, err
    async with TaskQueue(settings) as queue:
        assert await queue.get_result(execution.id, timeout=5) == 42


async def test_worker_with_a_missing_app_dir_is_one_line(tmp_path: Path) -> None:
    code, _, err = await cli(CLEAN_ENV, "worker", "--app-dir", str(tmp_path / "nope"))
    assert code == 1
    assert one_error_line(err) == f"agentsched: --app-dir {tmp_path / 'nope'}: no app.env there"


async def test_worker_app_dir_loads_the_apps_own_configuration(settings: Settings) -> None:
    sys.path.insert(0, str(ROOT / "apps" / "scraper-agent"))
    try:
        import scraper_agent.tasks  # noqa: F401  (registers scraper.crawl here too)
    finally:
        sys.path.remove(str(ROOT / "apps" / "scraper-agent"))
    scraper = settings.model_copy(update={"app": "scraper-agent"})
    async with TaskQueue(scraper) as queue:
        execution = await queue.enqueue("scraper.crawl", kwargs={"seeds": ["http://127.0.0.1:1/"]})
    env = subprocess_env(settings)  # AGENTSCHED_APP and TASK_MODULES of another app...
    args = ("worker", "--app-dir", "apps/scraper-agent", "--", "--burst")
    code, _, err = await cli(env, *args, timeout=90)  # ...which apps/scraper-agent/app.env replace
    assert code == 0, err
    async with TaskQueue(scraper) as queue:
        result = await queue.get_result(execution.id, timeout=5)
    assert result["pages"] == 0 and "http://127.0.0.1:1/" in result["errors"][0]
