"""scraper-agent's own settings, read from the environment when asked (never at import)."""

from __future__ import annotations

import os
from pathlib import Path

APP = "scraper-agent"


def data_dir() -> Path:
    """Where fetched pages are kept (`AGENTSCHED_DATA_DIR`, one per app)."""
    path = Path(os.environ.get("AGENTSCHED_DATA_DIR") or f".agentsched/data/{APP}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def public_url() -> str:
    """The URL this app is reachable at; its demo pages are served there."""
    return os.environ.get("AGENTSCHED_PUBLIC_URL", "http://127.0.0.1:8004").rstrip("/")


def seeds() -> list[str]:
    configured = [u.strip() for u in os.environ.get("SCRAPER_SEEDS", "").split(",") if u.strip()]
    return configured or [f"{public_url()}/demo/pages/1"]


def max_pages() -> int:
    return int(os.environ.get("SCRAPER_MAX_PAGES") or 20)
