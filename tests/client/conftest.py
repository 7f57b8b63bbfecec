"""Fixtures of the client suites: a real ``python run.py`` (tests.support.apps.AppProcess)
on a free port with a SQLite file in its data directory, over the in-process broker or the
machine's Redis (the ``redis_url`` fixture of tests/conftest.py: ids ``memory``/``redis``),
restartable on the same port with its data (``restart()``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.apps import AppProcess, clean_env
from tests.support.redis import drop_keys
from tests.support.waiting import run_blocking


@pytest.fixture
def start_server(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., AppProcess]]:
    """``start_server(*flags)`` -> a running app (a 2 s heartbeat timeout, Redis under a key
    prefix of its own), stopped and its keys dropped after the test."""
    started: list[tuple[AppProcess, str]] = []

    def start(*flags: str) -> AppProcess:
        prefix = f"presence-client-{uuid.uuid4().hex[:8]}"
        broker = ["--redis-url", redis_url, "--redis-prefix", prefix] if redis_url else []
        server = AppProcess(
            tmp_path,
            f"app{len(started)}",
            "--heartbeat-timeout",
            "2",
            *broker,
            *flags,
            env=clean_env(),
        )
        started.append((server, prefix))
        return server.start()

    yield start
    for server, prefix in started:
        server.stop()
        if redis_url:
            run_blocking(drop_keys(redis_url, prefix))


@pytest.fixture
def server(start_server: Callable[..., AppProcess]) -> AppProcess:
    return start_server()
