"""One client WebSocket of the load generator on a raw non-blocking socket, and the
``Poller`` that tells it when to read.

Per delivery the hot path is: one ``recvmsg`` syscall, a frame header decode, one dict
lookup keyed by the payload bytes (a fanned-out event has the same bytes on every socket),
two appends to ``array('q')``. JSON is parsed once per distinct payload, not per delivery."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

from bench.generator.group import POLLER, Group
from bench.generator.wire import (
    ANC_SIZE,
    CLOSED,
    CLOSING,
    HANDSHAKE,
    OPEN,
    RECV_SIZE,
    SNAPSHOT,
    SO_TIMESTAMPNS,
    TS,
    client_frame,
    time_ns,
)


class OpenFailed(Exception):
    pass


class Conn:
    """One client WebSocket on a raw non-blocking socket, read when the ``Poller`` says."""

    __slots__ = (
        "loop",
        "group",
        "sock",
        "fd",
        "state",
        "buf",
        "frag",
        "t_send",
        "t_open",
        "t_close",
        "opened",
        "closed",
        "bytes_in",
        "close_code",
        "paused",
        "label",
        "error",
    )

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
    async def open(
        self, addr: tuple[str, int], request: bytes, timeout: float, rcvbuf: int = 0
    ) -> bool:
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
            await asyncio.wait_for(
                asyncio.shield(self.opened), max(deadline - time.monotonic(), 0.001)
            )
            return True
        except TimeoutError:
            self.fail("timeout")
        except ConnectionRefusedError:
            self.fail("connection refused")
        except ConnectionError as exc:
            self.fail(f"connect: {exc.__class__.__name__}")
        except OSError as exc:
            self.fail(f"connect: {exc.strerror or exc}")
        except OpenFailed:
            pass
        return False

    def fail(self, why: str) -> None:
        if not self.error:
            self.error = why
        if not self.opened.done():
            self.opened.set_exception(OpenFailed(why))
            self.opened.exception()  # mark retrieved
        self.abort()

    # -- reading --------------------------------------------------------------------------
    def on_readable(self) -> None:
        """One read. The common case (one small final text frame: one fanned-out event) is
        handled inline, without a further call: this runs once per delivery."""
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
            sec, nsec = TS.unpack_from(anc[0][2])
            kts = sec * 1_000_000_000 + nsec
        else:
            kts = uts
        size = len(data)
        self.bytes_in += size
        if (
            self.state == OPEN
            and not self.buf
            and size > 2
            and data[0] == 0x81
            and data[1] == size - 2
            and size < 128
        ):
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
        self._read_frames(data, kts, uts)

    def _read_frames(self, data: bytes, kts: int, uts: int) -> None:
        """Anything but the common case: the handshake, several frames, a cut one."""
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
            data = data[end + 4 :]
        self._walk(data, kts, uts)

    def _walk(self, data: bytes, kts: int, uts: int) -> None:
        """Every complete frame of ``data``; a cut one is kept for the next read."""
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
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
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
        if (
            payload.startswith(b'{"type":"snapshot"')
            or group.parsed(payload).get("type") == "snapshot"
        ):
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
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.finish()
