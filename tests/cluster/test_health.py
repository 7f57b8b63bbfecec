"""/healthz follows Redis's return at once; forked workers each report their own health."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from typing import Any

import pytest

from presence_app.client import PresenceClient
from tests.conftest import PASSWORD
from tests.support.http import http_json
from tests.support.ports import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.cluster


def test_healthz_is_200_as_soon_as_redis_answers_again(
    start_app: Any, sqlite_url: str, private_redis: Any
) -> None:
    """With a 10 s heartbeat timeout (a heartbeat every 2.5 s), /healthz used to stay 503
    until the next heartbeat, and the subscription until its backoff (up to 2 s) ended."""
    app = start_app("node-a", sqlite_url, private_redis.url, "p", "--heartbeat-timeout", "10")

    async def online() -> None:
        client = PresenceClient(app.url)
        await client.signup("alice", PASSWORD)
        sock = await client.connect()
        await sock.wait_status("alice", True, timeout=5)
        await sock.close()

    asyncio.run(online())
    times = []
    for _ in range(3):  # the old wait depended on the heartbeat's phase: once could be luck
        private_redis.stop()
        wait_until(lambda: app.health()[0] == 503, 10, "/healthz to notice Redis is gone")
        time.sleep(3.0)  # long enough for the broker's backoff to reach its maximum
        private_redis.start()  # returns once the new Redis answers PING
        back = time.monotonic()
        status, body = wait_until(
            lambda: (lambda h: h if h[0] == 200 else None)(app.health()),
            15,
            "/healthz to be 200 again",
            interval=0.02,
        )
        times.append(time.monotonic() - back)
        assert body["status"] == "ok" and "reason" not in body
    print("Redis restart to /healthz 200: " + ", ".join(f"{t * 1000:.0f} ms" for t in times))
    assert max(times) < 1.0, f"/healthz 200 only {max(times):.2f} s after Redis answered"


def two_free_ports() -> int:
    """A port p with p + 1 free too (the workers' health ports)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def test_each_worker_reports_its_own_health(
    start_app: Any, sqlite_url: str, private_redis: Any
) -> None:
    health_port = two_free_ports()
    app = start_app(
        "node-w",
        sqlite_url,
        private_redis.url,
        "p",
        "--processes",
        "2",
        "--worker-health-port",
        str(health_port),
    )
    nodes = set()
    for worker in range(2):
        url = f"http://127.0.0.1:{health_port + worker}"

        def healthy(url: str = url) -> Any:
            answer = http_json(url + "/healthz", 1)
            return answer if answer[0] == 200 else None

        status, body = wait_until(healthy, 20, f"worker {worker}'s health port")
        assert body["status"] == "ok"
        nodes.add(body["node"])
        with urllib.request.urlopen(url + "/metrics", timeout=3) as response:
            text = response.read().decode()
        assert "presence_sockets_open" in text and "presence_healthy 1.0" in text
    assert nodes == {"node-w:0", "node-w:1"}
    # The shared port answers for whichever worker the kernel picks: one of them.
    assert app.health()[1]["node"] in nodes
