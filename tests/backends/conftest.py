"""Fixtures of the backend tests: one test body over ``memory://`` and the real Redis."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.env import REDIS_URL, unavailable


@pytest.fixture(params=["memory", "redis"])
def backend_url(request: Any, redis_available: bool) -> str:
    """The URL of each backend in turn (with ``redis_prefix``, a Redis test's own keys)."""
    if request.param == "memory":
        return "memory://"
    if not redis_available:
        unavailable(f"Redis at {REDIS_URL} is not reachable")
    return REDIS_URL
