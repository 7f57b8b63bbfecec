"""No single client can hurt the process: every write bounded (memory held per socket, kernel
buffer), client messages rate-limited, socket caps, and the frames Tornado would cut."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import weakref
from dataclasses import replace
from typing import Any

import pytest
import websockets

from presence_app.client import ClientError
from presence_app.config import Settings
from tests.support.bounded import LIMIT, Unretrieved, ping_flood_peak, stalled_client_peak
from tests.support.wsraw import PING_FRAME, RawSocket, frame


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, send_buffer_limit=LIMIT, client_message_rate=0.0)


@pytest.mark.gen_test(timeout=60)
async def test_a_stalled_client_costs_at_most_twice_its_limit(
    services: Any, user_factory: Any, http_port: int
) -> None:
    """One small event per flush (the worst case for per-write objects): the process holds
    at most about 2x ``--send-buffer-limit`` for the stalled socket, then drops it."""
    peak = await stalled_client_peak(services, user_factory, http_port)
    print(f"held at most {peak} bytes for a stalled client (limit {LIMIT})")
    assert peak <= 2 * LIMIT + 32 * 1024


@pytest.mark.gen_test(timeout=60)
async def test_a_ping_flood_that_never_reads_is_dropped_with_bounded_memory(
    services: Any, user_factory: Any, http_port: int
) -> None:
    """The red-team flood: tiny pings as fast as possible, never reading. Pongs go through
    the bounded path: the socket is dropped, memory stays bounded, and no Future or Task is
    left with an exception nobody retrieved."""
    watcher = Unretrieved()
    peak = await ping_flood_peak(services, user_factory, http_port)
    await asyncio.sleep(0.2)
    print(f"held at most {peak} bytes for a flooding client (limit {LIMIT})")
    assert peak <= 2 * LIMIT + 64 * 1024  # + what Tornado reads ahead of the parser
    assert watcher.check() == []


@pytest.mark.gen_test
async def test_kernel_send_buffer_is_capped(services: Any, user_factory: Any) -> None:
    alice = await user_factory("alice")
    await alice.connect()
    conn = services.presence.connections()[0]
    size = conn.ws_connection.stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    wanted = services.settings.socket_send_buffer
    assert 0 < size <= 2 * wanted, f"SO_SNDBUF {size}, asked for {wanted}"


@pytest.mark.parametrize("field", ["socket_send_buffer"])
def test_kernel_autotuning_can_be_kept(field: str) -> None:
    from presence_app.config import validate

    changes: dict[str, Any] = {field: 0}
    assert validate(replace(Settings(), **changes)).socket_send_buffer == 0


class TestMessageRate:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return replace(settings, client_message_rate=10.0, client_message_burst=20)

    @pytest.mark.gen_test
    async def test_over_the_rate_an_error_then_close_1008(self, user_factory: Any) -> None:
        alice = await user_factory("alice")
        sock = await alice.connect()
        for _ in range(40):
            await sock.send_json({"type": "ping"})
        replies = []
        while True:
            try:
                replies.append(await sock.recv(5))
            except websockets.ConnectionClosed:
                break
        kinds = [r["type"] for r in replies if r["type"] != "presence"]
        assert kinds.count("pong") <= 21 and kinds[-1] == "error", kinds
        assert "too many messages" in replies[-1]["error"]
        assert await sock.wait_closed() == 1008

    @pytest.mark.gen_test
    async def test_a_flooder_that_ignores_the_close_is_cut_off_at_once(
        self, user_factory: Any, http_port: int
    ) -> None:
        """Not after Tornado's 5 s wait for the client's close frame, parsing its flood."""
        alice = await user_factory("alice")
        sock = await RawSocket.open(http_port, alice.cookie_header())
        await sock.read_frame()  # the snapshot
        started = time.monotonic()
        sock.writer.write(PING_FRAME * 5000)
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            while True:  # pongs, the error, the close frame: until the connection ends
                await sock.read_frame(timeout=10)
        assert time.monotonic() - started < 1.5

    @pytest.mark.gen_test
    async def test_within_the_rate_nothing_happens(self, user_factory: Any) -> None:
        alice = await user_factory("alice")
        sock = await alice.connect()
        for _ in range(30):  # 30 pings at ~12/s: the burst covers the difference
            assert (await sock.ping())["type"] == "pong"
            await asyncio.sleep(0.08)
        assert sock.close_code is None


class TestSocketCaps:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return replace(settings, max_sockets_per_user=2, max_sockets_per_address=3)

    @pytest.mark.gen_test
    async def test_per_user_cap_refuses_with_429_until_one_closes(self, user_factory: Any) -> None:
        alice = await user_factory("alice")
        first = await alice.connect()
        await alice.connect()
        with pytest.raises(ClientError) as refused:
            await alice.connect()
        assert refused.value.status == 429
        await first.close()
        await asyncio.sleep(0.2)
        await alice.connect()

    @pytest.mark.gen_test
    async def test_per_address_cap_counts_every_user(self, user_factory: Any) -> None:
        alice, bob = await user_factory("alice"), await user_factory("bob")
        await alice.connect()
        await alice.connect()
        await bob.connect()
        with pytest.raises(ClientError) as refused:
            await bob.connect()
        assert refused.value.status == 429
        response = await bob.request("GET", "/ws")
        assert response.code == 429
        assert b"too many open sockets from this address" in response.body


@pytest.mark.gen_test
async def test_invalid_utf8_text_frame_closes_with_1007(user_factory: Any, http_port: int) -> None:
    alice = await user_factory("alice")
    sock = await RawSocket.open(http_port, alice.cookie_header())
    await sock.send(frame(0x1, b'{"type":"\xff\xfe"}'))
    assert await sock.close_code() == 1007


@pytest.mark.gen_test
async def test_deeply_nested_json_gets_an_error_and_the_socket_stays(
    user_factory: Any, caplog: Any
) -> None:
    alice = await user_factory("alice")
    sock = await alice.connect()
    await sock.ws.send("[" * 2000)
    reply = await sock.wait_for(lambda m: m["type"] == "error", 5)
    assert "JSON" in reply["error"]
    assert (await sock.ping())["type"] == "pong"
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


@pytest.mark.gen_test
async def test_close_reason_that_is_not_utf8_is_answered_not_cut(
    user_factory: Any, http_port: int, caplog: Any
) -> None:
    alice = await user_factory("alice")
    sock = await RawSocket.open(http_port, alice.cookie_header())
    await sock.send(frame(0x8, b"\x03\xe8\xff\xfe"))
    assert await sock.close_code() == 1000
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


@pytest.mark.gen_test
async def test_closed_sockets_are_freed_without_the_cyclic_collector(
    services: Any, user_factory: Any
) -> None:
    """A closed socket's handler, connection and buffers go at once (reference counting):
    presence_app/runtime/gcpolicy.py keeps the cyclic collector away from connections, so a cycle
    through the write path would pile up every closed socket of a churn (seen: +119 MiB in
    15 s of churn with a stalled client)."""
    alice = await user_factory("alice")
    refs: list[weakref.ref[Any]] = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(10):
            sock = await alice.connect()
            await sock.ping()
            refs += [weakref.ref(conn) for conn in services.presence.connections()]
            await sock.close()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        alive = sum(1 for ref in refs if ref() is not None)
    finally:
        gc.enable()
    assert alive == 0, f"{alive} of {len(refs)} closed handlers still alive"
