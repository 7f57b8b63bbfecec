"""The presence WebSocket: authenticated, origin-checked, snapshot first, then events."""
from __future__ import annotations

import json
import logging
from typing import Any

import tornado.web
import tornado.websocket

from handlers.base import SessionMixin

log = logging.getLogger(__name__)


class PresenceSocketHandler(SessionMixin, tornado.websocket.WebSocketHandler):
    """Implements presence's ``Connection``: ``send`` and ``close`` plus the user's identity."""

    username = ""
    user_id = 0
    session_id = ""

    async def prepare(self) -> None:
        user = await self.load_user()
        if user is None:
            raise tornado.web.HTTPError(401, "not authenticated")
        if self.presence.closing:
            raise tornado.web.HTTPError(503, "shutting down")
        self.username, self.user_id, self.session_id = user.username, user.user_id, user.session_id

    def get_compression_options(self) -> None:
        return None  # per-message deflate costs CPU and ~300 KiB of zlib state per socket

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.write_message(self.presence.add(self))

    def on_message(self, message: str | bytes) -> None:
        try:
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

    def send(self, text: str) -> bool:
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return False
        try:
            self.write_message(text)
        except tornado.websocket.WebSocketClosedError:
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
