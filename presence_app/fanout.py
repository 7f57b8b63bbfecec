"""The one write path to this process's sockets: coalesced events, shared snapshots, replies.

Every byte the app writes to a presence socket goes through ``Fanout``:

- **Events** are queued as pre-built frames and written together: one write per socket per
  flush, the frames concatenated (the wire still carries one text frame per change, in
  order). With nothing in flight a flush runs at once (``call_soon``: the events that arrive
  in one loop iteration share it); after a flush the next one waits as long as that flush
  took times ``LOAD_FACTOR`` (4), at most ``MAX_DELAY`` (100 ms): under a storm at most a
  fifth of the loop's time goes to fan-out and the rest to handshakes and the broker.
- **Snapshots** are built once per flush for every socket that connected since the last one
  (``SnapshotSource``), and written as one pre-built frame; a joining socket receives events
  only after its snapshot (the snapshot already contains everything applied before it).
- **Replies** (pong, errors) go straight out, except to a socket still waiting for its
  snapshot: they follow the snapshot in the same write (the snapshot is always first).

``Connection.send`` is where the bytes meet the socket (handlers/ws.py); it returns False
for a socket that is gone or over its send-buffer limit, which is then dropped.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Protocol, Sequence

log = logging.getLogger(__name__)

#: The longest a queued event waits for the next flush (seconds), whatever the load.
MAX_DELAY = 0.1
#: After a flush that took ``t`` seconds, the next one starts ``LOAD_FACTOR * t`` later: under
#: a storm fan-out takes at most 1 / (1 + LOAD_FACTOR) of the loop, and each write carries
#: more events (fewer syscalls per event).
LOAD_FACTOR = 4.0
#: Replies held for a socket whose snapshot has not been written yet; more is a flood.
MAX_EARLY_REPLIES = 64

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008


class Connection(Protocol):
    username: str
    user_id: int
    session_id: str
    #: permessage-deflate was negotiated: snapshots may be sent compressed.
    deflate: bool

    def send(self, parts: Sequence[bytes]) -> bool:
        """Write ``parts`` (complete frames, or pieces of them) as one write; False if the
        socket is gone or over its send-buffer limit."""

    def close(self, code: int, reason: str) -> None:
        ...


class Snapshot(Protocol):
    def parts(self, username: str, compressed: bool) -> list[bytes]:
        """The snapshot frame for a socket of ``username`` as pieces to write (the shared
        part is not copied)."""


SnapshotSource = Callable[[], Snapshot]
DropHandler = Callable[[Connection], None]


class Fanout:
    def __init__(self, snapshot: SnapshotSource, on_drop: DropHandler) -> None:
        self._snapshot = snapshot
        self._on_drop = on_drop
        self._members: dict[Connection, None] = {}        # insertion-ordered set
        self._joining: dict[Connection, list[bytes]] = {}  # socket -> replies held for it
        self._frames: list[bytes] = []
        self._handle: asyncio.Handle | None = None
        self._not_before = 0.0
        self.flushes = 0
        self.last_cost = 0.0

    def __len__(self) -> int:
        return len(self._members) + len(self._joining)

    # -- membership -------------------------------------------------------------------
    def join(self, conn: Connection) -> None:
        """A new socket: its snapshot goes out with the next flush, then every event."""
        self._joining[conn] = []
        self._schedule()

    def leave(self, conn: Connection) -> None:
        self._members.pop(conn, None)
        self._joining.pop(conn, None)

    # -- writes -------------------------------------------------------------------------
    def publish(self, frame: bytes) -> None:
        """Queue one event frame for every member socket."""
        self._frames.append(frame)
        self._schedule()

    def reply(self, conn: Connection, frame: bytes) -> None:
        """Write a reply to one socket (after its snapshot, if that is still to come)."""
        early = self._joining.get(conn)
        if early is not None:
            if len(early) >= MAX_EARLY_REPLIES:
                self._drop(conn, CLOSE_POLICY, "too many messages before the snapshot")
                return
            early.append(frame)
            return
        if conn in self._members and not conn.send((frame,)):
            self._drop(conn, CLOSE_GOING_AWAY, "send buffer full")

    def pending(self) -> int:
        """Events queued for the next flush."""
        return len(self._frames)

    # -- flushing -----------------------------------------------------------------------
    def _schedule(self) -> None:
        if self._handle is not None:
            return
        loop = asyncio.get_running_loop()
        delay = self._not_before - loop.time()
        if delay <= 0:
            self._handle = loop.call_soon(self.flush)
        else:
            self._handle = loop.call_later(delay, self.flush)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def flush(self) -> None:
        """Write what is queued: the events to every member, snapshots to joining sockets."""
        self._handle = None
        started = time.perf_counter()
        frames, self._frames = self._frames, []
        joining, self._joining = self._joining, {}
        dropped: list[Connection] = []
        if frames:
            batch = (b"".join(frames),)
            for conn in self._members:
                if not conn.send(batch):
                    dropped.append(conn)
        if joining:
            snapshot = self._snapshot()
            for conn, early in joining.items():
                if conn.send(snapshot.parts(conn.username, conn.deflate) + early):
                    self._members[conn] = None
                else:
                    dropped.append(conn)
        for conn in dropped:
            self._drop(conn, CLOSE_GOING_AWAY, "send buffer full")
        self.flushes += 1
        self.last_cost = cost = time.perf_counter() - started
        delay = min(cost * LOAD_FACTOR, MAX_DELAY)
        self._not_before = asyncio.get_running_loop().time() + delay
        if cost > 0.05:
            log.debug("Flush: %d event(s) to %d socket(s), %d snapshot(s) in %.0f ms",
                      len(frames), len(self._members), len(joining), cost * 1000)

    def _drop(self, conn: Connection, code: int, reason: str) -> None:
        log.info("Dropping socket of %s: %s", conn.username, reason)
        self.leave(conn)
        self._on_drop(conn)
        conn.close(code, reason)
