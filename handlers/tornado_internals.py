"""Below Tornado's public API, in one place: checked once at start, with a public fallback.

Why. Fan-out writes pre-built frames straight to each socket: one ``sendmsg`` when nothing
is queued, no Future or Task per write, and a bound on what each socket holds. That is what
lets a flush to 10,000 sockets keep up with the reference server; ``write_message`` frames,
copies and wraps every message in a Task and cannot say how much is still queued. Two
answers the RFC asks for (close 1007 for a text frame that is not UTF-8, a close reason that
is not UTF-8) and permessage-deflate without per-socket zlib state also need Tornado's
protocol object.

What it relies on (Tornado 6.6, pinned in requirements.txt):
- ``WebSocketHandler.ws_connection`` (the protocol object) and ``get_websocket_protocol()``
  (the hook that makes it, just before the 101);
- ``WebSocketProtocol13``: its ``stream`` (the IOStream after the upgrade), ``is_closing()``,
  ``_handle_message(opcode, data)`` (overridden by ``PresenceProtocol``, which is swapped in
  through ``__class__``) and ``_create_compressors(side, agreed_parameters)``;
- ``IOStream._write_buffer`` (``len()``: the bytes queued, not yet in the kernel) and
  ``IOStream.socket`` (written directly with ``sendmsg`` while that buffer is empty).

``check()`` verifies these once per process, when the app is made (``checked()``): presence
and signatures, then a behavioural self-check over a socketpair (a direct ``sendmsg``, then a
queued write counted in bytes, both arriving in order) and over a protocol object (a text
frame delivered as bytes with ``text_frame`` set). It returns the problems it found.

The fallback, for the whole process when any problem is found (one WARNING names them):
Tornado's public API only. Frames go out through ``write_message`` (handlers/wsio.py
``MessageWriter``); what is in flight is counted from the Futures it returns, at a fixed cost
per message besides its bytes, so ``--send-buffer-limit`` and the order of events still hold,
at the price of slower fan-out. permessage-deflate is not offered (snapshots go
uncompressed), the kernel send buffer keeps its autotuned size, a client that floods after
our close frame is closed by Tornado's own 5 s timeout rather than at once, and a text frame
or close reason that is not UTF-8 gets Tornado's own answer (the TCP connection is cut).

No other module of handlers/ reads Tornado's private attributes:
tests/handlers/test_tornado_internals.py checks that, and that ``check()`` finds nothing on
the pinned Tornado.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import inspect
import logging
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import tornado
import tornado.httputil
import tornado.iostream
import tornado.web
from tornado.websocket import WebSocketHandler, WebSocketProtocol, WebSocketProtocol13

from handlers.wsio import ITEM_OVERHEAD, MessageWriter, SocketWriter, hold, unsent

log = logging.getLogger(__name__)

#: What ``start_deflate`` agrees to (the header handlers/ws.py sends says the same): no
#: context takeover on either side, so Tornado keeps no zlib state between messages.
DEFLATE_PARAMS: dict[str, Any] = {
    "client_no_context_takeover": None,
    "server_no_context_takeover": None,
}
SETTING = "tornado_internals"


@dataclass(frozen=True)
class TornadoInternals:
    """The one way handlers/ reach below Tornado's API; ``problems`` empty: the fast path."""

    problems: tuple[str, ...] = ()

    @property
    def fast(self) -> bool:
        return not self.problems

    @property
    def deflate(self) -> bool:
        """Whether permessage-deflate may be agreed (it needs ``_create_compressors``)."""
        return self.fast

    def protocol(self, protocol: WebSocketProtocol | None) -> WebSocketProtocol | None:
        """What ``get_websocket_protocol`` returns: Tornado's, adapted on the fast path."""
        return adapt_protocol(protocol) if self.fast else protocol

    def writer(self, handler: WebSocketHandler, limit: int) -> SocketWriter:
        """The bounded writer of an open socket (called from ``open()``)."""
        conn = handler.ws_connection if self.fast else None
        if conn is not None:
            return BoundedWriter(conn, limit)
        return MessageWriter(handler, limit)

    def cap_send_buffer(self, handler: WebSocketHandler, size: int) -> None:
        """Cap the kernel's send buffer of this socket (``SO_SNDBUF``; Linux doubles it and
        caps it at ``net.core.wmem_max``). Autotuned, loopback grows it to megabytes per
        socket, all of it held for a client that stopped reading. 0: keep the autotuning."""
        stream = getattr(handler.ws_connection, "stream", None) if self.fast else None
        sock = getattr(stream, "socket", None)
        if size > 0 and sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            except OSError:
                pass  # a socket already closing: nothing to cap

    def start_deflate(self, handler: WebSocketHandler) -> None:
        """A decompressor for the client's compressed frames (and a compressor that is never
        used: we send only pre-built frames, presence_app/live/frames.py). Only once the header
        was sent, on the fast path."""
        conn = handler.ws_connection if self.deflate else None
        if conn is not None:
            conn._create_compressors("server", dict(DEFLATE_PARAMS))  # type: ignore[attr-defined]


