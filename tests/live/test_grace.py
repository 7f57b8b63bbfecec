"""The opt-in offline grace: a user whose last socket closes stays listed online for the grace,
is announced offline once (with the close time) if no socket of theirs comes back, and a
stopping process hands its users over instead of announcing them offline.

Every app-level test runs over both brokers (in-process store and Redis) and both databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import tornado.httpserver
import tornado.testing

from handlers import make_app
from presence_app.backends import MemoryBackend, make_backend
from presence_app.client import PresenceClient, PresenceSocket
from presence_app.config import ConfigError, Settings, load_settings
from presence_app.live.ledger import parse_time
from presence_app.services import Services, open_services
from tests.conftest import PASSWORD, REDIS_URL, unavailable
from tests.live.test_online_table import last_seen
from tests.support.clients import is_presence, with_cookies
from tests.support.livesockets import until
from tests.support.redis import drop_keys as _drop_redis_keys

GRACE = 1.0  # heartbeat timeout 2 s (conftest): the sweeper looks at least every 0.5 s
LATE = 0.5  # how late after its deadline an offline event may come on a busy machine


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The conftest settings (2 brokers x 2 databases) with a grace."""
    return replace(settings, offline_grace=GRACE)


async def messages_within(sock: PresenceSocket, seconds: float) -> list[dict]:
    """Every message ``sock`` receives in the next ``seconds``."""
    got: list[dict] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            got.append(await sock.recv(left))
        except TimeoutError:
            break
    return got


def stamp(when: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(when, dt.UTC)


# -- configuration -------------------------------------------------------------------------
def test_default_is_no_grace_and_env_or_flag_set_it(tmp_path: Any) -> None:
    assert load_settings(["--data-dir", str(tmp_path)], env={}).offline_grace == 0
    env = {"PRESENCE_OFFLINE_GRACE": "10"}
    assert load_settings(["--data-dir", str(tmp_path)], env=env).offline_grace == 10
    assert (
        load_settings(
            ["--data-dir", str(tmp_path), "--offline-grace", "2.5"], env=env
        ).offline_grace
        == 2.5
    )


@pytest.mark.parametrize("value", ["-1", "601", "nan", "inf", "soon", ""])
def test_bad_grace_is_a_one_line_config_error(tmp_path: Any, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(["--data-dir", str(tmp_path), "--offline-grace", value], env={})
    assert "--offline-grace" in str(info.value) and "\n" not in str(info.value)


# -- one process ---------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_reopened_within_grace_is_never_announced_offline(user_factory):
    alice, bob, carol = [await user_factory(n) for n in ("alice", "bob", "carol")]
    watcher = await alice.connect()
    tab = await bob.connect()
    await watcher.wait_status("bob", True)
    await tab.close()
    await asyncio.sleep(GRACE / 3)
    # Meanwhile bob is listed online everywhere: a new snapshot, the API.
    newcomer = await carol.connect()
    assert newcomer.online("bob") is True
    assert {u["username"]: u["online"] for u in await carol.users()}["bob"] is True
    tab = await bob.connect()  # the reload is done, within the grace
    seen = await messages_within(watcher, GRACE + LATE)
    assert [m for m in seen if is_presence("bob")(m)] == [], "the reload was announced"
    assert watcher.online("bob") is True
    await tab.close()
    await watcher.wait_status("bob", False, timeout=GRACE + 2)


@pytest.mark.gen_test
async def test_not_reopened_goes_offline_once_with_the_close_time(services, user_factory):
    alice, bob = await user_factory("alice"), await user_factory("bob")
    watcher = await alice.connect()
    tab = await bob.connect()
    await watcher.wait_status("bob", True)
    before = time.time()
    await tab.close()
    closed = time.monotonic()
    event = await watcher.wait_for(is_presence("bob", False), timeout=GRACE + 3)
    elapsed = time.monotonic() - closed
    assert GRACE - 0.1 <= elapsed <= GRACE + LATE, f"offline after {elapsed:.2f} s"
    # last_seen is when the socket closed, not when the grace ended.
    seen = parse_time(event["last_seen"])
    assert stamp(before) - dt.timedelta(seconds=0.05) <= seen <= stamp(before + 0.3), seen
    again = await messages_within(watcher, 0.7)
    assert [m for m in again if is_presence("bob")(m)] == [], "announced more than once"
    entry = {u["username"]: u for u in await alice.users()}["bob"]
    assert entry["online"] is False and parse_time(entry["last_seen"]) == seen
    assert await last_seen(services, "bob") == seen


@pytest.mark.gen_test
async def test_multi_tab_only_the_last_tab_starts_the_grace(user_factory):
    alice, bob = await user_factory("alice"), await user_factory("bob")
    watcher = await alice.connect()
    one, two = await bob.connect(), await bob.connect()
    await watcher.wait_status("bob", True)
    await one.close()
    await asyncio.sleep(GRACE + 0.2)  # far past the grace: one tab is still open
    await two.close()
    three = await bob.connect()  # a reload of the last tab
    await asyncio.sleep(0.2)
    await three.close()  # and now bob leaves for good
    closed = time.monotonic()
    seen = await messages_within(watcher, GRACE + LATE + 0.3)
    bob_events = [m for m in seen if is_presence("bob")(m)]
    assert [m["online"] for m in bob_events] == [False], bob_events
    assert time.monotonic() - closed >= GRACE - 0.1


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Services, str]]:
    """One more app "process" in this test's event loop: services, app and HTTP server,
    stopped like run.py stops (no new connections, then services close sockets with 1001)."""
    listener, port = tornado.testing.bind_unused_port()
    servers: list[tornado.httpserver.HTTPServer] = []
    try:
        async with open_services(settings) as opened:
            servers.append(tornado.httpserver.HTTPServer(make_app(opened)))
            servers[0].add_sockets([listener])
            try:
                yield opened, f"http://127.0.0.1:{port}"
            finally:
                servers[0].stop()
    finally:
        for server in servers:
            await server.close_all_connections()
        listener.close()


