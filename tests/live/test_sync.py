"""``PresenceSync``'s contract: a resync asked for with a reason ends with the true state,
and its reason is counted (``presence_resyncs_total{reason}``) and logged; a reset store is
noticed by the heartbeat; ``stop`` hands this process's users over and ends every loop. Every
body runs over both brokers (and both databases)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from presence_app.live.fanout import CLOSE_GOING_AWAY
from presence_app.live.resync import (
    BROKER_RECONNECTED,
    REAPED,
    REASONS,
    SETTLE_FAILED,
    STORE_RESET,
    STORE_WRITE_FAILED,
)
from presence_app.live.view import iso_now
from tests.support.livesockets import Socket, coroutine_name, online, register, running, until
from tests.support.redis import drop_keys as _drop_redis_keys


def resyncs_exposed(services: Any) -> dict[str, float]:
    """``presence_resyncs_total`` by reason, as /metrics shows it."""
    text = services.metrics.exposition().decode()
    return {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "presence_resyncs"
        for s in family.samples
        if s.name == "presence_resyncs_total"
    }


def reason_lines(caplog: Any, reason: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.INFO
        and r.name.startswith("presence_app.live")
        and reason in r.getMessage()
        and "Resynchronising" in r.getMessage()
    ]


async def emptied_by_another_process(url: str, prefix: str) -> None:
    """Redis restarted empty, and another process's heartbeat set the new epoch first (had
    this process's set it, the same store instance would see its own epoch again, and only
    that it had to rejoin: a ``reaped`` resync)."""
    import redis.asyncio as aioredis

    await _drop_redis_keys(url, prefix)
    client = aioredis.from_url(url)
    try:
        await client.set(f"{prefix}:epoch", "set-by-another-process")
    finally:
        await client.aclose()


async def held_online(services: Any, username: str) -> Socket:
    sock = Socket(await register(services, username))
    services.presence.add(sock)
    await services.presence.settled()
    await until(lambda: online(services, username), what=f"{username} online")
    return sock


@pytest.mark.gen_test
async def test_a_requested_resync_ends_with_the_truth_and_counts_its_reason(
    services: Any, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="presence_app.live")
    presence, sync, node = services.presence, services.sync, services.settings.node_id
    await held_online(services, "alice")
    await sync.backend.reap(node, iso_now(), force=True)  # the store lost our users
    await until(lambda: not online(services, "alice"), what="the reap's offline event")
    presence.request_resync(REAPED)
    assert presence.resync_requested == REAPED
    await until(
        lambda: sync.resyncs[REAPED] >= 1 and online(services, "alice"),
        timeout=10,
        what="the resync",
    )
    assert presence.resync_requested is None
    assert await sync.backend.members(node) == {"alice"} == presence.registered_users()
    assert (await sync.backend.states())["alice"].online
    assert {reason for reason, n in sync.resyncs.items() if n} == {REAPED}
    exposed = resyncs_exposed(services)
    assert set(exposed) == set(REASONS) and exposed[REAPED] >= 1
    assert reason_lines(caplog, f"reason: {REAPED}")


@pytest.mark.gen_test
async def test_one_resync_answers_every_reason_asked_before_it_began(
    services: Any, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="presence_app.live")
    presence, sync = services.presence, services.sync
    await held_online(services, "alice")
    presence.request_resync(STORE_WRITE_FAILED)
    presence.request_resync(SETTLE_FAILED)
    await sync.resync(BROKER_RECONNECTED)
    assert presence.resync_requested is None
    assert sync.resyncs[STORE_WRITE_FAILED] == 1, "counted once, by the first reason"
    assert sync.resyncs[SETTLE_FAILED] == sync.resyncs[BROKER_RECONNECTED] == 0
    (line,) = reason_lines(caplog, "reason: ")
    assert line.getMessage().endswith(
        f"(reason: {STORE_WRITE_FAILED}, {SETTLE_FAILED}, {BROKER_RECONNECTED})"
    )
    assert online(services, "alice")


@pytest.mark.gen_test
async def test_resubscribing_resynchronises_as_broker_reconnected(services: Any) -> None:
    await held_online(services, "alice")
    await services.sync.resubscribed()
    assert services.sync.resyncs[BROKER_RECONNECTED] == 1
    assert online(services, "alice")


@pytest.mark.parametrize("redis_url", ["redis"], indirect=True)  # the in-process store
@pytest.mark.gen_test  # cannot be emptied
async def test_a_reset_store_is_noticed_and_rebuilt(services: Any, caplog: Any) -> None:
    settings = services.settings
    caplog.set_level(logging.INFO, logger="presence_app.live")
    await held_online(services, "alice")
    await emptied_by_another_process(settings.redis_url, settings.redis_prefix)
    await until(lambda: services.sync.resyncs[STORE_RESET] >= 1, timeout=10, what="a resync")
    await services.presence.settled()
    store = services.backend
    assert (await store.states())["alice"].online
    assert await store.members(settings.node_id) == {"alice"}
    assert reason_lines(caplog, f"reason: {STORE_RESET}")


@pytest.mark.gen_test
async def test_stop_hands_users_over_and_ends_every_loop(services: Any) -> None:
    sync, store, node = services.sync, services.backend, services.settings.node_id
    sock = await held_online(services, "alice")
    (run,) = [t for t in services.tasks if coroutine_name(t) == "PresenceSync.run"]
    assert not run.done()
    await sync.stop()
    assert sock.closed is not None and sock.closed[0] == CLOSE_GOING_AWAY
    assert await store.members(node) == set()
    assert (await store.states())["alice"].online is False
    await asyncio.sleep(0)  # the run task sees its loops cancelled
    assert run.done()
    assert running("PresenceSync.", "StoreRegistration.", "sweep_graces") == []
    await sync.stop()  # idempotent: the services' own close calls it again