#: RFC 9110's reason-phrase, as Tornado's ``set_status`` checks it.
_REASON = re.compile(r"[\t \x21-\x7e\x80-\xff]+")


def reason_phrase(status_code: int, error: dict[str, Any]) -> str:
    """Inside ``write_error``: the reason phrase ``send_error`` put on the status line (what
    ``RequestHandler._reason`` holds), from public data: the ``HTTPError``'s ``reason``, else
    ``reason=``, else the standard phrase; "Unknown" for one Tornado refuses."""
    reason = error.get("reason")
    exc = error.get("exc_info", (None, None, None))[1]
    if isinstance(exc, tornado.web.HTTPError) and exc.reason:
        reason = exc.reason
    if reason is None:
        return http.client.responses.get(status_code, "Unknown")
    return "Unknown" if "<" in reason or not _REASON.fullmatch(reason) else reason


def internals_for(problems: Sequence[str]) -> TornadoInternals:
    """The internals to use given ``check()``'s findings: any problem, one WARNING and the
    public API only."""
    if problems:
        log.warning(
            "Tornado %s lacks or changed internals this app relies on (%s): using "
            "Tornado's public API only in this process (slower fan-out, no "
            "permessage-deflate; see handlers/tornado_internals.py)",
            tornado.version,
            "; ".join(problems),
        )
    return TornadoInternals(tuple(problems))


@functools.cache
def checked() -> TornadoInternals:
    """``check()`` once per process (its answer cannot change while the process runs)."""
    return internals_for(check())


def check(
    stream_class: type[tornado.iostream.IOStream] = tornado.iostream.IOStream,
    handler_class: type[WebSocketHandler] = WebSocketHandler,
) -> list[str]:
    """What is missing or behaves differently in the internals the fast path relies on
    (empty: all there). The classes can be stand-ins, for tests."""
    problems: list[str] = []
    for name, probe in (
        ("IOStream", lambda: _stream_problems(stream_class)),
        ("WebSocketProtocol13", lambda: _protocol_problems(handler_class)),
    ):
        try:
            problems += probe()
        except Exception as exc:  # whatever an unknown Tornado does, the app must start
            problems.append(f"the {name} self-check failed: {exc!r}")
    return problems


# --- the fast path ---------------------------------------------------------------------------