@pytest.mark.gen_test(timeout=40)
async def test_restart_hands_users_over(services, user_factory):
    """A process stops and starts again (same node id, same database; with the in-process
    store only the database carries the handed-over users across): bob, who comes back, is
    never announced offline; carol, who does not, is, once, after the grace."""
    await user_factory("alice")
    bob, carol = await user_factory("bob"), await user_factory("carol")
    node = replace(services.settings, node_id="node-b", offline_grace=3.0)
    async with serving(node) as (first, url):
        tabs = [await with_cookies(url, c.cookies).connect() for c in (bob, carol)]
        await first.presence.settled()  # the store has them; their events may be on the way
        await until(
            lambda: (
                {u["username"] for u in first.presence.users() if u["online"]} == {"bob", "carol"}
            ),
            what="bob and carol online",
        )
        stopped = time.time()  # just before the shutdown closes the sockets
    for tab in tabs:
        assert await tab.wait_closed(timeout=5) == 1001
    async with serving(node) as (second, url):
        online = {u["username"] for u in second.presence.users() if u["online"]}
        assert online == {"bob", "carol"}, "the restart forgot the handed-over users"
        alice = PresenceClient(url)
        await alice.login("alice", PASSWORD)
        watcher = await alice.connect()
        assert watcher.online("bob") is True and watcher.online("carol") is True
        back = await with_cookies(url, bob.cookies).connect()
        event = await watcher.wait_for(is_presence("carol", False), timeout=6)
        elapsed = time.time() - stopped
        assert 3.0 <= elapsed <= 3.0 + LATE + 0.5, f"offline after {elapsed:.2f} s"
        seen = parse_time(event["last_seen"])
        assert stamp(stopped) - dt.timedelta(seconds=0.05) <= seen <= stamp(stopped + 1.0)
        rest = await messages_within(watcher, 0.7)
        assert [m for m in rest if is_presence("carol")(m)] == []
        assert watcher.online("bob") is True, "bob came back but was announced offline"
        assert watcher.stale == []
        await back.close()
        await watcher.close()


# -- the store -----------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_without_grace_detach_publishes_at_once_and_nothing_is_pending():
    store = MemoryBackend()
    await store.attach("n", "bob", "2026-01-01T00:00:00.000Z")
    event = await store.detach("n", "bob", "2026-01-01T00:00:01.000Z")
    assert event is not None and '"online":false' in event
    assert await store.sweep() == ([], None) and await store.pending() == []


def test_racing_sweepers_announce_a_user_once(redis_available: bool) -> None:
    """Three processes sweep the same expired deadline at once: one event, one publisher."""
    if not redis_available:
        unavailable(f"Redis at {REDIS_URL} is not reachable")
    prefix = f"presence-test-{uuid.uuid4().hex[:10]}"

    async def scenario() -> None:
        stores = [make_backend(REDIS_URL, prefix, grace=0.2) for _ in range(3)]
        received: list[str] = []

        async def resubscribed() -> None:
            raise AssertionError("the listener lost its subscription")

        listener = asyncio.create_task(stores[0].listen(received.append, resubscribed))
        try:
            await stores[0].wait_subscribed(timeout=5.0)
            await stores[0].attach("a", "bob", "2026-01-01T00:00:00.000Z")
            await stores[1].attach("b", "bob", "2026-01-01T00:00:00.100Z")
            assert await stores[0].detach("a", "bob", "2026-01-01T00:00:01.000Z") is None
            assert await stores[1].detach("b", "bob", "2026-01-01T00:00:02.000Z") is None
            events, wait = await stores[2].sweep()
            assert events == [] and wait is not None and 0 < wait <= 0.2
            await asyncio.sleep(0.3)
            results = await asyncio.gather(*(s.sweep() for s in stores * 3))
            published = [e for events, _ in results for e in events]
            assert len(published) == 1 and '"last_seen":"2026-01-01T00:00:02.000Z"' in published[0]
            assert all(wait is None for _, wait in results)
            await asyncio.sleep(0.3)
            assert [m for m in received if '"online":false' in m] == published
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            for store in stores:
                await store.close()
            await _drop_redis_keys(REDIS_URL, prefix)

    asyncio.run(scenario())
