"""Property tests of the presence store: random interleavings of attach, detach, heartbeat,
kill, reap, handover (a restart), sweep, settle, announce and (Redis) an emptied Redis across
several nodes and users,
against both backends (the in-process ``MemoryBackend``; ``RedisBackend`` on the real Redis,
one backend per node, as in a deployment), with and without an offline grace.

A model of what the contract promises is kept beside the store, and after every step:
- the published events (read back through ``listen``, the one delivery path) are exactly
  those the calls returned: one per real transition, none when nothing changed, no duplicate;
- every user's versions strictly increase across the events;
- a user is online exactly while some node holds them (or, with a grace, while their
  deadline has not been swept);
- ``states()`` and ``members()`` agree with the model.

A failure prints the minimal sequence of steps found (``state.attach(node='n0', ...)``).
Deadlines run on real clocks (Redis's ``TIME`` for RedisBackend), so a sweep close to a deadline
may go either way: the model accepts both there, and requires the event once the deadline has
clearly passed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from presence_app.backends import Backend, make_backend
from tests.conftest import IN_CI, REDIS_URL, unavailable
from tests.support.redis import drop_keys as _drop_redis_keys

T = TypeVar("T")

NODES = ("n0", "n1", "n2")
USERS = ("u0", "u1")
GRACE = 0.02  # seconds: short, so that a few "wait" steps let deadlines pass
SLACK = 0.003  # Redis deadlines are whole milliseconds of Redis's clock
MARGIN = 0.008  # a sweep takes less than this: it is not started closer to a deadline
ALIVE = 60.0  # heartbeat timeout of a live node: never expires within a test
nodes, users = st.sampled_from(NODES), st.sampled_from(USERS)

# Small enough for CI (each configuration a few seconds), derandomized there so a run is
# reproducible; locally hypothesis explores new cases and replays failures from .hypothesis/.
RUNS = settings(
    max_examples=int(os.environ.get("PRESENCE_PROPERTY_EXAMPLES", "100")),
    stateful_step_count=40,
    deadline=None,
    derandomize=IN_CI,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
if IN_CI:  # the same cases on every run, and no example database left behind
    RUNS = settings(RUNS, database=None)


@dataclass
class Seen:
    """A user's state as the events told it."""

    online: bool
    version: int
    last_seen: str | None


@dataclass
class Deadline:
    """A pending offline: due between ``lo`` and ``hi`` (our clock), ``closed`` is last_seen."""

    lo: float
    hi: float
    closed: str


