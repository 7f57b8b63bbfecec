"""A lean WebSocket load generator: raw non-blocking sockets, a hand-written HTTP upgrade, a
minimal parser of the server's unmasked frames, masked client frames only for pong and close.

It runs as several worker processes (``multiprocessing``, spawn) driven over pipes by a
controller, ``LoadGen``, living in the benchmark runner's event loop. Each worker raises its
own open-files limit to the hard limit, so one worker can hold 10,000+ sockets.

Timestamps are ``CLOCK_REALTIME`` nanoseconds (``time.time_ns()``), comparable across
processes. Every read also carries the kernel's receive timestamp of the data
(``SO_TIMESTAMPNS``): the moment the server's bytes reached the observer's socket, which
does not depend on how quickly this generator gets round to reading it. Both are recorded
("kernel" and "user" timestamps); reports use the kernel one for latency and show the user
one beside it, with the CPU time the generator itself spent (``resource.getrusage``), so
nobody measures the generator by mistake.

Per delivery the hot path is: one ``recvmsg`` syscall, a frame header decode, one dict
lookup keyed by the payload bytes (a fanned-out event has the same bytes on every socket),
two appends to ``array('q')``. JSON is parsed once per distinct payload, not per delivery.
"""
from __future__ import annotations

import asyncio
import base64
import gc
import importlib
import multiprocessing
import os
import resource
import signal
import socket
import struct
import sys
import time
import traceback
from array import array
from collections import Counter
from typing import Any, Callable

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS == the same
ANC_SIZE = socket.CMSG_SPACE(16)
RECV_SIZE = 256 * 1024
_TS = struct.Struct("=qq")
time_ns = time.time_ns

