"""Network faults between app processes and Redis, injected by a TCP proxy (tests/support).

Each app process reaches Redis through a proxy of its own, so one process can be slowed,
partitioned or left with half-open connections while the other is fine.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from tornado.httpclient import AsyncHTTPClient

from presence_app.client import PresenceClient, PresenceSocket
from tests.conftest import REDIS_URL
from tests.support.clients import signed_up
from tests.support.faultproxy import FaultProxy

pytestmark = pytest.mark.cluster

PARTITION = 30.0  # seconds; the heartbeat timeout of the processes is 2 s (harness default)
HEARTBEAT_TIMEOUT = 2.0


@pytest.fixture
def redis_proxy(prefix: str) -> Any:
    """``redis_proxy()`` -> a FaultProxy in front of the test Redis; all stopped at the end."""
    started: list[FaultProxy] = []

    def make() -> FaultProxy:
        proxy = FaultProxy(urlsplit(REDIS_URL).port or 6379).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


def via(proxy: FaultProxy) -> str:
    return f"redis://127.0.0.1:{proxy.port}{urlsplit(REDIS_URL).path or '/0'}"


async def health(base: str) -> tuple[int, Any]:
    """/healthz without blocking the test's loop (its sockets must keep answering pings)."""
    response = await AsyncHTTPClient().fetch(
        base + "/healthz", raise_error=False, request_timeout=5
    )
    return response.code, json.loads(response.body or b"null")


async def poll(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1
) -> float:
    """Await ``predicate()`` until truthy; returns the seconds it took."""
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(interval)
    return time.monotonic() - started


async def three_online(
    a_url: str, b_url: str
) -> tuple[tuple[PresenceClient, ...], tuple[PresenceSocket, ...]]:
    """alice and carol on process A, bob on B, each with a socket; every view agrees."""
    alice, carol = await signed_up(a_url, "alice"), await signed_up(a_url, "carol")
    bob = await signed_up(b_url, "bob")
    sockets = (await alice.connect(), await carol.connect(), await bob.connect())
    await converge([sockets[0], sockets[2]], {"alice": True, "bob": True, "carol": True}, 5)
    return (alice, carol, bob), sockets


async def converge(sockets: list[PresenceSocket], truth: dict[str, bool], timeout: float) -> None:
    """Every socket's view matches ``truth`` at once (read events until it does; ``still``
    then checks that it stays so)."""

    async def one(sock: PresenceSocket) -> None:
        right = lambda _message=None: {u: sock.online(u) for u in truth} == truth
        if not right():
            try:
                await sock.wait_for(right, timeout)
            except TimeoutError:
                view = {u: sock.online(u) for u in truth}
                raise AssertionError(f"{sock.me} sees {view} after {timeout} s") from None

    await asyncio.gather(*(one(s) for s in sockets))


async def api_view(client: PresenceClient, base: str) -> dict[str, bool]:
    reader = PresenceClient(base)
    reader.cookies = dict(client.cookies)
    return {u["username"]: u["online"] for u in await reader.users()}


async def still(sockets: list[PresenceSocket], truth: dict[str, bool], seconds: float) -> None:
    """Read whatever arrives for ``seconds``: the views must still match ``truth`` (a late,
    wrong event would show here)."""

    async def drain(sock: PresenceSocket) -> None:
        try:
            while True:
                await sock.recv(timeout=seconds)
        except TimeoutError:
            pass

    await asyncio.gather(
        *(asyncio.wait_for(drain(s), seconds + 1) for s in sockets), return_exceptions=True
    )
    for sock in sockets:
        view = {u: sock.online(u) for u in truth}
        assert view == truth, f"{sock.me} sees {view} after settling"
        assert not sock.stale, f"{sock.me} got events out of order: {sock.stale}"


