"""Failed-login throttling (an extension the contract welcomes; successful logins are free)."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from presence_app.config import Settings
from presence_app.throttle import LoginThrottle
from tests.conftest import PASSWORD


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, login_max_failures=3, login_failure_window=60.0)


@pytest.mark.gen_test
async def test_too_many_failures_wait_then_429(make_client: Any, user_factory: Any) -> None:
    await user_factory("alice")
    await user_factory("bob")
    client = make_client()
    for _ in range(3):
        assert (await client.login("alice", "wrong password", check=False)).code == 401
    blocked = await client.login("alice", PASSWORD, check=False)
    assert blocked.code == 429
    assert int(blocked.headers["Retry-After"]) > 0
    assert b"Too many failed attempts" in blocked.body
    # Another name is not affected, and successful logins are never throttled.
    for _ in range(10):
        assert (await make_client().login("bob", PASSWORD, check=False)).code == 302


def test_failures_expire_after_the_window() -> None:
    throttle = LoginThrottle(max_failures=2, window=0.2)
    throttle.failed("Alice", "1.2.3.4")
    throttle.failed("alice", "1.2.3.4")
    assert throttle.retry_after("ALICE", "1.2.3.4") > 0
    assert throttle.retry_after("alice", "5.6.7.8") == 0
    time.sleep(0.25)
    assert throttle.retry_after("alice", "1.2.3.4") == 0


def test_success_clears_and_zero_disables() -> None:
    throttle = LoginThrottle(max_failures=1, window=60)
    throttle.failed("bob", "ip")
    assert throttle.retry_after("bob", "ip") > 0
    throttle.succeeded("bob", "ip")
    assert throttle.retry_after("bob", "ip") == 0
    off = LoginThrottle(max_failures=0, window=60)
    for _ in range(100):
        off.failed("bob", "ip")
    assert off.retry_after("bob", "ip") == 0
