"""The version ``--version`` prints: one source, pyproject.toml.

Installed, it comes from the package metadata. Run from a checkout (``python run.py``), the
metadata may be missing or belong to another installed copy, so the checkout's own
pyproject.toml is read instead.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

DIST_NAME = "presence"
CHECKOUT = Path(__file__).resolve().parents[2]


def checkout_version(root: Path = CHECKOUT) -> str | None:
    """The version in ``root/pyproject.toml`` when that is this project's, else None."""
    try:
        with open(root / "pyproject.toml", "rb") as file:
            project = tomllib.load(file).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    if project.get("name") != DIST_NAME or not isinstance(project.get("version"), str):
        return None
    return str(project["version"])


def version() -> str:
    found = checkout_version()
    if found is not None:
        return found
    try:
        return metadata.version(DIST_NAME)
    except metadata.PackageNotFoundError:  # copied files, neither installed nor a checkout
        return "unknown"
