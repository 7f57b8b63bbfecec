"""Fixtures that start real processes: app servers, redis-server, nginx."""
from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.cluster.harness import AppProcess, Nginx, RedisServer
from tests.conftest import REDIS_URL, _drop_redis_keys, _reset_pg, nginx_binary, unavailable


@pytest.fixture
def prefix(redis_available: bool) -> Any:
    if not redis_available:
        unavailable(f"Redis at {REDIS_URL} is not reachable")
    name = f"presence-cluster-{uuid.uuid4().hex[:8]}"
    yield name
    asyncio.run(_drop_redis_keys(REDIS_URL, name))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"


@pytest.fixture
def pg_url(pg_database: Any) -> str:
    if isinstance(pg_database, Exception):
        unavailable(f"PostgreSQL is not reachable: {pg_database}")
    asyncio.run(_reset_pg(pg_database))
    return "postgresql+asyncpg://" + pg_database.split("://", 1)[1]


@pytest.fixture
def start_app(tmp_path: Path) -> Any:
    """``start_app(name, database_url, redis_url, prefix, *flags)`` -> a running AppProcess."""
    started: list[AppProcess] = []

    def start(name: str, database_url: str, redis_url: str, prefix: str, *extra: str,
              port: int | None = None, wait: bool = True) -> AppProcess:
        app = AppProcess(tmp_path, name, database_url, redis_url, prefix, *extra, port=port)
        started.append(app)
        return app.start(wait=wait)

    yield start
    for app in started:
        app.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Any:
    if not shutil.which("redis-server"):
        unavailable("redis-server is not installed")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def start_nginx(tmp_path: Path) -> Any:
    binary = nginx_binary()
    if binary is None:
        unavailable("nginx is not installed (apt-get install -y nginx)")
    started: list[Nginx] = []

    def start(ports: list[int]) -> Nginx:
        proxy = Nginx(tmp_path, ports).start(binary)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


Starter = Callable[..., AppProcess]
