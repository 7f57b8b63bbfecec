"""The presence WebSocket: authenticated, origin-checked, snapshot first, then events."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import Any

import tornado.web
import tornado.websocket

from handlers.base import SessionMixin, set_security_headers
from handlers.tornado_internals import SETTING, TornadoInternals, checked
from handlers.wsio import CLOSE_INVALID_DATA, SocketWriter
from presence_app.live.fanout import CLOSE_POLICY
from presence_app.live.frames import text_frame
from presence_app.live.limits import MessageRate

__all__ = ["PresenceSocketHandler", "deflate_offer", "text_frame"]

log = logging.getLogger(__name__)

#: Frames a client may still send after our close frame before the TCP connection is cut.
AFTER_CLOSE = 100

EXTENSIONS = "Sec-WebSocket-Extensions"
#: What the server answers to an acceptable permessage-deflate offer. No context takeover on
#: either side: Tornado then keeps no zlib state per socket (it would be ~300 KiB each), the
#: shared snapshot is a self-contained segment, and client frames (tiny pings) decode alone.
#: (handlers/tornado_internals.py ``DEFLATE_PARAMS`` agrees to the same.)
DEFLATE_AGREED = "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
_DEFLATE_PARAMS = {
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
}


def deflate_offer(header: str) -> bool:
    """Whether a ``Sec-WebSocket-Extensions`` request header offers permessage-deflate in a
    form we accept: known parameters only, and no server window below the full 32 KiB (our
    shared snapshots are compressed once, with the full window). Browsers offer
    ``permessage-deflate; client_max_window_bits``."""
    for offer in header.split(","):
        name, *params = [part.strip() for part in offer.split(";")]
        if name.lower() != "permessage-deflate":
            continue
        keys = {
            p.partition("=")[0].strip().lower(): p.partition("=")[2].strip().strip('"')
            for p in params
            if p
        }
        if not set(keys) <= _DEFLATE_PARAMS:
            continue
        wbits = keys.get("server_max_window_bits")
        if wbits is not None and wbits != "15":
            continue
        return True
    return False


class PresenceSocketHandler(SessionMixin, tornado.websocket.WebSocketHandler):
    """Implements presence's ``Connection``: ``send`` and ``close`` plus the user's identity."""

    username = ""
    user_id = 0
    session_id = ""
    address = ""
    expires_at: dt.datetime | None = None  # the session's end: the socket is closed then
    deflate = False
    #: Set by ``PresenceProtocol`` while a text frame's payload (bytes) is being delivered.
    text_frame = False
    writer: SocketWriter | None = None
    rate: MessageRate | None = None
    counted = False  # this socket is counted in ``services.caps``
    after_close = 0  # frames received after our close frame
    closed_with: int | None = None  # the code of our close frame, if we closed first
    connected = False  # from open() until our close() or on_close()

    @property
    def internals(self) -> TornadoInternals:
        """How this app writes below Tornado's API (checked once, when the app was made)."""
        internals: TornadoInternals | None = self.settings.get(SETTING)
        return internals if internals is not None else checked()

    def set_default_headers(self) -> None:
        """The refusals (401, 403, 400) and the 101 carry the same headers as every page."""
        set_security_headers(self)

    async def prepare(self) -> None:
        user = await self.load_user()
        if user is None:
            raise tornado.web.HTTPError(401, "not authenticated")
        if self.presence.closing:
            raise tornado.web.HTTPError(503, "shutting down")
        self.username, self.user_id, self.session_id = user.username, user.user_id, user.session_id
        self.expires_at = user.expires_at
        self.address = self.request.remote_ip or ""
        refusal = self.services.caps.refusal(self.username, self.address)
        if refusal is not None:
            raise tornado.web.HTTPError(429, refusal)
        # permessage-deflate is negotiated here, not by Tornado: Tornado would echo the
        # client's offer (keeping ~300 KiB of zlib state per socket) and its header parser
        # drops valueless parameters such as server_no_context_takeover. RFC 7692 lets a
        # server add both no_context_takeover parameters to its answer.
        headers = self.request.headers
        self.deflate = self.internals.deflate and deflate_offer(headers.get(EXTENSIONS, ""))
        if EXTENSIONS in headers:
            del headers[EXTENSIONS]

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        # Called once every check (Origin, version) has passed, just before the 101.
        if self.deflate:
            self.set_header(EXTENSIONS, DEFLATE_AGREED)
        return self.internals.protocol(super().get_websocket_protocol())

    def open(self, *args: Any, **kwargs: Any) -> None:
        settings, internals = self.services.settings, self.internals
        self.connected = True
        # Checked again now that it is open: sockets that passed prepare() together
        # must not overshoot the cap.
        refusal = self.services.caps.open(self.username, self.address)
        if refusal is not None:
            self.close(CLOSE_POLICY, refusal[:120])
            return
        self.counted = True
        self.writer = internals.writer(self, settings.send_buffer_limit)
        self.rate = MessageRate(settings.client_message_rate, settings.client_message_burst)
        internals.cap_send_buffer(self, settings.socket_send_buffer)
        if self.deflate:
            # Snapshots go compressed once (presence_app/live/frames.py); events, pongs and errors
            # plain, which permessage-deflate allows. Client frames are decompressed.
            internals.start_deflate(self)
        self.presence.add(self)

    def on_message(self, message: str | bytes) -> None:
        writer = self.writer
        if not self.connected or writer is None or writer.closing() or self.rate is None:
            # Closing (we closed, or Tornado's protocol is) or refused at open: what the
            # client still sends is ignored, and a client that goes on sending instead of
            # answering the close frame is cut off.
            self.after_close += 1
            if writer is not None and self.after_close > AFTER_CLOSE:
                writer.cut()
            return
        if not self.rate.allow():
            settings = self.services.settings
            self.presence.reply(
                self,
                json.dumps(
                    {
                        "type": "error",
                        "error": f"too many messages: at most "
                        f"{settings.client_message_rate:g} a second (bursts of "
                        f"{settings.client_message_burst})",
                    }
                ),
            )
            self.close(CLOSE_POLICY, "message rate exceeded")
            return
        size = len(message) if isinstance(message, bytes) else len(message.encode("utf-8"))
        if size > self.services.settings.max_message_size:
            # Over Tornado's own cap it aborts the TCP connection with the frame unread, which
            # clients often see as 1006; a frame read in full gets a proper 1009 handshake.
            self.close(1009, "message too big")
            return
        text = self.text_frame
        if isinstance(message, bytes) and text:
            try:
                message = message.decode("utf-8")
            except UnicodeDecodeError:
                self.close(CLOSE_INVALID_DATA, "text frame is not valid UTF-8")
                return
        try:
            if isinstance(message, bytes):  # the protocol is JSON *text* frames only
                raise ValueError("binary frame")
            data = json.loads(message)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than ~1,000
            self.presence.reply(self, '{"type":"error","error":"frames must be JSON text"}')
            return
        if isinstance(data, dict) and data.get("type") == "ping":
            self.presence.reply(self, '{"type":"pong"}')
            return
        kind = data.get("type") if isinstance(data, dict) else None
        self.presence.reply(
            self, json.dumps({"type": "error", "error": f"unknown message type: {kind!r}"[:200]})
        )

    def on_close(self) -> None:
        # Ours if we closed first (a dropped socket may never answer), else the client's.
        self.connected = False
        self.services.metrics.websocket_closed(self.closed_with or self.close_code)
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if self.counted:
            self.counted = False
            self.services.caps.close(self.username, self.address)
        self.presence.remove(self)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if self.closed_with is None and self.connected:
            self.closed_with = code
        self.connected = False
        super().close(code, reason)

    def send(self, parts: Sequence[bytes]) -> bool:
        """Write pre-built frames (or pieces of one): the one place where bytes meet this
        socket (presence_app/live/fanout.py calls it for events, snapshots and replies), bounded
        by ``--send-buffer-limit`` (handlers/tornado_internals.py ``BoundedWriter``, or
        handlers/wsio.py ``MessageWriter`` on the public-API fallback). False: the socket
        is gone or over its limit, and is dropped."""
        writer = self.writer
        return writer is not None and writer.send(parts)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A refusal before the upgrade is plain HTTP: a short JSON error. (Tornado's
        ``send_error`` calls this only while nothing is written or finished; after the
        upgrade errors close the socket instead.)"""
        self.set_header("Content-Type", "application/json")
        exc = kwargs.get("exc_info", (None, None, None))[1]
        reason = exc.log_message if isinstance(exc, tornado.web.HTTPError) else "error"
        self.finish(json.dumps({"error": reason, "status": status_code}))
