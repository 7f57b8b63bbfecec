"""The contract every backend keeps, one test body over ``memory://`` and the real Redis.

Messages: what is published reaches every listener, in order, the publisher's own included;
a failing handler costs one message, never the listener; a cancelled listener ends cancelled.
Presence: one event per real transition (returned and published alike), versions that grow,
``last_seen`` as told, the grace's pending deadlines, reaping and handover. (The factory:
``test_backend_factory.py``.)

A deployment here is one backend per node for Redis (as processes have) and, for memory, the
one backend every node shares (one process). Each Redis test has its own key prefix, dropped
afterwards. ``tests/backends/test_store_properties.py`` explores random interleavings of the
same transitions; this file states the rules one by one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from presence_app.backends import Backend, make_backend
from tests.support.redis import drop_keys

T0, T1, T2, T3 = (f"2026-01-01T00:00:0{i}.000Z" for i in range(4))
ALIVE = 60.0  # heartbeat timeout: never expires within a test


class Deployment:
    """The nodes' backends and listeners of one test; ``close`` drops the Redis keys too."""

    def __init__(self, url: str, prefix: str, grace: float) -> None:
        self.url, self.prefix, self.grace = url, prefix, grace
        self.backends: dict[str, Backend] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.marks = 0

    def node(self, name: str) -> Backend:
        if self.url.startswith("memory") and self.backends:
            return next(iter(self.backends.values()))
        if name not in self.backends:
            self.backends[name] = make_backend(self.url, self.prefix, grace=self.grace, timeout=5.0)
        return self.backends[name]

    def listen(self, backend: Backend) -> list[str]:
        """A new listener on ``backend``: the list it appends every message to."""
        received: list[str] = []

        async def resubscribed() -> None:
            raise AssertionError("the subscription was lost: messages may be missing")

        self.tasks.append(asyncio.create_task(backend.listen(received.append, resubscribed)))
        return received

    async def drain(self, publisher: Backend, *listeners: list[str]) -> list[list[str]]:
        """What each listener got so far: a marker published now arrives after all of it.
        Also how a test knows that every listener is subscribed (the marker reached them)."""
        self.marks += 1
        marker = json.dumps({"type": "marker", "n": self.marks})
        for _ in range(10):  # a listener still subscribing misses a marker: send another
            await publisher.publish(marker)
            for _ in range(100):
                if all(marker in got for got in listeners):
                    return [self._cut(got, marker) for got in listeners]
                await asyncio.sleep(0.01)
        raise AssertionError(f"{marker} did not reach every listener")

    @staticmethod
    def _cut(got: list[str], marker: str) -> list[str]:
        """Take everything up to ``marker`` out of ``got``; return it without markers."""
        end = got.index(marker)
        before = [message for message in got[:end] if '"marker"' not in message]
        del got[: end + 1]
        return before

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for backend in self.backends.values():
            await backend.close()
        if not self.url.startswith("memory"):
            await drop_keys(self.url, self.prefix)


@asynccontextmanager
async def deployment(url: str, prefix: str, grace: float = 0.0) -> AsyncIterator[Deployment]:
    dep = Deployment(url, prefix, grace)
    try:
        yield dep
    finally:
        await dep.close()


async def watched(dep: Deployment) -> tuple[Backend, list[str]]:
    """A listening node ("watcher") whose subscription is confirmed."""
    watcher = dep.node("watcher")
    received = dep.listen(watcher)
    await dep.drain(watcher, received)
    return watcher, received


def parsed(events: list[str]) -> list[dict[str, Any]]:
    return [json.loads(event) for event in events]


# -- messages ---------------------------------------------------------------------------------
@pytest.mark.gen_test
async def test_every_listener_gets_every_message_in_order(
    backend_url: str, redis_prefix: str
) -> None:
    async with deployment(backend_url, redis_prefix) as dep:
        one, two = dep.node("a"), dep.node("b")
        listeners = [dep.listen(one), dep.listen(one), dep.listen(two)]
        await dep.drain(one, *listeners)
        sent = [f"message {i}" for i in range(50)]
        for i, message in enumerate(sent):
            await (one if i % 2 else two).publish(message)  # the publisher's own come back too
        assert await dep.drain(one, *listeners) == [sent, sent, sent]


@pytest.mark.gen_test
async def test_a_failing_handler_loses_one_message_not_the_listener(
    backend_url: str, redis_prefix: str, caplog: Any
) -> None:
    async with deployment(backend_url, redis_prefix) as dep:
        backend = dep.node("a")
        got: list[str] = []

        def handle(message: str) -> None:
            if message == "poison":
                raise RuntimeError("handler bug")
            got.append(message)

        async def resubscribed() -> None:
            raise AssertionError("resubscribed")

        dep.tasks.append(asyncio.create_task(backend.listen(handle, resubscribed)))
        await dep.drain(backend, got)
        with caplog.at_level(logging.ERROR, logger="presence_app.backends"):
            for message in ("before", "poison", "after"):
                await backend.publish(message)
            assert await dep.drain(backend, got) == [["before", "after"]]
        assert "Message handler failed; message dropped" in caplog.text


@pytest.mark.gen_test
async def test_a_cancelled_listener_ends_cancelled_and_close_may_be_repeated(
    backend_url: str, redis_prefix: str
) -> None:
    async with deployment(backend_url, redis_prefix) as dep:
        backend = dep.node("a")
        received = dep.listen(backend)
        await dep.drain(backend, received)
        await backend.wait_subscribed(timeout=5.0)  # already subscribed: returns at once
        task = dep.tasks.pop()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await backend.publish("after the listener")
        await asyncio.sleep(0.05)
        assert received == []
        await backend.close()
        await backend.close()


