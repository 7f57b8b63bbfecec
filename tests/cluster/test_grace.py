"""The offline grace across real processes: restarts and rolling deploys without a flood of
offline events, and kill -9 during a grace never leaves anyone online.

Grace figures: the restart and the rolling-deploy tests use the recommended ``--offline-grace 10``
with the harness's 2 s heartbeat timeout, so "announced offline once, within grace + heartbeat
timeout" is checked against 12 s. The kill -9 tests scale the grace down to 6 s and 3 s: what
they check (deadlines kept in the store, finalised by whoever is alive) does not depend on the
figure, only on the kill landing inside the grace, which 6 s leaves room for after a restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from presence_app.client import PresenceClient, PresenceSocket
from presence_app.live.ledger import parse_time
from tests.conftest import PASSWORD, REDIS_URL
from tests.support.http import http_json
from tests.support.waiting import wait_until

pytestmark = pytest.mark.cluster

HEARTBEAT_TIMEOUT = 2.0  # the harness's --heartbeat-timeout
SLACK = 1.0  # scheduling on a busy 2-core machine


class PageLike:
    """One tab of the page, as far as the server can tell: it reconnects after a close the
    way static/presence.js does (first attempt after a 1001 at a random 0-2 s, then full-jitter
    backoff from 0.5 s doubling, a GET /api/users before each attempt), and it logs every
    snapshot and event with its arrival time."""

    def __init__(
        self, base: str, username: str, seed: int, origin: str | None = None, come_back: bool = True
    ) -> None:
        self.client = PresenceClient(base, origin=origin)
        self.username = username
        self.come_back = come_back
        self.rng = random.Random(seed)
        self.log: list[tuple[float, dict[str, Any]]] = []
        self.sock: PresenceSocket | None = None
        self.closed_at: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def open(self) -> PageLike:
        await self.client.login(self.username, PASSWORD)
        self.sock = await self.client.connect()
        self._logged_snapshot()
        self.task = asyncio.ensure_future(self._run())
        return self

    def _logged_snapshot(self) -> None:
        assert self.sock is not None
        self.log.append((time.time(), {"type": "snapshot", "users": dict(self.sock.state)}))

    @property
    def connected(self) -> bool:
        return self.sock is not None

    async def _run(self) -> None:
        while True:
            assert self.sock is not None
            try:
                while True:
                    message = await self.sock.recv(1e9)
                    self.log.append((time.time(), message))
            except Exception:  # ConnectionClosed: the server went away
                pass
            code, self.sock = self.sock.close_code, None
            self.closed_at.append(time.time())
            if not self.come_back or code in (4001, 4401):
                return
            await asyncio.sleep(self.rng.random() * 2.0)  # first retry after 1001: 0-2 s
            attempt = 1
            while self.sock is None:
                try:
                    await self.client.users()  # the page asks first: a 401 means log in again
                    self.sock = await self.client.connect(timeout=5)
                    self._logged_snapshot()
                except Exception:  # refused, 502 from nginx, timeout: back off and retry
                    ceiling = min(15.0, 0.5 * 2**attempt)
                    attempt += 1
                    await asyncio.sleep(self.rng.random() * ceiling)

    def offline_events(self, username: str) -> list[tuple[float, dict[str, Any]]]:
        return [
            (t, m)
            for t, m in self.log
            if m.get("type") == "presence" and m["username"] == username and m["online"] is False
        ]

    def ever_offline(self, username: str, since: float) -> list[tuple[float, dict[str, Any]]]:
        """Every snapshot or event since ``since`` that showed ``username`` offline."""
        return [(t, m) for t, m in self.offline_events(username) if t >= since] + [
            (t, m)
            for t, m in self.log
            if t >= since
            and m["type"] == "snapshot"
            and username in m["users"]
            and m["users"][username]["online"] is False
        ]

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.sock is not None:
            await self.sock.close()


async def signed_up(base: str, *names: str) -> None:
    for name in names:
        await PresenceClient(base).signup(name, PASSWORD)


async def all_connected(pages: list[PageLike], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.connected for p in pages):
        assert time.monotonic() < deadline, (
            f"not reconnected: {[p.username for p in pages if not p.connected]}"
        )
        await asyncio.sleep(0.05)


async def online_everywhere(pages: list[PageLike], username: str, timeout: float = 5) -> None:
    """Wait until every page's socket shows ``username`` online (their readers apply events)."""
    deadline = time.monotonic() + timeout
    while not all(p.sock is not None and p.sock.online(username) for p in pages):
        assert time.monotonic() < deadline, f"{username} not online on every page"
        await asyncio.sleep(0.05)


