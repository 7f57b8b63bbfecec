"""Below Tornado's public WebSocket API, in one place: the bounded write path and the
protocol fixes (close 1007 for invalid UTF-8, a close reason that is not UTF-8).

Relies on Tornado 6.6 internals (pinned in requirements.txt; tests/live/test_fanout.py and
tests/handlers/test_bounded_writes.py cover them): ``IOStream._write_buffer``, ``IOStream.socket``,
``WebSocketProtocol13._handle_message``.
"""
from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import tornado.iostream
from tornado.websocket import WebSocketProtocol13

if TYPE_CHECKING:
    from tornado.websocket import WebSocketProtocol

#: What one held item costs besides its bytes (the list slot, the object header): counted,
#: so that many tiny frames cannot hide their real cost from the limit.
ITEM_OVERHEAD = 64
#: Parts at least this long are held by reference (shared snapshots and batches are never
#: copied per socket); shorter ones are copied into a growing tail buffer.
BY_REFERENCE = 4096
#: A tail buffer stops growing here and a new one starts (one write each when draining).
TAIL_MAX = 64 * 1024

CLOSE_INVALID_DATA = 1007


class BoundedWriter:
    """Writes pre-built frames to one socket; everything this process holds for the socket
    (Tornado's write buffer plus what waits here) stays within ``limit`` bytes.

    - Nothing queued: one ``sendmsg`` straight to the socket (no Future, no Task); what the
      kernel does not take goes to Tornado's buffer, by reference.
    - While Tornado still has bytes of ours to write, new frames wait here, coalesced (a
      flood of 130-byte pongs is a few bytearrays, not a Future and a tuple each), and
      follow in one ``IOStream.write`` per item once Tornado's buffer has drained: at most
      one write of ours is ever in flight, so Tornado holds at most a handful of Futures.
    - ``send`` returns False when the socket is gone or already holds more than ``limit``:
      the caller drops the socket (presence_app/live/fanout.py). What one socket holds is thus
      at most ``limit`` plus one write (a flush's batch, shared by every socket, or a reply).
    """

    __slots__ = ("_conn", "limit", "_held", "_held_size", "_draining")

    def __init__(self, conn: WebSocketProtocol, limit: int) -> None:
        self._conn: WebSocketProtocol | None = conn
        self.limit = limit
        self._held: list[bytes | memoryview | bytearray] = []
        self._held_size = 0
        self._draining = False

    def release(self) -> None:
        """The socket closed: drop what waits here and the reference to the connection.
        (handler -> writer -> connection -> handler is a cycle; Tornado breaks its own on
        close so that closed sockets are freed at once, not by the cyclic collector, which
        presence_app/runtime/gcpolicy.py keeps away from connections.)"""
        self._conn = None
        self._held, self._held_size = [], 0

    def cut(self) -> None:
        """End the TCP connection now, without waiting the 5 s Tornado gives a client to
        answer our close frame (a flooder that ignores it keeps the loop parsing its frames).
        """
        stream = getattr(self._conn, "stream", None)
        if stream is not None and not stream.closed():
            stream.close()

    def held(self) -> int:
        """Bytes this process holds for the socket (its share of Python objects included)."""
        stream = getattr(self._conn, "stream", None)
        queued = len(stream._write_buffer) if stream is not None else 0
        return queued + self._held_size + ITEM_OVERHEAD * len(self._held)

    def send(self, parts: Sequence[bytes]) -> bool:
        conn = self._conn
        stream = getattr(conn, "stream", None)
        if conn is None or stream is None or conn.is_closing() or stream.closed():
            return False
        if self._draining:
            if self.held() > self.limit:
                return False
            self._hold(parts)
            return True
        size = sum(len(part) for part in parts)
        rest: Sequence[bytes | memoryview] = parts
        queued = len(stream._write_buffer)  # Tornado's own frames (ping, close)
        try:
            if queued == 0 and type(stream) is tornado.iostream.IOStream:
                try:
                    sent = stream.socket.sendmsg(parts)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                if sent == size:
                    return True
                rest = _unsent(parts, sent)
                size -= sent
            if queued > self.limit:
                return False
            self._write(stream, rest)
        except (OSError, tornado.iostream.StreamClosedError):
            return False
        return True

    def _hold(self, parts: Sequence[bytes]) -> None:
        held = self._held
        for part in parts:
            if len(part) >= BY_REFERENCE:
                held.append(part)
            elif held and type(held[-1]) is bytearray and len(held[-1]) < TAIL_MAX:
                held[-1] += part  # type: ignore[operator]
            else:
                held.append(bytearray(part))
            self._held_size += len(part)

    def _write(self, stream: tornado.iostream.IOStream,
               parts: Sequence[bytes | memoryview | bytearray]) -> None:
        future: asyncio.Future[None] | None = None
        for part in parts:
            # Tornado retrieves these Futures' exceptions itself. A held bytearray is never
            # touched again once written (the list that held it is replaced).
            future = stream.write(memoryview(part) if isinstance(part, bytearray) else part)
        if future is not None and not future.done():
            self._draining = True
            future.add_done_callback(self._drained)

    def _drained(self, future: asyncio.Future[None]) -> None:
        """Tornado wrote our last write (or the stream closed): hand it what waited here."""
        self._draining = False
        held, self._held, self._held_size = self._held, [], 0
        if future.cancelled() or future.exception() is not None or not held:
            return
        conn = self._conn
        stream = getattr(conn, "stream", None)
        if conn is None or stream is None or conn.is_closing() or stream.closed():
            return  # after a close frame nothing else may be sent
        try:
            self._write(stream, held)
        except (OSError, tornado.iostream.StreamClosedError):
            pass  # the stream closes itself; its close callback unregisters the socket


