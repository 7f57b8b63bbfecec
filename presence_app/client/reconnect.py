"""A presence stream that outlives its connections: it reconnects like the page does.

A background task reads the current WebSocket into a queue and, when the connection drops,
reconnects with the page's backoff and full jitter (static/js/connection.js, docs/PROTOCOL.md):
a wait drawn from ``[0, min(15 s, 0.5 s * 2**n))`` before attempt ``n``, at least
``[0, 2 s)`` after a 1001 (a restart closes every socket of a process at once), ``n`` reset
after 10 s connected. Before each attempt it asks ``/api/session``: a session that is gone
is logged in again only if the client holds credentials, otherwise the stream ends with
``SessionEnded``. A close with 4001 (the session was ended on purpose) always ends it.

Reading (``recv``, ``async for``, ``wait_*``) applies the messages as a plain socket does,
plus two markers: ``{"type": "disconnected", "code": ...}`` when a connection is lost, and
``{"type": "reconnected", "me", "users", "attempts", "offline_for"}`` when a new snapshot
replaced the view; the changes it showed follow as ``presence``/``removed`` events with
``"missed": true``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from presence_app.client.backoff import STABLE_AFTER, reconnect_delay
from presence_app.client.errors import (
    SESSION_ENDED,
    ClientError,
    LoginFailed,
    SessionEnded,
    Throttled,
    WaitTimeout,
)
from presence_app.client.socket import PresenceSocket
from presence_app.client.view import Message, PresenceView, missed_events

if TYPE_CHECKING:
    from presence_app.client.http import PresenceClient

log = logging.getLogger(__name__)

#: Unread messages held at most; past it the queue is replaced by one ``caught_up`` marker.
MAX_QUEUE = 10_000

ConnectionState = Literal["live", "reconnecting", "closed"]
#: Failures of one attempt that are worth another (the server is down, restarting, busy).
TRANSIENT = (ClientError, OSError, TimeoutError, InvalidHandshake, ConnectionClosed)


class ReconnectingSocket(PresenceSocket):
    """What ``PresenceClient.connect(reconnect=True)`` returns; the plain socket's API,
    reading from a queue that a background task fills across reconnects.

    ``connection_state`` is ``"live"``, ``"reconnecting"`` or ``"closed"`` (right now, not
    as read); ``reconnects`` counts successful reconnects, ``last_error`` is the latest
    failed attempt's error. ``close()`` stops it (``async with`` does).
    """

    def __init__(
        self,
        client: PresenceClient,
        ws: ClientConnection,
        connect_args: dict[str, Any],
        *,
        max_queue: int = MAX_QUEUE,
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(ws)
        self.client = client
        self.connection_state: ConnectionState = "live"
        self.reconnects = 0
        self.last_error: BaseException | None = None
        self._connect_args = connect_args
        self._rand = rand
        self._queue: deque[Message] = deque()
        self._max_queue = max_queue
        self._latest = PresenceView()  # the view as received, for a ``caught_up`` marker
        self._arrived = asyncio.Event()
        self._state_waiter: asyncio.Future[str] | None = None
        self._end: ClientError | None = None  # why the stream stopped for good
        self._closed = False  # close() was called
        self._attempt = 0
        self._live_since = 0.0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        client: PresenceClient,
        ws: ClientConnection,
        timeout: float | None,
        **connect_args: Any,
    ) -> ReconnectingSocket:
        """Read the snapshot of ``ws``, then keep the stream going in the background."""
        sock = cls(client, ws, {"timeout": timeout, **connect_args})
        snapshot = await sock._first_message(ws, timeout)
        sock.apply(snapshot)
        sock.last_message = snapshot
        sock._became_live(snapshot)
        sock._task = asyncio.create_task(sock._run(), name="presence-reconnecting-socket")
        return sock

    # --- reading ---------------------------------------------------------------------------

    async def recv(self, timeout: float | None = 10.0) -> Message:
        """The next message or marker, applied to the view; raises ``SessionEnded`` (or the
        error that stopped reconnecting) once every message before it has been read."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await self._next()
                    if self._consume(message):
                        return message
        except TimeoutError as exc:
            if isinstance(exc, ClientError):
                raise
            raise WaitTimeout("a message", self.last_message, timeout) from None

    async def events(self, timeout: float | None = None) -> AsyncIterator[Message]:
        """Every further message and marker, across reconnects, until ``close()``; raises
        ``SessionEnded`` when the server ends the session."""
        while True:
            try:
                message = await self.recv(timeout)
            except ClientError:
                if self._closed and self._end is None:
                    return
                raise
            yield message

    async def _next(self) -> Message:
        while True:
            if self._closed:
                raise ClientError("the socket is closed")
            if self._queue:
                return self._queue.popleft()
            if self._end is not None:
                raise self._end
            self._arrived.clear()
            await self._arrived.wait()

    def _consume(self, message: Message) -> bool:
        """Apply one queued message to the view; False for a stale event (not delivered)."""
        kind = message.get("type")
        if message.get("missed"):
            pass  # already in the view: the snapshot of the marker before it showed it
        elif kind in ("reconnected", "caught_up"):
            before = self.state
            self.apply({"type": "snapshot", "me": message["me"], "users": message["users"]})
            self.synced = bool(message.get("synced", True))
            self._queue.extendleft(reversed(missed_events(before, self.state)))
        elif kind == "disconnected":
            self.synced = False
        elif not self.apply(message):
            del self.stale[:-100]  # keep the last few for inspection, not a lifetime's
            return False
        self.last_message = message
        return True

    async def wait_live(self, timeout: float | None = 10.0) -> None:
        """Wait until connected (right now, whatever has been read)."""
        try:
            async with asyncio.timeout(timeout):
                while self.connection_state != "live":
                    if self.connection_state == "closed":
                        raise self._end or ClientError("the socket is closed")
                    if self._state_waiter is None:
                        self._state_waiter = asyncio.get_running_loop().create_future()
                    await asyncio.shield(self._state_waiter)
        except TimeoutError as exc:
            if isinstance(exc, ClientError):
                raise
            raise WaitTimeout("the connection to be live", self.connection_state, timeout) from None

    # --- writing and closing ---------------------------------------------------------------

    async def send_json(self, message: Any) -> None:
        """Send on the current connection; ``ClientError`` while reconnecting."""
        if self.connection_state != "live":
            raise ClientError(f"not connected ({self.connection_state})")
        try:
            await self.ws.send(json.dumps(message))
        except ConnectionClosed:
            raise ClientError("not connected (the connection just closed)") from None

    async def wait_closed(self, timeout: float | None = 10.0) -> int | None:
        """Read until the stream ends for good (a 4001, or reconnecting gave up); returns
        the last close code. ``timeout`` bounds the wait for each message."""
        try:
            while True:
                await self.recv(timeout)
        except (SessionEnded, LoginFailed):
            pass
        except ClientError:
            if not self._closed and self._end is None:
                raise
        return self.close_code

    async def close(self) -> None:
        """Stop reconnecting and close the connection (code 1000)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._set_state("closed")
        self._arrived.set()  # a reader waiting for a message ends too
        await self.ws.close()

    # --- the background task ---------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                code = await self._pump(self.ws)
                if code == SESSION_ENDED:
                    raise SessionEnded(
                        "the server ended the session (close 4001: logout, expiry or revocation)",
                        close_code=SESSION_ENDED,
                    )
                self._lost(code)
                await self._reconnect(code)
        except ClientError as exc:
            self._stop(exc)
        except Exception as exc:  # a bug here must not leave readers waiting for ever
            log.exception("presence stream failed")
            self._stop(ClientError(f"the presence stream failed: {exc!r}"))

    async def _pump(self, ws: ClientConnection) -> int:
        """Queue every frame of ``ws`` until it closes; returns the close code."""
        try:
            async for raw in ws:
                self._received(raw)
        except ConnectionClosed:
            pass
        return ws.close_code or 1006

    def _received(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            log.debug("non-JSON frame ignored")
            return
        if isinstance(message, dict):
            self._latest.apply(message)
            self._push(message)

    def _push(self, message: Message) -> None:
        if len(self._queue) >= self._max_queue:  # the reader fell far behind: catch it up
            dropped = len(self._queue) + 1  # this message too (it is in the catch-up)
            self._queue.clear()
            message = {
                "type": "caught_up",
                "me": self._latest.me,
                "dropped": dropped,
                "users": list(self._latest.state.values()),
                "synced": self._latest.synced,
            }
        self._queue.append(message)
        self._arrived.set()

    def _set_state(self, state: ConnectionState) -> None:
        self.connection_state = state
        waiter, self._state_waiter = self._state_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(state)

    def _became_live(self, snapshot: Message) -> None:
        self._latest.apply(snapshot)
        self._live_since = asyncio.get_running_loop().time()
        self._set_state("live")

    def _lost(self, code: int) -> None:
        log.info("presence connection lost (close %s), reconnecting", code)
        if asyncio.get_running_loop().time() - self._live_since >= STABLE_AFTER:
            self._attempt = 0
        self._set_state("reconnecting")
        self._latest.synced = False
        self._push({"type": "disconnected", "code": code})

    def _stop(self, reason: ClientError) -> None:
        self._end = reason
        self._set_state("closed")
        self._arrived.set()

    async def _reconnect(self, close_code: int) -> None:
        """Attempt until a new connection's snapshot is in; raises when it must give up."""
        loop = asyncio.get_running_loop()
        lost_at, attempts, code, at_least = loop.time(), 0, close_code, 0.0
        while True:
            delay = max(reconnect_delay(self._attempt, code, self._rand), at_least)
            code, self._attempt, attempts = 0, self._attempt + 1, attempts + 1
            await asyncio.sleep(delay)
            try:
                ws, snapshot = await self._open_again()
                break
            except TRANSIENT as exc:
                if isinstance(exc, (SessionEnded, LoginFailed)) and (exc.status or 0) in (
                    0,
                    400,
                    401,
                    403,
                ):
                    raise  # refused for good: no session and no (valid) credentials
                self.last_error = exc
                at_least = (exc.retry_after or 0.0) if isinstance(exc, Throttled) else 0.0
                log.info("reconnect attempt %d failed: %s", attempts, exc)
        self.ws = ws
        self.reconnects += 1
        self._became_live(snapshot)
        self._push(
            {
                "type": "reconnected",
                "me": snapshot["me"],
                "users": snapshot["users"],
                "attempts": attempts,
                "offline_for": round(loop.time() - lost_at, 3),
            }
        )

    async def _open_again(self) -> tuple[ClientConnection, Message]:
        if await self.client.session() is None:  # the session is gone
            if not self.client.has_credentials:
                raise SessionEnded(
                    "the session is gone (401 when reconnecting) and the client "
                    "has no credentials to log in again",
                    401,
                )
            await self.client.relogin()
        args = dict(self._connect_args)
        timeout = args.pop("timeout")
        try:
            ws = await self.client.open_ws(timeout=timeout, **args)
        except SessionEnded as exc:  # revoked between the check and the upgrade: check again
            raise ClientError(str(exc), exc.status) from None
        return ws, await self._first_message(ws, timeout)

    async def _first_message(self, ws: ClientConnection, timeout: float | None) -> Message:
        try:
            async with asyncio.timeout(timeout):
                first = json.loads(await ws.recv())
        except TimeoutError:
            await ws.close()
            raise WaitTimeout("the snapshot", None, timeout) from None
        except ValueError:
            first = "a frame that is not JSON"
        if not isinstance(first, dict) or first.get("type") != "snapshot":
            await ws.close()
            raise ClientError(f"expected a snapshot first, got {first!r}")
        return first