def stamp(when: float) -> dt.datetime:
    """``when`` as a datetime. The app's times have milliseconds only (truncated): compare a
    lower bound taken here with ``stamp(t - 0.001)``."""
    return dt.datetime.fromtimestamp(when, dt.UTC)


def check_announced_once(
    pages: list[PageLike], username: str, closed: float, grace: float
) -> float:
    """Every page saw ``username`` go offline exactly once, in [grace, grace + heartbeat
    timeout] after ``closed``, with ``last_seen`` the close time; returns the latest delay."""
    delays = []
    for page in pages:
        events = page.offline_events(username)
        assert len(events) == 1, f"{page.username} saw {username} offline {len(events)} times"
        arrived, event = events[0]
        delays.append(arrived - closed)
        assert grace - 0.1 <= arrived - closed <= grace + HEARTBEAT_TIMEOUT + SLACK, (
            f"{username} offline {arrived - closed:.2f} s after the close (grace {grace} s)"
        )
        seen = parse_time(event["last_seen"])
        assert stamp(closed - 0.1) <= seen <= stamp(closed + 1.5), (
            f"last_seen {seen} is not the close time {stamp(closed)}"
        )
    return max(delays)


def check_never_offline(pages: list[PageLike], usernames: list[str], since: float) -> None:
    for page in pages:
        for name in usernames:
            assert page.ever_offline(name, since) == [], f"{page.username} saw {name} offline"


def test_single_process_restart_within_the_grace(start_app: Any, sqlite_url: str) -> None:
    """One process, in-process store, SQLite: SIGTERM and start again. Everyone who comes back
    is never shown offline (the database carried the handed-over users across)."""
    app = start_app("solo", sqlite_url, "", "", "--offline-grace", "10")

    async def scenario() -> None:
        await signed_up(app.url, "alice", "bob", "carol")
        pages = [
            await PageLike(app.url, name, seed).open()
            for seed, name in enumerate(["alice", "bob", "alice"])
        ]
        leaver = await PageLike(app.url, "carol", 9, come_back=False).open()
        await online_everywhere(pages, "carol")
        sigterm = time.time()
        took = await asyncio.get_running_loop().run_in_executor(None, app.terminate, 10.0)
        app.start()
        await all_connected(pages, timeout=10 - (time.time() - sigterm))
        back = time.time() - sigterm
        for page in pages:  # the fresh snapshots list carol online: her grace is running
            assert page.sock is not None and page.sock.online("carol") is True
        await asyncio.sleep(sigterm + 10 + HEARTBEAT_TIMEOUT + SLACK - time.time())
        delay = check_announced_once(pages, "carol", sigterm, 10.0)
        check_never_offline(pages, ["alice", "bob"], since=sigterm)
        users = {u["username"]: u["online"] for u in await pages[1].client.users()}
        assert users == {"alice": True, "bob": True, "carol": False}
        print(
            f"\nsingle restart: exit {took:.2f} s, all back {back:.2f} s after SIGTERM, "
            f"carol offline {delay:.2f} s after it"
        )
        for page in pages + [leaver]:
            await page.stop()

    asyncio.run(scenario())


