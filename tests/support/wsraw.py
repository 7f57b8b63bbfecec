"""A raw WebSocket client for tests that need what a library will not do: never read, send
invalid UTF-8 or a thousand frames in one write, read close frames byte for byte."""

from __future__ import annotations

import asyncio
import os
import socket
import struct


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One masked client frame."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([0x80 | size])
    elif size <= 0xFFFF:
        head += bytes([0x80 | 126]) + struct.pack(">H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


PING_FRAME = frame(0x1, b'{"type":"ping"}')


class RawSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(
        cls, port: int, cookie: str, rcvbuf: int | None = None, extra: str = ""
    ) -> RawSocket:
        raw = socket.socket()
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.setblocking(False)
        await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=raw, limit=2**20)
        writer.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n{extra}\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def stall(self) -> None:
        """From now on never read (the server's writes pile up)."""
        self.writer.transport.pause_reading()  # type: ignore[attr-defined]

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_frame(self, timeout: float = 10.0) -> tuple[int, bytes]:
        async def read() -> tuple[int, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            size = b1 & 0x7F
            if size == 126:
                size = struct.unpack(">H", await self.reader.readexactly(2))[0]
            elif size == 127:
                size = struct.unpack(">Q", await self.reader.readexactly(8))[0]
            return b0 & 0x0F, await self.reader.readexactly(size)

        return await asyncio.wait_for(read(), timeout)

    async def close_code(self, timeout: float = 10.0) -> int | None:
        """Read until the server's close frame: its code (None if the TCP connection ended
        without one)."""
        try:
            while True:
                opcode, payload = await self.read_frame(timeout)
                if opcode == 0x8:
                    return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    def abort(self) -> None:
        self.writer.transport.abort()  # type: ignore[attr-defined]
