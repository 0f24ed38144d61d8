"""Input the API and the queue used to accept and should not: coerced types, an unbounded
eta, and arguments that do not fit the task's signature (found only later, in the worker).
"""

from __future__ import annotations

import datetime as dt
import logging
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentsched.errors import InvalidInput, TasksFileError
from agentsched.jobs.queue import TaskQueue
from agentsched.jobs.runtime import Runtime
from agentsched.registry import import_task_modules
from agentsched.scheduling.service import Scheduler, SchedulerService
from agentsched.scheduling.tasks_file import parse_tasks_file
from agentsched.settings import Settings
from tests import sample_tasks
from tests.test_api_support import build_app, field_error, serve

ADD = "tests.sample_tasks.add"
SCHEDULE = {"name": "every-minute", "function": "tests.noop", "interval": 60}


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(build_app("create_app", settings)) as c:
        yield c


# --- strict types -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"interval": True}, "interval"),  # was: a schedule that runs every second
        ({"enabled": "yes"}, "enabled"),  # was: taken as true
        ({"enabled": 1}, "enabled"),
        ({"max_catchup": "5"}, "max_catchup"),
        ({"max_catchup": 5.0}, "max_catchup"),
        ({"misfire_grace_seconds": False}, "misfire_grace_seconds"),
        ({"name": 7}, "name"),
    ],
)
async def test_create_schedule_rejects_coerced_types(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/tasks", json={**SCHEDULE, **body})
    assert field_error(response) == field
    assert (await client.get("/tasks")).json()["total"] == 0


async def test_patch_and_execution_bodies_are_strict_too(client: httpx.AsyncClient) -> None:
    created = await client.post("/tasks", json=SCHEDULE)
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    assert field_error(await client.patch(f"/tasks/{task_id}", json={"enabled": "no"})) == "enabled"
    assert field_error(await client.patch(f"/tasks/{task_id}", json={"interval": True})) == (
        "interval"
    )
    assert (await client.get(f"/tasks/{task_id}")).json()["enabled"] is True
    for body, field in (({"delay": True}, "delay"), ({"delay": "10"}, "delay"),
                        ({"args": "12"}, "args")):  # fmt: skip
        response = await client.post("/executions", json={"function": "tests.noop", **body})
        assert field_error(response) == field
    # What stays valid: an integer where a number is expected, an ISO string for eta.
    ok = await client.post("/tasks", json={**SCHEDULE, "name": "b", "interval": 90})
    assert ok.status_code == 201 and ok.json()["interval"] == 90
    eta = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat()
    accepted = await client.post("/executions", json={"function": "tests.noop", "eta": eta})
    assert accepted.status_code == 202, accepted.text


def test_tasks_file_is_strict(tmp_path: Path) -> None:
    import_task_modules(["tests.sample_tasks"])
    path = tmp_path / "tasks.yaml"
    path.write_text(textwrap.dedent("""\
        app: a
        tasks:
          - name: t
            function: tests.noop
            interval: 5m
            enabled: "yes"
        """))  # fmt: skip
    with pytest.raises(TasksFileError, match="enabled") as caught:
        parse_tasks_file(path)
    assert caught.value.field == "enabled" and "line 6" in str(caught.value)


# --- eta is capped like delay ---------------------------------------------------------------
async def test_eta_has_the_same_cap_as_delay(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.post(
        "/executions", json={"function": "tests.noop", "eta": "9999-12-31T00:00:00Z"}
    )
    assert field_error(response) == "eta"
    async with TaskQueue(settings) as queue:
        with pytest.raises(InvalidInput, match="eta"):
            await queue.enqueue("tests.noop", eta=dt.datetime.now(dt.UTC) + dt.timedelta(days=367))
        within = await queue.enqueue(
            "tests.noop", eta=dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
        )
        assert within.status == "queued"


# --- arguments are bound to the signature ---------------------------------------------------
async def test_enqueue_binds_arguments_to_the_signature(settings: Settings) -> None:
    async with TaskQueue(settings) as queue:
        with pytest.raises(InvalidInput) as caught:
            await queue.enqueue(sample_tasks.add, args=[1], kwargs={"bb": 2})  # misspelt
        assert caught.value.field == "kwargs.bb" and "'bb'" in caught.value.message
        with pytest.raises(InvalidInput, match="'b'") as caught:
            await queue.enqueue(sample_tasks.add, args=[1])
        assert caught.value.field == "args"
        with pytest.raises(InvalidInput, match="too many"):
            await queue.enqueue(sample_tasks.add, args=[1, 2, 3])
        with pytest.raises(InvalidInput, match="multiple values for argument 'a'"):
            await queue.enqueue(sample_tasks.add, args=[1, 2], kwargs={"a": 1})
        assert (await queue.enqueue(sample_tasks.add, args=[1], kwargs={"b": 2})).args == [1]
        # A task taking **kwargs accepts any keyword.
        await queue.enqueue("tests.noop", args=[1, 2], kwargs={"anything": True})


async def test_api_and_schedules_reject_arguments_that_do_not_bind(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/executions", json={"function": ADD, "args": [1], "kwargs": {"c": 2}}
    )
    assert field_error(response) == "kwargs.c"
    assert "'c'" in response.json()["detail"][0]["msg"]
    response = await client.post("/tasks", json={**SCHEDULE, "function": ADD, "args": [1]})
    assert field_error(response) == "args" and "'b'" in response.json()["detail"][0]["msg"]
    good = await client.post("/tasks", json={**SCHEDULE, "function": ADD, "args": [1, 2]})
    assert good.status_code == 201, good.text
    patched = await client.patch(f"/tasks/{good.json()['id']}", json={"kwargs": {"x": 1}})
    assert field_error(patched) == "kwargs.x"


def test_tasks_file_binds_arguments(tmp_path: Path) -> None:
    import_task_modules(["tests.sample_tasks"])
    path = tmp_path / "tasks.yaml"
    path.write_text(textwrap.dedent(f"""\
        app: a
        tasks:
          - name: t
            function: {ADD}
            interval: 5m
            kwargs: {{a: 1, colour: red}}
        """))  # fmt: skip
    with pytest.raises(TasksFileError, match="colour") as caught:
        parse_tasks_file(path, check_functions=True)
    assert caught.value.field == "kwargs.colour" and "line 6" in str(caught.value)
    parse_tasks_file(path)  # without the registry (no check_functions) it is only YAML


async def test_a_stored_schedule_whose_arguments_stopped_fitting_is_skipped_alone(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    import_task_modules(settings.task_modules)
    async with Runtime(settings) as runtime:
        scheduler = Scheduler(runtime)
        stale = await scheduler.create({**SCHEDULE, "name": "stale", "function": ADD,
                                        "args": [1, 2]})  # fmt: skip
        fine = await scheduler.create(SCHEDULE)
        # As if the function lost a parameter after the schedule was saved.
        await scheduler.store.update(settings.app, stale.id, {"args": [1, 2, 3]})
        assert stale.next_run_at and fine.next_run_at
        caplog.set_level(logging.WARNING, "agentsched.scheduler")
        now = max(stale.next_run_at, fine.next_run_at)
        stats = await SchedulerService(runtime).tick(now)
    assert stats.enqueued == 1 and stats.schedules == 2
    assert any("stale" in r.getMessage() and "too many" in r.getMessage() for r in caplog.records)