def _unsent(parts: Sequence[bytes], sent: int) -> Sequence[bytes | memoryview]:
    """What is left of ``parts`` after the kernel took ``sent`` bytes (views, not copies)."""
    for index, part in enumerate(parts):
        if sent < len(part):
            return [memoryview(part)[sent:], *parts[index + 1:]]
        sent -= len(part)
    return ()


def set_send_buffer(conn: WebSocketProtocol, size: int) -> None:
    """Cap the kernel's send buffer of this socket (``SO_SNDBUF``; Linux doubles it and caps
    it at ``net.core.wmem_max``). Autotuned, loopback grows it to megabytes per socket, all
    of it held for a client that stopped reading. 0 keeps the kernel's autotuning."""
    stream = getattr(conn, "stream", None)
    sock = getattr(stream, "socket", None)
    if size > 0 and sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        except OSError:
            pass  # a socket already closing: nothing to cap


class PresenceProtocol(WebSocketProtocol13):
    """Tornado's RFC 6455 protocol with two answers the RFC asks for instead of a cut TCP
    connection (Tornado 6.6 aborts on both):

    - a text frame that is not valid UTF-8 closes with 1007 (invalid frame payload data);
    - a close frame whose reason is not valid UTF-8 is answered like any other close
      (Tornado's ``to_unicode`` would raise inside its frame loop).

    Text frames reach ``on_message`` as bytes with ``handler.text_frame`` set: the handler
    decodes them and closes with 1007 on failure (after decompression, which Tornado does).
    """

    def _handle_message(self, opcode: int, data: bytes) -> Any:
        if opcode == 0x1:
            handler: Any = self.handler
            handler.text_frame = True
            try:
                return super()._handle_message(0x2, data)
            finally:
                handler.text_frame = False
        if opcode == 0x8 and len(data) > 2:
            try:
                data[2:].decode("utf-8")
            except UnicodeDecodeError:
                data = data[:2]
        return super()._handle_message(opcode, data)


def adapt_protocol(protocol: WebSocketProtocol | None) -> WebSocketProtocol | None:
    """Tornado's protocol object, with ``PresenceProtocol``'s behaviour when it is the
    RFC 6455 one (the only one Tornado 6.6 implements)."""
    if type(protocol) is WebSocketProtocol13:
        protocol.__class__ = PresenceProtocol
    return protocol
