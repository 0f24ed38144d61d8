"""`agentsched dev`: the whole platform on one machine, from the repository root.

Starts an embedded Redis (unless `AGENTSCHED_REDIS_URL` is set) and SQLite (unless
`AGENTSCHED_DATABASE_URL` is set), then for each app under `apps/*/app.env` one uvicorn
process and one `arq agentsched.WorkerSettings` worker, waits for every app's
`/api/scheduler/health` and says "ready", with a command to start each flow. A child
that exits is restarted with a back-off (`dev_supervisor.py`); only a crash loop or
Ctrl-C stops the platform. Children run in their own sessions, so Ctrl-C reaches only
this process, which stops them (SIGTERM, then SIGKILL after a grace period) and Redis
last; a second Ctrl-C kills at once. Child output is shown line by line, prefixed with
its name. The state file (`dev_state.py`) lets the other commands find the platform.
Also home of the logging configuration (`LOG_CONFIG`, read by arq's `--custom-log-dict`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from agentsched.dev_state import (
    SHARED_ENV,
    STATE_NAME,
    read_env_file,
    remove_state,
    runtime_dir,
    write_state,
)
from agentsched.dev_supervisor import Child, describe_exit
from agentsched.embedded_redis import HOST, EmbeddedRedis, port_is_free
from agentsched.errors import ConfigError
from agentsched.jobs.redis_checks import EMBEDDED_ENV
from agentsched.jobs.runtime import Runtime
from agentsched.settings import load_settings, mask_url

DEFAULT_LOG_CONFIG = "config/logging.yaml"
WORKER_LOG_DICT = "agentsched.dev.LOG_CONFIG"
# app.env keys read by `agentsched dev` only: schedules to run once when the platform is
# ready (comma-separated names), and a line telling how to start the app's flow, with
# `{app-name}` replaced by that app's URL.
RUN_ON_READY = "AGENTSCHED_DEV_RUN_ON_READY"
HINT = "AGENTSCHED_DEV_HINT"
# Each worker serves its Prometheus metrics on its API's port plus this (8001 -> 9101).
METRICS_PORT_OFFSET = 1100
_FALLBACK_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"arq": {"level": "WARNING"}},
    "root": {"level": "INFO", "handlers": ["console"]},
}


def load_log_config(path: str | Path) -> dict[str, Any]:
    """A logging dictConfig from a YAML or JSON file; a minimal default if it is missing."""
    file = Path(path)
    if not file.is_file():
        return dict(_FALLBACK_LOGGING)
    text = file.read_text()
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{file}: not valid {file.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ConfigError(f"{file}: not a logging dictConfig (needs 'version: 1')")
    return data


def __getattr__(name: str) -> Any:
    # `arq --custom-log-dict agentsched.dev.LOG_CONFIG` reads this attribute: loaded on
    # access, so importing the module reads no file and no environment.
    if name == "LOG_CONFIG":
        return load_log_config(os.environ.get("AGENTSCHED_LOG_CONFIG", DEFAULT_LOG_CONFIG))
    raise AttributeError(f"module 'agentsched.dev' has no attribute {name!r}")


@dataclass(frozen=True, slots=True)
class AppSpec:
    """One app of the platform: its directory, its `app.env` and its port."""

    name: str
    directory: Path
    port: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def asgi_app(self) -> str:
        default = f"{self.name.replace('-', '_')}.main:app"
        return self.env.get("AGENTSCHED_ASGI_APP", default)


def discover_apps(root: Path, base_port: int) -> list[AppSpec]:
    """Every `apps/<name>/app.env`, sorted by name; ports follow that order."""
    found = sorted(p.parent for p in (root / "apps").glob("*/app.env"))
    if not found:
        raise ConfigError(f"no apps/*/app.env under {root}: run 'agentsched dev' in the repo root")
    return [
        AppSpec(d.name, d.resolve(), base_port + i, read_env_file(d / "app.env"))
        for i, d in enumerate(found)
    ]


@dataclass
class Options:
    apps: list[str] | None = None
    base_port: int = 8001
    redis_port: int = 6390
    state_dir: Path = Path(".agentsched")
    ready_timeout: float = 90.0
    grace: float = 15.0


def say(message: str) -> None:
    print(f"agentsched dev: {message}", flush=True)


def _healthy(response: httpx.Response) -> bool:
    """Redis and the database answer (200) and a worker of the app renewed its heartbeat."""
    return response.status_code == 200 and response.json().get("workers", {}).get("live", 0) > 0


class Platform:
    """The running platform: Redis, the database URL and a child process per app and role."""

    def __init__(self, root: Path, options: Options) -> None:
        self.root = root
        self.options = options
        self.state = (root / options.state_dir).resolve()
        self.redis: EmbeddedRedis | None = None
        self.children: list[Child] = []
        self.stop = asyncio.Event()
        self.signals = 0
        self.supervisors: list[asyncio.Task[None]] = []
        self.failure: str | None = None  # why the platform stopped on its own
        self.width = 0
        self.state_files = [self.state / STATE_NAME, runtime_dir() / f"dev-{os.getpid()}.env"]

    def select_apps(self) -> list[AppSpec]:
        apps = discover_apps(self.root, self.options.base_port)
        if self.options.apps:
            known = {a.name for a in apps}
            unknown = [n for n in self.options.apps if n not in known]
            if unknown:
                raise ConfigError(
                    f"--apps: unknown {', '.join(unknown)} (known: {', '.join(sorted(known))})"
                )
            apps = [a for a in apps if a.name in self.options.apps]
        busy = [f"{a.port} ({a.name})" for a in apps if not port_is_free(a.port)]
        if busy:
            raise ConfigError(f"port(s) in use: {', '.join(busy)}; try --base-port")
        return apps

    def _start_redis(self) -> str:
        port = self.options.redis_port
        if port and not port_is_free(port):
            say(f"port {port} is in use, picking a free one for Redis")
            port = 0
        self.redis = EmbeddedRedis(self.state / "redis", port)
        say(f"starting embedded Redis on {HOST}:{self.redis.port} (data in {self.redis.data_dir})")
        return self.redis.start()

    async def connections(self, shared: dict[str, str]) -> tuple[str, str]:
        """The Redis and database URLs, both checked reachable (tables created once, here)."""
        redis_url = os.environ.get("AGENTSCHED_REDIS_URL") or shared.get("AGENTSCHED_REDIS_URL")
        if not redis_url:
            redis_url = await asyncio.to_thread(self._start_redis)
        db_url = os.environ.get("AGENTSCHED_DATABASE_URL") or shared.get("AGENTSCHED_DATABASE_URL")
        db_url = db_url or f"sqlite+aiosqlite:///{self.state / 'agentsched.db'}"
        say(f"Redis {mask_url(redis_url)}, database {mask_url(db_url)}")
        # Create the tables before ten processes race to do it on one SQLite file.
        async with Runtime(load_settings(redis_url=redis_url, database_url=db_url)):
            pass
        return redis_url, db_url

    def child_env(self, app: AppSpec, base: dict[str, str], peers: str) -> dict[str, str]:
        env = {**base, **app.env}
        path = [str(app.directory), str(self.root), os.environ.get("PYTHONPATH", "")]
        env.update(
            AGENTSCHED_DATA_DIR=str(self.state / "data" / app.name),
            AGENTSCHED_PUBLIC_URL=app.url, AGENTSCHED_PEERS=env.get("AGENTSCHED_PEERS") or peers,
            PYTHONPATH=os.pathsep.join(p for p in path if p), PYTHONUNBUFFERED="1",
        )  # fmt: skip
        return env

    def plan(self, apps: list[AppSpec], base: dict[str, str]) -> list[Child]:
        peers = ",".join(f"{a.name}={a.url}" for a in apps)
        log_config = base["AGENTSCHED_LOG_CONFIG"]
        children = []
        for app in apps:
            env = self.child_env(app, base, peers)
            children.append(Child(f"{app.name}.api", [
                sys.executable, "-m", "uvicorn", app.asgi_app, "--app-dir", str(app.directory),
                "--host", HOST, "--port", str(app.port), "--log-config", log_config,
                "--timeout-graceful-shutdown", "5",
            ], env))  # fmt: skip
            metrics = {"AGENTSCHED_METRICS_PORT": str(app.port + METRICS_PORT_OFFSET)}
            children.append(Child(f"{app.name}.worker", [
                sys.executable, "-m", "arq", "agentsched.WorkerSettings",
                "--custom-log-dict", WORKER_LOG_DICT,
            ], {**env, **metrics}))  # fmt: skip
        return children

    def base_env(self, shared: dict[str, str], redis_url: str, db_url: str) -> dict[str, str]:
        base = {**shared, **os.environ}
        log_config = self.root / base.get("AGENTSCHED_LOG_CONFIG", DEFAULT_LOG_CONFIG)
        base.update(
            AGENTSCHED_REDIS_URL=redis_url, AGENTSCHED_DATABASE_URL=db_url,
            AGENTSCHED_LOG_CONFIG=str(log_config),
        )  # fmt: skip
        if self.redis is not None:  # keeps nothing on purpose: no persistence warning
            base[EMBEDDED_ENV] = "1"
        return base

    async def wait_ready(self, apps: list[AppSpec], headers: dict[str, str]) -> bool:
        """Poll each app's health until all are healthy; False if stopped or timed out."""
        pending = {a.name: f"{a.url}/api/scheduler/health" for a in apps}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.ready_timeout
        async with httpx.AsyncClient(timeout=2.0, headers=headers) as client:
            while pending:
                if self.stop.is_set():
                    return False
                if loop.time() > deadline:
                    say(f"not ready after {self.options.ready_timeout:.0f}s: {', '.join(pending)}")
                    return False
                for name, url in list(pending.items()):
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        if _healthy(await client.get(url)):
                            del pending[name]
                            say(f"{name} is healthy ({len(apps) - len(pending)}/{len(apps)})")
                await asyncio.sleep(0.25)
        return True

    def on_signal(self) -> None:
        self.signals += 1
        self.stop.set()
        if self.signals > 1:
            for child in self.children:
                child.signal(signal.SIGKILL)

    async def supervise(self, child: Child) -> None:
        """Restart `child` whenever it exits, until Ctrl-C or a crash loop stops the platform."""
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            code = await child.wait()
            if self.stop.is_set():
                return
            backoff = child.policy.record(loop.time())
            if backoff is None:
                last = f"; its last line: {child.last_line[:200]}" if child.last_line else ""
                self.failure = (
                    f"{child.label} {describe_exit(code)} {child.policy.limit} times within "
                    f"{child.policy.window:.0f}s; stopping the platform{last}"
                )
                say(self.failure)
                self.stop.set()
                return
            say(f"{child.label} {describe_exit(code)}; restarting it in {backoff:g}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), backoff)
            if self.stop.is_set():
                return
            await child.start(self.root, self.width)
            say(f"{child.label} restarted (pid {child.pid})")

    async def run_on_ready(self, apps: list[AppSpec], headers: dict[str, str]) -> None:
        """Run now the schedules each app.env names in `AGENTSCHED_DEV_RUN_ON_READY`, so a
        newcomer sees the flows at once instead of after their first interval."""
        async with httpx.AsyncClient(timeout=10.0, headers=headers) as client:
            for app in apps:
                names = [n.strip() for n in app.env.get(RUN_ON_READY, "").split(",")]
                for name in filter(None, names):
                    base = f"{app.url}/api/scheduler/tasks"
                    try:
                        listed = await client.get(base, params={"limit": 500})
                        found = [t for t in listed.json()["items"] if t["name"] == name]
                        if not found:
                            say(f"{app.name}: no schedule {name!r} to run at start-up")
                            continue
                        run = await client.post(f"{base}/{found[0]['id']}/run")
                        run.raise_for_status()
                    except (httpx.HTTPError, ValueError, KeyError) as exc:
                        say(f"{app.name}: could not run {name!r} at start-up: {exc}")
                        continue
                    say(f"{app.name}: ran schedule {name!r} now (execution {run.json()['id']})")

    def say_hints(self, apps: list[AppSpec]) -> None:
        urls = {a.name: a.url for a in apps}
        for app in apps:
            hint = app.env.get(HINT)
            if hint:
                with contextlib.suppress(KeyError, ValueError, IndexError):
                    say(f"  try: {hint.format_map(urls)}")

    async def shutdown(self) -> None:
        """SIGTERM every child, SIGKILL those still running after the grace period, then Redis."""
        self.stop.set()
        remove_state(self.state_files)  # first: commands following the platform let go now
        for supervisor in self.supervisors:
            supervisor.cancel()
        await asyncio.gather(*self.supervisors, return_exceptions=True)
        running = [c for c in self.children if c.proc is not None]
        if running:
            say(f"stopping {len(running)} process(es)")
        for child in running:
            child.signal(signal.SIGTERM)
        waits = [asyncio.create_task(c.wait()) for c in running]
        if waits:
            _, late = await asyncio.wait(waits, timeout=self.options.grace)
            for child in running:
                if child.returncode is None:
                    say(f"{child.label} did not stop in {self.options.grace:.0f}s, killing it")
                    child.signal(signal.SIGKILL)
            if late:
                await asyncio.wait(late)
        if self.redis is not None:
            await asyncio.to_thread(self.redis.stop)
            self.redis = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_signal)
        try:
            return await self._run()
        finally:
            await self.shutdown()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _run(self) -> int:
        apps = self.select_apps()
        shared = read_env_file(self.root / SHARED_ENV) if (self.root / SHARED_ENV).is_file() else {}
        self.state.mkdir(parents=True, exist_ok=True)
        redis_url, db_url = await self.connections(shared)
        write_state(self.state_files, {
            "AGENTSCHED_REDIS_URL": redis_url, "AGENTSCHED_DATABASE_URL": db_url,
            "AGENTSCHED_DEV_PID": str(os.getpid()), "AGENTSCHED_DEV_ROOT": str(self.root),
            "AGENTSCHED_DEV_APPS": ",".join(f"{a.name}={a.url}" for a in apps),
        })  # fmt: skip
        base = self.base_env(shared, redis_url, db_url)
        self.children = self.plan(apps, base)
        self.width = max(len(c.label) for c in self.children)
        for app in apps:
            say(f"starting {app.name}: api {app.url} + worker")
        for child in self.children:
            await child.start(self.root, self.width)
        self.supervisors = [asyncio.create_task(self.supervise(c)) for c in self.children]
        key = base.get("AGENTSCHED_API_KEY")
        headers = {"X-API-Key": key} if key else {}
        if not await self.wait_ready(apps, headers):
            return 1 if self.failure or not self.signals else 0
        say(f"ready: {len(apps)} app(s), {len(apps)} worker(s), Redis {mask_url(redis_url)}")
        for app in apps:
            say(f"  {app.name:<14} dashboard {app.url}/api/scheduler/ui/   docs {app.url}/docs")
        await self.run_on_ready(apps, headers)
        self.say_hints(apps)
        say("press Ctrl-C to stop; a process that exits is restarted")
        await self.stop.wait()
        return 1 if self.failure else 0


def run_dev(options: Options, root: Path | None = None) -> int:
    """Entry point of `agentsched dev`: the exit code (0 after Ctrl-C)."""
    return asyncio.run(Platform(root or Path.cwd(), options).run())
