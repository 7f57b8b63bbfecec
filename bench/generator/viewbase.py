"""What every page-like client (``bench.views.View``) is made of: the group of views it
belongs to, its state, connecting (until the snapshot) and closing. Reading frames
(``viewread``), reconnecting like the page (``viewretry``) and checking the final view
(``viewcheck``) are mixins over this base; ``bench.views.View`` puts them together."""

from __future__ import annotations

import asyncio
import socket
import time
from array import array
from collections import Counter
from typing import Any

from bench.generator.wire import (
    CLOSED,
    CLOSING,
    CONNECTING,
    HANDSHAKE,
    OPEN,
    SNAPSHOT,
    SO_TIMESTAMPNS,
    client_frame,
    json_object,
    time_ns,
    upgrade_request,
)

EXTENSIONS = "permessage-deflate; client_max_window_bits"


class Failed(Exception):
    """A connection attempt failed before the snapshot."""


class ViewGroup:
    """The views of one role in one worker, with what they share."""

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name
        self.conns: list[Any] = []  # the views; "conns": Worker.abort_all resets these
        self.compress = bool(options.get("compress", True))
        self.reconnect = options.get("reconnect")  # None or the backoff policy
        self.budget = int(options.get("snapshot_budget", 0))
        self.marker: bytes | None = None
        self.meta: dict[bytes, dict[str, Any]] = {}
        self.intern: dict[bytes, bytes] = {}
        self.open_count = 0
        self.errors: Counter[str] = Counter()
        self.close_codes: Counter[int] = Counter()
        self.stopped = False
        self.fast_reads = self.slow_reads = 0

    def stop(self) -> None:
        """No more reconnects; every socket reset (Worker.cmd_reset calls this)."""
        self.stopped = True
        for view in self.conns:
            view.abort()

    def parsed(self, payload: bytes) -> dict[str, Any]:
        meta = self.meta.get(payload)
        if meta is None:
            meta = json_object(payload)
            if len(payload) < 4096:
                self.meta[payload] = meta
        return meta

    def learn_marker(self, payload: bytes) -> None:
        """The bytes that mark a presence event, as this server writes them."""
        for sep in (b'":"', b'": "'):
            marker = b'"type' + sep + b'presence"'
            if payload.count(marker) == 1:
                self.marker = marker
                return


