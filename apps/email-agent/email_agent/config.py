"""email-agent's own settings, read from the environment when asked (never at import)."""

from __future__ import annotations

import os
from pathlib import Path

APP = "email-agent"


def data_dir() -> Path:
    """Holds `maildir/` (incoming) and `outbox/` (`AGENTSCHED_DATA_DIR`, one per app)."""
    path = Path(os.environ.get("AGENTSCHED_DATA_DIR") or f".agentsched/data/{APP}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def digest_to() -> str:
    return os.environ.get("EMAIL_DIGEST_TO") or "team@example.com"


def team_address(team: str) -> str:
    return f"{team}@{os.environ.get('EMAIL_TEAM_DOMAIN') or 'example.com'}"
