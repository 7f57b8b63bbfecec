"""The sockets of one role (observers, movers, a stalled client) inside one worker, and
what they received: per distinct message, the receive timestamp of every delivery; the
``Poller`` that knows which socket each ``Conn`` reads."""

from __future__ import annotations

import asyncio
from array import array
from collections import Counter
from typing import TYPE_CHECKING, Any

from bench.generator.wire import json_object

if TYPE_CHECKING:
    from bench.generator.conn import Conn


class EventRecord:
    """One distinct text message seen by a group: its receive timestamps, one per delivery."""

    __slots__ = ("payload", "kts", "uts", "target", "complete")

    def __init__(self, payload: bytes, target: int) -> None:
        self.payload = payload
        self.kts = array("q")
        self.uts = array("q")
        self.target = target
        self.complete = False


class Group:
    """Sockets of one role (observers, movers, a stalled client) inside one worker."""

    def __init__(self, name: str, record: bool) -> None:
        self.name = name
        self.record = record
        self.conns: list[Conn] = []
        self.open_count = 0
        self.events: dict[bytes, EventRecord] = {}
        self.meta: dict[bytes, dict[str, Any]] = {}
        self.waiters: list[tuple[dict[str, Any], asyncio.Future[Any]]] = []
        self.errors: Counter[str] = Counter()
        self.close_codes: Counter[int] = Counter()
        self.unexpected_closes = 0

    def new_event(self, payload: bytes) -> EventRecord:
        rec = EventRecord(payload, max(self.open_count, 1))
        self.events[payload] = rec
        return rec

    def parsed(self, payload: bytes) -> dict[str, Any]:
        meta = self.meta.get(payload)
        if meta is None:
            meta = self.meta[payload] = json_object(payload)
        return meta

    def completed(self, rec: EventRecord) -> None:
        rec.complete = True
        if not self.waiters:
            return
        meta = self.parsed(rec.payload)
        for waiter in list(self.waiters):
            spec, fut = waiter
            if self.matches(spec, meta, rec) and not fut.done():
                fut.set_result(rec)
                self.waiters.remove(waiter)

    @staticmethod
    def matches(spec: dict[str, Any], meta: dict[str, Any], rec: EventRecord) -> bool:
        return (
            meta.get("type") == "presence"
            and meta.get("username") == spec["username"]
            and bool(meta.get("online")) == spec["online"]
            and rec.kts[0] >= spec["not_before"]
        )

    def find_complete(self, spec: dict[str, Any]) -> EventRecord | None:
        for rec in self.events.values():
            if rec.complete and self.matches(spec, self.parsed(rec.payload), rec):
                return rec
        return None

    def best_count(self, spec: dict[str, Any]) -> int:
        """The most deliveries of any message matching ``spec`` (complete or not)."""
        best = 0
        for payload, rec in self.events.items():
            if self.matches(spec, self.parsed(payload), rec):
                best = max(best, len(rec.kts))
        return best


class Poller:
    """Which socket is read by which ``Conn``: one ``loop.add_reader`` per socket.

    (A nested epoll set drained in one callback was tried: it saved Python time per delivery
    but cost as much again in syscalls, so the plain asyncio reader stays.)"""

    def __init__(self) -> None:
        self.conns: dict[int, Conn] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def register(self, conn: Conn) -> None:
        assert self.loop is not None, "Poller.attach() first"
        self.conns[conn.fd] = conn
        self.loop.add_reader(conn.fd, conn.on_readable)

    def unregister(self, conn: Conn) -> None:
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
            self.loop.remove_reader(conn.fd)  # type: ignore[union-attr]


POLLER = Poller()
