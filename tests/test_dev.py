"""`agentsched dev`: the platform comes up, says ready, and Ctrl-C leaves nothing behind.

Also holds the helpers `test_apps.py` uses to run part of the platform as a subprocess.
"""

from __future__ import annotations

import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from agentsched.cli import build_parser
from agentsched.dev import (
    HINT,
    METRICS_PORT_OFFSET,
    RUN_ON_READY,
    discover_apps,
    load_log_config,
)
from agentsched.dev_state import read_env_file
from agentsched.dev_supervisor import CrashPolicy, describe_exit
from agentsched.embedded_redis import EmbeddedRedis, port_is_free
from agentsched.errors import ConfigError, ServiceUnavailable

ROOT = Path(__file__).resolve().parent.parent
APP_NAMES = ["aiops-bot", "email-agent", "rag-chat", "scraper-agent", "support-bot"]


def free_port_run(count: int = len(APP_NAMES)) -> int:
    """A base port such that base .. base+count-1 (and their metrics ports) are all free.

    Below the kernel's ephemeral range (32768 up), so no port-0 bind or outgoing
    connection of a test running beside this one takes a port between check and use.
    """
    for _ in range(200):
        base = random.randrange(10_000, 32_768 - METRICS_PORT_OFFSET - count)
        ports = [base + i for i in range(count)]
        if all(port_is_free(p) and port_is_free(p + METRICS_PORT_OFFSET) for p in ports):
            return base
    raise RuntimeError("no run of free ports")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSCHED_")}
    env.update(extra)
    return env


