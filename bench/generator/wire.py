"""The WebSocket wire format as the load generator speaks it: masked client frames (only
small control frames are ever sent), the HTTP upgrade request, the length of an unmasked
server frame, the kernel's receive timestamps (``SO_TIMESTAMPNS``), and the states a client
connection goes through.

Timestamps are ``CLOCK_REALTIME`` nanoseconds (``time.time_ns()``), comparable across
processes."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from array import array
from typing import Any

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS == the same
ANC_SIZE = socket.CMSG_SPACE(16)
RECV_SIZE = 256 * 1024
TS = struct.Struct("=qq")  # the timespec of an SCM_TIMESTAMPNS message
time_ns = time.time_ns

# Client connection states (``Conn`` never uses CONNECTING; a ``View`` does).
CONNECTING, HANDSHAKE, SNAPSHOT, OPEN, CLOSING, CLOSED = -1, 0, 1, 2, 3, 4


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
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode("latin-1")


def frame_total(head: bytes | bytearray) -> int:
    """Length of the (unmasked) frame starting at ``head[0]``; -1 if the header is cut."""
    if len(head) < 2:
        return -1
    n = head[1] & 0x7F
    if n < 126:
        return 2 + n
    if n == 126:
        return 4 + int.from_bytes(head[2:4], "big") if len(head) >= 4 else -1
    return 10 + int.from_bytes(head[2:10], "big") if len(head) >= 10 else -1


def json_object(payload: bytes) -> dict[str, Any]:
    """A text message parsed; ``{"type": "?"}`` for one that is not a JSON object. Callers
    cache the result by the payload bytes: a fanned-out event is parsed once, not per delivery."""
    try:
        meta = json.loads(payload)
    except ValueError:
        return {"type": "?"}
    return meta if isinstance(meta, dict) else {"type": "?"}


def decode_ts(raw: bytes) -> array:
    """Timestamps sent over a pipe as ``array('q').tobytes()``, back as an array."""
    out = array("q")
    out.frombytes(raw)
    return out


DEFLATE_TAIL = b"\x00\x00\xff\xff"  # what a permessage-deflate sender strips (RFC 7692)
