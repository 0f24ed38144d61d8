"""Structured logs: JSON or text lines that name the execution, never argument values."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import yaml

from agentsched import TaskQueue
from agentsched.observability import logs
from agentsched.settings import Settings
from tests.conftest import subprocess_env
from tests.test_api_support import eventually
from tests.test_worker_process import ARQ, ROOT, stop


def record(message: str = "attempt %d failed", *args: object) -> logging.LogRecord:
    return logging.LogRecord(
        "agentsched.worker", logging.WARNING, __file__, 1, message, args or (2,), None
    )


def test_json_lines_carry_the_bound_execution() -> None:
    formatter = logs.Formatter(json=True, app="rag-chat")
    outside = json.loads(formatter.format(record()))
    assert outside.keys() == {"time", "level", "logger", "message", "app"}
    assert (outside["level"], outside["logger"], outside["app"]) == (
        "WARNING",
        "agentsched.worker",
        "rag-chat",
    )
    assert outside["message"] == "attempt 2 failed"
    assert outside["time"].endswith("+00:00")
    token = logs.bind("6b1e0f4e-1111-2222-3333-444455556666", "mod.crawl", 2)
    try:
        inside = json.loads(formatter.format(record()))
    finally:
        logs.unbind(token)
    assert inside["execution_id"] == "6b1e0f4e-1111-2222-3333-444455556666"
    assert (inside["function"], inside["attempt"]) == ("mod.crawl", 2)
    assert "execution_id" not in json.loads(formatter.format(record()))


def test_text_lines_keep_the_fields_briefly() -> None:
    formatter = logs.Formatter("%(levelname)s %(message)s", json=False, app="rag-chat")
    assert formatter.format(record()) == "WARNING attempt 2 failed [rag-chat]"
    token = logs.bind("6b1e0f4e-1111-2222-3333-444455556666", "mod.crawl", 2)
    try:
        line = formatter.format(record())
    finally:
        logs.unbind(token)
    assert line == "WARNING attempt 2 failed [rag-chat mod.crawl 6b1e0f4e #2]"



def test_the_fallback_handler_keeps_the_fields_too() -> None:
    # `arq agentsched.WorkerSettings` without a logging config of ours: agentsched's own
    # handler prints its lines, with the same brief fields as config/logging.yaml's.
    logs.configure_logging("INFO")
    (handler,) = [h for h in logging.getLogger("agentsched").handlers
                  if isinstance(h, logs._UntilConfigured)]  # fmt: skip
    assert isinstance(handler.formatter, logs.Formatter) and not handler.formatter.json
    token = logs.bind("6b1e0f4e-1111-2222-3333-444455556666", "mod.crawl", 2)
    try:
        line = handler.format(record())
    finally:
        logs.unbind(token)
    assert line.endswith(" mod.crawl 6b1e0f4e #2]") and "attempt 2 failed" in line

def test_arq_job_line_loses_its_arguments() -> None:
    line = record("%6.2fs → %s(%s)%s", 0.01, "id:mod.add", "a=424242", "")
    assert logs.ArgumentRedactor().filter(line)
    assert "424242" not in line.getMessage() and "id:mod.add" in line.getMessage()


async def test_worker_writes_json_lines_without_argument_values(
    settings: Settings, tmp_path: Path
) -> None:
    marker = f"{tmp_path}/secret-marker-9731"
    # The repository's logging config, with arq's per-job lines (and their arguments) on.
    config = tmp_path / "logging.json"
    logging_config = yaml.safe_load((ROOT / "config/logging.yaml").read_text())
    logging_config["loggers"]["arq"]["level"] = "INFO"
    config.write_text(json.dumps(logging_config))
    proc = subprocess.Popen(
        [*ARQ, "--custom-log-dict", "agentsched.dev.LOG_CONFIG"],
        cwd=ROOT,
        env=subprocess_env(
            settings,
            AGENTSCHED_LOG_FORMAT="json",
            AGENTSCHED_LOG_LEVEL="DEBUG",
            AGENTSCHED_LOG_CONFIG=str(config),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        async with TaskQueue(settings) as queue:
            added = await queue.enqueue("tests.sample_tasks.add", args=[424242, 171717])
            flaky = await queue.enqueue("tests.flaky", args=[marker, 1])
            assert await queue.get_result(added.id, timeout=20) == 424242 + 171717
            assert await queue.get_result(flaky.id, timeout=20) == "ok after 2"
    finally:
        output = stop(proc)
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert lines, output
    retry = [
        line
        for line in lines
        if line.get("execution_id") == flaky.id and "retrying" in line["message"]
    ]
    assert len(retry) == 1, output
    assert (retry[0]["function"], retry[0]["attempt"], retry[0]["app"]) == (
        "tests.flaky",
        1,
        settings.app,
    )
    assert any(line["logger"] == "arq.worker" and "tests.sample_tasks.add(" in line["message"]
               for line in lines), output  # fmt: skip
    assert "424242" not in output and "171717" not in output and "secret-marker" not in output


async def test_json_without_a_logging_config_covers_agentsched_lines(settings: Settings) -> None:
    """Plain `arq agentsched.WorkerSettings` (arq's default logging) with JSON asked for."""
    proc = subprocess.Popen(
        ARQ,
        cwd=ROOT,
        env=subprocess_env(settings, AGENTSCHED_LOG_FORMAT="json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        async with TaskQueue(settings) as queue:
            failed = await queue.enqueue("tests.boom")
            await eventually(lambda: queue.get_status(failed.id), lambda s: s.value == "failed")
    finally:
        output = stop(proc)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    ours = [line for line in lines if line["logger"] == "agentsched.worker"]
    assert any(line.get("execution_id") == failed.id for line in ours), output
    raw = [line for line in output.splitlines() if line.strip()]
    first = next(i for i, line in enumerate(raw) if line.startswith("{"))
    # Only arq's own lines before agentsched's start-up hook ran are plain text.
    assert all(line.startswith("{") for line in raw[first:]), output
