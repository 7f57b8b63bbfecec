"""Fixture chain: settings (tmp SQLite or PostgreSQL, bcrypt cost 4) -> services -> app ->
server (pytest-tornado) -> clients (the shared ``presence_app.client``).

Every test body runs over SQLite and PostgreSQL, and over the in-process and Redis brokers.
Real services only: the machine's PostgreSQL (a database made for this run) and Redis (a
key prefix per test).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest

from presence_app.client import PresenceClient, PresenceSocket
from presence_app.config import Settings, validate

PG_DSN = os.environ.get("PRESENCE_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("PRESENCE_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"
PASSWORD = "s3cret-pass"


def unavailable(what: str) -> None:
    """Skip outside CI, fail under CI=true: CI must provide every real component."""
    if IN_CI:
        pytest.fail(f"{what} (CI=true: required)")
    pytest.skip(what)


def pytest_report_header(config: Any) -> str:
    return f"presence tests: PostgreSQL {PG_DSN}, Redis {REDIS_URL}, CI={IN_CI}"


async def _pg_admin(sql: str) -> None:
    import asyncpg
    conn = await asyncpg.connect(PG_DSN + "/postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Any:
    """A PostgreSQL database of its own for this test run, dropped at the end."""
    name = f"presence_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        yield exc
        return
    yield f"{PG_DSN}/{name}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_database_url(request: Any, tmp_path: Path, pg_database: Any) -> Any:
    """An empty database of its own (a new PostgreSQL database per test, dropped after):
    for tests of migrations and admin commands, which run in other processes too. Not for
    pytest-tornado tests (asyncio.run here)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    if isinstance(pg_database, Exception):
        unavailable(f"PostgreSQL at {PG_DSN} is not reachable: {pg_database}")
    name = f"presence_fresh_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+asyncpg://{PG_DSN.split('://', 1)[1]}/{name}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _reset_pg(url: str) -> None:
    import asyncpg
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS pending_offline, online_users, sessions, users, write_probes, "
            "alembic_version CASCADE")
    finally:
        await conn.close()


async def _redis_ok() -> bool:
    import redis.asyncio as aioredis
    client = aioredis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_available() -> bool:
    return asyncio.run(_redis_ok())


# Note: no asyncio.run() in function-scoped fixtures: it would unset pytest-tornado's loop.
@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: Any, tmp_path: Path, pg_database: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'presence.db'}"
    if isinstance(pg_database, Exception):
        unavailable(f"PostgreSQL at {PG_DSN} is not reachable: {pg_database}")
    return "postgresql+asyncpg://" + pg_database.split("://", 1)[1]


@pytest.fixture(params=["memory", "redis"])
def redis_url(request: Any, redis_available: bool) -> str:
    if request.param == "memory":
        return ""
    if not redis_available:
        unavailable(f"Redis at {REDIS_URL} is not reachable")
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> str:
    return f"presence-test-{uuid.uuid4().hex[:10]}"


async def reset_backends(settings: Settings) -> None:
    """Empty tables and keys a test may find: each test starts from nothing."""
    if settings.database_url.startswith("postgresql"):
        await _reset_pg("postgresql://" + settings.database_url.split("://", 1)[1])
    if settings.redis_url:
        await _drop_redis_keys(settings.redis_url, settings.redis_prefix)


async def _drop_redis_keys(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis
    client = aioredis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str, redis_url: str, redis_prefix: str) -> Settings:
    return validate(Settings(
        port=0, data_dir=tmp_path, database_url=database_url, redis_url=redis_url,
        redis_prefix=redis_prefix, cookie_secret="test-cookie-secret-" + uuid.uuid4().hex,
        bcrypt_rounds=4, node_id="test-node", flush_interval=0.05, heartbeat_timeout=2.0))


@pytest.fixture
def services(io_loop: Any, settings: Settings) -> Any:
    from presence_app.services import open_services
    io_loop.run_sync(lambda: reset_backends(settings), timeout=20)
    manager = open_services(settings)
    opened = io_loop.run_sync(manager.__aenter__, timeout=20)
    yield opened
    io_loop.run_sync(lambda: manager.__aexit__(None, None, None), timeout=20)
    io_loop.run_sync(lambda: reset_backends(settings), timeout=20)


@pytest.fixture
def app(services: Any) -> Any:
    from handlers import make_app
    return make_app(services)


@pytest.fixture
def make_client(app: Any, http_server: Any, base_url: str) -> Any:
    """Factory of HTTP+WebSocket clients; sockets they open are closed at the end."""
    sockets: list[PresenceSocket] = []

    class TrackingClient(PresenceClient):
        async def connect(self, *args: Any, **kwargs: Any) -> PresenceSocket:
            sock = await super().connect(*args, **kwargs)
            sockets.append(sock)
            return sock

    yield lambda: TrackingClient(base_url)
    for sock in sockets:
        sock.ws.transport.abort() if sock.ws.transport else None


@pytest.fixture
def user_factory(make_client: Callable[[], PresenceClient]) -> Any:
    """``await user("alice")``: a signed-up, logged-in client."""
    async def make(username: str, password: str = PASSWORD) -> PresenceClient:
        client = make_client()
        await client.signup(username, password)
        return client
    return make


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    # Give every async test more than pytest-tornado's 5 s default on a busy 2-core machine.
    for item in items:
        marker = item.get_closest_marker("gen_test")
        if marker is not None and "timeout" not in marker.kwargs:
            marker.kwargs["timeout"] = 30


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


__all__ = ["PASSWORD", "unavailable", "nginx_binary", "replace"]