@dataclass
class Deployment:
    """One backend per node (the same one for every node in memory) and a listener."""

    stores: dict[str, Backend]
    listener: Backend
    prefix: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class StoreMachine(RuleBasedStateMachine):
    """Drives one store (per node for Redis) and checks it against the model after each step."""

    redis = False
    grace = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.holders: dict[str, set[str]] = {user: set() for user in USERS}
        self.seen: dict[str, Seen] = {}
        self.versions: dict[str, int] = {}  # the last version per user, kept across a wipe
        self.pending: dict[str, Deadline] = {}
        self.live = {node: False for node in NODES}
        self.known: set[str] = set()  # nodes in the store's node set (Redis)
        self.epoch: str | None = None
        self.received: list[str] = []
        self.clock = 0
        self.deployment = self.run(self._open())

    # -- plumbing ---------------------------------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 10))

    async def _open(self) -> Deployment:
        if self.redis:
            prefix = f"presence-prop-{uuid.uuid4().hex[:10]}"
            stores = {node: make_backend(REDIS_URL, prefix, grace=self.grace) for node in NODES}
            deployment = Deployment(stores, make_backend(REDIS_URL, prefix), prefix)
        else:
            local = make_backend("memory://", grace=self.grace)
            deployment = Deployment({node: local for node in NODES}, local)
        deployment.tasks.append(
            asyncio.create_task(
                deployment.listener.listen(self.received.append, self._resubscribed)
            )
        )
        await deployment.listener.wait_subscribed(timeout=5.0)
        return deployment

    async def _resubscribed(self) -> None:
        raise AssertionError("the listener lost its subscription: events may be missing")

    def teardown(self) -> None:
        self.run(self._close())
        self.loop.close()

    async def _close(self) -> None:
        for task in self.deployment.tasks:
            task.cancel()
        await asyncio.gather(*self.deployment.tasks, return_exceptions=True)
        for backend in {*self.deployment.stores.values(), self.deployment.listener}:
            await backend.close()
        if self.redis:
            await _drop_redis_keys(REDIS_URL, self.deployment.prefix)

    async def _drain(self) -> list[str]:
        """Everything published so far: a marker published after it comes back last."""
        self.clock += 1
        marker = json.dumps({"type": "marker", "n": self.clock})
        await self.deployment.listener.publish(marker)
        while marker not in self.received:
            await asyncio.sleep(0.0005)
        got = self.received[: self.received.index(marker)]
        del self.received[: len(got) + 1]
        return got

    def now(self) -> str:
        """A distinct ISO time per call, so that every last_seen tells which step set it."""
        self.clock += 1
        return (
            f"2026-01-01T00:{self.clock // 60000 % 60:02d}:"
            f"{self.clock // 1000 % 60:02d}.{self.clock % 1000:03d}Z"
        )

    def store(self, node: str) -> Backend:
        return self.deployment.stores[node]

    def check(
        self,
        returned: list[str],
        expected: Mapping[str, tuple[bool, str | None]],
        optional: Mapping[str, tuple[bool, str | None]] | None = None,
    ) -> set[str]:
        """The events published since the last step are ``returned``, one per user in
        ``expected`` (plus maybe some of ``optional``), with growing versions. Returns the
        users announced."""
        published = self.run(self._drain())
        assert sorted(published) == sorted(returned), "published events != returned events"
        events = [json.loads(text) for text in published]
        announced = [event["username"] for event in events]
        assert len(announced) == len(set(announced)), f"duplicate events: {published}"
        got = {e["username"]: (e["online"], e["last_seen"]) for e in events}
        allowed = {**(optional or {}), **expected}
        assert set(expected) <= set(got) <= set(allowed), (
            f"events {got}, expected {expected}, allowed as well {optional or {}}"
        )
        for event in events:
            user = event["username"]
            assert got[user] == allowed[user], f"event {event}, expected {allowed[user]}"
            old = self.versions.get(user)
            assert old is None or event["version"] > old, (
                f"version of {user} went from {old} to {event}"
            )
            assert event["type"] == "presence"
            self.versions[user] = event["version"]
            self.seen[user] = Seen(event["online"], event["version"], event["last_seen"])
        return set(got)

    def is_online(self, user: str) -> bool:
        return user in self.seen and self.seen[user].online

    def let_go(self, user: str, now: str, t0: float, t1: float) -> dict[str, Any]:
        """No node holds ``user`` any more: offline now, or pending with a grace."""
        if self.holders[user] or not self.is_online(user):
            return {}
        if self.grace > 0:
            self.pending.setdefault(user, Deadline(t0 + self.grace, t1 + self.grace, now))
            return {}
        return {user: (False, now)}

    # -- rules ------------------------------------------------------------------------------
    @initialize(held=st.lists(st.tuples(nodes, users), max_size=4))
    def start(self, held: list[tuple[str, str]]) -> None:
        """Every node heartbeats, then opens its first sockets."""
        for node in NODES:
            self.heartbeat(node)
        for node, user in held:
            self.attach(node, user)

    @rule(node=nodes)
    def heartbeat(self, node: str) -> None:
        """A live node's heartbeat; for a killed one, coming back (a partition heals)."""
        epoch, readded = self.run(self.store(node).heartbeat(node, ALIVE))
        assert readded == (self.redis and node not in self.known), (
            f"heartbeat of {node}: readded={readded}, known nodes {sorted(self.known)}"
        )
        assert self.epoch in (None, epoch), "the epoch changed although the store was not emptied"
        self.epoch = epoch
        self.live[node] = True
        if self.redis:
            self.known.add(node)
        self.check([], {})

    @precondition(lambda self: self.redis and sum(self.live.values()) >= len(NODES) - 1)
    @rule(node=nodes)
    def kill(self, node: str) -> None:
        """The process dies: its liveness key expires (its holdings stay until reaped)."""
        self.run(self.store(node).heartbeat(node, 0.001))
        self.run(asyncio.sleep(0.004))
        self.known.add(node)
        self.live[node] = False
        self.check([], {})

    @precondition(lambda self: self.redis)
    @rule()
    def wipe(self) -> None:
        """Redis restarts empty: every node learns it at its next heartbeat (it is added back),
        and versions keep growing although every counter is gone. Until then the nodes'
        liveness keys are gone too: the model treats them as dead (they do nothing)."""
        self.run(_drop_redis_keys(REDIS_URL, self.deployment.prefix))
        self.live = {node: False for node in NODES}
        self.seen.clear()
        self.pending.clear()
        self.known.clear()
        for holders in self.holders.values():
            holders.clear()
        self.epoch = None
        self.check([], {})

    @rule(node=nodes, user=users)
    def attach(self, node: str, user: str) -> None:
        if not self.live[node]:
            return  # a dead process opens no socket
        was_online = self.is_online(user)
        self.holders[user].add(node)
        self.pending.pop(user, None)
        now = self.now()
        event = self.run(self.store(node).attach(node, user, now))
        self.check([event] if event else [], {} if was_online else {user: (True, now)})

    @rule(node=nodes, user=users)
    def detach(self, node: str, user: str) -> None:
        """Also where ``node`` does not hold the user (it was reaped meanwhile, say)."""
        if not self.live[node] or user not in self.seen:
            return
        self.holders[user].discard(node)
        now = self.now()
        t0 = time.time()
        event = self.run(self.store(node).detach(node, user, now))
        self.check([event] if event else [], self.let_go(user, now, t0, time.time()))

    @rule(user=users)
    def close_everywhere(self, user: str) -> None:
        """The user's last tabs close, one node after the other."""
        for node in sorted(n for n in self.holders[user] if self.live[n]):
            self.detach(node, user)

    @rule(reaper=nodes, node=nodes, force=st.booleans())
    def reap(self, reaper: str, node: str, force: bool) -> None:
        if self.redis:
            dead = sorted(n for n in self.known if n != reaper and not self.live[n])
            assert self.run(self.store(reaper).dead_nodes(reaper)) == dead
        now = self.now()
        events = self.run(self.store(reaper).reap(node, now, force))
        expected = {}
        if force or (self.redis and not self.live[node]):
            self.known.discard(node)
            for user, holders in self.holders.items():
                if node in holders:
                    holders.discard(node)
                    if not holders and self.is_online(user):
                        expected[user] = (False, now)  # a reap never waits for a grace
        self.check(events, expected)

    @rule(node=nodes)
    def handover(self, node: str) -> None:
        """``node`` stops (or restarts) and lets its users go."""
        if not self.live[node]:
            return
        now = self.now()
        t0 = time.time()
        events = self.run(self.store(node).handover(node, now))
        t1 = time.time()
        self.known.discard(node)
        expected = {}
        for user, holders in self.holders.items():
            if node in holders:
                holders.discard(node)
                expected.update(self.let_go(user, now, t0, t1))
        self.check(events, expected)

    @rule(node=nodes)
    def sweep(self, node: str) -> None:
        """A sweep before any deadline: it must publish nothing. (Close to a deadline it does
        nothing: whether it came before or after would depend on how long the steps took, and
        a failing sequence must replay the same way to be shrunk.)"""
        if any(time.time() >= d.lo - SLACK - MARGIN for d in self.pending.values()):
            return
        self._sweep(node)

    @precondition(lambda self: self.grace > 0)
    @rule(node=nodes)
    def wait_and_sweep(self, node: str) -> None:
        """Time passes (every deadline recorded so far expires), then ``node``'s sweeper runs."""
        until = max((d.hi for d in self.pending.values()), default=time.time()) + 2 * SLACK
        while (left := until - time.time()) > 0:
            self.run(asyncio.sleep(left))
        self._sweep(node)

    def _sweep(self, node: str) -> None:
        s0 = time.time()
        events, wait = self.run(self.store(node).sweep())
        s1 = time.time()
        due = {user: (False, d.closed) for user, d in self.pending.items() if s0 > d.hi + SLACK}
        maybe = {
            user: (False, d.closed)
            for user, d in self.pending.items()
            if s1 >= d.lo - SLACK and user not in due
        }
        for user in self.check(events, due, maybe):
            del self.pending[user]
        if not self.pending:
            assert wait is None, f"nothing is pending, yet the sweep says wait {wait}"
        else:
            assert wait is not None and wait <= self.grace + SLACK, (
                f"pending {sorted(self.pending)}, yet the sweep says wait {wait}"
            )

    @rule(node=nodes, user=users)
    def settle(self, node: str, user: str) -> None:
        """A resync's "make sure nobody holds them": offline at once, grace or not."""
        if user not in self.seen:
            return
        now = self.now()
        event = self.run(self.store(node).settle(user, now))
        expected = {}
        if not self.holders[user]:
            self.pending.pop(user, None)
            if self.is_online(user):
                expected[user] = (False, now)
        self.check([event] if event else [], expected)

    @rule(node=nodes, user=users)
    def announce(self, node: str, user: str) -> None:
        event = self.run(self.store(node).announce(user))
        self.check([event] if event else [], {} if user in self.seen else {user: (False, None)})

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def online_exactly_while_held(self) -> None:
        for user, seen in self.seen.items():
            held = bool(self.holders[user]) or user in self.pending
            assert seen.online == held, (
                f"{user}: online={seen.online}, held by {sorted(self.holders[user])}, "
                f"pending={user in self.pending}"
            )

    @invariant()
    def pending_agrees(self) -> None:
        """The in-process store saves its deadlines at shutdown: they must be the model's."""
        if not self.redis:
            entries = self.run(self.store(NODES[0]).pending())
            assert {e.username: e.last_seen for e in entries} == {
                user: d.closed for user, d in self.pending.items()
            }

    @invariant()
    def states_agree(self) -> None:
        states = self.run(self.store(NODES[0]).states())
        got = {u: (s.online, s.version, s.last_seen) for u, s in states.items()}
        want = {u: (s.online, s.version, s.last_seen) for u, s in self.seen.items()}
        assert got == want, f"states() {got} != the events {want}"
        for node in NODES:
            members = self.run(self.store(node).members(node))
            assert members == {u for u, h in self.holders.items() if node in h}, (
                f"members({node}) = {members}, holders {self.holders}"
            )


def machine(redis: bool, grace: float) -> type[StoreMachine]:
    return type(
        f"{'Redis' if redis else 'Memory'}StoreMachine",
        (StoreMachine,),
        {"redis": redis, "grace": grace},
    )


@pytest.mark.parametrize("grace", [0.0, GRACE], ids=["no-grace", "grace"])
@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_store_transitions(backend: str, grace: float, redis_available: bool) -> None:
    if backend == "redis" and not redis_available:
        unavailable(f"Redis at {REDIS_URL} is not reachable")
    run_state_machine_as_test(machine(backend == "redis", grace), settings=RUNS)
