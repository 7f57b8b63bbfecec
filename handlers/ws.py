"""The presence WebSocket: authenticated, origin-checked, snapshot first, then events."""
from __future__ import annotations

import json
import logging
import struct
from typing import Any

import tornado.iostream
import tornado.web
import tornado.websocket

from handlers.base import SessionMixin

log = logging.getLogger(__name__)


def text_frame(text: str) -> bytes:
    """One unmasked, final WebSocket text frame (RFC 6455 5.2), built once per event."""
    data = text.encode("utf-8")
    size = len(data)
    if size < 126:
        return struct.pack("!BB", 0x81, size) + data
    if size <= 0xFFFF:
        return struct.pack("!BBH", 0x81, 126, size) + data
    return struct.pack("!BBQ", 0x81, 127, size) + data


class PresenceSocketHandler(SessionMixin, tornado.websocket.WebSocketHandler):
    """Implements presence's ``Connection``: ``send`` and ``close`` plus the user's identity."""

    username = ""
    user_id = 0
    session_id = ""
    send_limit = 0

    async def prepare(self) -> None:
        user = await self.load_user()
        if user is None:
            raise tornado.web.HTTPError(401, "not authenticated")
        if self.presence.closing:
            raise tornado.web.HTTPError(503, "shutting down")
        self.username, self.user_id, self.session_id = user.username, user.user_id, user.session_id
        self.send_limit = self.services.settings.send_buffer_limit  # read per event: keep it near

    def get_compression_options(self) -> None:
        return None  # per-message deflate costs CPU and ~300 KiB of zlib state per socket

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.write_message(self.presence.add(self))

    def on_message(self, message: str | bytes) -> None:
        size = len(message) if isinstance(message, bytes) else len(message.encode("utf-8"))
        if size > self.services.settings.max_message_size:
            # Over Tornado's own cap it aborts the TCP connection with the frame unread, which
            # clients often see as 1006; a frame read in full gets a proper 1009 handshake.
            self.close(1009, "message too big")
            return
        try:
            if isinstance(message, bytes):  # the protocol is JSON *text* frames only
                raise ValueError("binary frame")
            data = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            self.write_message('{"type":"error","error":"frames must be JSON text"}')
            return
        if isinstance(data, dict) and data.get("type") == "ping":
            self.write_message('{"type":"pong"}')
            return
        kind = data.get("type") if isinstance(data, dict) else None
        self.write_message(json.dumps({"type": "error",
                                       "error": f"unknown message type: {kind!r}"[:200]}))

    def on_close(self) -> None:
        self.presence.remove(self)

    def send(self, frame: bytes) -> bool:
        """Write a pre-built frame (see ``text_frame``): no Future, no Task, one syscall.

        This is below Tornado's public API (``write_message`` builds a frame, a Future and a
        Task per call, which dominates fan-out to thousands of sockets). It relies on
        ``IOStream._write_buffer`` of Tornado 6.6 (pinned in requirements.txt; covered by
        tests/test_fanout.py). Ordering with ``write_message`` is kept: a frame goes straight
        to the socket only when Tornado has nothing queued for it.
        """
        conn = self.ws_connection
        stream = getattr(conn, "stream", None)
        if conn is None or stream is None or conn.is_closing() or stream.closed():
            return False
        queued = len(stream._write_buffer)
        if queued > self.send_limit:
            return False
        try:
            if queued == 0 and type(stream) is tornado.iostream.IOStream:
                try:
                    sent = stream.socket.send(frame)
                except BlockingIOError:
                    sent = 0
                if sent == len(frame):
                    return True
                frame = frame[sent:]
            stream.write(frame)
        except (OSError, tornado.iostream.StreamClosedError):
            return False
        return True

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        # Before the upgrade this is plain HTTP: answer with a short JSON error.
        if not self._finished and not self._headers_written:
            self.clear()
            self.set_status(status_code)
            self.set_header("Content-Type", "application/json")
            exc = kwargs.get("exc_info", (None, None, None))[1]
            reason = exc.log_message if isinstance(exc, tornado.web.HTTPError) else "error"
            self.finish(json.dumps({"error": reason, "status": status_code}))
