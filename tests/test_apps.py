"""The five agent apps: each starts and answers, each tasks.yaml validates with no
environment, events cross apps end to end with real workers, and compose.yaml is wired.

In-process tests run an app's own lifespan (Redis DB 10 with a fresh prefix, a SQLite
file per test); the end-to-end ones run part of the platform with `agentsched dev`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agentsched import EventBus
from agentsched.dev_state import read_env_file
from agentsched.embedded_redis import free_port
from agentsched.settings import Settings, load_settings
from tests.conftest import REDIS_URL, delete_prefix
from tests.test_dev import APP_NAMES, ROOT, DevProcess, clean_env, free_port_run

APPS_REDIS_URL = REDIS_URL.rsplit("/", 1)[0] + "/10"
for _name in APP_NAMES:  # the app packages import as the platform runs them
    if str(ROOT / "apps" / _name) not in sys.path:
        sys.path.insert(0, str(ROOT / "apps" / _name))


def app_env(name: str) -> dict[str, str]:
    return read_env_file(ROOT / "apps" / name / "app.env")


def app_settings(name: str, prefix: str, tmp_path: Path) -> Settings:
    env = app_env(name)
    return load_settings(
        redis_url=APPS_REDIS_URL,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/{name}.db",
        app=name,
        redis_prefix=prefix,
        task_modules=env["AGENTSCHED_TASK_MODULES"].split(","),
        tasks_file=[str(ROOT / env["AGENTSCHED_TASKS_FILE"])],
    )


@pytest.fixture
async def serve(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[[str], Any]]:
    """`async with serve("rag-chat") as client`: the app with its lifespan, over ASGI."""

    @asynccontextmanager
    async def start(name: str) -> AsyncIterator[httpx.AsyncClient]:
        monkeypatch.setenv("AGENTSCHED_DATA_DIR", str(tmp_path / "data" / name))
        module = importlib.import_module(app_env(name)["AGENTSCHED_ASGI_APP"].split(":")[0])
        app = module.create_app(app_settings(name, prefix, tmp_path))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                yield client

    yield start
    await delete_prefix(APPS_REDIS_URL, prefix)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """Poll `check` until it returns something truthy; its last value otherwise fails."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s (last: {value!r})")
        await asyncio.sleep(0.2)


def yaml_task_names(name: str) -> set[str]:
    data = yaml.safe_load((ROOT / "apps" / name / "tasks.yaml").read_text())
    return {t["name"] for t in data["tasks"]}


# --- each app starts and answers -----------------------------------------------------------
@pytest.mark.parametrize("name", APP_NAMES)
async def test_app_starts_loads_its_tasks_and_reports_health(name: str, serve: Any) -> None:
    async with serve(name) as client:
        health = await client.get("/api/scheduler/health")
        assert health.status_code == 200, health.text
        assert health.json()["app"] == name
        tasks = (await client.get("/api/scheduler/tasks")).json()
        assert {t["name"] for t in tasks["items"]} == yaml_task_names(name)
        assert all(t["source"] == "yaml" for t in tasks["items"])
        functions = {
            f["name"] for f in (await client.get("/api/scheduler/functions")).json()["items"]
        }
        assert {t["function"] for t in tasks["items"]} <= functions


@pytest.mark.parametrize("name", APP_NAMES)
async def test_app_serves_offline_docs_and_sends_home_to_its_dashboard(
    name: str, prefix: str, tmp_path: Path
) -> None:
    module = importlib.import_module(app_env(name)["AGENTSCHED_ASGI_APP"].split(":")[0])
    app = module.create_app(app_settings(name, prefix, tmp_path))  # no lifespan needed
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        home = await client.get("/")
        assert home.status_code == 307 and home.headers["location"] == "/api/scheduler/ui/"
        assert (await client.get("/api/scheduler/ui/")).status_code == 200
        for path, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
            html = (await client.get(path)).text
            assert f"/api/scheduler/ui/vendor/{asset}" in html, html
            assert "cdn.jsdelivr" not in html and "fonts.googleapis" not in html
            assert (await client.get(f"/api/scheduler/ui/vendor/{asset}")).status_code == 200


