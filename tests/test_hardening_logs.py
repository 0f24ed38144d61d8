"""What the scheduler and the worker log: exact missed counts, one INFO line per
scheduler decision in a plain `arq` worker's output, and never an argument value."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from arq.utils import args_to_string

from agentsched.errors import ExecutionFailed
from agentsched.jobs.queue import TaskQueue
from agentsched.jobs.runtime import Runtime
from agentsched.observability.logs import error_type, redact_arguments
from agentsched.registry import import_task_modules
from agentsched.scheduling.rules import parse_spec, plan_fires
from agentsched.scheduling.service import Scheduler, SchedulerService
from agentsched.settings import Settings
from tests.conftest import subprocess_env

UTC = dt.UTC
DUE = dt.datetime(2027, 1, 4, 9, 0, tzinfo=UTC)


def every_minute(**fields: Any) -> Any:
    return parse_spec({"name": "s", "function": "tests.noop", "cron": "* * * * *", **fields})


def test_missed_count_is_exact_beyond_max_catchup() -> None:
    # Three hours down: 181 fire times are due, one runs (run_once), 180 are missed.
    plan = plan_fires(every_minute(), DUE, DUE + dt.timedelta(hours=3, seconds=30))
    assert (len(plan.runs), plan.missed) == (1, 180)
    assert plan.caught_up == 1
    plan = plan_fires(every_minute(misfire_policy="run_all", max_catchup=5), DUE,
                      DUE + dt.timedelta(minutes=59, seconds=30))  # fmt: skip
    assert (len(plan.runs), plan.missed) == (5, 55)


async def test_the_tick_logs_exact_counts_and_its_catch_up(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import_task_modules(settings.task_modules)
    from agentsched.scheduling import service as scheduler_module

    monkeypatch.setattr(scheduler_module, "_now", lambda: DUE - dt.timedelta(seconds=30))
    caplog.set_level(logging.INFO, "agentsched.scheduler")
    async with Runtime(settings) as runtime:
        scheduler = Scheduler(runtime)
        created = await scheduler.create({"name": "minutely", "function": "tests.noop",
                                          "cron": "* * * * *"})  # fmt: skip
        assert created.next_run_at == DUE
        stats = await SchedulerService(runtime).tick(DUE + dt.timedelta(hours=3, seconds=30))
        assert stats.enqueued == 1 and stats.missed == 180
        assert (await scheduler.get(created.id)).skipped_runs == 180
    lines = [r.getMessage() for r in caplog.records]
    assert any("minutely: 180 missed fire time(s) not run" in line for line in lines), lines
    assert any("minutely: catching up 1 missed fire time(s)" in line for line in lines), lines


PROBE = textwrap.dedent("""
    import logging, logging.config
    from arq.logs import default_log_config
    from agentsched.worker import worker_settings_for_cli

    worker_settings_for_cli()  # what `arq agentsched.WorkerSettings` imports
    logging.config.dictConfig(default_log_config(False))  # what arq's CLI does next
    logging.getLogger("agentsched.scheduler").info("schedule s: overlap skip (probe)")
    logging.getLogger("arq.worker").info(
        "%6.2fs → %s(%s)%s", 0.01, "abc:sec.echo", "1, api_key='sk-SECRET', password='hunter2'",
        "")
