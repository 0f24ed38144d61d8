"""The endpoints the dashboard reads, over real Redis and PostgreSQL, without a browser:
overview, workers, schedule outlook, dead letters, retry / run again, keyset paging,
the packaged page and the offline docs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from agentsched.api.schedule_words import cron_words, interval_words
from agentsched.events import EventBus, EventMessage
from agentsched.settings import Settings
from tests.test_api_support import PREFIX, build_app, eventually, field_error, listed, serve

KINDS = ["create_app", "mounted"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(kind: str, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(build_app(kind, settings)) as c:
        yield c


async def run(client: httpx.AsyncClient, function: str, **body: Any) -> dict[str, Any]:
    response = await client.post("/executions", json={"function": function, **body})
    assert response.status_code == 202, response.text
    return await run_to_end(client, response.json()["id"])


async def run_to_end(client: httpx.AsyncClient, ident: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        return dict((await client.get(f"/executions/{ident}")).json())

    return await eventually(read, lambda e: e["status"] in ("success", "failed"))


# --- retry and run again -----------------------------------------------------------------
async def test_retry_enqueues_a_failed_one_again_naming_it(
    client: httpx.AsyncClient, run_worker: Any
) -> None:
    await run_worker()
    failed = await run(client, "tests.boom", kwargs={"message": "first"}, metadata={"by": "me"})
    assert failed["status"] == "failed"
    again = await client.post(f"/executions/{failed['id']}/retry")
    assert again.status_code == 202, again.text
    new = again.json()
    assert new["id"] != failed["id"] and new["status"] == "queued"
    assert (new["function"], new["kwargs"]) == ("tests.boom", {"message": "first"})
    assert new["metadata"] == {"by": "me", "retry_of": failed["id"]}
    assert again.headers["location"].endswith(f"/executions/{new['id']}")

    succeeded = await run(client, "tests.sample_tasks.add", args=[2, 3])
    refused = await client.post(f"/executions/{succeeded['id']}/retry")
    assert refused.status_code == 409 and "only failed or cancelled" in refused.json()["detail"]
    rerun = await client.post(f"/executions/{succeeded['id']}/run-again")
    assert rerun.status_code == 202
    assert rerun.json()["metadata"] == {"run_again_of": succeeded["id"]}
    assert rerun.json()["args"] == [2, 3]
    for path in ("retry", "run-again"):
        assert (await client.post(f"/executions/{uuid.uuid4()}/{path}")).status_code == 404


async def test_retry_and_run_again_leave_the_old_trace_context_behind(
    client: httpx.AsyncClient, run_worker: Any
) -> None:
    await run_worker()
    trace = {"traceparent": f"00-{'1' * 32}-{'2' * 16}-01", "tracestate": "vendor=old"}
    failed = await run(client, "tests.boom", kwargs={"message": "x"},
                       metadata={"by": "me", **trace})  # fmt: skip
    old = failed["metadata"]  # the enqueue span's context, when this process traces
    for path, key in (("retry", "retry_of"), ("run-again", "run_again_of")):
        again = (await client.post(f"/executions/{failed['id']}/{path}")).json()
        new = again["metadata"]
        assert new.get("traceparent") != old["traceparent"], path
        assert new.get("tracestate") != old.get("tracestate", "vendor=old"), path
        rest = {k: v for k, v in new.items() if k not in ("traceparent", "tracestate")}
        assert rest == {"by": "me", key: failed["id"]}, path
        assert (await run_to_end(client, again["id"]))["status"] == "failed"


# --- keyset paging and filters -----------------------------------------------------------
async def test_cursor_pages_match_offset_pages_and_filters_narrow(
    client: httpx.AsyncClient,
) -> None:
    ids = [(await client.post("/executions", json={"function": "tests.noop"})).json()["id"]
           for _ in range(7)]  # fmt: skip
    await eventually(lambda: listed(client, limit=500), lambda p: p["total"] == 7)
    everything = [e["id"] for e in (await listed(client, limit=500))["items"]]
    assert set(everything) == set(ids)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = await listed(client, **params)
        assert page["total"] == 7
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == everything  # newest first, each once, same order as one big page
    oldest_first = await listed(client, order="asc", limit=4)
    tail = await listed(client, order="asc", limit=4, cursor=oldest_first["next_cursor"])
    assert [e["id"] for e in oldest_first["items"] + tail["items"]] == everything[::-1]

    one = everything[3]
    by_prefix = await listed(client, id_prefix=one[:8].upper())
    assert [e["id"] for e in by_prefix["items"]] == [one]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    assert (await listed(client, since=later.isoformat()))["total"] == 0
    assert (await listed(client, until=later.isoformat()))["total"] == 7
    valid = page["next_cursor"] or f"1_{one}"
    for params in ({"cursor": "nonsense"}, {"cursor": "1_" + "x" * 40},
                   {"cursor": "9" * 30 + "_a"}, {"cursor": valid, "sort": "status"}):  # fmt: skip
        response = await client.get("/executions", params=params)
        assert field_error(response) == "cursor", params
    bad = await client.get("/executions", params={"id_prefix": "%_"})
    assert field_error(bad) == "id_prefix"


# --- overview, workers, outlook ----------------------------------------------------------
async def test_overview_counts_now_and_aggregates_the_last_hour(
    client: httpx.AsyncClient, run_worker: Any
) -> None:
    await client.post("/executions", json={"function": "tests.noop", "delay": 600})
    empty = (await client.get("/overview")).json()
    assert (empty["queued"], empty["deferred"], empty["running"]) == (0, 1, 0)
    assert empty["minutes"] == [] and empty["window_minutes"] == 60
    await run_worker()
    await run(client, "tests.sample_tasks.add", args=[1, 1])
    await run(client, "tests.boom")
    await run(client, "tests.sleep", args=[0.05])
    body = await eventually(
        lambda: client.get("/overview"),
        lambda r: sum(m["finished"] for m in r.json()["minutes"]) == 3,
    )
    overview = body.json()
    assert overview["workers_alive"] == 1 and overview["deferred"] == 1
    assert sum(m["failed"] for m in overview["minutes"]) == 1
    assert max(m["runtime_p95_ms"] for m in overview["minutes"]) >= 40  # the 50 ms sleep
    assert all(m["pickup_p50_ms"] is not None and m["pickup_p50_ms"] >= 0
               for m in overview["minutes"])  # fmt: skip
    assert field_error(await client.get("/overview", params={"minutes": 0})) == "minutes"


async def test_workers_lists_live_workers_with_their_counts(
    client: httpx.AsyncClient, run_worker: Any, settings: Settings
) -> None:
    assert (await client.get("/workers")).json() == {"items": [], "total": 0}
    await run_worker()
    await run(client, "tests.noop")

    async def workers() -> dict[str, Any]:
        return dict((await client.get("/workers")).json())

    body = await eventually(workers, lambda w: w["total"] == 1 and w["items"][0]["done"] == 1)
    [worker] = body["items"]
    host, pid, _ = worker["id"].split(":")
    assert (worker["host"], worker["pid"], worker["running"]) == (host, int(pid), 0)
    started = dt.datetime.fromisoformat(worker["started_at"])
    beat = dt.datetime.fromisoformat(worker["last_heartbeat"])
    assert started <= beat <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)


async def test_schedule_outlook_in_words_with_next_runs_and_last_status(
    client: httpx.AsyncClient,
) -> None:
    digest_body = {"name": "digest", "function": "tests.noop", "cron": "0 7 * * mon-fri",
                   "timezone": "Europe/Berlin"}  # fmt: skip
    made = await client.post("/tasks", json=digest_body)
    tick = await client.post("/tasks", json={"name": "tick", "function": "tests.noop",
                                             "interval": "5m", "enabled": False})  # fmt: skip
    items = {o["task_id"]: o for o in (await client.get("/schedule-outlook")).json()["items"]}
    digest = items[made.json()["id"]]
    assert digest["description"] == "at 07:00 on weekdays (Europe/Berlin)"
    runs = [dt.datetime.fromisoformat(t) for t in digest["next_runs"]]
    assert len(runs) == 3 and runs == sorted(runs) and len(set(runs)) == 3
    assert all(r.astimezone(dt.timezone(dt.timedelta(hours=1))).hour == 7 for r in runs)
    assert items[tick.json()["id"]]["next_runs"] == []  # disabled
    assert items[tick.json()["id"]]["description"] == "every 5 minutes"
    assert digest["last_status"] is None


def test_schedules_read_in_words() -> None:
    assert interval_words(1) == "every second" and interval_words(90) == "every 90 seconds"
    assert interval_words(7200) == "every 2 hours" and interval_words(86400) == "every day"
    assert cron_words("*/15 * * * *") == "every 15 minutes"
    assert cron_words("30 * * * *") == "at minute 30 of every hour"
    assert cron_words("5 4 * * sun") == "at 04:05 on sun"
    assert cron_words("0 0 1 * *") == "cron 0 0 1 * *"  # no sentence beats a wrong one


# --- dead letters ------------------------------------------------------------------------
async def test_dead_letters_of_this_app_only_and_replay(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    calls: list[str] = []
    bus = EventBus(settings.app, settings=settings, visibility_timeout=0.2, max_deliveries=1)
    other = EventBus("other-app", settings=settings, visibility_timeout=0.2, max_deliveries=1)

    @bus.on("dl.*")
    @other.on("dl.*")
    async def broken(event: EventMessage) -> None:
        calls.append(event.id)
        if len(calls) <= 2:
            raise RuntimeError("no")

    await bus.start()
    await other.start()
    try:
        sent = await bus.publish("dl.poison", {"n": 1})
        await eventually(bus.dead_letters, lambda d: len(d) == 2, timeout=15)
        body = (await client.get("/dead-letters")).json()
        [letter] = body["items"]
        assert (letter["group"], letter["deliveries"]) == (settings.app, 1)
        assert letter["event"]["id"] == sent.id
        theirs = next(d for d in await bus.dead_letters() if d.group == "other-app")
        assert (await client.post(f"/dead-letters/{theirs.entry_id}/replay")).status_code == 404
        replayed = await client.post(f"/dead-letters/{letter['entry_id']}/replay")
        assert replayed.status_code == 200
        assert replayed.json()["target_agent"] == settings.app
        await eventually(lambda: _count(calls), lambda n: n == 3)
        assert (await client.get("/dead-letters")).json()["total"] == 0
        assert (await client.post("/dead-letters/nope/replay")).status_code == 404
    finally:
        await bus.stop()
        await other.stop()


async def _count(items: list[str]) -> int:
    return len(items)


# --- the page and the docs ---------------------------------------------------------------
async def test_the_page_and_its_files_are_served_from_the_package(
    kind: str, client: httpx.AsyncClient
) -> None:
    page = await client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name in ("Overview", "Executions", "Schedules", "Workers", "Events", "Dead letters"):
        assert f">{name}</a>" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere
    for name in ("core.js", "app.js", "app.css", "charts.js", "pages_runs.js", "pages_more.js"):
        asset = await client.get(f"/ui/{name}")
        assert asset.status_code == 200 and "https://" not in asset.text, name
    assert (await client.get("/ui", follow_redirects=False)).headers["location"].endswith("/ui/")
    for missing in ("/ui/__init__.py", "/ui/nope.js", "/ui/vendor/nope.js", "/ui/..%2Fapp.py"):
        assert (await client.get(missing)).status_code == 404, missing
    bundle = await client.get("/ui/vendor/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    redoc = await client.get("/ui/vendor/redoc.standalone.js")
    assert b"cdn.redoc.ly" not in redoc.content


async def test_create_app_serves_offline_docs_and_redirects_home(settings: Settings) -> None:
    app = build_app("create_app", settings)  # neither needs the lifespan's connections
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as root:
        home = await root.get("/", follow_redirects=False)
        assert home.status_code == 307 and home.headers["location"] == f"{PREFIX}/ui/"
        for path, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
            html = (await root.get(path)).text
            assert f"{PREFIX}/ui/vendor/{asset}" in html
            assert "cdn.jsdelivr" not in html and "fonts.googleapis" not in html
