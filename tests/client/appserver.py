"""The client against a real ``python run.py``: a subprocess on a free port with a SQLite file
in its data directory, the in-process broker or Redis, restartable on the same port.

Kept in this one file (a shared harness for every suite is being built in tests/support/);
conftest.py only re-exports its fixtures.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.testing

from presence_app.client import PresenceClient
from tests.conftest import PASSWORD, REDIS_URL, unavailable

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    sock, port = tornado.testing.bind_unused_port()
    sock.close()
    return port


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any PRESENCE_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class AppServer:
    """``python run.py`` in a subprocess; ``restart()`` keeps the port and the data."""

    def __init__(self, workdir: Path, redis_url: str, *extra: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.data_dir = workdir / "data"
        self.log_path = workdir / "server.log"
        self.server_args = ["--data-dir", str(self.data_dir)]
        if redis_url:
            self.server_args += [
                "--redis-url",
                redis_url,
                "--redis-prefix",
                f"presence-client-{uuid.uuid4().hex[:8]}",
            ]
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def redis_prefix(self) -> str | None:
        args = self.server_args
        return args[args.index("--redis-prefix") + 1] if "--redis-prefix" in args else None

    def start(self) -> AppServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "run.py",
                    "--port",
                    str(self.port),
                    "--bcrypt-rounds",
                    "4",
                    "--heartbeat-timeout",
                    "2",
                    *self.server_args,
                    *self.extra,
                ],
                cwd=ROOT,
                env=clean_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"run.py did not come up:\n{self.log()}")
            time.sleep(0.05)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """SIGTERM and wait: its sockets close with 1001, its users go offline."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``run.py users ...`` against this server's database (and Redis)."""
        return subprocess.run(
            [sys.executable, "run.py", *args, *self.server_args],
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


async def drop_keys(url: str, prefix: str) -> None:
    """Delete a test server's Redis keys (``<prefix>:*``)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def broker_url(request: Any, redis_available: bool) -> str:
    """ "" for the in-process broker, the machine's Redis otherwise."""
    if request.param == "memory":
        return ""
    if not redis_available:
        unavailable(f"Redis at {REDIS_URL} is not reachable")
    return REDIS_URL


@pytest.fixture
def start_server(tmp_path: Path, broker_url: str) -> Iterator[Any]:
    """``start_server(*flags)`` -> a running AppServer, stopped (and its keys dropped) after."""
    started: list[AppServer] = []

    def start(*extra: str) -> AppServer:
        server = AppServer(tmp_path / f"app{len(started)}", broker_url, *extra)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
        if broker_url and server.redis_prefix:
            asyncio.run(drop_keys(broker_url, server.redis_prefix))


@pytest.fixture
def server(start_server: Any) -> AppServer:
    return start_server()


class Lines:
    """A process's stdout read line by line on a thread; ``expect`` waits for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, match: Callable[[str], Any], timeout: float = 15.0) -> str:
        """The next line for which ``match`` is truthy (the lines before it are kept)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if match(line):
                return line
        raise AssertionError(f"no matching line within {timeout} s; got {self.seen}")

    def expect_json(self, match: Callable[[dict], Any], timeout: float = 15.0) -> dict:
        line = self.expect(lambda text: match(json.loads(text)), timeout)
        return dict(json.loads(line))


def run_cli(*args: str, **env: str) -> subprocess.Popen[str]:
    """``python run.py <args>`` (the ``presence`` command) from a directory outside the
    repository, stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT.parent,
        env=clean_env(**env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def sign_up(url: str, *names: str) -> None:
    """Accounts with the tests' password (each signs up and leaves its session unused)."""

    async def run() -> None:
        for name in names:
            await PresenceClient(url).signup(name, PASSWORD)

    asyncio.run(run())


__all__ = [
    "AppServer",
    "Lines",
    "PASSWORD",
    "ROOT",
    "clean_env",
    "run_cli",
    "sign_up",
    "unavailable",
]
