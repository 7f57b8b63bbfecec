"""How a page-like view reads: presence frames counted at C speed where a read allows it,
a frame walk otherwise (``bench.views`` explains the fast path)."""

from __future__ import annotations

import zlib

from bench.generator.viewbase import ViewBase
from bench.generator.wire import (
    ANC_SIZE,
    CLOSED,
    CLOSING,
    DEFLATE_TAIL,
    HANDSHAKE,
    OPEN,
    RECV_SIZE,
    SNAPSHOT,
    TS,
    client_frame,
    frame_total,
    time_ns,
)

BUF = bytearray(RECV_SIZE)  # every read of a worker lands here (no allocation per read)
BUFS = [BUF]
# Bytes that only frame headers other than "final text, 7-bit length" contain (JSON text
# and 7-bit lengths are ASCII without control characters, 0x7E or 0x7F).
SUSPECT = (0x00, 0x01, 0x7E, 0x7F, 0x80, 0x82, 0x88, 0x89, 0x8A, 0xC1)


class FrameReader(ViewBase):
    """Reading: the fast count, the frame walk, messages, the snapshot."""

    __slots__ = ()

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
            sec, nsec = TS.unpack_from(anc[0][2])
            kts = sec * 1_000_000_000 + nsec
        else:
            kts = time_ns()
        self.bytes_in += n
        self.t_last = kts
        before = self.presence
        if (
            self.state == OPEN
            and self.pending is None
            and not self.full
            and self.group.marker is not None
            and self._fast(0, n)
        ):
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
            self.pending_total = frame_total(self.pending)
        self.group.fast_reads += 1
        return True

    def _consume(self, pos: int, n: int, kts: int) -> None:
        if self.state == HANDSHAKE:
            self._handshake(pos, n, kts)
            return
        if self.pending is not None:
            pos = self._complete_pending(pos, n, kts)
            if pos >= n or self.state == CLOSED:
                return
        if not (
            self.state == OPEN
            and not self.full
            and self.group.marker is not None
            and self._fast(pos, n)
        ):
            self._walk(BUF, pos, n, kts)

    def _handshake(self, pos: int, n: int, kts: int) -> None:
        """The HTTP response (perhaps over several reads), then the frames after it."""
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
            if name.strip().lower() == "sec-websocket-extensions" and "permessage-deflate" in value:
                self.deflate = True
                if "server_no_context_takeover" not in value:
                    self.inflater = zlib.decompressobj(-15)
        self.state = SNAPSHOT
        self._ungate()
        self._walk(data, end + 4, len(data), kts)

    def _complete_pending(self, pos: int, n: int, kts: int) -> int:
        """Bytes of this read that finish the frame cut at the end of an earlier one."""
        p = self.pending
        assert p is not None
        total = self.pending_total
        if total < 0:
            take = min(n - pos, 10)
            p += BUF[pos : pos + take]
            pos += take
            total = frame_total(p)
            if total < 0:
                return n
            if len(p) > total:
                pos -= len(p) - total
                del p[total:]
        if len(p) < total:
            take = min(n - pos, total - len(p))
            p += BUF[pos : pos + take]
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
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
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
            self.pending_total = frame_total(self.pending)

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

    def _keep_snapshot(self, wire: bytes, raw: bytes | None, compressed: bool, frames: int) -> None:
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
