"""The `agentsched` command: help, validate (with line numbers), and the commands that
talk to real Redis and PostgreSQL (enqueue, executions, tasks, events tail, worker)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

import tests.sample_tasks  # noqa: F401  (registers the tasks schedules here name)
from agentsched import EventBus, TaskQueue
from agentsched.cli import build_parser, main
from agentsched.dev_state import write_state
from agentsched.jobs.runtime import Runtime
from agentsched.scheduling.service import Scheduler
from agentsched.settings import Settings
from tests.conftest import delete_prefix, subprocess_env

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
        (["show"], "--traceback"),
        (["cancel"], "--app-dir"),
        (["retry"], "--wait"),
        (["run-again"], "--wait"),
        (["run"], "--timeout"),
        (["enable"], "--app-dir"),
        (["disable"], "--app-dir"),
        (["workers"], "--json"),
        (["dead-letters"], "--replay"),
        (["env"], "eval"),
    ],
)
def test_help_everywhere(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert expected in capsys.readouterr().out


def test_every_option_has_help_text() -> None:
    def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[str]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, f"{path} {name}")
            elif not action.help:
                yield f"{path} {'/'.join(action.option_strings) or action.dest}"

    assert list(walk(build_parser(), "agentsched")) == []


def test_version_and_help_are_fast() -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "agentsched.cli", "--version"],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.stdout == f"agentsched {version('agentsched')}\n"
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys, agentsched.cli; print(sorted(m for m in "
         "('sqlalchemy', 'redis', 'fastapi', 'pydantic', 'httpx', 'arq') if m in sys.modules))"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert heavy.stdout.strip() == "[]", heavy.stderr  # --help imports none of them
    assert time.monotonic() - started < 20  # generous: the machine is shared


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
        env, "enqueue", "tests.sample_tasks.add", "--args", "[2, 3]", "--wait", "--json"
    )
    assert code == 0, err
    record = json.loads(out)
    assert (record["status"], record["result"], record["function"]) == (
        "success",
        5,
        "tests.sample_tasks.add",
    )
    assert err.splitlines()[-1] == f"agentsched: {record['id']} success"  # progress lines
    code, out, err = await cli(
        env, "enqueue", "tests.boom", "--kwargs", '{"message": "bad"}', "--wait"
    )
    assert code == 1
    assert "status     failed (attempt 1 of 1)" in out
    assert "error      ValueError: bad [exception]" in out
    assert "Traceback" not in out + err  # the detail is behind --traceback
    ident = out.split()[1]
    code, out, _ = await cli(env, "show", ident, "--traceback")
    assert code == 0 and "raise ValueError(message)" in out
    code, out, _ = await cli(env, "show", ident, "--json")
    assert json.loads(out)["error"] == "ValueError: bad"


async def test_wait_gives_up_after_its_timeout(settings: Settings) -> None:
    env = subprocess_env(settings)  # no worker: the job stays queued
    started = time.monotonic()
    code, out, err = await cli(env, "enqueue", "tests.noop", "--wait", "--timeout", "1")
    assert code == 1 and out == ""
    ident = err.splitlines()[0].split()[1]
    assert err.splitlines()[-1] == (
        f"agentsched: {ident} is still queued after 1s; follow it with: agentsched show {ident}"
    )
    assert time.monotonic() - started < 30


async def test_show_cancel_and_retry(settings: Settings, run_worker: Any) -> None:
    env = subprocess_env(settings)
    code, out, _ = await cli(env, "enqueue", "tests.sample_tasks.add", "--args", "[1, 2]",
                             "--delay", "3600")  # fmt: skip
    assert code == 0 and out.startswith("queued ")
    ident = out.split()[1]
    code, out, _ = await cli(env, "cancel", ident)
    assert (code, out) == (0, f"cancelled {ident} tests.sample_tasks.add\n")
    code, _, err = await cli(env, "cancel", ident)
    assert code == 1
    assert one_error_line(err) == f"agentsched: execution {ident} already ended cancelled"
    await run_worker()
    code, out, err = await cli(env, "retry", ident, "--wait", "--json")
    assert code == 0, err
    again = json.loads(out)
    assert (again["status"], again["result"], again["args"]) == ("success", 3, [1, 2])
    assert again["metadata"]["retry_of"] == ident and again["id"] != ident
    code, out, _ = await cli(env, "show", again["id"])
    assert "status     success (attempt 1 of 1)" in out and "result     3" in out
    code, _, err = await cli(env, "show", "0" * 8)
    assert code == 1 and one_error_line(err) == "agentsched: execution '00000000' not found"


async def test_retry_follows_the_apis_rule_and_run_again_takes_any(
    settings: Settings, run_worker: Any
) -> None:
    await run_worker()
    trace = {"traceparent": f"00-{'1' * 32}-{'2' * 16}-01", "tracestate": "vendor=old"}
    async with TaskQueue(settings) as queue:
        done = await queue.enqueue("tests.sample_tasks.add", [1, 2], metadata={"by": "me", **trace})
        assert await queue.get_result(done.id, timeout=30) == 3
    env = subprocess_env(settings)
    code, out, err = await cli(env, "retry", done.id)
    assert (code, out) == (1, "")  # as POST /executions/{id}/retry's 409
    assert one_error_line(err) == (
        f"agentsched: execution {done.id} is success: only failed or cancelled ones retry "
        "(run again takes any)"
    )
    code, out, err = await cli(env, "run-again", done.id, "--wait", "--json")
    assert code == 0, err
    again = json.loads(out)
    assert (again["status"], again["result"], again["args"]) == ("success", 3, [1, 2])
    # The old run's trace context stays behind: the new run is not part of its trace.
    assert again["metadata"] == {"by": "me", "run_again_of": done.id}


async def test_enqueue_then_executions_lists_it(settings: Settings, run_worker: Any) -> None:
    await run_worker()
    env = subprocess_env(settings)
    code, out, _ = await cli(
        env, "enqueue", "tests.sync_mul", "--kwargs", '{"a": 6, "b": 7}', "--json"
    )
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
    code, out, _ = await cli(env, "executions", "--json")
    assert queued["id"] in [item["id"] for item in json.loads(out)["items"]]


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


async def test_run_enable_and_disable_a_schedule_by_name(
    settings: Settings, run_worker: Any
) -> None:
    async with Runtime(settings) as runtime:
        await Scheduler(runtime).create(
            {"name": "adder", "function": "tests.sample_tasks.add", "interval": "1h",
             "args": [20, 22]}
        )  # fmt: skip
    env = subprocess_env(settings)
    code, out, _ = await cli(env, "disable", "adder")
    assert (code, out) == (0, "adder disabled\n")
    code, out, _ = await cli(env, "tasks", "--json")
    [item] = json.loads(out)["items"]
    assert (item["name"], item["enabled"]) == ("adder", False)
    code, out, _ = await cli(env, "enable", "adder")
    assert code == 0 and out.startswith("adder enabled; next run ")
    await run_worker()
    code, out, err = await cli(env, "run", "adder", "--wait", "--json")
    assert code == 0, err
    assert (json.loads(out)["result"], json.loads(out)["task_id"]) == (42, item["id"])
    code, _, err = await cli(env, "run", "nope")
    assert code == 1
    assert one_error_line(err) == (
        f"agentsched: name: no schedule 'nope' in app '{settings.app}' (known: adder)"
    )


async def test_workers_lists_live_workers(settings: Settings, run_worker: Any) -> None:
    env = subprocess_env(settings)
    code, out, _ = await cli(env, "workers")
    assert (code, out.splitlines()[-1]) == (0, "0 live worker(s)")
    await run_worker()

    async def listed() -> list[dict[str, Any]]:
        for _ in range(100):
            _, out, _ = await cli(env, "workers", "--json")
            items: list[dict[str, Any]] = json.loads(out)["items"]
            if items:
                return items
            await asyncio.sleep(0.2)
        return []

    [worker] = await listed()
    assert worker["live"] is True and worker["heartbeat_age"] < 30


async def test_dead_letters_list_and_replay(settings: Settings) -> None:
    bus = EventBus(settings.app, settings=settings, visibility_timeout=0.2, max_deliveries=1)

    @bus.on("demo.*")
    async def handle(event: Any) -> None:
        raise RuntimeError("cannot handle")

    async with bus:
        await bus.start()
        async with EventBus("publisher", settings=settings) as publisher:
            await publisher.publish("demo.poison", {"n": 1})
        async with asyncio.timeout(30):  # one failed delivery, then the dead-letter stream
            while True:
                if await bus.dead_letters(group=settings.app):
                    break
                await asyncio.sleep(0.1)
    env = subprocess_env(settings)
    code, out, _ = await cli(env, "dead-letters", "--json")
    [letter] = json.loads(out)["items"]
    assert (letter["group"], letter["event"]["event_type"]) == (settings.app, "demo.poison")
    code, out, _ = await cli(env, "dead-letters", "--replay", letter["entry_id"])
    assert code == 0 and out.startswith(f"replayed {letter['entry_id']} as event ")
    code, out, _ = await cli(env, "dead-letters")
    assert out.splitlines()[-1].startswith("0 dead letter(s)")


async def test_commands_find_the_running_platform_from_any_directory(
    settings: Settings, tmp_path: Path, run_worker: Any
) -> None:
    await run_worker()
    env = subprocess_env(settings, XDG_RUNTIME_DIR=str(tmp_path / "run"))
    redis_url, db_url = env.pop("AGENTSCHED_REDIS_URL"), env.pop("AGENTSCHED_DATABASE_URL")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    async def run_there(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentsched.cli", *args, cwd=elsewhere, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await run_there("enqueue", "tests.noop", "--wait")
    assert (code, out) == (1, "")
    assert one_error_line(err).startswith(
        f"agentsched: no running `agentsched dev` found (from {elsewhere}) and "
        "AGENTSCHED_REDIS_URL is not set"
    )
    assert not (elsewhere / "agentsched.db").exists()
    state = tmp_path / "run" / "agentsched" / f"dev-{os.getpid()}.env"  # this process: alive
    state.parent.mkdir(parents=True)
    state.write_text(f"AGENTSCHED_REDIS_URL={redis_url}\nAGENTSCHED_DATABASE_URL={db_url}\n"
                     f"AGENTSCHED_DEV_PID={os.getpid()}\nAGENTSCHED_DEV_ROOT={ROOT}\n")  # fmt: skip
    code, out, err = await run_there("enqueue", "tests.sample_tasks.add", "--args", "[1, 1]",
                                     "--wait", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["result"] == 2


async def tail_first_line(settings: Settings, *args: str) -> tuple[str, bytes]:
    """`agentsched events tail ARGS`: its first line, and what it printed until Ctrl-C."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentsched.cli", "events", "tail", *args, cwd=ROOT,
        env=subprocess_env(settings), stdout=asyncio.subprocess.PIPE,
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
    return line, rest