async def test_scraper_agent_serves_demo_pages_and_queues_scrapes(serve: Any) -> None:
    async with serve("scraper-agent") as client:
        page = await client.get("/demo/pages/2")
        assert page.status_code == 200
        assert "<title>Redis Streams and consumer groups</title>" in page.text
        assert (await client.get("/demo/pages/99")).status_code == 404
        assert (await client.post("/scrape", json={"url": "not a url"})).status_code == 422
        queued = await client.post("/scrape", json={"url": "http://127.0.0.1:1/x"})
        assert queued.status_code == 202
        execution = await client.get(f"/api/scheduler/executions/{queued.json()['execution_id']}")
        assert execution.json()["function"] == "scraper.fetch_page"
        assert execution.json()["status"] == "queued"


async def test_email_agent_seeds_its_maildir_and_takes_deliveries(serve: Any) -> None:
    async with serve("email-agent") as client:
        inbox = (await client.get("/inbox")).json()
        assert inbox["total"] == 4
        assert any(m["urgent"] for m in inbox["items"])
        delivered = await client.post("/inbox", json={"sender": "x@example.com", "subject": "Hi"})
        assert delivered.status_code == 201
        assert (await client.get("/inbox")).json()["total"] == 5
        assert (await client.post("/digest")).status_code == 202
        assert (await client.get("/outbox")).json() == {"items": [], "total": 0}


async def test_support_bot_turns_an_alert_event_into_a_ticket(
    serve: Any, prefix: str, tmp_path: Path
) -> None:
    async with serve("support-bot") as client:
        created = await client.post("/tickets", json={"title": "Login is broken", "body": "error"})
        assert created.status_code == 201 and created.json()["status"] == "open"
        assert (await client.get("/tickets/999")).status_code == 404
        aiops = app_settings("aiops-bot", prefix, tmp_path)
        async with EventBus(settings=aiops) as bus:
            alert = {
                "alert_id": "a1",
                "app": "rag-chat",
                "kind": "down",
                "summary": "rag-chat is down",
                "details": {"detail": "refused", "failures": []},
            }
            event = await bus.publish("aiops.alert", payload=alert)
            await bus.publish(
                "aiops.alert", payload={"kind": "ignored"}, target_agent="email-agent"
            )

        async def alert_ticket() -> Any:
            items = (await client.get("/tickets")).json()["items"]
            return next((t for t in items if t["source_id"] == event.id), None)

        ticket = await eventually(alert_ticket)
        assert (ticket["app"], ticket["kind"], ticket["status"]) == ("rag-chat", "down", "open")
        assert json.loads(ticket["body"]) == alert["details"]  # JSON, not a Python repr
        tickets = (await client.get("/tickets")).json()
        assert tickets["total"] == 2  # the targeted event was not for support-bot


async def test_rag_chat_answers_and_queues_indexing_of_fetched_pages(
    serve: Any, prefix: str, tmp_path: Path
) -> None:
    async with serve("rag-chat") as client:
        empty = (await client.get("/ask", params={"q": "redis"})).json()
        assert empty["sources"] == []
        assert (await client.get("/ask", params={"q": ""})).status_code == 422
        scraper = app_settings("scraper-agent", prefix, tmp_path)
        async with EventBus(settings=scraper) as bus:
            page = {"url": "http://x/1", "title": "T", "text": "Some text", "links": []}
            await bus.publish("scraper.page_fetched", payload=page)

        async def index_queued() -> Any:
            found = await client.get(
                "/api/scheduler/executions", params={"function": "rag.index_page"}
            )
            return found.json()["items"]

        [execution] = await eventually(index_queued)
        assert execution["status"] == "queued"
        source = await client.post("/sources", json={"url": "http://example.com/a"})
        assert (
            source.status_code == 202 and source.json()["event_type"] == "scraper.crawl_requested"
        )


async def test_aiops_bot_queues_a_check(serve: Any) -> None:
    async with serve("aiops-bot") as client:
        assert (await client.get("/status")).json() == {"items": [], "total": 0}
        queued = await client.post("/check")
        assert queued.status_code == 202
        assert queued.json()["function"] == "aiops.check_platform"


