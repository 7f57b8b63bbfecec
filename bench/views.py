"""Page-like WebSocket clients that keep up with N^2 presence deliveries.

N distinct users connecting means N^2/2 presence frames (50 million at N=10,000, about
6 GB on loopback), far more than a Python loop can look at one by one. A coalescing server
writes many frames per ``send``, so a read holds many frames, and a ``View`` counts the
presence frames of a read with C-speed byte scans instead of walking them:

- ``recvmsg_into`` one shared buffer (no allocation per read), with the kernel's receive
  timestamp (``SO_TIMESTAMPNS``);
- the *fast path*: a read that starts on a frame boundary and holds none of the bytes that
  only other frames contain (close/ping/pong/binary/continuation/compressed headers,
  extended lengths: ``memchr`` each) is a run of small text frames, all JSON, and the number
  of presence frames in it is ``count(b'"type":"presence"')``; the last frame start is
  ``rfind(0x81)`` (0x81 cannot occur inside ASCII JSON or a 7-bit length), which tells
  whether the read ends inside a frame (kept for the next read);
- anything else (the handshake, the snapshot, pings, a close, compressed frames, frames
  split over reads) goes through a frame walk, which is always correct.

The marker is learnt from the first presence event that is parsed (JSON key order may
change), and the fast path is used only once it is known.

Clients offer ``permessage-deflate; client_max_window_bits`` like browsers; a compressed
message (RSV1) is inflated with ``zlib.decompressobj(-15)`` and the 4 bytes 00 00 ff ff
(RFC 7692), with a context per socket unless the server promised
``server_no_context_takeover``.

Verification: "full" views (a sample) keep their snapshot and every event and are checked
exactly afterwards (snapshot decoded, events applied by version). The others keep their
snapshot payload while a memory budget lasts; afterwards its users and online rows are
counted (a fast byte count, checked against a JSON decode) and compared with the presence
frames they received. The commands that drive views in the load generator's worker
processes are in ``bench.viewcmds``.
"""
from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import zlib
from array import array
from collections import Counter
from typing import Any

import numpy as np

from bench.loadgen import ANC_SIZE, CLOSED, SO_TIMESTAMPNS, _TS, client_frame, upgrade_request

RECV_SIZE = 256 * 1024
BUF = bytearray(RECV_SIZE)
BUFS = [BUF]
# Bytes that only frame headers other than "final text, 7-bit length" contain (JSON text
# and 7-bit lengths are ASCII without control characters, 0x7E or 0x7F).
SUSPECT = (0x00, 0x01, 0x7E, 0x7F, 0x80, 0x82, 0x88, 0x89, 0x8A, 0xC1)
DEFLATE_TAIL = b"\x00\x00\xff\xff"
ONLINE_MARKERS = (b'"online":true', b'"online": true')  # how a snapshot row says online
EXTENSIONS = "permessage-deflate; client_max_window_bits"
CONNECTING, HANDSHAKE, SNAPSHOT, OPEN, CLOSING = -1, 0, 1, 2, 3
time_ns = time.time_ns
HIST_EDGES = np.concatenate([[-1e12], np.logspace(-2, 5.5, 751), [1e12]])  # ms


def _frame_total(head: bytes | bytearray) -> int:
    """Length of the (unmasked) frame starting at ``head[0]``; -1 if the header is cut."""
    if len(head) < 2:
        return -1
    n = head[1] & 0x7F
    if n < 126:
        return 2 + n
    if n == 126:
        return 4 + int.from_bytes(head[2:4], "big") if len(head) >= 4 else -1
    return 10 + int.from_bytes(head[2:10], "big") if len(head) >= 10 else -1


class ViewGroup:
    """The views of one role in one worker, with what they share."""

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name
        self.conns: list[View] = []  # "conns": Worker.cmd_reset/stop abort these
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
            try:
                meta = json.loads(payload)
                if not isinstance(meta, dict):
                    meta = {"type": "?"}
            except ValueError:
                meta = {"type": "?"}
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


