"""`agentsched.__version__` is the installed distribution's version (pyproject.toml)."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import agentsched


def test_version_comes_from_the_package_metadata() -> None:
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert agentsched.__version__ == version("agentsched") == project["project"]["version"]
