"""``PresenceService``'s contract, driven directly (sockets are ``tests.support.livesockets``
doubles of the web layer; the store, broker and database are real): one transition per real
change, ``rebuild`` replacing what this process believes it holds, ``request_resync`` taking
only known reasons, ``shutdown`` leaving nothing behind. Every body runs over both brokers
(and both databases)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from presence_app.live.fanout import CLOSE_GOING_AWAY
from presence_app.live.resync import REASONS, STORE_RESET, STORE_WRITE_FAILED, ResyncRequests
from presence_app.live.view import iso_now
from tests.support.livesockets import Socket, online, register, running, until


async def watching(services: Any) -> Socket:
    """A socket of another user, which every event reaches."""
    watcher = Socket(await register(services, "watcher"))
    services.presence.add(watcher)
    await until(lambda: watcher.snapshot is not None, what="the watcher's snapshot")
    return watcher


@pytest.mark.gen_test
async def test_sockets_make_one_transition_per_real_change(services: Any) -> None:
    presence, store, node = services.presence, services.backend, services.settings.node_id
    watcher = await watching(services)
    alice = await register(services, "alice")
    first, second = Socket(alice), Socket(alice)
    presence.add(first)
    await presence.settled()
    await until(lambda: len(watcher.events("alice")) == 1, what="alice online")
    presence.add(second)  # a second tab: no change
    await presence.settled()
    assert presence.registered_users() == {"watcher", "alice"} == await store.members(node)
    presence.remove(second)  # one tab of two closes: no change
    await presence.settled()
    presence.remove(first)
    presence.remove(first)  # closed twice (a drop, then on_close): removed once
    await presence.settled()
    await until(lambda: len(watcher.events("alice")) == 2, what="alice offline")
    await asyncio.sleep(0.3)  # nothing more comes
    events = watcher.events("alice")
    assert [e["online"] for e in events] == [True, False]
    assert events[0]["version"] < events[1]["version"]
    assert events[1]["last_seen"] is not None
    assert presence.registered_users() == {"watcher"} == await store.members(node)
    assert presence.socket_count == 1 and presence.local_users() == {"watcher"}
    assert not online(services, "alice") and online(services, "watcher")


@pytest.mark.gen_test
async def test_rebuild_replaces_the_registered_set_and_ends_with_the_true_state(
    services: Any,
) -> None:
    presence, store, node = services.presence, services.backend, services.settings.node_id
    watcher = await watching(services)
    sock = Socket(await register(services, "alice"))
    presence.add(sock)
    await presence.settled()
    await until(lambda: online(services, "alice"), what="alice online")
    # The store loses what we hold (as when another process reaped us) ...
    await store.reap(node, iso_now(), force=True)
    await until(lambda: not online(services, "alice"), what="the reap's offline event")
    assert presence.registered_users() == {"watcher", "alice"}, "still believed held"
    # ... a sign-up this process never heard of, and a user with no account any more.
    await register(services, "bob")
    await store.announce("zed")
    await until(lambda: any(u["username"] == "zed" for u in presence.users()), what="zed")
    states = await presence.rebuild(await store.members(node))
    assert presence.registered_users() == {"watcher", "alice"} == await store.members(node)
    assert states["alice"].online and states["watcher"].online
    assert {u["username"]: u["online"] for u in presence.users()} == {
        "alice": True,
        "watcher": True,
        "bob": False,
    }
    await until(lambda: watcher.events("alice")[-1]["online"], what="alice online again")
    await until(lambda: bool(watcher.of_type("removed")), what="zed removed")
    assert watcher.of_type("removed") == [{"type": "removed", "username": "zed"}]
    assert watcher.events("bob")[-1]["online"] is False


@pytest.mark.gen_test
async def test_rebuild_lets_go_of_users_held_without_a_socket(services: Any) -> None:
    presence, store, node = services.presence, services.backend, services.settings.node_id
    await register(services, "ghost")
    await store.attach(node, "ghost", iso_now())  # the store thinks we hold ghost
    await presence.rebuild(await store.members(node))
    assert presence.registered_users() == set() == await store.members(node)
    assert (await store.states())["ghost"].online is False


@pytest.mark.gen_test
async def test_shutdown_closes_sockets_refuses_new_ones_and_leaves_no_task(services: Any) -> None:
    presence = services.presence
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        users = [await register(services, f"user{n}") for n in range(5)]
        socks = [Socket(user) for user in users]
        for sock in socks:
            presence.add(sock)  # their store updates are still in flight
        await presence.shutdown(timeout=2.0)
        assert presence.closing
        assert [s.closed[0] if s.closed else None for s in socks] == [CLOSE_GOING_AWAY] * 5
        assert presence.socket_count == 0 and presence.local_users() == set()
        late = Socket(users[0])
        presence.add(late)  # opened during the shutdown
        assert late.closed is not None and late.closed[0] == CLOSE_GOING_AWAY
        assert presence.socket_count == 0
        assert running("StoreRegistration.") == []
        await asyncio.sleep(0.1)
        gc.collect()  # a task with an unretrieved exception reports it when collected
        assert errors == []
    finally:
        loop.set_exception_handler(None)


@pytest.mark.parametrize("reason", ["", "other", "Store_Reset", "store reset"])
def test_only_known_resync_reasons_are_taken(reason: str) -> None:
    with pytest.raises(ValueError):
        ResyncRequests().add(reason)


def test_resync_requests_keep_every_reason_once_first_asked_first() -> None:
    requests = ResyncRequests()
    assert requests.first is None
    for reason in (STORE_WRITE_FAILED, STORE_RESET, STORE_WRITE_FAILED):
        requests.add(reason)
    assert requests.first == STORE_WRITE_FAILED
    assert requests.take() == [STORE_WRITE_FAILED, STORE_RESET]
    assert requests.first is None and requests.take() == []
    for reason in REASONS:
        requests.add(reason)
    assert requests.take() == list(REASONS)
