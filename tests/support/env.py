"""Where the tests find the project and the machine's services, and what to do when a real
component is missing: skip on a developer's machine, fail under ``CI=true``.

Bench imports this package too, so nothing here imports pytest at module level.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

#: The repository: ``run.py``, ``deploy/nginx.conf`` and the packages are found from here.
ROOT = Path(__file__).resolve().parents[2]
#: The machine's PostgreSQL server (no database name): test databases are made on it.
PG_DSN = os.environ.get("PRESENCE_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
#: The machine's Redis; tests share it, each under a key prefix of its own.
REDIS_URL = os.environ.get("PRESENCE_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(what: str) -> NoReturn:
    """Skip outside CI, fail under CI=true: CI must provide every real component."""
    import pytest

    if IN_CI:
        pytest.fail(f"{what} (CI=true: required)")
    pytest.skip(what)
