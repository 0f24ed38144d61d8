"""`/tasks` over real Redis and PostgreSQL: schedules created, edited, toggled, run, deleted.

Like `test_api.py`, every test runs against `create_app` and against a plain app that
mounts only `scheduler_router` with `scheduler_lifespan`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from agentsched.api import create_app, scheduler_lifespan, scheduler_router
from agentsched.errors import TasksFileError
from agentsched.settings import Settings
from tests.test_api_support import PREFIX, build_app, eventually, field_error, listed, serve

INTERVAL = {"name": "check-inbox", "function": "tests.noop", "interval": "5m"}
CRON = {"name": "daily-digest", "function": "tests.sample_tasks.add", "cron": "0 7 * * mon-fri",
        "timezone": "Europe/Berlin", "args": [1, 2]}  # fmt: skip
# A well-formed id nothing has; fixed, so test ids are equal in every xdist worker.
UNKNOWN_ID = "5f0c2a4e-9d1b-4c55-8e3a-2b7f6d1e0a93"


@pytest.fixture(params=["create_app", "mounted"])
async def client(
    request: pytest.FixtureRequest, settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(build_app(str(request.param), settings)) as c:
        yield c


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/tasks", json=body or INTERVAL)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_create_reads_back_the_schedule(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks", json={**INTERVAL, "kwargs": {"folder": "INBOX"}})
    assert response.status_code == 201, response.text
    task = response.json()
    assert response.headers["location"] == f"{PREFIX}/tasks/{task['id']}"
    assert task["interval"] == 300.0 and task["cron"] is None and task["source"] == "api"
    assert task["kwargs"] == {"folder": "INBOX"} and task["enabled"] is True
    assert task["next_run_at"] and task["last_run_at"] is None and task["timezone"] == "UTC"
    assert task["misfire_policy"] == "run_once" and task["overlap"] == "skip"
    assert (await client.get(f"/tasks/{task['id']}")).json() == task
    cron = await create(client, **CRON)
    assert cron["cron"] == "0 7 * * mon-fri" and cron["interval"] is None
    assert cron["timezone"] == "Europe/Berlin" and cron["args"] == [1, 2]
    page = await listed(client, "/tasks")
    assert [t["name"] for t in page["items"]] == ["check-inbox", "daily-digest"]
    assert page["total"] == 2 and page["limit"] == 50 and page["offset"] == 0


async def test_duplicate_name_is_409(client: httpx.AsyncClient) -> None:
    await create(client)
    response = await client.post("/tasks", json={**INTERVAL, "interval": 60})
    assert response.status_code == 409 and response.json()["type"] == "conflict"
    assert (await listed(client, "/tasks"))["total"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "61 * * * *", "interval": None}, "cron"),
        ({"cron": "* * * * *"}, "interval"),  # both cron and interval
        ({"interval": None}, "cron"),  # neither
        ({"interval": "0s"}, "interval"),
        ({"interval": -5}, "interval"),
        ({"interval": "5 fortnights"}, "interval"),
        ({"interval": "9" * 10_000}, "interval"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"function": "os.system"}, "function"),
        ({"function": "builtins.eval"}, "function"),
        ({"function": "tests.__dict__"}, "function"),
        ({"name": "x" * 10_000}, "name"),
        ({"name": "bad\x00name"}, "name"),
        ({"name": ""}, "name"),
        ({"args": "nope"}, "args"),
        ({"kwargs": {"k": "v\x00"}}, "kwargs"),
        ({"misfire_policy": "sometimes"}, "misfire_policy"),
        ({"max_catchup": 0}, "max_catchup"),
        ({"surprise": True}, "surprise"),
    ],
)
async def test_invalid_schedules_are_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/tasks", json={**INTERVAL, **body})
    assert field_error(response) == field
    assert (await listed(client, "/tasks"))["total"] == 0


async def test_cron_is_validated_with_bounded_work(client: httpx.AsyncClient) -> None:
    for cron in ("0 0 30 2 *", "*/0 * * * *", "x" * 10_000, "* * * * * * *", "0 0 31 4,6 *"):
        response = await client.post("/tasks", json={**INTERVAL, "interval": None, "cron": cron})
        assert field_error(response) == "cron", cron


async def test_patch_is_a_merge_patch(client: httpx.AsyncClient) -> None:
    task = await create(client, **INTERVAL, description="inbox")
    response = await client.patch(
        f"/tasks/{task['id']}", json={"cron": "*/5 * * * *", "interval": None}
    )
    assert response.status_code == 200, response.text
    switched = response.json()
    assert switched["cron"] == "*/5 * * * *" and switched["interval"] is None
    assert switched["name"] == "check-inbox" and switched["description"] == "inbox"
    assert switched["next_run_at"] != task["next_run_at"]

    cleared = (await client.patch(f"/tasks/{task['id']}", json={"description": None})).json()
    assert cleared["description"] is None and cleared["cron"] == "*/5 * * * *"
    renamed = await client.patch(f"/tasks/{task['id']}", json={"name": "renamed", "args": []})
    assert renamed.status_code == 200 and renamed.json()["name"] == "renamed"
    assert (await client.patch(f"/tasks/{task['id']}", json={})).json()["name"] == "renamed"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"interval": "1h"}, "interval"),  # cron is still set: two timings
        ({"cron": None}, "cron"),  # no timing left
        ({"name": None}, "name"),
        ({"function": "os.system"}, "function"),
        ({"timezone": "Nowhere/Special"}, "timezone"),
        ({"enabled": None}, "enabled"),
        ({"id": UNKNOWN_ID}, "id"),
        ({"source": "yaml"}, "source"),
    ],
)
async def test_invalid_patches_are_422_and_change_nothing(
    client: httpx.AsyncClient, patch: dict[str, Any], field: str
) -> None:
    task = await create(client, **CRON)
    response = await client.patch(f"/tasks/{task['id']}", json=patch)
    assert field_error(response) == field
    assert (await client.get(f"/tasks/{task['id']}")).json() == task


async def test_patch_to_a_taken_name_is_409(client: httpx.AsyncClient) -> None:
    await create(client)
    other = await create(client, **CRON)
    response = await client.patch(f"/tasks/{other['id']}", json={"name": INTERVAL["name"]})
    assert response.status_code == 409, response.text
    assert (await client.get(f"/tasks/{other['id']}")).json()["name"] == CRON["name"]


async def test_enable_disable_and_delete(client: httpx.AsyncClient) -> None:
    task = await create(client)
    disabled = await client.post(f"/tasks/{task['id']}/disable")
    assert disabled.status_code == 200
    assert disabled.json()["enabled"] is False and disabled.json()["next_run_at"] is None
    assert (await listed(client, "/tasks", enabled=False))["total"] == 1
    assert (await listed(client, "/tasks", enabled=True))["total"] == 0
    enabled = (await client.post(f"/tasks/{task['id']}/enable")).json()
    assert enabled["enabled"] is True and enabled["next_run_at"]

    deleted = await client.delete(f"/tasks/{task['id']}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert (await client.get(f"/tasks/{task['id']}")).status_code == 404
    assert (await client.delete(f"/tasks/{task['id']}")).status_code == 404


async def test_run_now_enqueues_and_the_run_succeeds(
    client: httpx.AsyncClient, run_worker: Any
) -> None:
    await run_worker()
    task = await create(client, **CRON)
    response = await client.post(f"/tasks/{task['id']}/run")
    assert response.status_code == 202, response.text
    execution = response.json()
    assert execution["task_id"] == task["id"] and execution["function"] == CRON["function"]
    assert response.headers["location"] == f"{PREFIX}/executions/{execution['id']}"

    async def read() -> dict[str, Any]:
        return dict((await client.get(f"/executions/{execution['id']}")).json())

    assert (await eventually(read, lambda e: e["status"] == "success"))["result"] == 3
    runs = await eventually(lambda: listed(client, task_id=task["id"]), lambda p: p["total"] == 1)
    assert runs["items"][0]["id"] == execution["id"]


@pytest.mark.parametrize("ident", [UNKNOWN_ID, "nope", "%00", "9" * 5000, "' OR 1=1 --"])
async def test_unknown_and_malformed_task_ids_are_404(
    client: httpx.AsyncClient, ident: str
) -> None:
    calls = [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/enable"),
             ("POST", "/disable"), ("POST", "/run")]  # fmt: skip
    for method, suffix in calls:
        body = {"enabled": False} if method == "PATCH" else None
        response = await client.request(method, f"/tasks/{ident}{suffix}", json=body)
        assert response.status_code == 404, (method, suffix, response.text)
        assert response.json()["type"] == "not_found"


async def test_list_filters_sort_and_pagination(client: httpx.AsyncClient) -> None:
    for i in range(5):
        await create(client, name=f"job-{i}", function="tests.noop" if i % 2 else "tests.boom",
                     interval=60 * (i + 1), enabled=i != 4)  # fmt: skip
    assert (await listed(client, "/tasks", function="tests.boom"))["total"] == 3
    assert (await listed(client, "/tasks", source="yaml"))["total"] == 0
    assert (await listed(client, "/tasks", source="api"))["total"] == 5
    page = await listed(client, "/tasks", limit=2, offset=1, sort="name", order="desc")
    assert [t["name"] for t in page["items"]] == ["job-3", "job-2"] and page["total"] == 5
    soonest = await listed(client, "/tasks", sort="next_run_at", enabled=True, limit=1)
    assert soonest["items"][0]["name"] == "job-0"


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 501}, {"offset": -1}, {"sort": "name;drop table x"},
     {"sort": "app"}, {"source": "file"}, {"enabled": "maybe"}, {"function": "f" * 1000},
     {"function": "tests.noop\x00"}],
)  # fmt: skip
async def test_bad_task_list_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    assert field_error(await client.get("/tasks", params=params)) == next(iter(params))


# --- tasks files loaded by the lifespan ------------------------------------------------------
def tasks_yaml(tmp_path: Path, app: str, body: str) -> str:
    path = tmp_path / "tasks.yaml"
    path.write_text(f"app: {app}\ntasks:\n{body}")
    return str(path)


@pytest.mark.parametrize("kind", ["create_app", "mounted"])
async def test_the_lifespan_loads_the_settings_tasks_file(
    kind: str, settings: Settings, tmp_path: Path
) -> None:
    path = tasks_yaml(tmp_path, settings.app, "  - name: from-yaml\n    function: tests.noop\n"
                                              "    interval: 30s\n")  # fmt: skip
    with_file = settings.model_copy(update={"tasks_file": [path]})
    if kind == "create_app":
        app = create_app(with_file)
    else:
        app = FastAPI(lifespan=scheduler_lifespan(with_file))
        app.include_router(scheduler_router, prefix=PREFIX)
    async with serve(app) as client:
        page = await listed(client, "/tasks", source="yaml")
        assert [(t["name"], t["interval"]) for t in page["items"]] == [("from-yaml", 30.0)]
        # A file's schedules can be edited like any other (a reload would reset them).
        task_id = page["items"][0]["id"]
        assert (await client.post(f"/tasks/{task_id}/disable")).json()["enabled"] is False


async def test_a_bad_tasks_file_stops_start_up(settings: Settings, tmp_path: Path) -> None:
    path = tasks_yaml(tmp_path, settings.app, "  - name: evil\n    function: os.system\n"
                                              "    interval: 30s\n")  # fmt: skip
    app = create_app(settings, tasks_files=[path])
    with pytest.raises(TasksFileError, match=r"os\.system"):
        async with serve(app):
            pass
