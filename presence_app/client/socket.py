"""One presence stream: the snapshot, then events, read on demand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from presence_app.client.errors import ClientError, WaitTimeout
from presence_app.client.view import Message, PresenceView


def status_word(online: bool) -> str:
    """``online`` / ``offline``."""
    return "online" if online else "offline"


class PresenceSocket(PresenceView):
    """One WebSocket connection. The view (``state``, ``online()``) is what has been read:
    every ``recv`` (and so ``async for``, ``wait_for``, ``wait_status``) applies the
    messages it reads. When the connection closes, reading raises
    ``websockets.ConnectionClosed`` and ``close_code`` says why; ``async for`` just ends."""

    def __init__(self, ws: ClientConnection) -> None:
        super().__init__()
        self.ws = ws
        self.last_message: Message | None = None

    async def __aenter__(self) -> PresenceSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self.events()

    async def read_snapshot(self, timeout: float | None) -> None:
        """Read the first message, which must be the snapshot."""
        first = await self.recv(timeout)
        if first.get("type") != "snapshot":
            raise ClientError(f"expected a snapshot first, got {first!r}")

    async def recv(self, timeout: float | None = 10.0) -> Message:
        """The next message, already applied to ``state``. ``WaitTimeout`` when none comes
        within ``timeout`` seconds (``None``: wait for ever); ``ConnectionClosed`` on close."""
        try:
            async with asyncio.timeout(timeout):
                raw = await self.ws.recv()
        except TimeoutError:
            raise WaitTimeout("a message", self.last_message, timeout) from None
        message = json.loads(raw)
        self.apply(message)
        self.last_message = message
        return message

    async def events(self, timeout: float | None = None) -> AsyncIterator[Message]:
        """Every further message until the socket closes (``async for event in sock`` is
        the same with no timeout)."""
        while True:
            try:
                yield await self.recv(timeout)
            except ConnectionClosed:
                return

    async def wait_for(
        self,
        predicate: Callable[[Message], bool],
        timeout: float | None = 10.0,
        what: str = "a matching message",
    ) -> Message:
        """Read until a message satisfies ``predicate`` and return it; the messages before
        it are read (and applied) too. ``WaitTimeout(what, last message)`` after
        ``timeout`` seconds in all (``None``: wait for ever)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise WaitTimeout(what, self.last_message, timeout)
            try:
                message = await self.recv(left)
            except WaitTimeout:
                raise WaitTimeout(what, self.last_message, timeout) from None
            if predicate(message):
                return message

    async def wait_status(
        self, username: str, online: bool, timeout: float | None = 10.0
    ) -> Message:
        """Read until the view says ``username`` is ``online`` (maybe it already does) and
        return the user's entry. ``WaitTimeout`` names the wait and carries the user's last
        entry (``None``: never seen)."""
        what = f"{username} to be {status_word(online)}"

        def reached(_message: Message | None = None) -> bool:
            return self.synced and self.online(username) is online

        if not reached():
            try:
                await self.wait_for(reached, timeout, what)
            except WaitTimeout:
                raise WaitTimeout(what, self.state.get(username), timeout) from None
        return self.state[username]

    async def send_json(self, message: Any) -> None:
        """Send one JSON text frame (the protocol defines only ``{"type": "ping"}``)."""
        await self.ws.send(json.dumps(message))

    async def ping(self, timeout: float | None = 10.0) -> Message:
        """Send an application ping and read until its ``pong``."""
        await self.send_json({"type": "ping"})
        return await self.wait_for(lambda m: m.get("type") == "pong", timeout, "a pong")

    async def wait_closed(self, timeout: float | None = 10.0) -> int | None:
        """Read until the server closes; returns the close code it sent. ``timeout`` bounds
        the wait for each message."""
        try:
            while True:
                await self.recv(timeout)
        except ConnectionClosed:
            pass
        return self.close_code

    @property
    def close_code(self) -> int | None:
        """The close code once closed (1006: the connection dropped without one)."""
        return self.ws.close_code

    async def close(self) -> None:
        """Close the connection (code 1000)."""
        await self.ws.close()
