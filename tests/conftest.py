"""Fixture chain: settings (tmp SQLite or PostgreSQL, bcrypt cost 4) -> services -> app ->
server (pytest-tornado) -> clients (the shared ``presence_app.client``).

Every test body runs over SQLite and PostgreSQL, and over the in-process and Redis brokers.
Real services only: the machine's PostgreSQL (a database made for this run) and Redis (a
key prefix per test).

Real processes: ``app_process`` starts ``python run.py``; ``real_redis_url`` is the machine's
Redis for tests that need it once (the cluster and e2e suites take it instead of the
parametrised ``redis_url``). The harness behind them is tests/support, shared with bench.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from presence_app.client import PresenceClient, PresenceSocket
from presence_app.config import Settings, validate
from tests.support.apps import AppProcess, clean_env
from tests.support.clients import PASSWORD
from tests.support.databases import (
    app_url,
    create_database,
    drop_app_tables,
    drop_database,
    postgres_url,
    sqlite_url,
)
from tests.support.env import IN_CI, PG_DSN, REDIS_URL, unavailable
from tests.support.redis import drop_keys, ping
from tests.support.waiting import run_blocking


def pytest_report_header(config: Any) -> str:
    return f"presence tests: PostgreSQL {PG_DSN}, Redis {REDIS_URL}, CI={IN_CI}"


@pytest.fixture(scope="session")
def pg_database() -> Any:
    """A PostgreSQL database of its own for this test run, dropped at the end: its plain
    URL, or the exception if the server is not reachable (tests using it skip)."""
    try:
        name = run_blocking(create_database(PG_DSN, "presence_test"))
    except Exception as exc:
        yield exc
        return
    yield f"{PG_DSN}/{name}"
    run_blocking(drop_database(PG_DSN, name))


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_database_url(request: Any, tmp_path: Path, pg_database: Any) -> Any:
    """An empty database of its own (a new PostgreSQL database per test, dropped after):
    for tests of migrations and admin commands, which run in other processes too."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "fresh.db")
        return
    if isinstance(pg_database, Exception):
        unavailable(f"PostgreSQL at {PG_DSN} is not reachable: {pg_database}")
    name = run_blocking(create_database(PG_DSN, "presence_fresh"))
    yield postgres_url(PG_DSN, name)
    run_blocking(drop_database(PG_DSN, name))


@pytest.fixture(scope="session")
def redis_available() -> bool:
    return run_blocking(ping(REDIS_URL))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: Any, tmp_path: Path, pg_database: Any) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "presence.db")
    if isinstance(pg_database, Exception):
        unavailable(f"PostgreSQL at {PG_DSN} is not reachable: {pg_database}")
    return app_url(pg_database)


@pytest.fixture(params=["memory", "redis"])
def redis_url(request: Any, redis_available: bool) -> str:
    """The broker of an in-process test: "" (in-process) and the machine's Redis, one run
    each. Tests that need Redis itself, once, use ``real_redis_url``."""
    if request.param == "memory":
        return ""
    if not redis_available:
        unavailable(f"Redis at {REDIS_URL} is not reachable")
    return REDIS_URL


@pytest.fixture
def real_redis_url(redis_available: bool) -> str:
    """The machine's Redis, not parametrised (processes sharing it: cluster, e2e)."""
    if not redis_available:
        unavailable(f"Redis at {REDIS_URL} is not reachable")
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> str:
    return f"presence-test-{uuid.uuid4().hex[:10]}"


async def reset_backends(settings: Settings) -> None:
    """Empty tables and keys a test may find: each test starts from nothing."""
    if settings.database_url.startswith("postgresql"):
        await drop_app_tables(settings.database_url)
    if settings.redis_url:
        await drop_keys(settings.redis_url, settings.redis_prefix)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, redis_url: str, redis_prefix: str) -> Settings:
    return validate(
        Settings(
            port=0,
            data_dir=tmp_path,
            database_url=database_url,
            redis_url=redis_url,
            redis_prefix=redis_prefix,
            cookie_secret="test-cookie-secret-" + uuid.uuid4().hex,
            bcrypt_rounds=4,
            node_id="test-node",
            flush_interval=0.05,
            heartbeat_timeout=2.0,
        )
    )


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
        # One signature for the overloads of PresenceClient.connect: this double only wraps it.
        async def connect(self, *args: Any, **kwargs: Any) -> PresenceSocket:  # type: ignore[override]
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


@pytest.fixture
def app_process(tmp_path: Path) -> Iterator[Callable[..., AppProcess]]:
    """``app_process(*flags, data_dir=None, wait=True)``: ``python run.py`` configured by
    its flags alone (no PRESENCE_* variable), data in ``tmp_path/data`` unless given;
    every one started is stopped (SIGTERM, then SIGKILL) at the end."""
    started: list[AppProcess] = []

    def start(*flags: str, data_dir: Path | None = None, wait: bool = True) -> AppProcess:
        app = AppProcess(
            tmp_path,
            f"app-{len(started)}",
            *flags,
            env=clean_env(),
            data_dir=data_dir or tmp_path / "data",
        )
        started.append(app)
        return app.start(wait=wait)

    yield start
    for app in started:
        app.stop(timeout=5)


# Names other test modules import from here (the values live in tests.support).
__all__ = ["PASSWORD", "REDIS_URL", "IN_CI", "unavailable"]