class DevProcess:
    """`python -m agentsched.cli dev ...` with its output in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentsched.cli", "dev", *args],
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while "agentsched dev: press Ctrl-C to stop" not in self.output:  # after the hints
            if self.proc.poll() is not None:
                pytest.fail(f"dev exited with {self.proc.returncode}:\n{self.output[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"dev not ready after {timeout}s:\n{self.output[-4000:]}")
            time.sleep(0.2)

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} not said within {timeout}s:\n{self.output[-4000:]}")
            time.sleep(0.1)

    def stop(self, timeout: float = 45.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._out.close()


def descendants(pid: int) -> set[int]:
    """Every live descendant of `pid` (psutil when installed, else a /proc scan)."""
    try:
        import psutil
    except ImportError:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        found, frontier = set(), {pid}
        while frontier:
            frontier = {p for p, parent in parents.items() if parent in frontier} - found
            found |= frontier
        return found
    return {p.pid for p in psutil.Process(pid).children(recursive=True)}


def process_of(pids: set[int], program: str, app: str) -> int:
    """The pid among `pids` running `program` (in its command line) for `app`."""
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if program.encode() in cmdline and f"AGENTSCHED_APP={app}".encode() in environ:
            return pid
    raise AssertionError(f"no {program} process of {app} among {sorted(pids)}")


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def dev_runner(tmp_path: Path) -> Iterator[list[DevProcess]]:
    started: list[DevProcess] = []
    yield started
    for dev in started:
        dev.stop()


@pytest.mark.slow
def test_dev_becomes_ready_and_sigint_stops_everything(
    tmp_path: Path, dev_runner: list[DevProcess]
) -> None:
    base = free_port_run()
    redis_port = base
    while base <= redis_port < base + len(APP_NAMES):  # below the ephemeral range too
        redis_port = free_port_run(1)
    env = clean_env(AGENTSCHED_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/dev.db")
    state = tmp_path / "state"
    dev = DevProcess(
        ["--base-port", str(base), "--redis-port", str(redis_port), "--state-dir", str(state)],
        env,
        tmp_path / "dev.log",
    )
    dev_runner.append(dev)
    started = time.monotonic()
    dev.wait_ready(timeout=90)
    assert time.monotonic() - started < 90
    output = dev.output
    assert f"embedded Redis on 127.0.0.1:{redis_port}" in output
    for i, name in enumerate(APP_NAMES):
        assert f"{name} is healthy" in output
        assert f"dashboard http://127.0.0.1:{base + i}/api/scheduler/ui/ " in output
    home = httpx.get(f"http://127.0.0.1:{base}/", follow_redirects=True, timeout=10)
    assert home.status_code == 200 and home.url.path == "/api/scheduler/ui/"
    assert redis.Redis(port=redis_port).ping()
    assert read_env_file(state / "dev.env")["AGENTSCHED_REDIS_URL"].endswith(f":{redis_port}/0")
    children = descendants(dev.proc.pid)
    assert len(children) >= 2 * len(APP_NAMES) + 1  # an api and a worker per app, and Redis
    assert "scraper-agent: ran schedule 'crawl-seeds' now" in output  # no 10-minute wait
    assert "try: scraper-agent -> rag-chat: agentsched run crawl-seeds" in output
    [runtime_state] = (Path(os.environ["XDG_RUNTIME_DIR"]) / "agentsched").glob("dev-*.env")
    assert read_env_file(runtime_state) == read_env_file(state / "dev.env")

    # A running tail finds the platform from anywhere, and ends with it.
    tail_env = clean_env(PYTHONPATH=str(ROOT))
    tail = subprocess.Popen([sys.executable, "-m", "agentsched.cli", "events", "tail"],
                            cwd=tmp_path, env=tail_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert tail.stderr is not None
    first = tail.stderr.readline()  # said once it is connected: a busy machine starts slowly
    redis_at = f"redis://127.0.0.1:{redis_port}/0"
    assert first == f"agentsched: following events at {redis_at} (Ctrl-C stops)\n"

    # A worker killed outright is restarted; the others keep running.
    worker = process_of(children, "arq", "rag-chat")
    others = children - {worker}
    os.kill(worker, signal.SIGKILL)
    dev.wait_for("rag-chat.worker was killed by SIGKILL; restarting it in 0.5s")
    dev.wait_for("rag-chat.worker restarted (pid ")
    assert dev.proc.poll() is None and all(alive(p) for p in others)

    children = descendants(dev.proc.pid)  # with the restarted worker
    assert dev.stop() == 0, dev.output[-3000:]
    _, err = tail.communicate(timeout=30)
    assert tail.returncode == 1
    assert err.strip().splitlines() == [
        f"agentsched: the dev platform (pid {dev.proc.pid}) stopped; events tail ends"
    ]

    left = [pid for pid in children if alive(pid)]
    assert left == [], f"processes left behind: {left}"
    assert port_is_free(redis_port) and all(port_is_free(base + i) for i in range(5))
    assert not (state / "dev.env").exists()
    assert "stopping" in dev.output
    assert (state / "redis" / "appendonly.aof").exists()  # Redis persisted with AOF


def test_dev_unknown_app_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentsched.cli",
            "dev",
            "--apps",
            "nope",
            "--state-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "agentsched: --apps: unknown nope (known: " + ", ".join(APP_NAMES) + ")"
    ]


def test_dev_outside_a_repo_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agentsched.cli", "dev"],
        cwd=tmp_path,
        env=clean_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "run 'agentsched dev' in the repo root" in result.stderr


def test_crash_policy_backs_off_then_gives_up_on_a_crash_loop() -> None:
    policy = CrashPolicy(limit=5, window=60)
    assert [policy.record(t) for t in (0, 1, 2, 3)] == [0.5, 1.0, 2.0, 4.0]
    assert policy.record(4) is None  # five exits within a minute: a crash loop
    spaced = CrashPolicy(limit=5, window=60)
    assert [spaced.record(t * 61) for t in range(10)] == [0.5] * 10  # rare crashes: restart
    assert describe_exit(-9) == "was killed by SIGKILL" and describe_exit(3) == "exited with code 3"


def test_discover_apps_assigns_ports_in_name_order() -> None:
    apps = discover_apps(ROOT, 9000)
    assert [(a.name, a.port) for a in apps] == [(n, 9000 + i) for i, n in enumerate(APP_NAMES)]
    for app in apps:
        assert app.env["AGENTSCHED_APP"] == app.name
        module = app.asgi_app.split(":")[0]
        assert (app.directory / (module.replace(".", "/") + ".py")).is_file()


def test_every_flow_hint_names_a_real_command() -> None:
    apps = discover_apps(ROOT, 9000)
    urls = {a.name: a.url for a in apps}
    hints = [a.env[HINT].format_map(urls) for a in apps if HINT in a.env]
    assert len(hints) == 2  # scraper -> rag-chat, aiops -> support -> email
    parser = build_parser()
    for hint in hints:
        for command in re.findall(r"agentsched ([^,;]+?)(?:,|;| then|$)", hint):
            parser.parse_args(shlex.split(command))  # exits (a failure) if not a valid command
    for app in apps:
        for name in filter(None, app.env.get(RUN_ON_READY, "").split(",")):
            tasks = yaml.safe_load((app.directory / "tasks.yaml").read_text())["tasks"]
            assert name in {t["name"] for t in tasks}


def test_read_env_file_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("# comment\nA=1\n\nB = two words\nnot a pair\n")
    with pytest.raises(ConfigError, match=r"app\.env:5: expected KEY=value"):
        read_env_file(path)
    path.write_text("# comment\nA=1\n\nB = two words\n")
    assert read_env_file(path) == {"A": "1", "B": "two words"}


def test_logging_config_is_loadable() -> None:
    config = load_log_config(ROOT / "config" / "logging.yaml")
    assert config["version"] == 1
    assert config["loggers"]["arq"]["level"] == "WARNING"
    assert "console" in config["root"]["handlers"]
    missing = load_log_config(ROOT / "config" / "missing.yaml")
    assert missing["version"] == 1  # falls back to a minimal configuration


def test_shared_env_file_parses() -> None:
    values = read_env_file(ROOT / "config" / "agentsched.env")
    assert "AGENTSCHED_REDIS_URL" not in values  # dev decides: embedded unless set
    assert values["AGENTSCHED_LOG_CONFIG"] == "config/logging.yaml"
    assert (ROOT / values["AGENTSCHED_LOG_CONFIG"]).is_file()


def test_embedded_redis_starts_and_stops(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    with server:
        pid = server.pid
        assert pid is not None and alive(pid)
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
    assert not alive(pid)
    assert port_is_free(server.port)
    assert "appendonly yes" in (tmp_path / "redis" / "redis.conf").read_text()


def test_embedded_redis_port_in_use_is_reported(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ServiceUnavailable, match=f"port {port} is in use"):
            EmbeddedRedis(tmp_path / "redis", port).start()


def test_dev_with_unreachable_redis_is_one_line(tmp_path: Path) -> None:
    env = clean_env(AGENTSCHED_REDIS_URL="redis://127.0.0.1:1/0")
    result = subprocess.run(
        [sys.executable, "-m", "agentsched.cli", "dev", "--base-port", str(free_port_run()),
         "--state-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("agentsched: Redis unreachable at redis://127.0.0.1:1/0: ")
    assert "starting embedded Redis" not in result.stdout
    assert not (tmp_path / "dev.env").exists()


def test_a_port_whose_connections_linger_in_time_wait_is_free_a_listened_one_not() -> None:
    """`agentsched dev` checks its ports before starting; a platform just stopped leaves
    its Redis port's closed connections in TIME_WAIT, which must not make it 'in use'."""
    import socket

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert not port_is_free(port)
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end waits in TIME_WAIT
    client.recv(1)
    client.close()
    server.close()
    assert port_is_free(port)
