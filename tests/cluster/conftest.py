"""Fixtures that start real processes: app servers, redis-server, nginx."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import AppProcess
from tests.support.databases import app_url, drop_app_tables
from tests.support.databases import sqlite_url as sqlite_file_url
from tests.support.env import unavailable
from tests.support.nginx import Nginx, nginx_binary
from tests.support.redis import RedisServer, drop_keys
from tests.support.waiting import run_blocking


@pytest.fixture
def prefix(real_redis_url: str) -> Iterator[str]:
    """A Redis key prefix of the test's own on the machine's Redis, deleted at the end."""
    name = f"presence-cluster-{uuid.uuid4().hex[:8]}"
    yield name
    run_blocking(drop_keys(real_redis_url, name))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return sqlite_file_url(tmp_path / "shared.db")


@pytest.fixture
def pg_url(pg_database: Any) -> str:
    """The run's PostgreSQL database, emptied of the app's tables."""
    if isinstance(pg_database, Exception):
        unavailable(f"PostgreSQL is not reachable: {pg_database}")
    run_blocking(drop_app_tables(pg_database))
    return app_url(pg_database)


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., AppProcess]]:
    """``start_app(name, database_url, redis_url, prefix, *flags)`` -> a running AppProcess."""
    started: list[AppProcess] = []

    def start(
        name: str,
        database_url: str,
        redis_url: str,
        prefix: str,
        *extra: str,
        port: int | None = None,
        wait: bool = True,
    ) -> AppProcess:
        app = AppProcess(tmp_path, name, database_url, redis_url, prefix, *extra, port=port)
        started.append(app)
        app.start(wait=wait)
        return app

    yield start
    for app in started:
        app.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if not shutil.which("redis-server"):
        unavailable("redis-server is not installed")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def start_nginx(tmp_path: Path) -> Iterator[Callable[[list[int]], Nginx]]:
    """``start_nginx(ports)`` -> the shipped nginx site in front of those app ports."""
    binary = nginx_binary()
    if binary is None:
        unavailable("nginx is not installed (apt-get install -y nginx)")
    started: list[Nginx] = []

    def start(ports: list[int]) -> Nginx:
        proxy = Nginx(tmp_path, ports, binary).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