def test_rolling_restart_behind_nginx(
    start_app: Any, start_nginx: Any, sqlite_url: str, prefix: str
) -> None:
    """Two processes behind the shipped nginx config, restarted one after the other; the
    clients reconnect through nginx to whichever process is up."""
    flags = ("--offline-grace", "10")
    a = start_app("node-a", sqlite_url, REDIS_URL, prefix, *flags)
    b = start_app("node-b", sqlite_url, REDIS_URL, prefix, *flags)
    proxy = start_nginx([a.port, b.port])

    def routed_to(node: str) -> bool:
        status, body = http_json(proxy.url + "/healthz")
        return status == 200 and body["node"] == node

    async def restart(app: Any) -> float:
        took = await asyncio.get_running_loop().run_in_executor(None, app.terminate, 10.0)
        app.start()
        # Like a careful deploy: the next process only once nginx sends traffic here again
        # (nginx skips a failed upstream for fail_timeout, 5 s in deploy/nginx.conf).
        await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: wait_until(
                lambda: routed_to(app.name), 15, f"nginx to {app.name}", interval=0.2
            ),
        )
        return took

    async def scenario() -> None:
        await signed_up(proxy.url, "alice", "bob", "dave", "carol")
        names = ["alice", "bob", "dave", "alice", "bob", "dave"]
        pages = [
            await PageLike(proxy.url, name, seed, origin=proxy.url).open()
            for seed, name in enumerate(names)
        ]
        leaver = await PageLike(a.url, "carol", 9, come_back=False).open()  # on A, for sure
        await online_everywhere(pages, "carol")
        assert a.health()[1]["sockets"] > 1 and b.health()[1]["sockets"] > 0
        sigterm = time.time()
        await restart(a)
        await all_connected(pages, timeout=10)
        sigterm_b = time.time()
        await restart(b)
        await all_connected(pages, timeout=10)
        back = time.time() - sigterm_b
        await asyncio.sleep(max(0.0, sigterm + 10 + HEARTBEAT_TIMEOUT + SLACK - time.time()))
        delay = check_announced_once(pages, "carol", sigterm, 10.0)
        check_never_offline(pages, ["alice", "bob", "dave"], since=sigterm)
        assert all(len(p.closed_at) >= 1 for p in pages), "a restart closed no socket?"
        for page in pages[:2]:
            users = {u["username"]: u["online"] for u in await page.client.users()}
            assert users == {"alice": True, "bob": True, "dave": True, "carol": False}
        print(
            f"\nrolling restart: B restarted {sigterm_b - sigterm:.2f} s after A; all back "
            f"{back:.2f} s after B's SIGTERM; carol offline {delay:.2f} s after A's SIGTERM"
        )
        for page in pages + [leaver]:
            await page.stop()

    asyncio.run(scenario())


async def pending_in_redis(prefix: str) -> set[str]:
    client = aioredis.from_url(REDIS_URL, decode_responses=True)
    try:
        return set(cast(list[str], await client.zrange(f"{prefix}:pending", 0, -1)))
    finally:
        await client.aclose()


