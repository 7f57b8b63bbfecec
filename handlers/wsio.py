"""Writing pre-built frames to one socket, bounded: what every writer promises, the pieces
of the fast path that need no Tornado internals, and the public-API fallback writer.

The fast path itself (``BoundedWriter``: a direct ``sendmsg``, Tornado's write buffer
measured) lives in handlers/tornado_internals.py, the one module below Tornado's API; this
module uses Tornado's public API only.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Sequence
from typing import Protocol

from tornado.websocket import WebSocketClosedError, WebSocketHandler

#: What one held item costs besides its bytes (the list slot, the object header): counted,
#: so that many tiny frames cannot hide their real cost from the limit.
ITEM_OVERHEAD = 64
#: Parts at least this long are held by reference (shared snapshots and batches are never
#: copied per socket); shorter ones are copied into a growing tail buffer.
BY_REFERENCE = 4096
#: A tail buffer stops growing here and a new one starts (one write each when draining).
TAIL_MAX = 64 * 1024
#: What one message in flight through ``write_message`` costs besides its payload (a Task,
#: its coroutine, Tornado's write Future and callbacks, the frame header: under 1 KiB with
#: tracemalloc), counted so that the limit bounds real memory
#: (tests/handlers/test_tornado_internals.py).
MESSAGE_COST = 1536
#: The fallback's messages in flight at once, counted as above (~40 small ones).
WINDOW = 64 * 1024

CLOSE_INVALID_DATA = 1007


class SocketWriter(Protocol):
    """Writes pre-built frames to one socket; what this process holds for it stays within
    ``limit`` bytes plus one write."""

    limit: int

    def send(self, parts: Sequence[bytes]) -> bool:
        """Write ``parts`` (complete frames, or pieces of them). False: the socket is gone
        or already holds more than ``limit``, and the caller drops it."""

    def held(self) -> int:
        """Bytes this process holds for the socket (its share of Python objects included)."""

    def closing(self) -> bool:
        """Whether the socket is closing (nothing the client sends is answered then)."""

    def cut(self) -> None:
        """End the TCP connection now, if this writer can."""

    def release(self) -> None:
        """The socket closed: drop what waits and every reference to the connection."""


def hold(held: list[bytes | memoryview | bytearray], parts: Sequence[bytes]) -> int:
    """Append ``parts`` to ``held``, coalescing short ones (a flood of 130-byte pongs is a few
    bytearrays, not an object each); the bytes added."""
    added = 0
    for part in parts:
        if len(part) >= BY_REFERENCE:
            held.append(part)
        elif held and type(held[-1]) is bytearray and len(held[-1]) < TAIL_MAX:
            held[-1] += part  # type: ignore[operator]
        else:
            held.append(bytearray(part))
        added += len(part)
    return added


def unsent(parts: Sequence[bytes], sent: int) -> Sequence[bytes | memoryview]:
    """What is left of ``parts`` after the kernel took ``sent`` bytes (views, not copies)."""
    for index, part in enumerate(parts):
        if sent < len(part):
            return [memoryview(part)[sent:], *parts[index + 1 :]]
        sent -= len(part)
    return ()


def frame_payloads(data: bytes) -> list[bytes]:
    """The payloads of ``data``, a run of complete, unmasked, uncompressed final text frames
    (what presence_app/live/frames.py builds when permessage-deflate is off). ValueError else."""
    payloads, pos, end = [], 0, len(data)
    while pos < end:
        if pos + 2 > end or data[pos] != 0x81 or data[pos + 1] & 0x80:
            raise ValueError("not a final, unmasked, uncompressed text frame")
        size, pos = data[pos + 1], pos + 2
        if size >= 126:
            width = 2 if size == 126 else 8
            size, pos = int.from_bytes(data[pos : pos + width], "big"), pos + width
        if pos + size > end:
            raise ValueError("a frame is cut short")
        payloads.append(data[pos : pos + size])
        pos += size
    return payloads


class MessageWriter:
    """The fallback writer: Tornado's public ``write_message`` only.

    Frames are split back into their payloads and queued here (bytes plus ``ITEM_OVERHEAD``
    each); they go out one ``write_message`` each, in order, while the messages in flight
    (each counted at its payload plus ``MESSAGE_COST``, until the Future ``write_message``
    returned is done) stay under ``WINDOW``: a batch of thousands of events is never
    thousands of Tasks at once. ``send`` returns False once the socket holds more than
    ``limit`` (queued plus in flight), so it holds at most ``limit`` + ``WINDOW`` + one
    write. Every Future's outcome is retrieved: a socket that closes leaves no "exception was
    never retrieved" behind.
    """

    __slots__ = ("_handler", "limit", "_outbox", "_queued", "_pending")

    def __init__(self, handler: WebSocketHandler, limit: int) -> None:
        self._handler: WebSocketHandler | None = handler
        self.limit = limit
        self._outbox: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._pending = 0

    def send(self, parts: Sequence[bytes]) -> bool:
        if self._handler is None or self.held() > self.limit:
            return False
        try:
            payloads = frame_payloads(b"".join(parts))
        except ValueError:
            return False
        self._outbox.extend(payloads)
        self._queued += sum(len(payload) for payload in payloads)
        self._queued += ITEM_OVERHEAD * len(payloads)
        return self._pump()

    def _pump(self) -> bool:
        handler, outbox = self._handler, self._outbox
        try:
            while outbox and handler is not None and self._pending < WINDOW:
                payload = outbox.popleft()
                self._queued -= len(payload) + ITEM_OVERHEAD
                future = handler.write_message(payload)
                cost = len(payload) + MESSAGE_COST
                self._pending += cost
                future.add_done_callback(functools.partial(self._written, cost))
        except WebSocketClosedError:
            self.release()
            return False
        return True

    def _written(self, cost: int, future: asyncio.Future[None]) -> None:
        self._pending -= cost
        if not future.cancelled():
            future.exception()  # retrieved: a write to a socket that closed meanwhile
        if self._outbox:
            self._pump()

    def held(self) -> int:
        return self._queued + self._pending

    def closing(self) -> bool:
        return self._handler is None

    def cut(self) -> None:
        """No public way to end the TCP connection at once: Tornado closes it 5 s after our
        close frame if the client does not answer."""

    def release(self) -> None:
        self._handler = None
        self._outbox, self._queued = collections.deque(), 0