# --- the apps' own logic, without services --------------------------------------------------
def test_scraper_extracts_title_text_and_absolute_links() -> None:
    from scraper_agent.demo import render
    from scraper_agent.extract import extract

    html = render(2)
    assert html is not None
    page = extract(
        "http://h:1/demo/pages/2", html + '<a href="mailto:x@y">m</a><script>x=1</script>'
    )
    assert page.title == "Redis Streams and consumer groups"
    assert (
        "consumer group" in page.text and "x=1" not in page.text and "font-family" not in page.text
    )
    assert page.links == [f"http://h:1/demo/pages/{n}" for n in (1, 3, 4, 5)]


def test_rag_index_ranks_by_bm25_and_answers_from_the_best_page(tmp_path: Path) -> None:
    from rag_chat.index import Index

    index = Index(tmp_path / "index.sqlite3")
    index.add("u1", "Cron", "A cron expression has five fields. It fires on a schedule.")
    index.add("u2", "Streams", "Consumer groups share the events of a stream between replicas.")
    index.add("u2", "Streams", "Consumer groups split events between the replicas of an app.")
    answer, hits = index.answer("how do consumer groups split events?")
    assert [h.url for h in hits] == ["u2"]
    assert answer == "Consumer groups split events between the replicas of an app."
    assert index.search("the of and") == []
    assert [d["url"] for d in index.documents()] == ["u1", "u2"]


def test_support_triage_rules() -> None:
    from support_bot.tickets import escalated, triage

    down = triage({"kind": "down", "title": "x", "body": "", "app": "rag-chat"})
    assert (down["priority"], down["team"]) == ("P1", "platform")
    failures = triage({"kind": "failed_executions", "title": "x", "body": "", "app": "rag-chat"})
    assert (failures["priority"], failures["team"]) == ("P2", "rag-chat")
    request = triage({"kind": "request", "title": "Question", "body": "hi", "app": None})
    assert (request["priority"], request["team"]) == ("P3", "helpdesk")
    assert (
        triage({"kind": "request", "title": "Site is DOWN", "body": "", "app": None})["priority"]
        == "P1"
    )
    assert [escalated(p) for p in ("P3", "P2", "P1", None)] == ["P2", "P1", "P1", "P3"]


def test_email_maildir_is_seeded_once_and_digested(tmp_path: Path) -> None:
    from email_agent import mail

    box = mail.open_maildir(tmp_path)
    assert len(mail.read_new(box)) == 4
    assert mail.read_new(mail.open_maildir(tmp_path)) == []  # seen, and not seeded again
    messages = mail.all_messages(box)
    assert all(m["seen"] for m in messages)
    digest = mail.digest(messages, "team@example.com")
    body = digest.get_body().get_content()
    assert digest["Subject"] == "Digest: 4 message(s)"
    assert body.splitlines()[2].startswith("[URGENT] URGENT: nightly backup failed")
    path = mail.write_outbox(tmp_path, digest, "digest")
    assert path.parent.name == "outbox" and path.suffix == ".eml"


def test_aiops_alerts_on_changes_only(tmp_path: Path) -> None:
    from aiops_bot.checks import Report
    from aiops_bot.store import Store

    store = Store(tmp_path / "aiops.sqlite3")

    def report(problem: str | None, failures: list[dict[str, Any]] | None = None) -> Report:
        return Report("rag-chat", "http://x", "2030-01-01T00:00:00+00:00", problem=problem,
                      detail="refused" if problem else "", failures=failures or [])  # fmt: skip

    alerts, recovered = store.record(report("down"))
    assert [a["kind"] for a in alerts] == ["down"] and not recovered
    assert store.record(report("down")) == ([], False)  # still down: no second alert
    failure = {"id": "e1", "finished_at": "2030-01-01T00:00:01+00:00"}
    alerts, recovered = store.record(report(None, [failure]))
    assert [a["kind"] for a in alerts] == ["failed_executions"] and recovered
    assert store.since("rag-chat") == "2030-01-01T00:00:01+00:00"
    assert store.acknowledge(alerts[0]["alert_id"], "7")
    assert store.alerts()[0]["ticket_id"] == "7"


