"""Redis for tests: the machine's server (checked, and cleaned per key prefix) and private
``redis-server`` processes (and Sentinels) for tests that stop, restart or fail Redis over.

The coroutines take a URL; from synchronous code run them with
``tests.support.waiting.run_blocking``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

from tests.support.ports import free_port
from tests.support.processes import stop_process
from tests.support.waiting import wait_until


async def ping(url: str) -> bool:
    """The Redis at ``url`` answers PING (within 2 s)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url, socket_connect_timeout=2)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


async def drop_keys(url: str, prefix: str) -> None:
    """Delete every key under ``prefix:`` (what one test, node set or bench run wrote)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def answers_ping(port: int) -> bool:
    """A Redis (or Sentinel) on 127.0.0.1:``port`` answers PING (raw RESP, no client)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


class _RedisProcess:
    """A ``redis-server`` run on 127.0.0.1:``port``, killed by ``stop()``."""

    port: int
    proc: subprocess.Popen[bytes] | None = None

    def _launch(self, args: list[str], what: str) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: answers_ping(self.port), 10, f"{what} to answer")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGKILL)


class RedisServer(_RedisProcess):
    """A private redis-server on a free port, no persistence. ``stop()`` kills it (its data
    is gone); ``start()`` again brings back an empty one on the same port."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.extra = list(extra)  # e.g. "--replicaof", "127.0.0.1", "6379"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it and return once it answers PING."""
        self._launch(
            [
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra,
            ],
            "redis-server",
        )
        return self


class RedisSentinel(_RedisProcess):
    """A Redis Sentinel (``redis-server <conf> --sentinel``) watching one primary as
    ``service``; tuned to notice a dead primary after ``down_after_ms``."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        primary_port: int,
        service: str,
        down_after_ms: int = 1000,
        quorum: int = 2,
    ) -> None:
        self.port = free_port()
        self.conf = workdir / f"{name}.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"logfile {workdir / (name + '.log')}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} 10000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )

    def start(self) -> RedisSentinel:
        """Start it and return once it answers PING."""
        self._launch([str(self.conf), "--sentinel"], "redis-sentinel")
        return self