class View:
    """One page-like client: one user's socket, reconnecting like the page if asked to."""

    __slots__ = ("group", "loop", "target", "request", "label", "full", "sock", "fd",
                 "state", "pending", "pending_total", "frag", "frag_rsv1", "deflate",
                 "inflater", "t_send", "t_open", "t_first_send", "t_last", "t_last_presence",
                 "opened", "closed", "bytes_in", "frames", "presence", "conn_presence",
                 "snap_wire", "snap_raw", "snap_frames", "snap_compressed", "snap_payload",
                 "snaps", "events", "track_t", "track_c", "mark_presence", "mark_bytes",
                 "mark_frames", "mark_events", "close_code", "error", "attempt", "attempts",
                 "refused", "dead", "retry", "t_conn_open", "connections", "probe_request",
                 "probes", "probe_failures", "snap_index", "gate")

    def __init__(self, group: ViewGroup, loop: asyncio.AbstractEventLoop,
                 target: tuple[str, int], headers: dict[str, str], label: str,
                 full: bool) -> None:
        self.group, self.loop, self.target, self.label, self.full = group, loop, target, label, full
        hdrs = dict(headers)
        hdrs.setdefault("Origin", f"http://{target[0]}:{target[1]}")
        if group.compress:
            hdrs["Sec-WebSocket-Extensions"] = EXTENSIONS
        self.request = upgrade_request(target[0], target[1], "/ws", hdrs)
        probe = (group.reconnect or {}).get("probe")
        self.probe_request = (
            f"GET {probe} HTTP/1.1\r\nHost: {target[0]}:{target[1]}\r\nCookie: "
            f"{headers.get('Cookie', '')}\r\nConnection: close\r\n\r\n").encode("latin-1") \
            if probe else b""
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
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.bytes_in = self.frames = self.presence = self.conn_presence = 0
        self.snap_wire = self.snap_raw = self.snap_frames = 0
        self.snap_compressed = False
        self.snap_payload: bytes | None = None
        self.snaps = self.snap_index = 0
        self.events: list[tuple[bytes, int]] | None = [] if full else None
        self.track_t: array | None = None
        self.track_c: array | None = None
        self.mark_presence = self.mark_bytes = self.mark_frames = self.mark_events = 0
        self.close_code: int | None = None
        self.error = ""
        self.attempt = self.attempts = self.refused = self.connections = 0
        self.dead = False
        self.retry: asyncio.TimerHandle | None = None
        self.gate: asyncio.Semaphore | None = None

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
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self.loop.sock_connect(sock, self.target), timeout)
            sock.send(self.request)
            self.state = HANDSHAKE
            self.loop.add_reader(self.fd, self.on_readable)
            await asyncio.wait_for(asyncio.shield(self.opened),
                                   max(deadline - time.monotonic(), 0.001))
            return True
        except asyncio.TimeoutError:
            self.fail("timeout")
        except ConnectionRefusedError:
            self.refused += 1
            self.fail("connection refused")
        except OSError as exc:
            self.fail(f"connect: {exc.strerror or exc.__class__.__name__}")
        except _Failed:
            pass
        return False

    def _ungate(self) -> None:
        if self.gate is not None:
            self.gate.release()
            self.gate = None

    def fail(self, why: str) -> None:
        """The attempt failed before the snapshot."""
        self._ungate()
        self.error = why
        if not self.opened.done():
            self.opened.set_exception(_Failed(why))
            self.opened.exception()
        self._release(rst=True)
        self._gone(None)

    # -- reading --------------------------------------------------------------------------
    def on_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            n, anc, _flags, _addr = sock.recvmsg_into(BUFS, ANC_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.lost(f"recv: {exc.strerror or exc.__class__.__name__}")
            return
        if not n:
            self.lost("eof")
            return
        if anc:
            sec, nsec = _TS.unpack_from(anc[0][2])
            kts = sec * 1_000_000_000 + nsec
        else:
            kts = time_ns()
        self.bytes_in += n
        self.t_last = kts
        before = self.presence
        if self.state == OPEN and self.pending is None and not self.full and \
                self.group.marker is not None and self._fast(0, n):
            pass
        else:
            self.group.slow_reads += 1
            self._consume(0, n, kts)
        if self.presence != before:
            self.t_last_presence = kts
        if self.track_t is not None and self.state != CLOSED:
            self.track_t.append(kts)
            self.track_c.append(self.presence - self.mark_presence)  # type: ignore[union-attr]

    def _fast(self, pos: int, n: int) -> bool:
        buf = BUF
        if buf[pos] != 0x81:
            return False
        for byte in SUSPECT:
            if buf.find(byte, pos, n) >= 0:
                return False
        last = buf.rfind(0x81, pos, n)
        if last + 1 >= n:
            end = last
        else:
            end = last + 2 + buf[last + 1]
            if end > n:
                end = last
            elif end < n:
                return False
        count = buf.count(self.group.marker, pos, end)  # type: ignore[arg-type]
        self.presence += count
        self.conn_presence += count
        self.frames += count
        if end < n:
            self.pending = bytearray(buf[end:n])
            self.pending_total = _frame_total(self.pending)
        self.group.fast_reads += 1
        return True

    def _consume(self, pos: int, n: int, kts: int) -> None:
        if self.state == HANDSHAKE:
            data = bytes(self.pending or b"") + bytes(BUF[pos:n])
            self.pending = None
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > 65536:
                    self.fail("oversized HTTP response")
                else:
                    self.pending = bytearray(data)
                return
            head = data[:end].decode("latin-1", "replace")
            if not head.startswith("HTTP/1.1 101"):
                self.fail(f"HTTP {head[9:12]}")
                return
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "sec-websocket-extensions" and \
                        "permessage-deflate" in value:
                    self.deflate = True
                    if "server_no_context_takeover" not in value:
                        self.inflater = zlib.decompressobj(-15)
            self.state = SNAPSHOT
            self._ungate()
            self._walk(data, end + 4, len(data), kts)
            return
        if self.pending is not None:
            pos = self._complete_pending(pos, n, kts)
            if pos >= n or self.state == CLOSED:
                return
        if not (self.state == OPEN and not self.full and self.group.marker is not None
                and self._fast(pos, n)):
            self._walk(BUF, pos, n, kts)

    def _complete_pending(self, pos: int, n: int, kts: int) -> int:
        """Bytes of this read that finish the frame cut at the end of an earlier one."""
        p = self.pending
        assert p is not None
        total = self.pending_total
        if total < 0:
            take = min(n - pos, 10)
            p += BUF[pos:pos + take]
            pos += take
            total = _frame_total(p)
            if total < 0:
                return n
            if len(p) > total:
                pos -= len(p) - total
                del p[total:]
        if len(p) < total:
            take = min(n - pos, total - len(p))
            p += BUF[pos:pos + take]
            pos += take
            if len(p) < total:
                self.pending_total = total
                return n
        self.pending, self.pending_total = None, -1
        self._walk(bytes(p), 0, total, kts)
        return pos

    def _walk(self, data: bytes | bytearray, pos: int, size: int, kts: int) -> None:
        """Every complete frame from ``pos``; a cut one is kept for the next read."""
        while size - pos >= 2:
            b0 = data[pos]
            length = data[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            self._frame(b0, bytes(data[start:end]), kts)
            if self.state == CLOSED:
                return
            pos = end
        if pos < size:
            self.pending = bytearray(data[pos:size])
            self.pending_total = _frame_total(self.pending)

    def _frame(self, b0: int, payload: bytes, kts: int) -> None:
        opcode = b0 & 0x0F
        if opcode == 0x9:
            self.send(client_frame(0xA, payload))
        elif opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.close_code = code
            if self.state != CLOSING:
                self.group.close_codes[code] += 1
                self.send(client_frame(0x8, payload[:2]))
            self.finish(code)
        elif opcode == 0xA:
            pass
        elif opcode == 0x0:
            if self.frag is not None:
                self.frag.append(payload)
                if b0 & 0x80:
                    parts, self.frag = self.frag, None
                    self._message(b"".join(parts), self.frag_rsv1, kts, len(parts))
        elif b0 & 0x80:
            self._message(payload, bool(b0 & 0x40), kts, 1)
        else:
            self.frag, self.frag_rsv1 = [payload], bool(b0 & 0x40)

    def _inflate(self, payload: bytes) -> bytes:
        inflater = self.inflater or zlib.decompressobj(-15)
        return inflater.decompress(payload + DEFLATE_TAIL)

    def _message(self, payload: bytes, compressed: bool, kts: int, frames: int) -> None:
        group = self.group
        self.frames += frames
        if self.state == SNAPSHOT:
            self._snapshot(payload, compressed, kts, frames)
            return
        wire = payload
        if compressed:
            payload = self._inflate(payload)
        meta = group.parsed(payload)
        kind = meta.get("type")
        if kind == "presence":
            self.presence += 1
            self.conn_presence += 1
            if group.marker is None:
                group.learn_marker(payload)
            if self.events is not None:
                self.events.append((group.intern.setdefault(payload, payload), kts))
        elif kind == "snapshot":  # sent again (a resync): the view starts over
            self._keep_snapshot(wire, payload if compressed else None, compressed, frames)
            self.conn_presence = 0
            self.snap_index = len(self.events or ())

    def _snapshot(self, payload: bytes, compressed: bool, kts: int, frames: int) -> None:
        raw = None
        if compressed and self.inflater is not None:  # context takeover: inflate it all
            raw = self._inflate(payload)
            head = raw[:512]
        elif compressed:  # only the start: the type is near it (checked in full below)
            head = zlib.decompressobj(-15).decompress(payload, 512)
        else:
            head = payload[:512]
        if b'"snapshot"' not in head:  # key order changed: decode it all to be sure
            raw = self._inflate(payload) if compressed else payload
            if self.group.parsed(raw).get("type") != "snapshot":
                self.fail("first message was not a snapshot")
                return
        self.state = OPEN
        self.t_open = self.t_conn_open = kts
        self.connections += 1
        self.conn_presence = 0
        self.snaps += 1  # the backoff is reset once the connection has been stable (_gone)
        self.snap_index = len(self.events or ())  # a full view's events count from here
        self._keep_snapshot(payload, raw, compressed, frames)
        self.group.open_count += 1
        if not self.opened.done():
            self.opened.set_result(None)

    def _keep_snapshot(self, wire: bytes, raw: bytes | None, compressed: bool,
                       frames: int) -> None:
        self.snap_wire, self.snap_frames, self.snap_compressed = len(wire), frames, compressed
        self.snap_raw = len(raw) if raw is not None else (0 if compressed else len(wire))
        group = self.group
        if self.snap_payload is not None:
            group.budget += len(self.snap_payload)
            self.snap_payload = None
        if self.full or group.budget >= len(wire):
            self.snap_payload = wire
            if not self.full:
                group.budget -= len(wire)

    # -- writing, closing, reconnecting ---------------------------------------------------
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
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         b"\x01\x00\x00\x00\x00\x00\x00\x00")
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

    def _gone(self, code: int | None) -> None:
        """Schedule the next attempt like the page (static/js/connection.js): full jitter,
        random 0..min(cap, base * 2^k) for the k-th consecutive failure, at least 0..first s
        after a 1001 (a restart: everyone got it at once); 4001/4401 end the session (the
        page goes to /login)."""
        policy = self.group.reconnect
        if policy is None or self.dead or self.group.stopped or code in (4001, 4401):
            return
        if self.t_conn_open and time_ns() - self.t_conn_open >= policy["stable_s"] * 1e9:
            self.attempt = 0
        ceiling = min(policy["cap_s"], policy["base_s"] * 2 ** self.attempt)
        if code == 1001:
            ceiling = max(ceiling, policy["first_s"])
        self.attempt += 1
        self.t_conn_open = 0
        self.retry = self.loop.call_later(random.random() * ceiling, self._reconnect)

    def _reconnect(self) -> None:
        self.retry = None
        task = self.loop.create_task(self._attempt())
        task.add_done_callback(lambda t: t.exception())

    async def _attempt(self) -> None:
        """Like the page: GET the probe path first (a 401: the session is gone; no answer:
        back off again), then open the socket."""
        policy = self.group.reconnect
        assert policy is not None
        if self.probe_request:
            status = await self._probe()
            if self.dead or self.group.stopped:
                return
            if status == 401:
                self.error = "probe: 401"
                return
            if status == 0:
                self.probe_failures += 1
                self._gone(None)
                return
        await self.connect(policy["timeout_s"])

    async def _probe(self) -> int:
        """One HTTP request like the page's fetch (the body is read to the end, as a browser
        receives it); the status, 0 for no answer."""
        self.probes += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        status = 0
        try:
            await asyncio.wait_for(self.loop.sock_connect(sock, self.target), 10)
            await self.loop.sock_sendall(sock, self.probe_request)
            head = b""
            scratch = bytearray(65536)
            while True:
                n = await asyncio.wait_for(self.loop.sock_recv_into(sock, scratch), 30)
                if not n:
                    break
                if not status:
                    head += scratch[:n]
                    if b"\r\n" in head:
                        status = int(head[9:12])
        except (OSError, asyncio.TimeoutError, ValueError):
            pass
        finally:
            sock.close()
        return status

    # -- results --------------------------------------------------------------------------
    def check(self, expect: dict[str, bool], users_total: int,
              online_marker: bytes | None) -> tuple[str, dict[str, Any]]:
        """("ok" | "lost" | "unverified" | "closed", details) for this view's final state."""
        if self.state != OPEN:
            return "closed", {}
        if self.full:
            return self._check_full(expect)
        if self.snap_payload is None:
            return "unverified", {}
        raw = self._raw_snapshot()
        if online_marker:
            online = raw.count(online_marker)
        else:
            users = self.group.parsed(raw).get("users") or []
            online = sum(1 for u in users if isinstance(u, dict) and u.get("online"))
        missing = users_total - online - self.conn_presence
        return ("lost" if missing > 0 else "ok"), {"redundant": max(-missing, 0),
                                                   "raw": len(raw)}

    def _raw_snapshot(self) -> bytes:
        assert self.snap_payload is not None
        if self.snap_compressed:
            return zlib.decompressobj(-15).decompress(self.snap_payload + DEFLATE_TAIL)
        return self.snap_payload

    def _check_full(self, expect: dict[str, bool]) -> tuple[str, dict[str, Any]]:
        raw = self._raw_snapshot()
        snap = json.loads(raw)
        view: dict[str, tuple[bool, int]] = {}
        for user in snap.get("users") or []:
            view[user["username"]] = (bool(user.get("online")), int(user.get("version") or 0))
        me_ok = snap.get("me") == self.label and view.get(self.label, (False, 0))[0]
        for payload, _kts in (self.events or [])[self.snap_index:]:
            event = self.group.parsed(payload)
            if event.get("type") != "presence":
                continue
            name, version = event["username"], int(event.get("version") or 0)
            old = view.get(name)
            if old is None or not version or version > old[1]:
                view[name] = (bool(event.get("online")), version)
        wrong = [name for name, online in expect.items()
                 if view.get(name, (None, 0))[0] is not online]
        online = sum(1 for v in snap.get("users") or [] if v.get("online"))
        markers = [m for m in ONLINE_MARKERS if raw.count(m) == online]
        details = {"raw": len(raw), "users": len(snap.get("users") or []),
                   "online_in_snapshot": online, "me_ok": bool(me_ok), "wrong": wrong[:5],
                   "wrong_count": len(wrong), "online_marker": markers[0] if markers else None}
        return ("lost" if wrong or not me_ok else "ok"), details


class _Failed(Exception):
    pass
