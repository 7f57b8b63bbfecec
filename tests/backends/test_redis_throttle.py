"""Failed-login throttling across processes: with Redis, the counters are the deployment's.

Two app processes are two ``open_services`` in this process with the same Redis prefix (each
its own Redis connections, its own HTTP server), which is what two ``run.py`` share."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import tornado.httpserver
import tornado.testing

from presence_app.backends import redis_throttle
from presence_app.backends.redis_throttle import RedisLoginThrottle
from presence_app.client import PresenceClient
from presence_app.config import Settings
from tests.conftest import PASSWORD, REDIS_URL, unavailable
from tests.support.ports import free_port


@pytest.fixture(params=["redis"])
def redis_url(request: Any, redis_available: bool) -> str:
    if not redis_available:
        unavailable(f"Redis at {REDIS_URL} is not reachable")
    return REDIS_URL


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"


@pytest.fixture
def window() -> float:
    return 60.0


@pytest.fixture
def settings(settings: Settings, window: float) -> Settings:
    return replace(settings, login_max_failures=3, login_failure_window=window)


@pytest.fixture
def second_url(io_loop: Any, services: Any, settings: Settings) -> Any:
    """A second process of the same deployment: same database, same Redis prefix."""
    from handlers import make_app
    from presence_app.services import open_services

    manager = open_services(replace(settings, node_id="test-node-2"))
    other = io_loop.run_sync(manager.__aenter__, timeout=20)
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(make_app(other))
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}"
    server.stop()
    io_loop.run_sync(lambda: manager.__aexit__(None, None, None), timeout=20)


@pytest.mark.gen_test(timeout=30)
async def test_failures_spread_over_two_processes_lock_the_name_on_both(
    services: Any, make_client: Any, user_factory: Any, second_url: str
) -> None:
    assert isinstance(services.throttle, RedisLoginThrottle)
    await user_factory("alice")
    one, two = make_client(), PresenceClient(second_url)
    for client in (one, two, one):  # 3 failures, never 3 on one process
        assert (await client.login("Alice", "wrong password", check=False)).code == 401
    for client in (two, one):  # the right password too: the same answer as a wrong one
        blocked = await client.login("alice", PASSWORD, check=False)
        assert blocked.code == 429
        retry = int(blocked.headers["Retry-After"])
        assert 55 <= retry <= 60, retry  # the seconds the Redis lock has left
        assert f"Try again in {retry} s".encode() in blocked.body


@pytest.mark.parametrize("window", [1.0])
@pytest.mark.gen_test(timeout=30)
async def test_expiry_unlocks_on_both_processes(
    make_client: Any, user_factory: Any, second_url: str
) -> None:
    await user_factory("alice")
    one, two = make_client(), PresenceClient(second_url)
    for client in (one, two, two):
        assert (await client.login("alice", "wrong password", check=False)).code == 401
    blocked = await one.login("alice", PASSWORD, check=False)
    assert blocked.code == 429 and blocked.headers["Retry-After"] == "1"
    await asyncio.sleep(1.2)
    assert (await one.login("alice", PASSWORD, check=False)).code == 302
    assert (await two.login("alice", PASSWORD, check=False)).code == 302


@pytest.mark.gen_test(timeout=30)
async def test_simultaneous_guesses_on_two_processes_are_held_to_the_limit(
    services: Any, redis_prefix: str
) -> None:
    import redis.asyncio as aioredis

    clients = [aioredis.from_url(REDIS_URL) for _ in range(2)]
    throttles = [RedisLoginThrottle(c, redis_prefix, 3, 60.0) for c in clients]

    async def guess(i: int) -> bool:
        throttle = throttles[i % 2]
        if await throttle.reserve("bob", "10.0.0.9") > 0:
            return False
        await asyncio.sleep(0.05)  # a bcrypt check; the others must wait, not pass
        await throttle.release("bob", "10.0.0.9", False)
        return True

    try:
        checked = await asyncio.gather(*(guess(i) for i in range(30)))
        assert sum(checked) == 3, checked
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.gen_test(timeout=30)
async def test_redis_down_falls_back_to_local_counters_and_logs_once(caplog: Any) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    throttle = RedisLoginThrottle(client, "unused", 3, 60.0)
    caplog.set_level(logging.WARNING, logger="presence_app.backends.redis_throttle")
    try:
        start = time.monotonic()
        for _ in range(3):
            assert await throttle.reserve("carol", "10.0.0.1") == 0
            await throttle.release("carol", "10.0.0.1", False)
        assert await throttle.reserve("carol", "10.0.0.1") > 50  # locked in this process
        assert await throttle.reserve("dave", "10.0.0.1") == 0  # others still log in
        await throttle.release("dave", "10.0.0.1", True)
        assert time.monotonic() - start < 5
        assert throttle.redis_down
        warnings = [r for r in caplog.records if "does not answer" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        await client.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_redis_restart_falls_back_then_shares_again(tmp_path: Path, caplog: Any) -> None:
    import redis.asyncio as aioredis

    from tests.support.redis import RedisServer

    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")
    server = RedisServer(tmp_path).start()
    client = aioredis.from_url(server.url, socket_connect_timeout=1, socket_timeout=1)
    throttle = RedisLoginThrottle(client, "restart", 2, 60.0)
    caplog.set_level(logging.INFO, logger="presence_app.backends.redis_throttle")
    try:
        assert await throttle.reserve("erin", "10.0.0.1") == 0
        await throttle.release("erin", "10.0.0.1", False)
        server.stop()
        for _ in range(3):  # logins go on while Redis is away, counted here
            assert await throttle.reserve("frank", "10.0.0.1") == 0
            await throttle.release("frank", "10.0.0.1", True)
        assert throttle.redis_down and len(throttle) == 0
        server.start()  # the same port, emptied: erin's failure is gone with it
        await asyncio.sleep(redis_throttle.RETRY_REDIS + 0.1)
        assert await throttle.reserve("erin", "10.0.0.1") == 0
        await throttle.release("erin", "10.0.0.1", False)
        assert not throttle.redis_down
        assert await client.zcard("restart:login-failures:10.0.0.1|erin") == 1
        messages = [r.getMessage() for r in caplog.records]
        assert sum("does not answer" in m for m in messages) == 1, messages
        assert sum("answers the login throttle again" in m for m in messages) == 1, messages
    finally:
        await client.aclose()
        server.stop()