def test_aiops_does_not_alert_apps_that_are_still_starting(tmp_path: Path) -> None:
    from aiops_bot.checks import Report
    from aiops_bot.store import Store

    store = Store(tmp_path / "aiops.sqlite3", startup_grace=120)

    def report(app: str, at: str, problem: str | None) -> Report:
        return Report(app, "http://x", f"2030-01-01T00:{at}+00:00", problem=problem)

    # Every app down on the first check: the platform is starting, no alert.
    assert store.record(report("rag-chat", "00:00", "down")) == ([], False)
    assert store.record(report("ghost", "00:00", "down")) == ([], False)
    assert store.record(report("rag-chat", "00:30", "no_worker")) == ([], False)
    # rag-chat answers once; from then on its going down is alerted at once.
    assert store.record(report("rag-chat", "01:00", None)) == ([], False)
    alerts, _ = store.record(report("rag-chat", "01:30", "down"))
    assert [a["kind"] for a in alerts] == ["down"]
    # ghost never answered: alerted once its grace has passed, and only once.
    assert store.record(report("ghost", "01:59", "down")) == ([], False)
    alerts, _ = store.record(report("ghost", "02:00", "down"))
    assert [(a["app"], a["kind"]) for a in alerts] == [("ghost", "down")]
    assert store.record(report("ghost", "02:30", "down")) == ([], False)
    assert store.record(report("rag-chat", "03:00", None)) == ([], True)  # recovered
    # After a restart of aiops-bot (the platform restarting), the grace applies again...
    restarted = Store(tmp_path / "aiops.sqlite3", startup_grace=120, boot="second")
    assert restarted.record(report("rag-chat", "10:00", "down")) == ([], False)
    # ...while the same process alerts an app that answered before at once.
    alerts, _ = store.record(report("rag-chat", "10:01", "down"))
    assert [a["kind"] for a in alerts] == ["down"]


# --- tasks files and compose --------------------------------------------------------------
def test_every_tasks_file_validates_with_a_clean_environment() -> None:
    files = [f"apps/{name}/tasks.yaml" for name in APP_NAMES]
    result = subprocess.run(
        [sys.executable, "-m", "agentsched.cli", "validate", *files],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for name, line in zip(APP_NAMES, result.stdout.splitlines(), strict=True):
        count = len(yaml_task_names(name))
        assert line == f"ok: apps/{name}/tasks.yaml ({count} task{'s' if count > 1 else ''})"


def test_compose_file_runs_every_app_and_worker_against_redis_and_postgres() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["volumes"] and services["postgres"]["volumes"]
    assert (ROOT / "Dockerfile").is_file()
    for name in APP_NAMES:
        env = app_env(name)
        api, worker = services[name], services[f"{name}-worker"]
        for service in (api, worker):
            wired = service["environment"]
            for key in ("AGENTSCHED_APP", "AGENTSCHED_TASK_MODULES", "AGENTSCHED_TASKS_FILE"):
                assert wired[key] == env[key], (name, key)
            assert wired["AGENTSCHED_REDIS_URL"] == "redis://redis:6379/0"
            assert wired["AGENTSCHED_DATABASE_URL"].startswith("postgresql+asyncpg://")
            assert service["depends_on"]["redis"]["condition"] == "service_healthy"
            assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
            assert service["healthcheck"]["test"]
            assert service["build"] == "."
        assert api["command"][:2] == ["uvicorn", env["AGENTSCHED_ASGI_APP"]]
        assert worker["command"][:2] == ["arq", "agentsched.WorkerSettings"]
        assert api["volumes"] == worker["volumes"]  # one data dir for the app and its worker
        assert re.fullmatch(r"\d+:8000", api["ports"][0])
        assert name in api["environment"]["AGENTSCHED_PEERS"]
    volumes = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert volumes <= set(compose["volumes"])


def test_compose_file_follows_the_compose_specification() -> None:
    import importlib.resources

    import jsonschema

    schema_file = importlib.resources.files("check_jsonschema") / (
        "builtin_schemas/vendor/compose-spec.json"
    )
    schema = json.loads(schema_file.read_text())
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in
              validator.iter_errors(compose)]  # fmt: skip
    assert errors == []
    broken = {**compose, "services": {"x": {"image": 1, "restart": "sometimes"}}}
    assert list(validator.iter_errors(broken))  # the schema does reject a bad file


def test_compose_api_health_checks_send_the_api_key() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for name in APP_NAMES:
        [*_, code] = compose["services"][name]["healthcheck"]["test"]
        assert "/api/scheduler/health" in code
        assert "'X-API-Key': os.environ.get('AGENTSCHED_API_KEY', '')" in code
        compile(code, "healthcheck", "exec")  # the command is valid Python


