"""aiops-bot's own settings, read from the environment when asked (never at import)."""

from __future__ import annotations

import os
from pathlib import Path

APP = "aiops-bot"
DEFAULT_PEERS = (
    "aiops-bot=http://127.0.0.1:8001,email-agent=http://127.0.0.1:8002,"
    "rag-chat=http://127.0.0.1:8003,scraper-agent=http://127.0.0.1:8004,"
    "support-bot=http://127.0.0.1:8005"
)


def data_dir() -> Path:
    """Where the check state and alerts live (`AGENTSCHED_DATA_DIR`, one per app)."""
    path = Path(os.environ.get("AGENTSCHED_DATA_DIR") or f".agentsched/data/{APP}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def peers() -> dict[str, str]:
    """The apps to watch: `AGENTSCHED_PEERS` as name=url pairs, comma-separated."""
    found = {}
    for item in os.environ.get("AGENTSCHED_PEERS", DEFAULT_PEERS).split(","):
        name, sep, url = item.partition("=")
        if sep and name.strip() and url.strip():
            found[name.strip()] = url.strip().rstrip("/")
    return found


def timeout() -> float:
    return float(os.environ.get("AIOPS_TIMEOUT") or 3)


def startup_grace() -> float:
    """Seconds an app that never answered is given before it is alerted as down."""
    return float(os.environ.get("AIOPS_STARTUP_GRACE") or 120)