# -- presence transitions ---------------------------------------------------------------------
@pytest.mark.gen_test
async def test_one_event_per_real_transition_with_growing_versions(
    backend_url: str, redis_prefix: str
) -> None:
    """Two nodes hold alice: only the first attach and the last detach change anything; what
    a transition returns is what every listener receives."""
    async with deployment(backend_url, redis_prefix) as dep:
        watcher, received = await watched(dep)
        n1, n2 = dep.node("n1"), dep.node("n2")
        steps = [
            (n1.attach, "n1", T0, True),
            (n2.attach, "n2", T1, False),
            (n1.detach, "n1", T2, False),
            (n2.detach, "n2", T3, True),
        ]
        returned = []
        for transition, node, now, changes in steps:
            event = await transition(node, "alice", now)
            assert (event is not None) == changes, f"{transition.__name__} on {node}"
            if event is not None:
                returned.append(event)
        [published] = await dep.drain(watcher, received)
        assert published == returned
        first, last = parsed(published)
        assert (first["online"], first["last_seen"]) == (True, T0)
        assert (last["online"], last["last_seen"]) == (False, T3)
        assert first["type"] == last["type"] == "presence" and last["version"] > first["version"]
        assert await n1.detach("n1", "alice", T3) is None  # a repeated detach: no transition
        state = (await watcher.states())["alice"]
        assert (state.online, state.version, state.last_seen) == (False, last["version"], T3)


@pytest.mark.gen_test
async def test_announce_once_then_online_with_a_newer_version(
    backend_url: str, redis_prefix: str
) -> None:
    async with deployment(backend_url, redis_prefix) as dep:
        watcher, received = await watched(dep)
        node = dep.node("n1")
        announced = await node.announce("bob")
        assert await node.announce("bob") is None
        online = await node.attach("n1", "bob", T1)
        assert await node.announce("bob") is None  # known: never announced again
        assert announced is not None and online is not None
        assert await dep.drain(watcher, received) == [[announced, online]]
        new, back = parsed([announced, online])
        assert (new["online"], new["last_seen"]) == (False, None)  # never seen
        assert (back["online"], back["last_seen"]) == (True, T1)
        assert back["version"] > new["version"]
        assert await node.members("n1") == {"bob"}


@pytest.mark.gen_test
async def test_settle_and_forget_spare_a_user_some_node_holds(
    backend_url: str, redis_prefix: str
) -> None:
    async with deployment(backend_url, redis_prefix) as dep:
        n1, n2 = dep.node("n1"), dep.node("n2")
        await n1.attach("n1", "carol", T0)
        assert await n2.settle("carol", T1) is None  # held: stays online
        await n2.forget("carol")
        assert (await n2.states())["carol"].online
        await n2.attach("n2", "dave", T0)
        assert len(await n1.reap("n2", T1, force=True)) == 1
        assert await n1.settle("dave", T2) is None  # already offline
        await n1.forget("dave")
        assert set(await n1.states()) == {"carol"}


@pytest.mark.gen_test
async def test_reap_and_handover_take_only_that_nodes_users_offline(
    backend_url: str, redis_prefix: str
) -> None:
    async with deployment(backend_url, redis_prefix) as dep:
        n1, n2 = dep.node("n1"), dep.node("n2")
        epoch, _ = await n1.heartbeat("n1", ALIVE)
        assert (await n1.heartbeat("n1", ALIVE))[0] == epoch  # the same state: the same epoch
        for user in ("erin", "frank"):
            await n1.attach("n1", user, T0)
        await n2.attach("n2", "frank", T0)
        await n2.attach("n2", "grace", T0)
        assert await n2.reap("n1", T1) == []  # alive (or one process): not reaped
        events = parsed(await n2.reap("n1", T1, force=True))
        assert [(e["username"], e["online"], e["last_seen"]) for e in events] == [
            ("erin", False, T1)
        ]
        assert await n1.members("n1") == set() and await n2.members("n2") == {"frank", "grace"}
        events = parsed(await n2.handover("n2", T2))
        assert sorted((e["username"], e["online"]) for e in events) == [
            ("frank", False),
            ("grace", False),
        ]
        assert not any(state.online for state in (await n1.states()).values())
        assert await n1.dead_nodes("n1") == []


@pytest.mark.gen_test
async def test_a_grace_defers_offline_to_one_sweep_with_the_close_time(
    backend_url: str, redis_prefix: str
) -> None:
    async with deployment(backend_url, redis_prefix, grace=0.2) as dep:
        watcher, received = await watched(dep)
        n1, n2 = dep.node("n1"), dep.node("n2")
        await n1.attach("n1", "hana", T0)
        assert await n1.detach("n1", "hana", T1) is None  # pending, not offline
        assert await n2.attach("n2", "hana", T2) is None  # back in time: nothing to say
        assert await n2.detach("n2", "hana", T3) is None
        events, wait = await n1.sweep()
        assert events == [] and wait is not None and 0 < wait <= 0.2
        assert (await watcher.states())["hana"].online
        await asyncio.sleep(0.3)
        results = [await backend.sweep() for backend in (n1, n2, n1)]
        swept = [event for events, _ in results for event in events]
        assert [(e["online"], e["last_seen"]) for e in parsed(swept)] == [(False, T3)]
        assert all(wait is None for _, wait in results)
        [published] = await dep.drain(watcher, received)
        assert [e["online"] for e in parsed(published)] == [True, False]
        assert published[-1] == swept[0]