def test_partitioned_process_keeps_serving_is_reaped_and_rejoins(
    redis_proxy: Any, start_app: Any, sqlite_url: str, prefix: str
) -> None:
    """One process loses Redis for 30 s (connections reset, new ones refused); the other is
    fine. The cut-off process keeps serving its pages and sockets; the other reaps it after
    the heartbeat timeout; when the partition ends it rejoins, and every client of both
    processes ends up with the true state, including what changed on each side meanwhile."""
    proxy = redis_proxy()
    a = start_app("node-a", sqlite_url, REDIS_URL, prefix)
    b = start_app("node-b", sqlite_url, via(proxy), prefix)

    async def scenario() -> None:
        alice, carol = await signed_up(a.url, "alice"), await signed_up(a.url, "carol")
        bob, frank = await signed_up(b.url, "bob"), await signed_up(b.url, "frank")
        alice_ws, carol_ws = await alice.connect(), await carol.connect()
        bob_ws, frank_ws = await bob.connect(), await frank.connect()
        before = {"alice": True, "bob": True, "carol": True, "frank": True}
        await converge([alice_ws, bob_ws], before, timeout=5)

        proxy.refuse()
        cut = time.monotonic()
        # The other process reaps B's users after the heartbeat timeout.
        await alice_ws.wait_status("bob", False, timeout=HEARTBEAT_TIMEOUT + 4)
        await alice_ws.wait_status("frank", False, timeout=2)
        reaped = time.monotonic() - cut
        assert reaped >= HEARTBEAT_TIMEOUT / 2, f"reaped after only {reaped:.2f} s"
        code, body = await health(b.url)
        assert code == 503 and "redis" in body["reason"].lower(), body
        assert (await health(a.url))[0] == 200

        # Changes on both sides during the partition.
        await carol_ws.close()  # A: carol leaves
        dave = await signed_up(a.url, "dave")  # A: a new user comes online
        dave_ws = await dave.connect()
        await frank_ws.close()  # B: frank leaves
        erin = await signed_up(b.url, "erin")  # B: a sign-up without Redis
        erin_ws = await erin.connect()
        await alice_ws.wait_status("carol", False, timeout=5)
        await alice_ws.wait_status("dave", True, timeout=5)

        # B keeps serving: pages, the API and its open sockets.
        while time.monotonic() - cut < PARTITION:
            page = await bob.request("GET", "/")
            assert page.code == 200 and b"data-username" in page.body
            assert (await bob_ws.ping(timeout=3))["type"] == "pong"
            assert bob_ws.close_code is None and erin_ws.close_code is None
            await asyncio.sleep(2)

        proxy.heal()
        healed = time.monotonic()
        truth = {
            "alice": True,
            "bob": True,
            "carol": False,
            "dave": True,
            "erin": True,
            "frank": False,
        }
        sockets = [alice_ws, dave_ws, bob_ws, erin_ws]
        await converge(sockets, truth, timeout=15)
        converged = time.monotonic() - healed
        await poll(lambda: _both_healthy(a.url, b.url), 10, "200 from both /healthz")
        await still(sockets, truth, 2.0)
        for client, base in ((alice, a.url), (bob, b.url), (alice, b.url), (bob, a.url)):
            assert await api_view(client, base) == truth
        print(
            f"\npartition: reaped after {reaped:.2f} s, converged {converged:.2f} s "
            f"after the partition ended"
        )
        for sock in sockets:
            await sock.close()

    asyncio.run(scenario())


async def _both_healthy(*bases: str) -> bool:
    codes = [(await health(base))[0] for base in bases]
    return codes == [200] * len(bases)


def test_half_open_connections_are_noticed_and_replaced(
    redis_proxy: Any, start_app: Any, sqlite_url: str, prefix: str
) -> None:
    """The proxy stops forwarding on B's Redis connections without closing them (as a NAT or
    firewall that lost their state would), and on new ones until it heals. B must notice by
    itself (timeouts, pings on the idle subscription): /healthz 503 meanwhile, then new
    connections, a resync, and live events again, on the subscription too."""
    proxy = redis_proxy()
    a = start_app("node-a", sqlite_url, REDIS_URL, prefix)
    b = start_app("node-b", sqlite_url, via(proxy), prefix)

    async def scenario() -> None:
        (alice, carol, bob), (alice_ws, carol_ws, bob_ws) = await three_online(a.url, b.url)

        proxy.half_open()
        stalled = time.monotonic()
        noticed = await poll(lambda: _status_is(b.url, 503), 15, "503 from B's /healthz")
        # Commands time out after half the heartbeat timeout (1 s here), pings likewise.
        assert noticed < HEARTBEAT_TIMEOUT + 3, f"503 only after {noticed:.1f} s"
        await carol_ws.close()  # missed by B while its subscription is stalled
        await alice_ws.wait_status("bob", False, timeout=HEARTBEAT_TIMEOUT + 4)  # reaped
        assert (await bob_ws.ping(timeout=3))["type"] == "pong"
        await asyncio.sleep(max(0.0, 8.0 - (time.monotonic() - stalled)))

        proxy.heal()
        recovered = await poll(lambda: _status_is(b.url, 200), 15, "200 from B again")
        truth = {"alice": True, "bob": True, "carol": False}
        await converge([alice_ws, bob_ws], truth, timeout=10)
        # Live again, the subscription included: a change on A after the heal reaches B.
        await asyncio.sleep(6)  # past any redis-py retry or health-check window
        carol_ws = await carol.connect()
        await bob_ws.wait_status("carol", True, timeout=5)
        await carol_ws.close()
        await bob_ws.wait_status("carol", False, timeout=5)
        assert (await health(b.url))[0] == 200
        print(
            f"\nhalf-open: B's /healthz 503 after {noticed:.2f} s, 200 {recovered:.2f} s "
            "after the heal"
        )
        for sock in (alice_ws, bob_ws):
            await sock.close()

    asyncio.run(scenario())