class ViewBase:
    """One page-like client's state, its connection attempts and its closing."""

    __slots__ = (
        "group",
        "loop",
        "target",
        "request",
        "label",
        "full",
        "sock",
        "fd",
        "state",
        "pending",
        "pending_total",
        "frag",
        "frag_rsv1",
        "deflate",
        "inflater",
        "t_send",
        "t_open",
        "t_first_send",
        "t_last",
        "t_last_presence",
        "opened",
        "closed",
        "bytes_in",
        "frames",
        "presence",
        "conn_presence",
        "snap_wire",
        "snap_raw",
        "snap_frames",
        "snap_compressed",
        "snap_payload",
        "snaps",
        "events",
        "track_t",
        "track_c",
        "mark_presence",
        "mark_bytes",
        "mark_frames",
        "mark_events",
        "close_code",
        "error",
        "attempt",
        "attempts",
        "refused",
        "dead",
        "retry",
        "t_conn_open",
        "connections",
        "probe_request",
        "probes",
        "probe_failures",
        "snap_index",
        "gate",
    )

    def __init__(
        self,
        group: ViewGroup,
        loop: asyncio.AbstractEventLoop,
        target: tuple[str, int],
        headers: dict[str, str],
        label: str,
        full: bool,
    ) -> None:
        self.group, self.loop, self.target, self.label, self.full = group, loop, target, label, full
        hdrs = dict(headers)
        hdrs.setdefault("Origin", f"http://{target[0]}:{target[1]}")
        if group.compress:
            hdrs["Sec-WebSocket-Extensions"] = EXTENSIONS
        self.request = upgrade_request(target[0], target[1], "/ws", hdrs)
        probe = (group.reconnect or {}).get("probe")
        self.probe_request = (
            (
                f"GET {probe} HTTP/1.1\r\nHost: {target[0]}:{target[1]}\r\nCookie: "
                f"{headers.get('Cookie', '')}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
            if probe
            else b""
        )
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.events: list[tuple[bytes, int]] | None = [] if full else None
        self._init_state()

    def _init_state(self) -> None:
        """Everything a new view starts with but its identity and its futures."""
        self.probes = self.probe_failures = 0
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = CLOSED
        self.pending: bytearray | None = None
        self.pending_total = -1
        self.frag: list[bytes] | None = None
        self.frag_rsv1 = False
        self.deflate = False
        self.inflater: Any = None
        self.t_send = self.t_open = self.t_first_send = self.t_last = self.t_last_presence = 0
        self.t_conn_open = 0
        self.bytes_in = self.frames = self.presence = self.conn_presence = 0
        self.snap_wire = self.snap_raw = self.snap_frames = 0
        self.snap_compressed = False
        self.snap_payload: bytes | None = None
        self.snaps = self.snap_index = 0
        self.track_t: array | None = None
        self.track_c: array | None = None
        self.mark_presence = self.mark_bytes = self.mark_frames = self.mark_events = 0
        self.close_code: int | None = None
        self.error = ""
        self.attempt = self.attempts = self.refused = self.connections = 0
        self.dead = False
        self.retry: asyncio.TimerHandle | None = None
        self.gate: asyncio.Semaphore | None = None

    # -- hooks the mixins provide ---------------------------------------------------------
    def on_readable(self) -> None:
        raise NotImplementedError  # viewread.FrameReader

    def _gone(self, code: int | None) -> None:
        raise NotImplementedError  # viewretry.Reconnecting

    # -- connecting -----------------------------------------------------------------------
    async def connect(self, timeout: float, gate: asyncio.Semaphore | None = None) -> bool:
        """One connection attempt, until the snapshot (True) or a failure (False).

        ``gate`` bounds the handshakes in flight (the listen backlog): it is held from the
        SYN to the 101 response, not while the server takes its time with the snapshot."""
        if self.dead or self.group.stopped:
            return False
        if gate is not None:
            await gate.acquire()
            self.gate = gate
        sock = self._new_attempt()
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self.loop.sock_connect(sock, self.target), timeout)
            sock.send(self.request)
            self.state = HANDSHAKE
            self.loop.add_reader(self.fd, self.on_readable)
            await asyncio.wait_for(
                asyncio.shield(self.opened), max(deadline - time.monotonic(), 0.001)
            )
            return True
        except TimeoutError:
            self.fail("timeout")
        except ConnectionRefusedError:
            self.refused += 1
            self.fail("connection refused")
        except OSError as exc:
            self.fail(f"connect: {exc.strerror or exc.__class__.__name__}")
        except Failed:
            pass
        return False

    def _new_attempt(self) -> socket.socket:
        """A fresh socket and fresh per-connection state for the next attempt."""
        self.attempts += 1
        if self.opened.done():
            self.opened = self.loop.create_future()
        if self.closed.done():
            self.closed = self.loop.create_future()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.fd, self.state = sock, sock.fileno(), CONNECTING
        self.pending, self.pending_total, self.frag, self.inflater = None, -1, None, None
        self.deflate = False
        self.t_send = time_ns()
        if not self.t_first_send:
            self.t_first_send = self.t_send
        return sock

    def _ungate(self) -> None:
        if self.gate is not None:
            self.gate.release()
            self.gate = None

    def fail(self, why: str) -> None:
        """The attempt failed before the snapshot."""
        self._ungate()
        self.error = why
        if not self.opened.done():
            self.opened.set_exception(Failed(why))
            self.opened.exception()
        self._release(rst=True)
        self._gone(None)

    # -- writing and closing --------------------------------------------------------------
    def send(self, frame: bytes) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send(frame)  # control frames only: tiny, a full buffer just drops them
        except OSError:
            pass

    def close(self, code: int = 1000) -> int:
        """Start the closing handshake (no reconnect); returns when the close was sent."""
        self.dead = True
        if self.retry is not None:
            self.retry.cancel()
        t = time_ns()
        if self.state == OPEN or self.state == SNAPSHOT:
            if self.state == OPEN:
                self.group.open_count -= 1
            self.state = CLOSING
            self.send(client_frame(0x8, code.to_bytes(2, "big")))
        elif self.state != CLOSING:
            self.finish(None)
        return t

    def lost(self, why: str) -> None:
        if self.state in (CONNECTING, HANDSHAKE, SNAPSHOT):
            self.fail(why)
            return
        if self.state == OPEN:
            self.group.close_codes[-1] += 1
        self.finish(None)

    def _release(self, rst: bool = False) -> None:
        self._ungate()
        if self.state == OPEN:
            self.group.open_count -= 1
        self.state = CLOSED
        if self.sock is not None:
            if rst:
                try:
                    self.sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                except OSError:
                    pass
            try:
                self.loop.remove_reader(self.fd)
            except (ValueError, OSError):
                pass
            self.sock.close()
            self.sock = None

    def finish(self, code: int | None) -> None:
        """The connection is over (closed by either side, or lost)."""
        was_open = self.state in (OPEN, CLOSING)
        self._release()
        if not self.closed.done():
            self.closed.set_result(None)
        if was_open:
            self._gone(code)

    def abort(self) -> None:
        self.dead = True
        if self.retry is not None:
            self.retry.cancel()
        self._release(rst=True)
        if not self.closed.done():
            self.closed.set_result(None)
