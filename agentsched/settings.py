"""Settings from `AGENTSCHED_*` environment variables (pydantic-settings).

Nothing here runs at import: `get_settings()` reads and validates the environment on
first use and caches the result; a bad value raises `ConfigError` with one line that
names the variable.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agentsched.errors import ConfigError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
ENV_PREFIX = "AGENTSCHED_"


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of agentsched; each field is `AGENTSCHED_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    redis_url: str = "redis://localhost:6379/0"
    database_url: str = "sqlite+aiosqlite:///./agentsched.db"
    app: str = "default"
    task_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    tasks_file: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_key: SecretStr | None = None

    # Redis key prefix of everything agentsched owns (arq's own keys keep arq's names).
    redis_prefix: str = "agentsched:"
    # Worker: the pause between arq's polls while it has work.
    poll_delay: float = Field(default=0.002, gt=0, le=5)
    # An idle worker waits this long at most for a wake-up before it looks again (jobs
    # and cancels through agentsched wake it at once; jobs written around it do not).
    idle_poll: float = Field(default=0.5, gt=0, le=60)
    max_jobs: int = Field(default=10, ge=1, le=10_000)
    job_timeout: float = Field(default=300, gt=0)
    # A running job whose worker stopped renewing its lease this long ago is recovered.
    lease_seconds: float = Field(default=5.0, ge=1, le=600)
    # How long Redis keeps status and results after an execution ends.
    keep_result: float = Field(default=86_400, ge=1)
    # How long SQL keeps an execution after it ends, in days (0 keeps them forever).
    history_days: float = Field(default=30, ge=0)
    # Write-behind recorder: most rows per SQL statement.
    record_batch: int = Field(default=500, ge=1, le=10_000)
    # Event bus.
    event_maxlen: int = Field(default=100_000, ge=100)
    event_max_payload: int = Field(default=1_048_576, ge=1_024)
    max_body_bytes: int = Field(default=1_048_576, ge=1_024)
    # Scheduler loop in every worker.
    scheduler_enabled: bool = True
    log_level: str = "INFO"
    # Issue 12 (hardening): open `GET /events/stream` responses per API process (each holds
    # a Redis connection); beyond it a JSON 503.
    max_event_streams: int = Field(default=64, ge=1, le=10_000)
    # Most Redis connections one process opens (per pool); a call beyond it waits for a
    # free one, within the outage retry, so no client can exhaust Redis' maxclients.
    redis_max_connections: int = Field(default=256, ge=8, le=100_000)

    # issue 11: Redis faults.
    # How long the API, TaskQueue and the CLI wait for an unavailable Redis before
    # answering 503 / raising ServiceUnavailable (workers wait for as long as it takes).
    redis_retry_seconds: float = Field(default=5.0, ge=0, le=300)
    # The SQL-to-Redis reconciler: one pass per app at most this often (0 turns it off);
    # a row it heals must have been unchanged for this long.
    reconcile_seconds: float = Field(default=10.0, ge=0, le=3600)
    # enqueue returns only once the execution row is committed in SQL.
    durable_enqueue: bool = False
    # issue 13: observability
    # Port of this process's Prometheus metrics, served without the API key (off: unset).
    metrics_port: int | None = Field(default=None, ge=1, le=65_535)
    # Interface of that port: loopback unless a scraper on another host needs it (compose).
    metrics_host: str = "127.0.0.1"
    # Count metrics at all (false: every counting call returns at once).
    metrics_enabled: bool = True
    # Spans through OpenTelemetry when it is installed and a tracer provider is set.
    tracing: bool = True
    # `text` (one line, context fields appended) or `json` (one object per line).
    log_format: Literal["text", "json"] = "text"

    @field_validator("task_modules", "tasks_file", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_port(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("app")
    @classmethod
    def _app_name(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value):
            raise ValueError("must match [a-z0-9][a-z0-9._-]{0,127}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in {"redis", "rediss", "unix", "redis+sentinel"}:
            raise ValueError("must be a redis://, rediss://, unix:// or redis+sentinel:// URL")
        if scheme == "redis+sentinel":
            _check_sentinel_url(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme == "postgresql":
            return "postgresql+asyncpg" + value[len(scheme) :]
        if scheme == "sqlite":
            return "sqlite+aiosqlite" + value[len(scheme) :]
        if scheme not in {"postgresql+asyncpg", "sqlite+aiosqlite"}:
            raise ValueError("must be a postgresql+asyncpg:// or sqlite+aiosqlite:// URL")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level


def _check_sentinel_url(value: str) -> None:
    """`redis+sentinel://[:password@]host:port[,host:port...]/service[/db]`."""
    parts = urlsplit(value)
    hosts = parts.netloc.rpartition("@")[2]
    path = [p for p in parts.path.split("/") if p]
    if not hosts or not path or len(path) > 2:
        raise ValueError(
            "redis+sentinel:// needs sentinel addresses and a service name: "
            "redis+sentinel://host1:26379,host2:26379/mymaster/0"
        )
    for item in hosts.split(","):
        port = item.rpartition(":")[2] if ":" in item else "26379"
        if not item or not port.isdigit():
            raise ValueError(f"redis+sentinel://: {item!r} is not host:port")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError("redis+sentinel://: the database must be a number")


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the environment (plus overrides); one-line `ConfigError` if bad."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        raise ConfigError(f"{ENV_PREFIX}{field.upper()}: {err['msg']}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once on first use."""
    return load_settings()


def mask_url(url: str) -> str:
    """`url` with any password replaced by `***`, for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))
