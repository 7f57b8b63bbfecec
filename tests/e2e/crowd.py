"""Thousands of users for the end-to-end tests, fast: rows written through the app's own
models before the server starts (one shared bcrypt hash at cost 4, sessions made directly),
and a crowd of raw WebSocket clients that log in with those sessions and read nothing.

Signing up 5,000 people through the forms, or logging 1,000 of them in, would take minutes;
what the page under test sees is the same: real accounts, real sessions, real sockets,
real presence events from the server.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import secrets
import threading
from collections.abc import Coroutine, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

import bcrypt
import tornado.web
from sqlalchemy import insert, select

from handlers.base import SESSION_COOKIE
from presence_app.accounts.service import token_hash
from presence_app.db.database import Database, Session, User, utcnow
from tests.support.waiting import run_blocking

T = TypeVar("T")


async def _seed(
    url: str, users: list[tuple[str, dt.datetime | None]], password: str, sessions: Iterable[str]
) -> dict[str, str]:
    db = Database(url)
    try:
        await db.create_schema()
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode("ascii")
        async with db.write() as session:
            await session.execute(
                insert(User),
                [
                    {
                        "username": name,
                        "username_key": name.lower(),
                        "password_hash": hashed,
                        "last_seen": last_seen,
                    }
                    for name, last_seen in users
                ],
            )
        async with db.read() as session:
            ids = dict((await session.execute(select(User.username, User.id))).all())
        tokens = {name: secrets.token_urlsafe(32) for name in sessions}
        now = utcnow()
        if tokens:
            async with db.write() as session:
                await session.execute(
                    insert(Session),
                    [
                        {
                            "token_hash": token_hash(token),
                            "user_id": ids[name],
                            "created_at": now,
                            "expires_at": now + dt.timedelta(days=1),
                        }
                        for name, token in tokens.items()
                    ],
                )
        return tokens
    finally:
        await db.close()


def seed(
    url: str,
    users: list[tuple[str, dt.datetime | None]],
    password: str,
    sessions: Iterable[str] = (),
) -> dict[str, str]:
    """Creates the schema and the accounts; returns a session token per name in ``sessions``.

    Runs on a thread of its own: Playwright's sync API keeps an event loop on this one.
    """
    return run_blocking(_seed(url, users, password, list(sessions)))


def session_cookie(secret: str, token: str) -> str:
    """The Cookie header value a browser would send: Tornado's signed value of the token."""
    value = tornado.web.create_signed_value(secret, SESSION_COOKIE, token).decode("ascii")
    return f"{SESSION_COOKIE}={value}"


class Crowd:
    """Raw WebSocket clients on an event loop in a background thread.

    Each one does the HTTP upgrade with a session cookie (offering permessage-deflate, as
    browsers do), then only drains what the server sends, so it costs the test process
    almost nothing per frame and never holds the server's send buffer up.
    """

    def __init__(self, host: str, port: int, nice: int = 0) -> None:
        self.host, self.port, self.nice = host, port, nice
        self.sockets: dict[str, tuple[asyncio.StreamWriter, asyncio.Task[None]]] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="crowd", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        if self.nice:  # Linux: a thread's own priority (the browser under test comes first)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    async def _open(self, name: str, cookie: str) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        writer.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                f"Cookie: {cookie}\r\n\r\n"
            ).encode("ascii")
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            writer.close()
            raise RuntimeError(f"{name}: upgrade refused: {head.splitlines()[0]!r}")
        self.sockets[name] = (writer, asyncio.ensure_future(self._drain(reader, head)))

    async def _drain(self, reader: asyncio.StreamReader, _head: bytes) -> None:
        try:
            while await reader.read(1 << 18):
                pass
        except (ConnectionError, asyncio.CancelledError):
            pass

    async def _open_all(self, cookies: dict[str, str], parallel: int) -> None:
        # At most ``parallel`` handshakes in flight: the server's listen backlog is 128.
        gate = asyncio.Semaphore(parallel)

        async def one(name: str, cookie: str) -> None:
            async with gate:
                await self._open(name, cookie)

        await asyncio.gather(*(one(n, c) for n, c in cookies.items()))

    def connect(self, cookies: dict[str, str], parallel: int = 100, timeout: float = 60.0) -> None:
        """Opens one socket per name, all at once (``parallel`` handshakes in flight)."""
        self.run(self._open_all(cookies, parallel), timeout)

    async def _close(self, names: list[str]) -> None:
        for name in names:
            writer, task = self.sockets.pop(name)
            writer.transport.abort()  # all at once, like a thousand tabs closing
            task.cancel()
        await asyncio.sleep(0)

    def close(self, names: Iterable[str] | None = None) -> None:
        self.run(self._close(list(self.sockets if names is None else names)))

    def stop(self) -> None:
        try:
            self.close()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()