async def _status_is(base: str, code: int) -> bool:
    return (await health(base))[0] == code


def recording(sock: PresenceSocket) -> list[dict[str, Any]]:
    """Every presence event ``sock`` receives from now on, in arrival order (``_at``: when)."""
    seen: list[dict[str, Any]] = []
    apply = sock.apply

    def record(message: dict[str, Any]) -> bool:
        if message.get("type") == "presence":
            seen.append({**message, "_at": time.monotonic()})
        return apply(message)

    sock.apply = record  # type: ignore[method-assign]
    return seen


def test_redis_latency_converges_in_order(
    redis_proxy: Any, start_app: Any, sqlite_url: str, prefix: str
) -> None:
    """200 ms each way between every process and Redis: users coming and going on both
    processes (overlapping sockets included) end up right everywhere, each client receives
    every user's events in version order, and no live process is mistaken for dead."""
    proxy_a, proxy_b = redis_proxy(), redis_proxy()
    a = start_app("node-a", sqlite_url, via(proxy_a), prefix)
    b = start_app("node-b", sqlite_url, via(proxy_b), prefix)

    async def scenario() -> None:
        alice, bob = await signed_up(a.url, "alice"), await signed_up(b.url, "bob")
        alice_ws, bob_ws = await alice.connect(), await bob.connect()
        users = [f"user{i}" for i in range(4)]
        clients = {u: await signed_up((a.url, b.url)[i % 2], u) for i, u in enumerate(users)}
        await converge([alice_ws, bob_ws], {"alice": True, "bob": True}, timeout=5)
        for proxy in (proxy_a, proxy_b):
            proxy.latency(0.2)
        logs = [recording(alice_ws), recording(bob_ws)]

        async def churn(i: int, user: str) -> None:
            client = clients[user]
            for k in range(3):
                here = await client.connect()  # on its own process
                there = PresenceClient((b.url, a.url)[i % 2])
                there.cookies = dict(client.cookies)
                other = await there.connect()  # and on the other one
                await asyncio.sleep(0.05 * k)
                await here.close()
                if k < 2 or i % 2:
                    await other.close()  # odd users end offline

        await asyncio.gather(*(churn(i, u) for i, u in enumerate(users)))
        truth = {"alice": True, "bob": True, **{u: i % 2 == 0 for i, u in enumerate(users)}}
        started = time.monotonic()
        await converge([alice_ws, bob_ws], truth, timeout=15)
        await still([alice_ws, bob_ws], truth, 1.5)
        converged = max(e["_at"] for log in logs for e in log) - started
        for log in logs:
            for user in users:
                versions = [e["version"] for e in log if e["username"] == user]
                assert versions == sorted(set(versions)), f"{user}: {versions}"
                assert versions, f"no event for {user}"
            assert not [e for e in log if e["username"] in ("alice", "bob") and not e["online"]], (
                f"a live process's user was shown offline (reaped under latency?): {log}"
            )
        for client, base in ((alice, a.url), (bob, b.url)):
            assert await api_view(client, base) == truth
        print(f"\nlatency 200 ms each way: converged {converged:.2f} s after the last change")
        for sock in (alice_ws, bob_ws):
            await sock.close()

    asyncio.run(scenario())