class Watcher:
    """A socket on a process that is never restarted, logging what it receives."""

    def __init__(self, sock: PresenceSocket) -> None:
        self.sock = sock
        self.log: list[tuple[float, dict[str, Any]]] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            message = await self.sock.recv(1e9)
            self.log.append((time.time(), message))

    def offline(self, username: str) -> list[tuple[float, dict[str, Any]]]:
        return [
            (t, m)
            for t, m in self.log
            if m.get("type") == "presence" and m["username"] == username and m["online"] is False
        ]

    async def status(self, username: str, online: bool, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while self.sock.online(username) is not online:
            assert time.monotonic() < deadline, f"{username} not online={online} in {timeout} s"
            await asyncio.sleep(0.02)

    async def offline_once(self, username: str, timeout: float) -> tuple[float, dict]:
        await self.status(username, False, timeout)
        events = self.offline(username)
        assert len(events) == 1, f"{username} offline {len(events)} times: {events}"
        return events[0]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.sock.close()


def test_kill9_during_a_grace_the_other_process_announces(
    start_app: Any, sqlite_url: str, prefix: str
) -> None:
    """B dies by kill -9 (1) with a pending deadline of its own, (2) after a SIGTERM handed its
    users over and a restart: A announces each user once, at their deadline; users B held at
    the kill go offline within the heartbeat timeout, as without a grace."""
    grace = 6.0  # room for a restart inside the grace on a busy machine
    flags = ("--offline-grace", str(grace))
    a = start_app("node-a", sqlite_url, REDIS_URL, prefix, *flags)
    b = start_app("node-b", sqlite_url, REDIS_URL, prefix, *flags)

    async def connect(base: str, name: str) -> PresenceSocket:
        client = PresenceClient(base)
        await client.login(name, PASSWORD)
        return await client.connect()

    async def scenario() -> None:
        await signed_up(a.url, "alice", "bob", "carol", "dave", "erin")
        watcher = Watcher(await connect(a.url, "alice"))
        bob, carol = await connect(b.url, "bob"), await connect(b.url, "carol")
        await watcher.status("carol", True)
        # (1) bob closes his tab on B; B records his deadline and is killed during it.
        await bob.close()
        closed = time.time()
        assert "bob" in await wait_pending(prefix, "bob")
        b.kill()
        killed = time.time()
        arrived, event = await watcher.offline_once("carol", HEARTBEAT_TIMEOUT + 2 * SLACK)
        assert arrived - killed <= HEARTBEAT_TIMEOUT + SLACK  # reaped, as without a grace
        arrived, event = await watcher.offline_once("bob", grace + 2 * SLACK)
        assert grace - 0.1 <= arrived - closed <= grace + HEARTBEAT_TIMEOUT + SLACK
        assert stamp(closed - 0.2) <= parse_time(event["last_seen"]) <= stamp(closed + 0.5)
        bob_delay = arrived - closed

        # (2) B comes back, is stopped (handover), starts again; erin comes back to it, dave
        # does not; B is killed during dave's grace.
        b.start()
        dave, erin = await connect(b.url, "dave"), await connect(b.url, "erin")
        await watcher.status("erin", True)
        sigterm = time.time()
        await asyncio.get_running_loop().run_in_executor(None, b.terminate, 10.0)
        assert await wait_pending(prefix, "dave", "erin") >= {"dave", "erin"}
        b.start()
        erin = await connect(b.url, "erin")
        # Her snapshot arrives before B's attach reaches the store; killed in between, B never
        # held her and she rightly stays pending until dave's deadline. Kill once B holds her.
        await wait_held(prefix, "node-b", "erin")
        b.kill()
        killed = time.time()
        assert killed - sigterm < grace - 0.5, "the kill did not land inside the grace"
        arrived, _ = await watcher.offline_once("erin", HEARTBEAT_TIMEOUT + 2 * SLACK)
        assert arrived - killed <= HEARTBEAT_TIMEOUT + SLACK
        arrived, event = await watcher.offline_once(
            "dave", max(0.5, sigterm + grace + 2 * SLACK - time.time())
        )
        assert grace - 0.1 <= arrived - sigterm <= grace + HEARTBEAT_TIMEOUT + SLACK
        assert stamp(sigterm - 0.001) <= parse_time(event["last_seen"]) <= stamp(sigterm + 1.5)
        print(
            f"\nkill -9: bob (own deadline) offline {bob_delay:.2f} s after his close, dave "
            f"(handed over) {arrived - sigterm:.2f} s after the SIGTERM; B killed "
            f"{killed - sigterm:.2f} s into dave's grace"
        )
        await asyncio.sleep(0.5)
        for name in ("bob", "carol", "dave", "erin"):
            assert len(watcher.offline(name)) == 1
        assert await pending_in_redis(prefix) == set()
        assert watcher.sock.stale == []
        await watcher.close()
        for sock in (carol, dave, erin):
            await sock.close()

    asyncio.run(scenario())


async def wait_held(prefix: str, node: str, name: str) -> None:
    """Until the store lists ``name`` among the users ``node`` holds (its attach landed)."""
    client = aioredis.from_url(REDIS_URL, decode_responses=True)
    try:
        deadline = time.monotonic() + 3
        while not await client.sismember(f"{prefix}:nu:{node}", name):
            assert time.monotonic() < deadline, f"{node} never held {name}"
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()


async def wait_pending(prefix: str, *names: str) -> set[str]:
    deadline = time.monotonic() + 3
    while not set(names) <= (found := await pending_in_redis(prefix)):
        assert time.monotonic() < deadline, f"no pending deadline for {names}: {found}"
        await asyncio.sleep(0.05)
    return found


def test_killed_single_process_leaves_nobody_online(start_app: Any, sqlite_url: str) -> None:
    """In-process store: SIGTERM hands bob over through the database, the next start lists him
    online, is killed during his grace; the start after that lists him offline, last seen when
    his socket closed (nobody is left online forever)."""
    app = start_app("solo", sqlite_url, "", "", "--offline-grace", "3")

    async def scenario() -> None:
        await signed_up(app.url, "alice", "bob")
        bob = PresenceClient(app.url)
        await bob.login("bob", PASSWORD)
        tab = await bob.connect()
        alice = PresenceClient(app.url)
        await alice.login("alice", PASSWORD)
        assert {u["username"]: u["online"] for u in await alice.users()}["bob"] is True
        sigterm = time.time()
        await asyncio.get_running_loop().run_in_executor(None, app.terminate, 10.0)
        app.start()
        assert {u["username"]: u["online"] for u in await alice.users()}["bob"] is True
        app.kill()
        app.start()
        users = {u["username"]: u for u in await alice.users()}
        assert users["bob"]["online"] is False
        seen = parse_time(users["bob"]["last_seen"])
        assert stamp(sigterm - 0.001) <= seen <= stamp(sigterm + 1.5)
        sock = await alice.connect()
        assert sock.online("bob") is False
        await asyncio.sleep(3.0 - (time.time() - sigterm) + 0.5)  # past bob's old deadline
        assert await sock.ping() == {"type": "pong"}
        assert sock.online("bob") is False  # and no event revived or repeated him
        await sock.close()
        assert tab.close_code == 1001

    asyncio.run(scenario())