""")


def test_a_plain_arq_worker_shows_scheduler_info_lines_and_no_argument_values(
    settings: Settings,
) -> None:
    env = subprocess_env(settings, AGENTSCHED_LOG_LEVEL="INFO")
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "INFO    agentsched.scheduler: schedule s: overlap skip (probe)" in done.stderr
    assert "abc:sec.echo(…, api_key=…, password=…)" in done.stderr
    assert "SECRET" not in done.stderr and "hunter2" not in done.stderr


def test_redaction_keeps_names_only() -> None:
    assert redact_arguments("") == ""
    assert redact_arguments("1, 'x'") == "…"
    assert redact_arguments("api_key='sk-1', n=3") == "api_key=…, n=…"
    assert redact_arguments("'a, b=c', token='t'") == "…, token=…"  # never a value


@pytest.mark.parametrize(
    ("args", "kwargs", "redacted"),
    [
        ([{"k": "v, secretvalue=1"}], {}, "…"),
        ([], {"opts": {"k": "v, leaked=1"}}, "opts=…"),
        ([["a, b=1", ["c, d=2"]]], {"z": 1}, "…, z=…"),
        (["it's, x=1"], {"q": 'say "hi", y=2'}, "…, q=…"),  # repr picks the other quote
        (["back\\slash', w=1"], {"n": None}, "…, n=…"),  # an escaped quote ends nothing
        (["(, p=1", "[, r=2", "{, s=3"], {"t": ")]}, u=4"}, "…, t=…"),
        ([], {"b": [1, {"c": "d, e=f"}], "a": "x"}, "a=…, b=…"),  # arq sorts the names
    ],
)
def test_redaction_ignores_name_lookalikes_inside_values(
    args: list[Any], kwargs: dict[str, Any], redacted: str
) -> None:
    rendered = args_to_string(args, kwargs)  # exactly what arq logs
    assert len(rendered) <= 80, "this case should not be cut"
    assert redact_arguments(rendered) == redacted


@pytest.mark.parametrize("secret", ["'sk, leaked=1", '"sk, leaked=2', "sk, leaked=3) ]"])
def test_redaction_of_a_cut_rendering_shows_no_value(secret: str) -> None:
    # arq cuts at 80 characters: the cut may fall anywhere in a value, string or not.
    for padding in range(50, 72):
        rendered = args_to_string([], {"api_key": "x" * padding + secret + "y" * 20, "z": 1})
        assert rendered.endswith("…") and len(rendered) == 80
        assert redact_arguments(rendered) == "api_key=…", rendered
        nested = args_to_string([{"deep": ["y" * (padding - 40) + secret]}], {"token": secret * 9})
        assert redact_arguments(nested) == "…, token=…", nested
    # The cut in a name: what is left of it is not a name.
    cut = args_to_string(["p" * 70], {"password": "hunter2"})
    assert cut.endswith("passw…") and redact_arguments(cut) == "…"


async def test_a_debug_worker_never_logs_keyword_values(
    settings: Settings, run_worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # An earlier in-process worker at INFO raised arq.worker to WARNING for this process.
    caplog.set_level(logging.DEBUG, "arq.worker")
    await run_worker(log_level="DEBUG")
    async with TaskQueue(settings) as queue:
        secrets = {"api_key": "sk-live-123", "password": "hunter2"}
        execution = await queue.enqueue("tests.noop", args=["p0sitional"], kwargs=secrets)
        await asyncio.wait_for(queue.get_result(execution.id, timeout=10), 15)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{execution.id}:tests.noop(…, api_key=…, password=…)" in text
    for secret in ("sk-live-123", "hunter2", "p0sitional"):
        assert secret not in text


async def test_a_failure_is_logged_by_its_type_not_its_message(
    settings: Settings, run_worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A task's exception message may quote its arguments: the log names the type only,
    # the record keeps the message (and its traceback) for whoever may read it.
    caplog.set_level(logging.INFO, "agentsched")
    await run_worker()
    async with TaskQueue(settings) as queue:
        execution = await queue.enqueue("tests.boom", kwargs={"message": "sk-live-SECRET42"})
        with pytest.raises(ExecutionFailed):
            await queue.get_result(execution.id, timeout=10)
        record = await queue.get_execution(execution.id)
    assert record.error is not None and "sk-live-SECRET42" in record.error
    lines = [r.getMessage() for r in caplog.records if execution.id in r.getMessage()]
    assert lines and all("sk-live-SECRET42" not in line for line in lines), lines
    assert any(line.endswith("after 1 attempt(s): ValueError") for line in lines), lines


def test_error_type_is_the_name_before_the_message() -> None:
    assert error_type("ValueError: sk-1\n  File x") == "ValueError"
    assert error_type("mod.Custom: a: b") == "mod.Custom"
    assert error_type("WorkerShutdown") == "WorkerShutdown"
    assert error_type("Odd\nname: x") == "Odd"
    assert error_type("") == error_type(": only a message") == "error"
