"""Fan-out below Tornado's public API: frames on the wire, slow and dead sockets."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace
from typing import Any, cast

import pytest

from handlers.ws import text_frame
from presence_app.config import Settings

LIMIT = 64 * 1024


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, send_buffer_limit=LIMIT)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_text_frame_header_lengths(size: int) -> None:
    frame = text_frame("x" * size)
    assert frame[0] == 0x81  # FIN + text
    if size < 126:
        assert frame[1] == size and len(frame) == 2 + size
    elif size <= 0xFFFF:
        assert frame[1] == 126 and int.from_bytes(frame[2:4], "big") == size
    else:
        assert frame[1] == 127 and int.from_bytes(frame[2:10], "big") == size


@pytest.mark.gen_test
async def test_big_frames_arrive_intact_in_order(services: Any, user_factory: Any) -> None:
    alice = await user_factory("alice")
    sock = await alice.connect(max_size=2**20)
    for n, size in enumerate([10, 200, 70_000, 5]):
        services.presence.broadcast(json.dumps({"type": "test", "n": n, "pad": "y" * size}))
    for n, size in enumerate([10, 200, 70_000, 5]):
        message = await sock.wait_for(lambda m: m.get("type") == "test", 5)
        assert message["n"] == n and len(message["pad"]) == size


async def _stalled_socket(port: int, cookie: str) -> asyncio.StreamWriter:
    """A client that upgrades and then never reads again (tiny receive window)."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=raw, limit=4096)
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    cast(asyncio.Transport, writer.transport).pause_reading()  # from now on: never read
    return writer


@pytest.mark.gen_test(timeout=60)
async def test_stalled_client_is_dropped_and_others_unaffected(
    services: Any, user_factory: Any, http_port: int
) -> None:
    alice = await user_factory("alice")
    good = await alice.connect(max_size=2**20)
    stalled = await _stalled_socket(http_port, alice.cookie_header())
    try:
        presence = services.presence
        await asyncio.sleep(0.1)
        assert presence.socket_count == 2
        received: list[int] = []

        async def reader() -> None:
            while len(received) < 300:
                message = await good.recv(10)
                if message.get("type") == "test":
                    received.append(message["n"])

        task = asyncio.ensure_future(reader())
        for n in range(300):  # ~6 MB: far past the kernel buffers and the 64 KiB limit
            presence.broadcast(json.dumps({"type": "test", "n": n, "pad": "z" * 20_000}))
            # ~10 MB/s: a healthy reader keeps up (it shares this loop with the producer)
            await asyncio.sleep(0.002)
        await asyncio.wait_for(task, 20)
        assert received == list(range(300)), "the healthy client lost or reordered events"
        assert presence.socket_count == 1, "the stalled client was not dropped"
    finally:
        stalled.close()


@pytest.mark.gen_test
async def test_socket_dying_mid_broadcast_is_unregistered(services: Any, user_factory: Any) -> None:
    alice = await user_factory("alice")
    bob = await user_factory("bob")
    watcher = await alice.connect()
    doomed = await bob.connect()
    await watcher.wait_status("bob", True)
    doomed.ws.transport.abort()  # vanishes without a close frame
    for n in range(50):
        services.presence.broadcast(json.dumps({"type": "test", "n": n}))
        await asyncio.sleep(0)
    await watcher.wait_status("bob", False, timeout=5)
    assert services.presence.socket_count == 1
