"""support-bot's own settings, read from the environment when asked (never at import)."""

from __future__ import annotations

import os
from pathlib import Path

APP = "support-bot"


def data_dir() -> Path:
    """Where the tickets live (`AGENTSCHED_DATA_DIR`, one per app)."""
    path = Path(os.environ.get("AGENTSCHED_DATA_DIR") or f".agentsched/data/{APP}")
    path.mkdir(parents=True, exist_ok=True)
    return path
