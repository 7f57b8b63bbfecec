"""The two ways to run several processes, on SQLite and PostgreSQL, and what is refused."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from presence_app.client import PresenceClient
from tests.cluster.harness import AppProcess
from tests.conftest import PASSWORD, REDIS_URL
from tests.support.env import ROOT
from tests.support.http import http_json
from tests.support.ports import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.cluster


def test_forked_workers_share_one_port(tmp_path: Any, sqlite_url: str, prefix: str) -> None:
    app = AppProcess(tmp_path, "forked", sqlite_url, REDIS_URL, prefix, "--processes", "2")
    app.start()
    try:
        # Each worker has its own node id (<node id>:<worker>); new connections reach both.
        nodes: set[str] = set()
        deadline = time.monotonic() + 20
        while len(nodes) < 2 and time.monotonic() < deadline:
            nodes.add(http_json(app.url + "/healthz")[1]["node"])
        assert nodes == {"forked:0", "forked:1"}

        async def scenario() -> None:
            alice = PresenceClient(app.url)
            await alice.signup("alice", PASSWORD)
            watchers = [await alice.connect() for _ in range(6)]
            bob = PresenceClient(app.url)
            await bob.signup("bob", PASSWORD)
            socks = [await bob.connect() for _ in range(6)]
            for watcher in watchers:
                await watcher.wait_status("bob", True, timeout=5)
            for sock in socks:
                await sock.close()
            for watcher in watchers:
                await watcher.wait_status("bob", False, timeout=5)
            # SIGTERM to the supervisor: every worker closes its sockets with 1001.
            assert app.proc is not None
            app.proc.terminate()
            for watcher in watchers:
                assert await watcher.wait_closed(timeout=5) == 1001

        asyncio.run(scenario())
        assert app.proc is not None
        app.proc.wait(5)
        assert app.proc.returncode == 0
    finally:
        app.stop()


def test_separate_processes_on_postgresql_start_together(
    start_app: Any, pg_url: str, prefix: str
) -> None:
    """Three processes creating the schema at once (advisory lock) on a fresh database."""
    apps = [start_app(f"pg-{i}", pg_url, REDIS_URL, prefix, wait=False) for i in range(3)]
    for app in apps:
        app.wait_ready()

    async def scenario() -> None:
        alice = PresenceClient(apps[0].url)
        await alice.signup("alice", PASSWORD)
        watcher = await alice.connect()
        bob = PresenceClient(apps[2].url)
        await bob.signup("bob", PASSWORD)
        sock = await bob.connect()
        await watcher.wait_status("bob", True, timeout=5)
        await sock.close()
        await watcher.wait_status("bob", False, timeout=5)
        # A name taken on one process is taken on all.
        again = PresenceClient(apps[1].url)
        assert (await again.signup("BOB", PASSWORD, check=False)).code == 409
        await watcher.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--processes", "2"], "--processes needs --redis-url"),
        (
            ["--processes", "2", "--redis-url", "redis://127.0.0.1:6379/0", "--debug"],
            "--debug (autoreload) cannot be combined with --processes",
        ),
        (["--redis-url", "http://127.0.0.1:6379"], "--redis-url must start with redis://"),
    ],
)
def test_refused_combinations(tmp_path: Any, flags: list[str], message: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "PYTHONWARNINGS": ""},
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_rediss_url_is_accepted(tmp_path: Any) -> None:
    from presence_app.config import load_settings

    settings = load_settings(
        ["--redis-url", "rediss://example.invalid:6380/0", "--data-dir", str(tmp_path)], env={}
    )
    assert settings.broker_url.startswith("rediss://")


def test_healthz_reports_node_and_broker(start_app: Any, sqlite_url: str, prefix: str) -> None:
    app = start_app("node-x", sqlite_url, REDIS_URL, prefix)
    status, body = wait_until(lambda: app.health(), 5, "health")
    assert status == 200
    assert body["status"] == "ok" and body["node"] == "node-x" and body["broker"] == "redis"
