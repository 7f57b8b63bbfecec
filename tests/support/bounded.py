"""The two bounded-write attacks, measured: a stalled client fed small events and a client
flooding pings without reading. tests/handlers/test_bounded_writes.py runs them on the fast
path, tests/handlers/test_tornado_internals.py on the public-API fallback."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

from tests.support.wsraw import PING_FRAME, RawSocket

LIMIT = 256 * 1024  # large enough that the process's other allocations are noise


class Unretrieved:
    """Collects what the loop reports as never retrieved (Future/Task exceptions)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.loop = asyncio.get_running_loop()
        self.previous = self.loop.get_exception_handler()
        self.loop.set_exception_handler(self.handle)

    def handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.seen.append(str(context.get("message")))

    def check(self) -> list[str]:
        gc.collect()
        self.loop.set_exception_handler(self.previous)
        return [m for m in self.seen if "never retrieved" in m]


async def held_until_dropped(
    services: Any,
    grow: Callable[[], Awaitable[None]],
    rounds: int,
    client_side: Callable[[], int] = lambda: 0,
) -> int:
    """Run ``grow()`` until the process drops its only socket; the peak of Python memory
    held meanwhile above the start (tracemalloc), less ``client_side()`` (what the test's
    own client buffers in this process)."""
    tracemalloc.start()
    try:
        base, peak = tracemalloc.get_traced_memory()[0], 0
        for _ in range(rounds):
            await grow()
            peak = max(peak, tracemalloc.get_traced_memory()[0] - base - client_side())
            if services.presence.socket_count == 0:
                return peak
        raise AssertionError(f"not dropped after {rounds} rounds; held {peak} bytes")
    finally:
        tracemalloc.stop()


async def stalled_client_peak(services: Any, user_factory: Any, http_port: int) -> int:
    """One small event per flush (the worst case for per-write objects) to a client that
    never reads: the peak memory held for it until the process drops it."""
    alice = await user_factory("alice")
    stalled = await RawSocket.open(http_port, alice.cookie_header(), rcvbuf=4096)
    stalled.stall()
    await asyncio.sleep(0.1)
    presence, counter = services.presence, iter(range(10**9))

    async def one_event() -> None:
        presence.broadcast(json.dumps({"type": "test", "n": next(counter), "pad": "x" * 100}))
        await asyncio.sleep(0)

    try:
        return await held_until_dropped(services, one_event, 60_000)
    finally:
        stalled.abort()


async def ping_flood_peak(services: Any, user_factory: Any, http_port: int) -> int:
    """Tiny pings as fast as possible from a client that never reads: the peak memory held
    for it until the process drops it (what the client itself buffers not counted)."""
    alice = await user_factory("alice")
    flooder = await RawSocket.open(http_port, alice.cookie_header(), rcvbuf=4096)
    flooder.stall()
    burst, transport = PING_FRAME * 2000, flooder.writer.transport

    async def flood() -> None:
        if not transport.is_closing() and transport.get_write_buffer_size() == 0:
            flooder.writer.write(burst)
        await asyncio.sleep(0.002)

    try:
        return await held_until_dropped(
            services, flood, 5000, client_side=transport.get_write_buffer_size
        )
    finally:
        flooder.abort()
