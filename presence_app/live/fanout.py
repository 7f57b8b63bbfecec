"""The one write path to this process's sockets: coalesced events, shared snapshots, replies.

Every byte the app writes to a presence socket goes through ``Fanout``:

- **Events** are queued as pre-built frames and written together: one write per socket per
  flush, the frames concatenated (the wire still carries one text frame per change, in
  order). Idle, a flush runs at once (``call_soon``: the events that arrive in one loop
  iteration share it). Events that come while fan-out is busy (less idle time since the
  last flush than a quarter of what that flush took) wait until ``LOAD_FACTOR`` (4) times
  its duration has passed, at most ``MAX_DELAY`` (100 ms): when changes keep coming, at
  most a fifth of the loop's time goes to fan-out and the rest to handshakes and the broker
  (see ``Pacer``).
- **Snapshots** are built once for every socket that connected meanwhile (``SnapshotSource``)
  and written as one pre-built frame, on a pace of their own (``SNAPSHOT_FACTOR`` 3, at most
  ``MAX_SNAPSHOT_DELAY``, 50 ms), so a connect storm does not wait for the (slower) event
  flushes. A snapshot covers every event applied before it, including those still queued:
  the socket receives only the later ones.
- **Replies** (pong, errors) go straight out, except to a socket still waiting for its
  snapshot: they follow the snapshot in the same write (the snapshot is always first).

``Connection.send`` is where the bytes meet the socket (handlers/ws.py); it returns False
for a socket that is gone or over its send-buffer limit, which is then dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)

#: The longest a queued event waits for the next flush (seconds), whatever the load.
MAX_DELAY = 0.1
#: After a flush that took ``t`` seconds, the next one starts ``LOAD_FACTOR * t`` later: under
#: a storm fan-out takes at most 1 / (1 + LOAD_FACTOR) of the loop, and each write carries
#: more events (fewer syscalls per event).
LOAD_FACTOR = 4.0
#: A flush runs at once when the loop has been idle for this fraction of the last one's
#: duration since it ended (see ``Pacer``).
IDLE_FRACTION = 0.25
#: The same pacing for snapshot builds (each one encodes and compresses every user).
SNAPSHOT_FACTOR = 3.0
MAX_SNAPSHOT_DELAY = 0.05
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

    def close(self, code: int, reason: str) -> None: ...


class Snapshot(Protocol):
    def parts(self, username: str, compressed: bool) -> list[bytes]:
        """The snapshot frame for a socket of ``username`` as pieces to write (the shared
        part is not copied)."""


SnapshotSource = Callable[[], Snapshot]
DropHandler = Callable[[Connection], None]


class FanoutStats:
    """What fan-out wrote and dropped, for /metrics: plain integers bumped once per flush
    (never per socket: a flush to 10,000 sockets must not pay for its own accounting)."""

    __slots__ = ("frames", "bytes", "dropped", "observe")

    def __init__(self) -> None:
        self.frames = {"event": 0, "snapshot": 0, "reply": 0}
        self.bytes = {"event": 0, "snapshot": 0, "reply": 0}
        self.dropped: dict[str, int] = {}
        #: Called with each event flush's duration in seconds (a histogram's ``observe``).
        self.observe: Callable[[float], None] | None = None

    def sent(self, kind: str, frames: int, size: int) -> None:
        self.frames[kind] += frames
        self.bytes[kind] += size


class Pacer:
    """Runs a callback soon, coalescing the requests that come while it is busy.

    Idle (the time since the last run ended is at least ``IDLE_FRACTION`` of what that run
    took), a request runs at once: low-load latency does not grow, even when one run is
    long (one change to 10,000 sockets every few hundred ms). A request that comes sooner
    (a storm: they come microseconds apart) waits until ``factor`` times the last run's
    duration (at most ``limit``) has passed since it ended, with every request that came
    meanwhile.
    """

    def __init__(
        self,
        callback: Callable[[], None],
        factor: float,
        limit: float,
        idle_fraction: float = IDLE_FRACTION,
    ) -> None:
        self._callback = callback
        self._factor, self._limit, self._idle_fraction = factor, limit, idle_fraction
        self._handle: asyncio.Handle | None = None
        self._ended = float("-inf")
        self._cost = 0.0
        self.runs = 0

    def schedule(self) -> None:
        if self._handle is not None:
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._ended
        if idle >= self._cost * self._idle_fraction:
            self._handle = loop.call_soon(self.run)
        else:
            wait = min(self._cost * self._factor, self._limit) - idle
            self._handle = loop.call_later(max(wait, 0.0), self.run)

    def run(self) -> None:
        self.cancel()
        started = time.perf_counter()
        try:
            self._callback()
        finally:
            self._cost = time.perf_counter() - started
            self.runs += 1
            self._ended = asyncio.get_running_loop().time()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Fanout:
    def __init__(self, snapshot: SnapshotSource, on_drop: DropHandler) -> None:
        self._snapshot = snapshot
        self._on_drop = on_drop
        self._members: dict[Connection, None] = {}  # insertion-ordered set
        self._joining: dict[Connection, list[bytes]] = {}  # socket -> replies held for it
        self._covered: dict[Connection, int] = {}  # queued events its snapshot had
        self._frames: list[bytes] = []
        self.stats = FanoutStats()
        self._events = Pacer(self._write_events, LOAD_FACTOR, MAX_DELAY)
        # A snapshot build is costly (every user encoded and compressed) and a connect storm
        # sends requests every few ms: builds wait unless the loop was idle as long as the
        # last build took.
        self._snapshots = Pacer(
            self._write_snapshots, SNAPSHOT_FACTOR, MAX_SNAPSHOT_DELAY, idle_fraction=1.0
        )

    def __len__(self) -> int:
        return len(self._members) + len(self._joining)

    @property
    def flushes(self) -> int:
        """Event flushes so far (one write per member socket each)."""
        return self._events.runs

    # -- membership -------------------------------------------------------------------
    def join(self, conn: Connection) -> None:
        """A new socket: its snapshot goes out soon, then every later event."""
        self._joining[conn] = []
        self._snapshots.schedule()

    def leave(self, conn: Connection) -> None:
        self._members.pop(conn, None)
        self._joining.pop(conn, None)
        self._covered.pop(conn, None)

    # -- writes -------------------------------------------------------------------------
    def publish(self, frame: bytes) -> None:
        """Queue one event frame for every member socket."""
        self._frames.append(frame)
        self._events.schedule()

    def reply(self, conn: Connection, frame: bytes) -> None:
        """Write a reply to one socket (after its snapshot, if that is still to come)."""
        early = self._joining.get(conn)
        if early is not None:
            if len(early) >= MAX_EARLY_REPLIES:
                self._drop(conn, CLOSE_POLICY, "too many messages before the snapshot")
                return
            early.append(frame)
            return
        if conn in self._members:
            if conn.send((frame,)):
                self.stats.sent("reply", 1, len(frame))
            else:
                self._drop(conn, CLOSE_GOING_AWAY, "send buffer full")

    # -- flushing -----------------------------------------------------------------------
    def flush(self) -> None:
        """Write everything queued now (snapshots first), whatever the pace says."""
        self._snapshots.run()
        self._events.run()

    def cancel(self) -> None:
        self._events.cancel()
        self._snapshots.cancel()

    def _write_snapshots(self) -> None:
        joining, self._joining = self._joining, {}
        if not joining:
            return
        snapshot, covered = self._snapshot(), len(self._frames)
        dropped = []
        frames = size = 0
        for conn, early in joining.items():
            parts = snapshot.parts(conn.username, conn.deflate) + early
            if conn.send(parts):
                self._members[conn] = None
                if covered:
                    self._covered[conn] = covered
                frames += 1 + len(early)  # once per connect, not per event: cheap enough
                size += sum(map(len, parts))
            else:
                dropped.append(conn)
        self.stats.sent("snapshot", frames, size)
        self._drop_all(dropped)

    def _write_events(self) -> None:
        frames, self._frames = self._frames, []
        covered, self._covered = self._covered, {}
        if not frames:
            return
        started = time.perf_counter()
        batch: tuple[bytes, ...] = (b"".join(frames),)
        tails: dict[int, tuple[bytes, ...]] = {}  # for sockets whose snapshot had the first k
        dropped = []
        # Accounting per flush: every member gets the whole batch, except the few whose
        # snapshot already had some of it (counted in the branch they take anyway).
        full, fewer_frames, fewer_bytes, size = len(self._members), 0, 0, len(batch[0])
        for conn in self._members:
            parts = batch
            if covered:
                k = covered.get(conn, 0)
                if k >= len(frames):
                    fewer_frames, fewer_bytes = fewer_frames + len(frames), fewer_bytes + size
                    continue
                if k:
                    parts = tails.get(k) or tails.setdefault(k, (b"".join(frames[k:]),))
                    fewer_frames, fewer_bytes = fewer_frames + k, fewer_bytes + size - len(parts[0])
            if not conn.send(parts):
                dropped.append(conn)
        sockets = full - len(dropped)
        self.stats.sent("event", sockets * len(frames) - fewer_frames, sockets * size - fewer_bytes)
        self._drop_all(dropped)
        if self.stats.observe is not None:
            self.stats.observe(time.perf_counter() - started)

    def _drop_all(self, conns: list[Connection]) -> None:
        for conn in conns:
            self._drop(conn, CLOSE_GOING_AWAY, "send buffer full")

    def _drop(self, conn: Connection, code: int, reason: str) -> None:
        log.info("Dropping socket of %s: %s", conn.username, reason)
        dropped = self.stats.dropped
        dropped[reason] = dropped.get(reason, 0) + 1
        self.leave(conn)
        self._on_drop(conn)
        conn.close(code, reason)
