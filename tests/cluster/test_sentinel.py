"""Redis Sentinel: a primary, a replica and three sentinels; the primary is killed.

The app reaches Redis through ``redis+sentinel://`` and follows the failover by itself.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from presence_app.client import PresenceClient
from tests.cluster.test_faults import (
    api_view,
    converge,
    health,
    poll,
    recording,
    still,
    three_online,
)
from tests.conftest import PASSWORD, unavailable
from tests.support.clients import with_cookies
from tests.support.redis import RedisSentinel, RedisServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.cluster

SERVICE = "presence-primary"
CONVERGE_WITHIN = 10.0  # seconds after the failover


class SentinelSetup:
    def __init__(
        self, primary: RedisServer, replica: RedisServer, sentinels: list[RedisSentinel]
    ) -> None:
        self.primary, self.replica, self.sentinels = primary, replica, sentinels

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def ready(self) -> bool:
        """The replica is in sync and every sentinel knows it and both other sentinels
        (needed for a quorum and a leader election)."""
        info = redis.Redis(port=self.replica.port, socket_timeout=1).info("replication")
        if info.get("master_link_status") != "up":
            return False
        for sentinel in self.sentinels:
            state = cast(
                dict[str, Any],
                redis.Redis(
                    port=sentinel.port,
                    socket_timeout=1,
                    decode_responses=True,
                ).sentinel_master(SERVICE),
            )
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Any:
    if not shutil.which("redis-server"):
        unavailable("redis-server is not installed")
    started: list[Any] = []
    try:
        primary = RedisServer(tmp_path / "primary")
        replica = RedisServer(tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port))
        for server in (primary, replica):
            server.workdir.mkdir()
            started.append(server.start())
        sentinels = [
            RedisSentinel(tmp_path, f"sentinel-{i}", primary.port, SERVICE) for i in range(3)
        ]
        for sentinel in sentinels:
            started.append(sentinel.start())
        setup = SentinelSetup(primary, replica, sentinels)
        wait_until(
            setup.ready, 20, "the replica and three sentinels to know each other", interval=0.2
        )
        yield setup
    finally:
        for process in reversed(started):
            process.stop()


async def switched(sentinel_port: int, subscribed: asyncio.Event) -> float:
    """The monotonic time at which the sentinel announces ``+switch-master``."""
    import redis.asyncio as aioredis

    client = aioredis.Redis(port=sentinel_port, decode_responses=True)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe("+switch-master")
        subscribed.set()
        async for message in pubsub.listen():
            if message["type"] == "message" and message["data"].startswith(SERVICE):
                return time.monotonic()
        raise AssertionError("sentinel went away")
    finally:
        await pubsub.aclose()
        await client.aclose()


def test_primary_killed_every_client_converges_after_failover(
    sentinel_setup: SentinelSetup, start_app: Any, sqlite_url: str
) -> None:
    url = sentinel_setup.url
    a = start_app("node-a", sqlite_url, url, "p")
    b = start_app("node-b", sqlite_url, url, "p")
    figures: dict[str, float] = {}

    async def scenario() -> None:
        (alice, carol, bob), (alice_ws, carol_ws, bob_ws) = await three_online(a.url, b.url)
        logs = [recording(alice_ws), recording(bob_ws)]
        subscribed = asyncio.Event()
        switch = asyncio.ensure_future(switched(sentinel_setup.sentinels[0].port, subscribed))
        await asyncio.wait_for(subscribed.wait(), 5)

        assert sentinel_setup.primary.proc is not None
        sentinel_setup.primary.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await carol_ws.close()  # a change while there is no primary
        switched_at = await asyncio.wait_for(switch, 20)
        figures["failover"] = switched_at - killed

        erin = PresenceClient(b.url)  # a sign-up and a new user online after the failover
        await erin.signup("erin", PASSWORD)
        erin_ws = await with_cookies(a.url, erin.cookies).connect()
        truth = {"alice": True, "bob": True, "carol": False, "erin": True}
        sockets = [alice_ws, bob_ws, erin_ws]
        await converge(sockets, truth, timeout=CONVERGE_WITHIN + 5)
        done = time.monotonic()
        figures["from_kill"], figures["from_switch"] = done - killed, done - switched_at
        await poll(lambda: _healthy(a.url, b.url), 10, "200 from both /healthz")
        await still(sockets, truth, 1.0)
        for client, base in ((alice, a.url), (bob, b.url), (bob, a.url)):
            assert await api_view(client, base) == truth
        for log in logs:  # nobody who kept a socket was shown offline meanwhile
            flicker = [e for e in log if e["username"] in ("alice", "bob") and not e["online"]]
            assert not flicker, log
        # And live afterwards, on the new primary.
        await bob_ws.close()
        await alice_ws.wait_status("bob", False, timeout=5)
        await erin_ws.wait_status("bob", False, timeout=5)
        for sock in (alice_ws, erin_ws):
            await sock.close()

    asyncio.run(scenario())
    print(
        f"\nsentinel failover: +switch-master {figures['failover']:.2f} s after the kill; "
        f"every client right {figures['from_kill']:.2f} s after the kill, "
        f"{figures['from_switch']:.2f} s after +switch-master"
    )
    assert figures["from_switch"] < CONVERGE_WITHIN, figures


async def _healthy(*bases: str) -> bool:
    codes = [(await health(base))[0] for base in bases]
    return codes == [200] * len(bases)