class BoundedWriter:
    """Writes pre-built frames to one socket; everything this process holds for the socket
    (Tornado's write buffer plus what waits here) stays within ``limit`` bytes.

    - Nothing queued: one ``sendmsg`` straight to the socket (no Future, no Task); what the
      kernel does not take goes to Tornado's buffer, by reference.
    - While Tornado still has bytes of ours to write, new frames wait here, coalesced
      (handlers/wsio.py ``hold``), and follow in one ``IOStream.write`` per item once
      Tornado's buffer has drained: at most one write of ours is ever in flight, so Tornado
      holds at most a handful of Futures.
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
        """(handler -> writer -> connection -> handler is a cycle; Tornado breaks its own on
        close so that closed sockets are freed at once, not by the cyclic collector, which
        presence_app/runtime/gcpolicy.py keeps away from connections.)"""
        self._conn = None
        self._held, self._held_size = [], 0

    def cut(self) -> None:
        """Without waiting the 5 s Tornado gives a client to answer our close frame (a
        flooder that ignores it keeps the loop parsing its frames)."""
        stream = getattr(self._conn, "stream", None)
        if stream is not None and not stream.closed():
            stream.close()

    def closing(self) -> bool:
        conn = self._conn
        return conn is None or conn.is_closing()

    def held(self) -> int:
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
            self._held_size += hold(self._held, parts)
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
                rest = unsent(parts, sent)
                size -= sent
            if queued > self.limit:
                return False
            self._write(stream, rest)
        except (OSError, tornado.iostream.StreamClosedError):
            return False
        return True

    def _write(
        self, stream: tornado.iostream.IOStream, parts: Sequence[bytes | memoryview | bytearray]
    ) -> None:
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


# --- the start-up self-check ----------------------------------------------------------------


def _params(function: Any) -> list[str]:
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return []


def _stream_problems(stream_class: type[tornado.iostream.IOStream]) -> list[str]:
    """Run the IOStream probe on a loop of its own, in a thread of its own: the caller may
    be inside a running loop (make_app in a coroutine) or have none (run.py, tests)."""
    found: list[str] = []

    def run() -> None:
        try:
            found.extend(asyncio.run(asyncio.wait_for(_probe_stream(stream_class), 10)))
        except Exception as exc:
            found.append(f"the IOStream self-check failed: {exc!r}")

    thread = threading.Thread(target=run, name="tornado-internals-check", daemon=True)
    thread.start()
    thread.join()
    return found


async def _probe_stream(stream_class: type[tornado.iostream.IOStream]) -> list[str]:
    left, right = socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # small: a big write queues
    right.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream, peer = stream_class(left), tornado.iostream.IOStream(right)
    try:
        return await _exercise_stream(stream, left, peer)
    finally:
        peer.close()
        try:
            stream.close()
        except Exception:  # a changed IOStream may fail here too: its problem is reported
            left.close()


async def _exercise_stream(
    stream: Any, sock: socket.socket, peer: tornado.iostream.IOStream
) -> list[str]:
    if getattr(stream, "socket", None) is not sock:
        return ["IOStream.socket is not the socket the stream writes to"]
    try:
        idle = len(stream._write_buffer)
    except (AttributeError, TypeError):
        return ["IOStream._write_buffer is missing or has no len()"]
    if idle != 0:
        return [f"len(IOStream._write_buffer) is {idle} on an idle stream, not 0"]
    problems = []
    sock.sendmsg([b"di", b"rect"])
    payload = bytes(range(256)) * 1024
    written = stream.write(payload)
    queued = len(stream._write_buffer)
    if not 0 < queued <= len(payload):
        problems.append(
            f"len(IOStream._write_buffer) is {queued} after a {len(payload)}-byte "
            "write to a full socket: not the bytes queued"
        )
    received = await peer.read_bytes(6 + len(payload))
    await written
    if received != b"direct" + payload:
        problems.append("a direct IOStream.socket.sendmsg and a queued write arrived garbled")
    if len(stream._write_buffer) != 0:
        problems.append("len(IOStream._write_buffer) is not 0 once the write completed")
    return problems


class _ProbeConnection(tornado.httputil.HTTPConnection):
    """What ``RequestHandler.__init__`` calls on a request's connection, and no more."""

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        pass


def _protocol_problems(handler_class: type[WebSocketHandler]) -> list[str]:
    class Probe(handler_class):  # type: ignore[valid-type, misc]
        text_frame = False
        got: list[Any]

        def on_message(self, message: str | bytes) -> None:
            self.got.append((message, self.text_frame))

    request = tornado.httputil.HTTPServerRequest(
        start_line=tornado.httputil.RequestStartLine("GET", "/ws", "HTTP/1.1"),
        connection=_ProbeConnection(),
        headers=tornado.httputil.HTTPHeaders({"Host": "localhost", "Sec-WebSocket-Version": "13"}),
    )
    handler = Probe(tornado.web.Application(), request)
    handler.got = []
    problems = (
        [] if hasattr(handler, "ws_connection") else ["WebSocketHandler.ws_connection is missing"]
    )
    if _params(getattr(handler_class, "get_websocket_protocol", None)) != ["self"]:
        return problems + ["WebSocketHandler.get_websocket_protocol() is missing or changed"]
    protocol = handler.get_websocket_protocol()
    kind = type(protocol)
    for name, wanted in (
        ("_handle_message", ["self", "opcode", "data"]),
        ("_create_compressors", ["self", "side", "agreed_parameters"]),
    ):
        if _params(getattr(kind, name, None))[: len(wanted)] != wanted:
            problems.append(
                f"{kind.__name__}.{name}({', '.join(wanted[1:])}) is missing or changed"
            )
    if not hasattr(protocol, "stream") or not callable(getattr(protocol, "is_closing", None)):
        problems.append(f"{kind.__name__}.stream or .is_closing() is missing")
    if kind is not WebSocketProtocol13:
        problems.append(
            f"get_websocket_protocol() makes a {kind.__name__}, not a WebSocketProtocol13"
        )
    if problems:
        return problems
    return _exercise_protocol(handler, protocol)


def _exercise_protocol(handler: Any, protocol: Any) -> list[str]:
    adapt_protocol(protocol)
    if type(protocol) is not PresenceProtocol:
        return ["PresenceProtocol could not be swapped in"]
    protocol._create_compressors("server", dict(DEFLATE_PARAMS))
    protocol._handle_message(0x1, b'"\xff"')
    if handler.got != [(b'"\xff"', True)] or handler.text_frame:
        return [
            f"a text frame reached on_message as {handler.got!r}, not as bytes with "
            "text_frame set (WebSocketProtocol13._handle_message changed)"
        ]
    return []