async def test_events_tail_prints_matching_events(settings: Settings) -> None:
    async with EventBus("cli-test", settings=settings) as bus:
        await bus.publish("other.thing", payload={"n": 0})
        await bus.publish("demo.hello", payload={"n": 1}, target_agent="rag-chat")
    line, rest = await tail_first_line(settings, "demo.*", "--from", "0")
    assert ' demo.hello cli-test->rag-chat {"n": 1}' in line
    assert b"other.thing" not in rest


async def test_events_tail_json_prints_one_event_object_a_line(settings: Settings) -> None:
    async with EventBus("cli-test", settings=settings) as bus:
        sent = await bus.publish("demo.hello", payload={"n": 1}, target_agent="rag-chat")
    line, _ = await tail_first_line(settings, "demo.*", "--from", "0", "--json")
    event = json.loads(line)
    assert event["id"] == sent.id and event["event_type"] == "demo.hello"
    assert (event["source_agent"], event["target_agent"]) == ("cli-test", "rag-chat")
    assert event["payload"] == {"n": 1} and event["created_at"]


async def test_events_tail_follows_the_platform_and_ends_with_it(
    settings: Settings, tmp_path: Path
) -> None:
    other_db = settings.redis_url.rsplit("/", 1)[0] + "/11"  # "the restarted platform"
    env = subprocess_env(settings, XDG_RUNTIME_DIR=str(tmp_path))
    redis_url, db_url = env.pop("AGENTSCHED_REDIS_URL"), env.pop("AGENTSCHED_DATABASE_URL")
    state = tmp_path / "agentsched" / f"dev-{os.getpid()}.env"  # this process: alive

    def platform(url: str) -> None:
        write_state([state], {"AGENTSCHED_REDIS_URL": url, "AGENTSCHED_DATABASE_URL": db_url,
                              "AGENTSCHED_DEV_PID": str(os.getpid())})  # fmt: skip

    platform(redis_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentsched.cli", "events", "tail", "demo.*", cwd=tmp_path,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None

    async def said(stream: asyncio.StreamReader) -> str:
        return (await asyncio.wait_for(stream.readline(), 60)).decode().rstrip("\n")

    try:
        assert (await said(proc.stderr)).startswith("agentsched: following events at ")
        platform(other_db)
        assert await said(proc.stderr) == "agentsched: the dev platform restarted"
        assert (await said(proc.stderr)).startswith("agentsched: following events at ")
        moved = settings.model_copy(update={"redis_url": other_db})
        async with EventBus("cli-test", settings=moved) as bus:
            await bus.publish("demo.moved", payload={"n": 2})
        assert " demo.moved cli-test->* " in await said(proc.stdout)
        state.unlink()  # the platform stopped
        assert await said(proc.stderr) == (
            f"agentsched: the dev platform (pid {os.getpid()}) stopped; events tail ends"
        )
        assert await asyncio.wait_for(proc.wait(), 30) == 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await delete_prefix(other_db, settings.redis_prefix)


async def test_worker_alias_runs_queued_jobs(settings: Settings) -> None:
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.sample_tasks.add", args=[20, 22])
    code, _, err = await cli(subprocess_env(settings), "worker", "--", "--burst", timeout=90)
    assert code == 0, err
    async with TaskQueue(settings) as queue:
        assert await queue.get_result(execution.id, timeout=5) == 42


async def test_app_mismatch_is_the_same_line_in_validate_and_the_worker(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "tasks.yaml"
    path.write_text("app: someone-else\ntasks: []\n")
    env = subprocess_env(settings, AGENTSCHED_TASKS_FILE=str(path))
    expected = (
        f"agentsched: {path}: app: is 'someone-else' but AGENTSCHED_APP says "
        f"'{settings.app}' (line 1)"
    )
    code, out, err = await cli(env, "validate", "--modules", "tests.sample_tasks", str(path))
    assert (code, out, one_error_line(err)) == (1, "", expected)
    code, _, err = await cli(env, "worker", "--", "--burst", timeout=90)
    assert (code, one_error_line(err)) == (1, expected)


def test_an_app_dirs_repository_leads_to_its_platform(tmp_path: Path) -> None:
    from agentsched.dev_state import find_dev, write_state

    repo, elsewhere = tmp_path / "clone", tmp_path / "elsewhere"
    (repo / "apps" / "rag-chat").mkdir(parents=True)
    elsewhere.mkdir()
    assert find_dev(repo / "apps" / "rag-chat", elsewhere) is None
    values = {"AGENTSCHED_REDIS_URL": "redis://127.0.0.1:7/0", "AGENTSCHED_DEV_PID": "0"}
    write_state([repo / ".agentsched" / "dev.env"], values)
    assert find_dev(repo / "apps" / "rag-chat", elsewhere) is None  # its pid is gone
    values["AGENTSCHED_DEV_PID"] = str(os.getpid())
    write_state([repo / ".agentsched" / "dev.env"], values)
    found = find_dev(repo / "apps" / "rag-chat", elsewhere)
    assert found is not None and found.redis_url == "redis://127.0.0.1:7/0"
    assert found.still_current()
    write_state([repo / ".agentsched" / "dev.env"], {**values, "AGENTSCHED_REDIS_URL": "x"})
    assert not found.still_current()  # a restarted platform: followers notice


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


def test_a_tail_following_the_dev_platform_says_nothing_of_its_redis_going_with_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`agentsched dev` removes its state file before stopping its Redis: an outage line
    from then on would come before the tail's one line about the platform's end."""
    import logging
    import os

    from agentsched.cli.platform import _WhilePlatformRuns
    from agentsched.dev_state import DevState, write_state

    path = tmp_path / "dev.env"
    values = {"AGENTSCHED_DEV_PID": str(os.getpid()), "AGENTSCHED_REDIS_URL": "redis://x:1/0"}
    write_state([path], values)
    log = logging.getLogger("agentsched.redis")
    quiet = _WhilePlatformRuns(DevState(path, values))
    log.addFilter(quiet)
    try:
        with caplog.at_level(logging.WARNING, logger="agentsched.redis"):
            log.warning("Redis is unavailable (while the platform runs)")
            path.unlink()  # the platform is stopping
            log.warning("Redis is unavailable (as the platform stops)")
    finally:
        log.removeFilter(quiet)
    assert [r.getMessage() for r in caplog.records] == [
        "Redis is unavailable (while the platform runs)"
    ]


async def test_env_exports_the_running_platforms_urls_for_a_shell(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path}/a dir with spaces/agentsched.db"
    state = tmp_path / "agentsched" / f"dev-{os.getpid()}.env"  # this process: alive
    write_state([state], {"AGENTSCHED_REDIS_URL": "redis://127.0.0.1:6390/0",
                          "AGENTSCHED_DATABASE_URL": db_url,
                          "AGENTSCHED_DEV_PID": str(os.getpid())})  # fmt: skip
    env = {**CLEAN_ENV, "XDG_RUNTIME_DIR": str(tmp_path)}
    code, out, err = await cli(env, "env")
    assert code == 0, err
    # What `eval "$(agentsched env)"` leaves in a shell: the same URLs, spaces and all.
    script = 'eval "$1"; printf "%s\\n" "$AGENTSCHED_REDIS_URL" "$AGENTSCHED_DATABASE_URL"'
    shell = subprocess.run(["bash", "-c", script, "bash", out], env=CLEAN_ENV,
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    assert shell.stdout.splitlines() == ["redis://127.0.0.1:6390/0", db_url], shell.stderr


async def test_env_without_a_platform_is_one_line(tmp_path: Path) -> None:
    code, out, err = await cli({**CLEAN_ENV, "XDG_RUNTIME_DIR": str(tmp_path)}, "env")
    assert (code, out) == (1, "")
    assert "no running `agentsched dev` found" in one_error_line(err)
