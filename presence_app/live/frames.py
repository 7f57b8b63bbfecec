"""Server-to-client WebSocket frames built once and shared by every socket (RFC 6455, 7692).

Pure functions over bytes: no Tornado here, so presence can build frames without the web layer.
"""

from __future__ import annotations

import json
import struct
import zlib

OPCODE_TEXT = 0x1
FIN = 0x80
RSV1 = 0x40  # permessage-deflate: this message is compressed (RFC 7692 6)
#: zlib level of shared snapshots: 1 MB of JSON (10,000 users) -> ~140 KB in ~12 ms, once per
#: snapshot build, however many sockets receive it.
SNAPSHOT_LEVEL = 6
#: Snapshots smaller than this go uncompressed (RSV1 clear), even where deflate is agreed.
DEFLATE_MIN_BYTES = 512
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


def frame_header(size: int, compressed: bool = False) -> bytes:
    """Header of one unmasked, final text frame whose payload is ``size`` bytes."""
    first = FIN | OPCODE_TEXT | (RSV1 if compressed else 0)
    if size < 126:
        return struct.pack("!BB", first, size)
    if size <= 0xFFFF:
        return struct.pack("!BBH", first, 126, size)
    return struct.pack("!BBQ", first, 127, size)


def text_frame(text: str) -> bytes:
    """One complete uncompressed text frame."""
    data = text.encode("utf-8")
    return frame_header(len(data)) + data


def deflate(data: bytes, level: int = SNAPSHOT_LEVEL) -> bytes:
    """``data`` as a self-contained raw deflate segment, as permessage-deflate sends it.

    A fresh compressor per call: the segment refers to nothing sent before it, so it is valid
    on every socket whatever was sent there earlier (the server announces
    ``server_no_context_takeover``, but even without it a fresh segment decodes correctly).
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(_DEFLATE_TAIL)
    return out[:-4]


def stored_block(data: bytes) -> bytes:
    """``data`` as one uncompressed, non-final deflate block (RFC 1951 3.2.4).

    It ends byte-aligned, so a separately compressed segment may follow it: this is how a
    per-socket prefix is put in front of a snapshot body compressed once for everyone.
    """
    size = len(data)
    if size > 0xFFFF:
        raise ValueError("a stored block holds at most 65535 bytes")
    return b"\x00" + struct.pack("<HH", size, size ^ 0xFFFF) + data


class SharedSnapshot:
    """The snapshot frame of one moment, for every socket that joins at that moment.

    The users list is encoded once; each socket adds only its own ``"me"`` in front. The
    compressed body is made on first use (only if some socket negotiated deflate).
    """

    def __init__(self, users_json: bytes) -> None:
        self.body = b',"users":' + users_json + b"}"
        self._deflated: bytes | None = None

    @property
    def deflated(self) -> bytes:
        if self._deflated is None:
            self._deflated = deflate(self.body)
        return self._deflated

    def parts(self, username: str, compressed: bool) -> list[bytes]:
        prefix = b'{"type":"snapshot","me":' + json.dumps(username).encode("utf-8")
        if compressed and len(self.body) >= DEFLATE_MIN_BYTES:
            head = stored_block(prefix)
            return [
                frame_header(len(head) + len(self.deflated), compressed=True) + head,
                self.deflated,
            ]
        return [frame_header(len(prefix) + len(self.body)) + prefix, self.body]