HANDSHAKE, SNAPSHOT, OPEN, CLOSING, CLOSED = range(5)


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, final client frame (only small control frames are ever sent)."""
    key = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return header + key + masked


def upgrade_request(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode("latin-1")


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
            import json
            try:
                meta = json.loads(payload)
                if not isinstance(meta, dict):
                    meta = {"type": "?"}
            except ValueError:
                meta = {"type": "?"}
            self.meta[payload] = meta
        return meta

    def completed(self, rec: EventRecord) -> None:
        rec.complete = True
        if not self.waiters:
            return
        meta = self.parsed(rec.payload)
        for waiter in list(self.waiters):
            spec, fut = waiter
            if self._matches(spec, meta, rec) and not fut.done():
                fut.set_result(rec)
                self.waiters.remove(waiter)

    @staticmethod
    def _matches(spec: dict[str, Any], meta: dict[str, Any], rec: EventRecord) -> bool:
        return (meta.get("type") == "presence" and meta.get("username") == spec["username"]
                and bool(meta.get("online")) == spec["online"]
                and rec.kts[0] >= spec["not_before"])

    def find_complete(self, spec: dict[str, Any]) -> EventRecord | None:
        for rec in self.events.values():
            if rec.complete and self._matches(spec, self.parsed(rec.payload), rec):
                return rec
        return None


class Conn:
    """One client WebSocket on a raw non-blocking socket, read when the ``Poller`` says."""

    __slots__ = ("loop", "group", "sock", "fd", "state", "buf", "frag", "t_send", "t_open",
                 "t_close", "opened", "closed", "bytes_in", "close_code", "paused", "label",
                 "error")

    def __init__(self, loop: asyncio.AbstractEventLoop, group: Group, label: str) -> None:
        self.loop = loop
        self.group = group
        self.label = label
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = HANDSHAKE
        self.buf = b""
        self.frag: list[bytes] | None = None
        self.t_send = self.t_open = self.t_close = 0
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.bytes_in = 0
        self.close_code: int | None = None
        self.paused = False
        self.error = ""

    # -- opening --------------------------------------------------------------------------
    async def open(self, addr: tuple[str, int], request: bytes, timeout: float,
                   rcvbuf: int = 0) -> bool:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock, self.fd = sock, sock.fileno()
        self.t_send = time_ns()
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self.loop.sock_connect(sock, addr), timeout)
            sock.send(request)
            POLLER.register(self)
            await asyncio.wait_for(asyncio.shield(self.opened),
                                   max(deadline - time.monotonic(), 0.001))
            return True
        except asyncio.TimeoutError:
            self.fail("timeout")
        except ConnectionRefusedError:
            self.fail("connection refused")
        except ConnectionError as exc:
            self.fail(f"connect: {exc.__class__.__name__}")
        except OSError as exc:
            self.fail(f"connect: {exc.strerror or exc}")
        except _OpenFailed:
            pass
        return False

    def fail(self, why: str) -> None:
        if not self.error:
            self.error = why
        if not self.opened.done():
            self.opened.set_exception(_OpenFailed(why))
            self.opened.exception()  # mark retrieved
        self.abort()

    # -- reading --------------------------------------------------------------------------
    def on_readable(self) -> None:
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(RECV_SIZE, ANC_SIZE)  # type: ignore
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.lost(f"recv: {exc.strerror or exc.__class__.__name__}")
            return
        if not data:
            self.lost("eof")
            return
        uts = time_ns()
        if anc:
            sec, nsec = _TS.unpack_from(anc[0][2])
            kts = sec * 1_000_000_000 + nsec
        else:
            kts = uts
        size = len(data)
        self.bytes_in += size
        # Fast path: exactly one small final text frame (one fanned-out event).
        if self.state == OPEN and not self.buf and size > 2 and data[0] == 0x81 and \
                data[1] == size - 2 and size < 128:
            group = self.group
            if group.record:
                payload = data[2:]
                rec = group.events.get(payload)
                if rec is None:
                    rec = group.new_event(payload)
                kts_list = rec.kts
                kts_list.append(kts)
                rec.uts.append(uts)
                if len(kts_list) == rec.target:
                    group.completed(rec)
            return
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.state == HANDSHAKE:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                if len(data) > 65536:
                    self.fail("oversized HTTP response")
                return
            if not data.startswith(b"HTTP/1.1 101"):
                self.fail(f"HTTP {data[9:12].decode('latin-1', 'replace')}")
                return
            self.state = SNAPSHOT
            data = data[end + 4:]
        pos, size = 0, len(data)
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
            if b0 == 0x81:  # final text frame: the common case
                self.on_text(data[start:end], kts, uts)
            else:
                self.on_other(b0, data[start:end], kts, uts)
            if self.state == CLOSED:
                return
            pos = end
        if pos < size:
            self.buf = data[pos:]

    def on_text(self, payload: bytes, kts: int, uts: int) -> None:
        group = self.group
        if self.state == OPEN or self.state == CLOSING:
            if group.record:
                rec = group.events.get(payload)
                if rec is None:
                    rec = group.new_event(payload)
                rec.kts.append(kts)
                rec.uts.append(uts)
                if len(rec.kts) == rec.target:
                    group.completed(rec)
            return
        if payload.startswith(b'{"type":"snapshot"') or \
                group.parsed(payload).get("type") == "snapshot":
            self.state = OPEN
            self.t_open = kts
            group.open_count += 1
            if not self.opened.done():
                self.opened.set_result(None)
        else:
            self.fail("first message was not a snapshot")

    def on_other(self, b0: int, payload: bytes, kts: int, uts: int) -> None:
        opcode = b0 & 0x0F
        if opcode == 0x9:  # ping
            self.send(client_frame(0xA, payload))
        elif opcode == 0x8:  # close
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.close_code = code
            if self.state != CLOSING:
                self.group.unexpected_closes += 1
                self.group.close_codes[code] += 1
                self.send(client_frame(0x8, payload[:2]))
            self.finish()
        elif opcode == 0x1 or opcode == 0x0:  # fragmented text
            if opcode == 0x1:
                self.frag = [payload]
            elif self.frag is not None:
                self.frag.append(payload)
            if b0 & 0x80 and self.frag is not None:
                whole, self.frag = b"".join(self.frag), None
                self.on_text(whole, kts, uts)

    def lost(self, why: str) -> None:
        """EOF or a socket error."""
        if self.state in (HANDSHAKE, SNAPSHOT):
            self.fail(why)
            return
        if self.state != CLOSING and self.state != CLOSED:
            self.group.unexpected_closes += 1
            self.group.close_codes[-1] += 1  # no close frame
        self.finish()

    # -- writing and closing --------------------------------------------------------------
    def send(self, frame: bytes) -> None:
        if self.sock is None:
            return
        try:
            sent = self.sock.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return
        if sent < len(frame):
            rest = frame[sent:]
            self.loop.create_task(self._send_rest(rest))

    async def _send_rest(self, rest: bytes) -> None:
        try:
            if self.sock is not None:
                await self.loop.sock_sendall(self.sock, rest)
        except OSError:
            pass

    def close(self, code: int = 1000) -> int:
        """Start the closing handshake; returns the time the close frame was sent."""
        self.t_close = time_ns()
        if self.state == OPEN or self.state == SNAPSHOT:
            if self.state == OPEN:
                self.group.open_count -= 1
            self.state = CLOSING
            self.send(client_frame(0x8, code.to_bytes(2, "big")))
            if self.paused:
                self.resume()
        elif self.state != CLOSING:
            self.finish()
        return self.t_close

    def pause(self) -> None:
        if not self.paused and self.sock is not None:
            POLLER.unregister(self)
            self.paused = True

    def resume(self) -> None:
        if self.paused and self.sock is not None:
            POLLER.register(self)
            self.paused = False

    def finish(self) -> None:
        """The server closed (or we gave up): release the socket."""
        if self.state == OPEN:
            self.group.open_count -= 1
        self.state = CLOSED
        if self.sock is not None:
            if not self.paused:
                POLLER.unregister(self)
            self.sock.close()
            self.sock = None
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self) -> None:
        """Close with a RST (no TIME_WAIT), e.g. after a timeout."""
        if self.sock is not None:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.finish()


class _OpenFailed(Exception):
    pass


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


def _percentiles_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values = sorted(values)

    def pick(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 3)
    return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "max": round(values[-1], 3)}


class Worker:
    """One generator process: executes the controller's commands on its own event loop."""

    def __init__(self, pipe: Any, index: int) -> None:
        self.pipe = pipe
        self.index = index
        self.groups: dict[str, Group] = {}
        self.done: asyncio.Future[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.churn_stopped = False

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()
        POLLER.attach(self.loop)
        self.loop.add_reader(self.pipe.fileno(), self.on_pipe)
        await self.done

    def on_pipe(self) -> None:
        try:
            req_id, cmd, kwargs = self.pipe.recv()
        except (EOFError, OSError):
            self.stop()
            return
        if cmd == "exit":
            self.reply(req_id, True, None)
            self.stop()
            return
        self.loop.create_task(self.handle(req_id, cmd, kwargs))  # type: ignore[union-attr]

    def stop(self) -> None:
        for group in self.groups.values():
            stop = getattr(group, "stop", None)
            if stop is not None:
                stop()
                continue
            for conn in group.conns:
                conn.abort()
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def reply(self, req_id: int | None, ok: bool, result: Any) -> None:
        try:
            self.pipe.send((req_id, ok, result))
        except (OSError, EOFError):
            self.stop()

    async def handle(self, req_id: int, cmd: str, kwargs: dict[str, Any]) -> None:
        try:
            if ":" in cmd:  # "viewcmds:open" -> bench.viewcmds.cmd_open(worker, ...)
                module, _, name = cmd.partition(":")
                handler = getattr(importlib.import_module(f"bench.{module}"), "cmd_" + name)
                result = await handler(self, **kwargs)
            else:
                result = await getattr(self, "cmd_" + cmd)(**kwargs)
        except Exception:
            self.reply(req_id, False, traceback.format_exc())
        else:
            self.reply(req_id, True, result)

    def group(self, name: str, record: bool = True) -> Group:
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = Group(name, record)
        return group

    # -- commands -------------------------------------------------------------------------
    async def cmd_ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "nofile": raise_nofile_limit()}

    async def cmd_open(self, group: str, targets: list[tuple[str, int]], count: int,
                       headers: list[dict[str, str]], concurrency: int, timeout: float,
                       record: bool = True, offset: int = 0, rcvbuf: int = 0,
                       path: str = "/ws", labels: list[str] | None = None,
                       progress: bool = False) -> dict[str, Any]:
        """Open ``count`` sockets; socket j goes to ``targets[(offset + j) % len]`` with
        ``headers[j % len]``. Returns when all are open or have failed."""
        g = self.group(group, record)
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(max(concurrency, 1))
        requests = {}
        new: list[Conn] = []
        started = time_ns()
        last_report = time.monotonic()
        base = g.open_count

        async def one(j: int) -> None:
            target = tuple(targets[(offset + j) % len(targets)])
            hdrs = headers[j % len(headers)]
            key = (target, j % len(headers))
            if key not in requests:
                requests[key] = upgrade_request(target[0], target[1], path, hdrs)
            conn = Conn(loop, g, labels[j % len(labels)] if labels else "")
            new.append(conn)
            async with sem:
                ok = await conn.open(target, requests[key], timeout, rcvbuf)  # type: ignore
            if not ok:
                g.errors[conn.error] += 1

        tasks = [loop.create_task(one(j)) for j in range(count)]
        pending = set(tasks)
        while pending:
            _done, pending = await asyncio.wait(pending, timeout=1.0)
            if progress and time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                self.reply(None, True, {"progress": "open", "worker": self.index,
                                        "group": group, "open": g.open_count,
                                        "of": base + count})
        ok = [c for c in new if c.state == OPEN]
        g.conns.extend(c for c in new if c.state != CLOSED)
        errors = Counter(c.error for c in new if c.error)
        gc.collect()
        gc.freeze()
        return {
            "requested": count, "open": len(ok), "errors": dict(errors),
            "t_start": started,
            "t_first_send": min((c.t_send for c in new), default=0),
            "t_last_open": max((c.t_open for c in ok), default=0),
            "handshake_ms": _percentiles_ms([(c.t_open - c.t_send) / 1e6 for c in ok]),
            "t_send": [c.t_send for c in ok] if len(ok) <= 1000 else [],
            "labels": [c.label for c in ok] if len(ok) <= 1000 else [],
        }

    async def cmd_close(self, group: str, timeout: float = 10.0,
                        concurrency: int = 0) -> dict[str, Any]:
        """Closing handshake on every socket of the group; RST for those not done in time."""
        g = self.group(group)
        conns = [c for c in g.conns if c.state != CLOSED]
        t_close = time_ns()
        if concurrency:
            for i in range(0, len(conns), concurrency):
                for conn in conns[i:i + concurrency]:
                    conn.close()
                await asyncio.sleep(0)
        else:
            for conn in conns:
                conn.close()
        waiting = [c.closed for c in conns if not c.closed.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
        aborted = 0
        for conn in conns:
            if conn.state != CLOSED:
                conn.abort()
                aborted += 1
        g.conns = [c for c in g.conns if c.state != CLOSED]
        return {"closed": len(conns) - aborted, "aborted": aborted, "t_close": t_close,
                "t_done": time_ns()}

    async def cmd_wait_event(self, group: str, username: str, online: bool, not_before: int,
                             timeout: float) -> dict[str, Any]:
        """Wait until every open socket of the group has a matching presence event."""
        g = self.group(group)
        spec = {"username": username, "online": online, "not_before": not_before}
        rec = g.find_complete(spec)
        if rec is None:
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            waiter = (spec, fut)
            g.waiters.append(waiter)
            try:
                rec = await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                if waiter in g.waiters:
                    g.waiters.remove(waiter)
                best = 0
                for payload, other in g.events.items():
                    meta = g.parsed(payload)
                    if Group._matches(spec, meta, other):
                        best = max(best, len(other.kts))
                return {"complete": False, "count": best, "expected": g.open_count}
        return {"complete": True, "count": len(rec.kts), "expected": rec.target,
                "last_kts": max(rec.kts)}

    async def cmd_events(self, group: str, reset: bool = True) -> list[dict[str, Any]]:
        """Every distinct message the group received, with its timestamps (as bytes)."""
        g = self.group(group)
        out = [{"payload": rec.payload, "target": rec.target,
                "kts": rec.kts.tobytes(), "uts": rec.uts.tobytes()}
               for rec in g.events.values()]
        if reset:
            g.events = {}
            g.meta = {}
        return out

    async def cmd_counts(self, group: str) -> dict[str, Any]:
        g = self.group(group)
        return {"deliveries": sum(len(r.kts) for r in g.events.values()),
                "events": len(g.events), "open": g.open_count,
                "last_kts": max((r.kts[-1] for r in g.events.values() if len(r.kts)),
                                default=0)}

    async def cmd_status(self, group: str) -> dict[str, Any]:
        g = self.group(group)
        return {"open": g.open_count, "sockets": len(g.conns),
                "unexpected_closes": g.unexpected_closes,
                "close_codes": {str(k): v for k, v in g.close_codes.items()},
                "bytes_in": sum(c.bytes_in for c in g.conns),
                "errors": dict(g.errors)}

    async def cmd_pause(self, group: str) -> dict[str, Any]:
        g = self.group(group)
        for conn in g.conns:
            conn.pause()
        return {"paused": len(g.conns),
                "ports": [c.sock.getsockname()[1] for c in g.conns if c.sock is not None]}

    async def cmd_resume(self, group: str, wait: float = 0.0) -> dict[str, Any]:
        """Read again; wait up to ``wait`` s for the server to close the sockets."""
        g = self.group(group)
        before = sum(c.bytes_in for c in g.conns)
        for conn in g.conns:
            conn.resume()
        pending = [c.closed for c in g.conns if not c.closed.done()]
        if wait and pending:
            await asyncio.wait(pending, timeout=wait)
        return {"bytes_read_after_resume": sum(c.bytes_in for c in g.conns) - before,
                "closed_by_server": sum(1 for c in g.conns if c.state == CLOSED),
                "close_codes": [c.close_code for c in g.conns],
                "sockets": len(g.conns)}

    async def cmd_churn(self, group: str, targets: list[tuple[str, int]],
                        headers: list[dict[str, str]], labels: list[str], duration: float,
                        timeout: float = 10.0, hold: float = 0.0,
                        rcvbuf: int = 0) -> dict[str, Any]:
        """Each mover (one per headers entry) connects, waits for its snapshot, closes, waits
        for the close, and again, for ``duration`` s. Returns every trigger time."""
        g = self.group(group, record=False)
        loop = asyncio.get_running_loop()
        stop_at = time.monotonic() + duration
        self.churn_stopped = False
        triggers: list[tuple[str, bool, int]] = []
        errors: Counter[str] = Counter()
        cycles = 0

        async def mover(i: int) -> None:
            nonlocal cycles
            target = tuple(targets[i % len(targets)])
            request_headers = headers[i]
            while time.monotonic() < stop_at and not self.churn_stopped:
                request = upgrade_request(target[0], target[1], "/ws", request_headers)
                conn = Conn(loop, g, labels[i])
                if not await conn.open(target, request, timeout, rcvbuf):  # type: ignore
                    errors[conn.error] += 1
                    await asyncio.sleep(0.05)
                    continue
                triggers.append((labels[i], True, conn.t_send))
                if hold:
                    await asyncio.sleep(hold)
                triggers.append((labels[i], False, conn.close()))
                try:
                    await asyncio.wait_for(asyncio.shield(conn.closed), timeout)
                except asyncio.TimeoutError:
                    errors["close timeout"] += 1
                    conn.abort()
                cycles += 1

        started = time_ns()
        await asyncio.gather(*(mover(i) for i in range(len(headers))))
        return {"triggers": triggers, "errors": dict(errors), "cycles": cycles,
                "t_start": started, "t_end": time_ns()}

    async def cmd_stop_churn(self) -> None:
        self.churn_stopped = True

    async def cmd_reset(self) -> dict[str, int]:
        """Abort every socket of every group (RST) and forget all state."""
        aborted = 0
        for group in self.groups.values():
            stop = getattr(group, "stop", None)
            if stop is not None:  # bench.views: also cancels pending reconnects
                aborted += sum(1 for conn in group.conns if conn.state != CLOSED)
                stop()
                continue
            for conn in group.conns:
                if conn.state != CLOSED:
                    conn.abort()
                    aborted += 1
        self.groups = {}
        gc.unfreeze()
        gc.collect()
        return {"aborted": aborted}

    async def cmd_rusage(self) -> dict[str, float]:
        return {"cpu_s": cpu_seconds()}

    async def cmd_forget(self, group: str) -> None:
        self.groups.pop(group, None)
        gc.collect()


def worker_main(pipe: Any, index: int) -> None:
    """Entry point of a generator process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller stops us
    raise_nofile_limit()
    try:
        asyncio.run(Worker(pipe, index).run())
    except KeyboardInterrupt:
        pass


class LoadGen:
    """The controller: ``workers`` observer processes plus one process for movers."""

    def __init__(self, workers: int = 0,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.n_observers = workers or os.cpu_count() or 2
        self.progress = progress
        self.procs: list[Any] = []
        self.pipes: list[Any] = []
        self.futures: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def mover(self) -> int:
        """Index of the process that runs movers and stalled clients."""
        return self.n_observers

    @property
    def observers(self) -> range:
        return range(self.n_observers)

    async def start(self) -> "LoadGen":
        raise_nofile_limit()
        self.loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("spawn")
        for index in range(self.n_observers + 1):
            parent, child = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=worker_main, args=(child, index), daemon=True,
                               name=f"loadgen-{index}")
            proc.start()
            child.close()
            self.procs.append(proc)
            self.pipes.append(parent)
            self.loop.add_reader(parent.fileno(), self._on_pipe, index)
        await asyncio.gather(*(self.call(i, "ping") for i in range(len(self.pipes))))
        return self

    def _on_pipe(self, index: int) -> None:
        pipe = self.pipes[index]
        try:
            req_id, ok, result = pipe.recv()
        except (EOFError, OSError):
            self.loop.remove_reader(pipe.fileno())  # type: ignore[union-attr]
            for fut in self.futures.values():
                if not fut.done():
                    fut.set_exception(RuntimeError(f"load generator {index} died"))
            return
        if req_id is None:
            if self.progress is not None:
                self.progress(result)
            return
        fut = self.futures.pop(req_id, None)
        if fut is None or fut.done():
            return
        if ok:
            fut.set_result(result)
        else:
            fut.set_exception(RuntimeError(f"load generator {index}: {result}"))

    async def call(self, index: int, cmd: str, **kwargs: Any) -> Any:
        assert self.loop is not None
        self.next_id += 1
        fut = self.loop.create_future()
        self.futures[self.next_id] = fut
        self.pipes[index].send((self.next_id, cmd, kwargs))
        return await fut

    async def call_observers(self, cmd: str, **kwargs: Any) -> list[Any]:
        return list(await asyncio.gather(*(self.call(i, cmd, **kwargs)
                                           for i in self.observers)))

    async def open_observers(self, group: str, targets: list[tuple[str, int]], count: int,
                             headers: dict[str, str], concurrency: int = 400,
                             timeout: float = 60.0) -> dict[str, Any]:
        """Open ``count`` observers spread over the observer processes and the targets."""
        n = self.n_observers
        shares = [count // n + (1 if i < count % n else 0) for i in range(n)]
        offsets = [sum(shares[:i]) for i in range(n)]
        per = max(concurrency // n, 1)
        results = await asyncio.gather(*(
            self.call(i, "open", group=group, targets=targets, count=shares[i],
                      headers=[headers], concurrency=per, timeout=timeout,
                      offset=offsets[i], progress=True)
            for i in range(n) if shares[i]))
        errors: Counter[str] = Counter()
        for r in results:
            errors.update(r["errors"])
        return {
            "requested": count, "open": sum(r["open"] for r in results),
            "errors": dict(errors),
            "t_first_send": min(r["t_first_send"] for r in results),
            "t_last_open": max(r["t_last_open"] for r in results),
            "handshake_ms_by_worker": [r["handshake_ms"] for r in results],
        }

    async def cpu(self) -> list[float]:
        results = await asyncio.gather(*(self.call(i, "rusage") for i in range(len(self.pipes))))
        return [r["cpu_s"] for r in results]

    async def stop(self) -> None:
        for index, pipe in enumerate(self.pipes):
            try:
                self.loop.remove_reader(pipe.fileno())  # type: ignore[union-attr]
                pipe.send((0, "exit", {}))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 5.0
        for proc in self.procs:
            proc.join(max(deadline - time.monotonic(), 0.1))
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
        for pipe in self.pipes:
            pipe.close()
        self.procs, self.pipes = [], []


def decode_ts(raw: bytes) -> array:
    out = array("q")
    out.frombytes(raw)
    return out


if __name__ == "__main__":  # pragma: no cover - a tiny manual check
    print("use: python -m bench.run --help", file=sys.stderr)
    sys.exit(2)