# --- across apps, with real workers -------------------------------------------------------
@pytest.fixture
def platform(tmp_path: Path, prefix: str) -> Any:
    """Run some apps with `agentsched dev` on Redis DB 10 (fresh prefix); yields their URLs."""
    runs: list[DevProcess] = []

    def start(apps: list[str], db_url: str, **env: str) -> dict[str, str]:
        base = free_port_run()
        environment = clean_env(
            AGENTSCHED_REDIS_URL=APPS_REDIS_URL,
            AGENTSCHED_REDIS_PREFIX=prefix,
            AGENTSCHED_DATABASE_URL=db_url,
            **env,
        )
        dev = DevProcess(
            [
                "--apps",
                ",".join(apps),
                "--base-port",
                str(base),
                "--state-dir",
                str(tmp_path / "state"),
            ],
            environment,
            tmp_path / "dev.log",
        )
        runs.append(dev)
        dev.wait_ready(timeout=90)
        return {n: f"http://127.0.0.1:{base + APP_NAMES.index(n)}" for n in apps}

    yield start
    for dev in runs:
        code = dev.stop()
        print(dev.output[-6000:])  # shown with a failure's report
        assert code == 0
    asyncio.run(delete_prefix(APPS_REDIS_URL, prefix))


@pytest.mark.slow
async def test_scraped_page_is_answered_by_rag_chat(platform: Any, pg_url: str) -> None:
    urls = await asyncio.to_thread(platform, ["rag-chat", "scraper-agent"], pg_url)
    page = f"{urls['scraper-agent']}/demo/pages/2"
    async with httpx.AsyncClient(timeout=10) as client:
        queued = await client.post(f"{urls['scraper-agent']}/scrape", json={"url": page})
        assert queued.status_code == 202

        async def answered() -> Any:
            reply = await client.get(f"{urls['rag-chat']}/ask", params={"q": "consumer groups"})
            sources = reply.json()["sources"]
            return reply.json() if sources and sources[0]["url"] == page else None

        answer = await eventually(answered, timeout=40)
        assert "consumer group" in answer["answer"]
        assert answer["sources"][0]["title"] == "Redis Streams and consumer groups"

        async def recorded() -> Any:
            runs = await client.get(
                f"{urls['rag-chat']}/api/scheduler/executions",
                params={"function": "rag.index_page", "status": "success"},
            )
            return [r for r in runs.json()["items"] if r["result"]["url"] == page]

        # The history in PostgreSQL, written by the worker (the start-up crawl may have
        # indexed the page too: each run is one execution).
        run = (await eventually(recorded, timeout=40))[0]
        assert set(run["result"]) == {"url", "tokens"}
        assert run["result"]["url"] == page and run["result"]["tokens"] > 0


@pytest.mark.slow
async def test_aiops_alert_becomes_a_triaged_support_ticket(platform: Any, tmp_path: Path) -> None:
    ghost = f"http://127.0.0.1:{free_port()}"  # an app that is down
    urls = await asyncio.to_thread(
        platform,
        ["aiops-bot", "support-bot"],
        f"sqlite+aiosqlite:///{tmp_path}/platform.db",
        AGENTSCHED_PEERS=f"ghost-app={ghost}",
        AIOPS_STARTUP_GRACE="0",  # the ghost never answers: alert it at once
    )
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.post(f"{urls['aiops-bot']}/check")).status_code == 202

        async def triaged() -> Any:
            items = (await client.get(f"{urls['support-bot']}/tickets")).json()["items"]
            return next((t for t in items if t["status"] == "triaged"), None)

        ticket = await eventually(triaged, timeout=40)
        assert (ticket["app"], ticket["kind"], ticket["priority"]) == ("ghost-app", "down", "P1")
        assert ticket["team"] == "platform"

        async def linked() -> Any:
            alerts = (await client.get(f"{urls['aiops-bot']}/alerts")).json()["items"]
            return alerts if alerts and alerts[0]["ticket_id"] else None

        alerts = await eventually(linked)
        assert alerts[0]["ticket_id"] == str(ticket["id"])
        assert len(alerts) == 1
