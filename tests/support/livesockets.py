"""What presence's contract tests plug into ``PresenceService`` in place of the web layer: a
socket (the ``Connection`` protocol) that decodes every frame written to it, real accounts
with real sessions, and a poll-until helper."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable
from typing import Any

from presence_app.accounts.service import SessionUser
from tests.support.clients import PASSWORD


def payloads(data: bytes) -> list[bytes]:
    """The payloads of concatenated unmasked, uncompressed server frames."""
    out, pos = [], 0
    while pos < len(data):
        size, start = data[pos + 1] & 0x7F, pos + 2
        if size == 126:
            size, start = struct.unpack("!H", data[pos + 2 : pos + 4])[0], pos + 4
        elif size == 127:
            size, start = struct.unpack("!Q", data[pos + 2 : pos + 10])[0], pos + 10
        out.append(data[start : start + size])
        pos = start + size
    return out


class Socket:
    """A ``Connection`` that keeps every message it was sent, decoded."""

    deflate = False

    def __init__(self, user: SessionUser) -> None:
        self.username, self.user_id = user.username, user.user_id
        self.session_id, self.expires_at = user.session_id, user.expires_at
        self.messages: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    def send(self, parts: Any) -> bool:
        self.messages += [json.loads(p) for p in payloads(b"".join(parts))]
        return self.closed is None

    def close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)

    @property
    def snapshot(self) -> dict[str, Any] | None:
        return next((m for m in self.messages if m["type"] == "snapshot"), None)

    def events(self, username: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "presence" and m["username"] == username]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]


async def register(services: Any, username: str) -> SessionUser:
    """A new account and a live session of it (sockets of a made-up session would be closed
    by the session re-check that follows every resync)."""
    return (await services.accounts.create_user_with_session(username, PASSWORD, PASSWORD)).user


async def until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what or predicate}"
        await asyncio.sleep(0.02)


def coroutine_name(task: asyncio.Task[Any]) -> str:
    """``PresenceSync.run``, say: the qualified name of the coroutine a task runs."""
    return str(getattr(task.get_coro(), "__qualname__", ""))


def running(*prefixes: str) -> list[asyncio.Task[Any]]:
    """The unfinished tasks whose coroutine's qualified name starts with one of ``prefixes``."""
    return [
        t for t in asyncio.all_tasks() if not t.done() and coroutine_name(t).startswith(prefixes)
    ]


def online(services: Any, username: str) -> bool:
    return any(u["username"] == username and u["online"] for u in services.presence.users())
