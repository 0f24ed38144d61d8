"""rag-chat's own settings, read from the environment when asked (never at import)."""

from __future__ import annotations

import os
from pathlib import Path

from rag_chat.index import Index

APP = "rag-chat"


def data_dir() -> Path:
    """Where the index lives (`AGENTSCHED_DATA_DIR`, one per app)."""
    path = Path(os.environ.get("AGENTSCHED_DATA_DIR") or f".agentsched/data/{APP}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def index() -> Index:
    return Index(data_dir() / "index.sqlite3")


def refresh_hours() -> float:
    return float(os.environ.get("RAG_REFRESH_HOURS") or 24)
