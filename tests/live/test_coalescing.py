"""The one write path: coalesced fan-out, shared (and compressed) snapshots, replies after them.

Unit tests drive ``Fanout`` with recording sockets; the rest talk to the running app over raw
TCP, so that what is asserted is what a client sees on the wire.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
import zlib
from typing import Any

import pytest

from handlers.ws import DEFLATE_AGREED, deflate_offer
from presence_app.live import fanout as fanout_module
from presence_app.live.fanout import MAX_DELAY, MAX_EARLY_REPLIES, Fanout
from presence_app.live.frames import SharedSnapshot, deflate, frame_header, stored_block, text_frame
from tests.support.livesockets import payloads


# -- Fanout with recording sockets ---------------------------------------------------------
class Recorder:
    """A socket that records every write (each call of ``send`` is one write)."""

    deflate = False

    def __init__(self, username: str = "u", ok: bool = True, cost: float = 0.0) -> None:
        self.username, self.user_id, self.session_id = username, 1, "s-" + username
        self.writes: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.ok, self.cost = ok, cost

    def send(self, parts: Any) -> bool:
        if self.cost:
            time.sleep(self.cost)  # a flush that takes long: the next one must wait
        self.writes.append(b"".join(parts))
        return self.ok

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class CountingSource:
    def __init__(self) -> None:
        self.builds = 0

    def __call__(self) -> SharedSnapshot:
        self.builds += 1
        return SharedSnapshot(b'[{"n":%d}]' % self.builds)


async def joined(fan: Fanout, *conns: Recorder) -> None:
    for conn in conns:
        fan.join(conn)  # type: ignore[arg-type]
    await asyncio.sleep(MAX_DELAY * 2)


@pytest.mark.gen_test
async def test_events_of_one_moment_are_one_write_per_socket_in_order() -> None:
    dropped: list[Any] = []
    fan = Fanout(CountingSource(), dropped.append)
    a, b = Recorder("a"), Recorder("b")
    await joined(fan, a, b)
    a.writes.clear()
    b.writes.clear()
    for n in range(100):
        fan.publish(text_frame(json.dumps({"type": "presence", "n": n})))
    await asyncio.sleep(0)
    for conn in (a, b):
        assert len(conn.writes) == 1, "expected one write per socket per flush"
        assert [json.loads(f)["n"] for f in payloads(conn.writes[0])] == list(range(100))
    assert not dropped


@pytest.mark.gen_test
async def test_without_load_an_event_is_written_at_once() -> None:
    fan = Fanout(CountingSource(), lambda c: None)
    a = Recorder()
    await joined(fan, a)
    await asyncio.sleep(0.3)  # idle
    fan.publish(text_frame('{"type":"presence"}'))
    await asyncio.sleep(0)  # one pass of the loop, no timer
    assert len(a.writes) == 2  # the snapshot, then the event


@pytest.mark.gen_test
async def test_an_event_after_enough_idle_time_is_not_held_back() -> None:
    """A costly flush (many sockets) followed by a pause of a quarter of it: the next event
    goes at once (one change every few hundred ms to 10,000 sockets is not a storm)."""
    fan = Fanout(CountingSource(), lambda c: None)
    member = Recorder(cost=0.05)
    await joined(fan, member)
    fan.publish(text_frame('{"n":1}'))
    await asyncio.sleep(0)
    assert len(member.writes) == 2
    await asyncio.sleep(0.03)  # more than a quarter of what the flush took, less than it
    fan.publish(text_frame('{"n":2}'))
    await asyncio.sleep(0)
    assert len(member.writes) == 3


@pytest.mark.gen_test
async def test_under_load_the_flush_interval_grows_but_stays_bounded() -> None:
    fan = Fanout(CountingSource(), lambda c: None)
    slow = Recorder(cost=0.3)  # every flush takes 0.3 s: more than MAX_DELAY
    fan.join(slow)  # type: ignore[arg-type]
    await asyncio.sleep(0.5)
    loop = asyncio.get_running_loop()
    fan.publish(text_frame('{"n":1}'))
    await asyncio.sleep(0)  # idle before: written at once, and that flush took 0.3 s
    assert len(slow.writes) == 2
    started = loop.time()
    fan.publish(text_frame('{"n":2}'))
    fan.publish(text_frame('{"n":3}'))
    await asyncio.sleep(0)
    assert len(slow.writes) == 2, "right after a costly flush, the next one waits"
    while len(slow.writes) < 3:
        await asyncio.sleep(0.005)
    waited = loop.time() - started
    # It waited, but no longer than MAX_DELAY (plus its own 0.3 s and some slack).
    assert MAX_DELAY * 0.9 <= waited <= MAX_DELAY + 0.3 + 0.15, waited
    assert [json.loads(f)["n"] for f in payloads(slow.writes[2])] == [2, 3]


@pytest.mark.gen_test
async def test_snapshot_first_shared_and_replies_follow_it() -> None:
    source = CountingSource()
    fan = Fanout(source, lambda c: None)
    member = Recorder("m")
    await joined(fan, member)
    builds = source.builds
    newcomers = [Recorder(f"n{i}") for i in range(50)]
    fan.publish(text_frame('{"type":"presence","n":"before"}'))
    for conn in newcomers:
        fan.join(conn)  # type: ignore[arg-type]
    fan.reply(newcomers[0], text_frame('{"type":"pong"}'))  # type: ignore[arg-type]
    await asyncio.sleep(MAX_DELAY * 2)
    assert source.builds == builds + 1, "one snapshot build for 50 joining sockets"
    first = payloads(newcomers[0].writes[0])
    assert json.loads(first[0])["type"] == "snapshot" and json.loads(first[0])["me"] == "n0"
    assert json.loads(first[1]) == {"type": "pong"}, "the reply went out with the snapshot"
    for conn in newcomers:
        assert len(conn.writes) == 1 and b'"before"' not in conn.writes[0]
    assert b'"before"' in member.writes[-1]
    fan.publish(text_frame('{"type":"presence","n":"after"}'))
    await asyncio.sleep(MAX_DELAY * 2)
    assert all(b'"after"' in conn.writes[-1] for conn in newcomers + [member])


@pytest.mark.gen_test
async def test_a_snapshot_taken_while_events_wait_covers_them() -> None:
    """Snapshots do not wait for the (slower) event flush; the events the snapshot already
    contains are not sent again, the later ones are."""
    fan = Fanout(CountingSource(), lambda c: None)
    member = Recorder("m", cost=0.05)  # every event flush now waits a while after the last
    await joined(fan, member)
    fan.publish(text_frame('{"n":0}'))
    await asyncio.sleep(0)  # flushed at once (idle), cost 0.05: the next event waits
    fan.publish(text_frame('{"n":1}'))
    newcomer = Recorder("new")
    fan.join(newcomer)  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the snapshot goes out now, covering event 1
    assert (
        len(newcomer.writes) == 1
        and json.loads(payloads(newcomer.writes[0])[0])["type"] == "snapshot"
    )
    fan.publish(text_frame('{"n":2}'))
    await asyncio.sleep(MAX_DELAY * 2)
    assert [json.loads(f)["n"] for f in payloads(member.writes[-1])] == [1, 2]
    assert [json.loads(f)["n"] for f in payloads(newcomer.writes[-1])] == [2]


@pytest.mark.gen_test
async def test_a_socket_that_cannot_take_more_is_dropped_once() -> None:
    dropped: list[Any] = []
    fan = Fanout(CountingSource(), dropped.append)
    good, full = Recorder("good"), Recorder("full")
    await joined(fan, good, full)
    full.ok = False
    fan.publish(text_frame('{"n":1}'))
    fan.publish(text_frame('{"n":2}'))
    await asyncio.sleep(MAX_DELAY * 2)
    assert dropped == [full] and full.closed == (1001, "send buffer full")
    assert len(fan) == 1
    fan.publish(text_frame('{"n":3}'))
    await asyncio.sleep(MAX_DELAY * 2)
    assert dropped == [full] and b'"n":3' in good.writes[-1]


@pytest.mark.gen_test
async def test_a_flood_before_the_snapshot_closes_with_1008() -> None:
    dropped: list[Any] = []
    fan = Fanout(CountingSource(), dropped.append)
    flooder = Recorder("f")
    fan.join(flooder)  # type: ignore[arg-type]
    for _ in range(MAX_EARLY_REPLIES + 1):
        fan.reply(flooder, text_frame('{"type":"pong"}'))  # type: ignore[arg-type]
    assert flooder.closed is not None and flooder.closed[0] == 1008
    assert dropped == [flooder] and len(fan) == 0
    await asyncio.sleep(MAX_DELAY * 2)
    assert flooder.writes == []


def test_max_delay_is_documented_and_small() -> None:
    assert 0 < fanout_module.MAX_DELAY <= 0.25


# -- frames --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "users",
    [
        b"[]",
        b"["
        + b",".join(
            b'{"username":"user%05d","online":false,"last_seen":null,"version":0}' % i
            for i in range(3000)
        )
        + b"]",
    ],
)
@pytest.mark.parametrize("me", ["alice", '\u00e9l\u00e8ve "q"'])
def test_shared_snapshot_decodes_to_the_contract_message(users: bytes, me: str) -> None:
    snap = SharedSnapshot(users)
    for compressed in (False, True):
        data = b"".join(snap.parts(me, compressed))
        first = data[0]
        size, pos = data[1] & 0x7F, 2
        if size == 126:
            size, pos = struct.unpack("!H", data[2:4])[0], 4
        elif size == 127:
            size, pos = struct.unpack("!Q", data[2:10])[0], 10
        payload = data[pos:]
        assert len(payload) == size
        if first & 0x40:
            assert compressed and len(users) > 512
            payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        message = json.loads(payload)
        assert message == {"type": "snapshot", "me": me, "users": json.loads(users)}


def test_stored_block_then_segment_is_one_valid_deflate_stream() -> None:
    body = os.urandom(2000) + b"x" * 5000
    stream = stored_block(b"prefix:") + deflate(body)
    assert zlib.decompressobj(-15).decompress(stream + b"\x00\x00\xff\xff") == b"prefix:" + body
    assert frame_header(70_000)[1] == 127 and frame_header(70_000, compressed=True)[0] == 0xC1


@pytest.mark.parametrize(
    "header,accepted",
    [
        ("permessage-deflate; client_max_window_bits", True),  # what browsers offer
        ("permessage-deflate", True),
        ("x-webkit-deflate-frame, permessage-deflate; server_no_context_takeover", True),
        ("permessage-deflate; server_max_window_bits=15", True),
        ("permessage-deflate; server_max_window_bits=10", False),  # our snapshot needs 15
        ("permessage-deflate; foo=1", False),
        ("permessage-deflate; server_max_window_bits=10, permessage-deflate", True),
        ("", False),
        (";;;", False),
        ("x-webkit-deflate-frame", False),
    ],
)
def test_deflate_offers(header: str, accepted: bool) -> None:
    assert deflate_offer(header) is accepted


# -- on the wire ---------------------------------------------------------------------------
class RawSocket:
    """A WebSocket client over plain TCP that shows frames exactly as the server sent them."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
    ) -> None:
        self.reader, self.writer, self.head = reader, writer, head

    @classmethod
    async def open(cls, port: int, cookie: str, extensions: str | None) -> RawSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        ext = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
        writer.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{ext}Cookie: {cookie}\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer, head)

    def send_text(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.writer.write(bytes([0x81, 0x80 | len(data)]) + mask + masked)

    async def frame(self) -> tuple[int, bytes]:
        """(first header byte, payload) of the next frame."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 10)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return first, await asyncio.wait_for(self.reader.readexactly(size), 10)

    async def message(self) -> dict[str, Any]:
        first, payload = await self.frame()
        if first & 0x40:
            payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        return json.loads(payload)

    async def reply(self) -> dict[str, Any]:
        """The next message that is not a presence event (our own online event may come
        at any moment after the snapshot)."""
        while True:
            message = await self.message()
            if message.get("type") != "presence":
                return message

    def close(self) -> None:
        self.writer.close()


@pytest.mark.gen_test
async def test_browser_offer_gets_a_compressed_snapshot_and_no_zlib_state(
    services: Any, user_factory: Any, http_port: int
) -> None:
    for n in range(40):  # enough users for a snapshot worth compressing
        await services.presence.user_signed_up(f"user{n:02d}")
    alice = await user_factory("alice")
    await asyncio.sleep(0.2)
    raw = await RawSocket.open(
        http_port, alice.cookie_header(), "permessage-deflate; client_max_window_bits"
    )
    try:
        assert f"sec-websocket-extensions: {DEFLATE_AGREED}\r\n".encode() in raw.head.lower()
        first, payload = await raw.frame()
        assert first == 0xC1, "FIN + RSV1 (compressed) + text"
        snapshot = json.loads(zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff"))
        assert snapshot["type"] == "snapshot" and snapshot["me"] == "alice"
        users = {u["username"]: u for u in snapshot["users"]}
        assert users["alice"]["online"] is True and len(users) >= 41
        # Events and replies stay plain frames (RSV1 clear), which permessage-deflate allows.
        raw.send_text('{"type":"ping"}')
        while True:
            first, payload = await raw.frame()
            assert first == 0x81, "events and replies are plain text frames"
            if payload == b'{"type":"pong"}':
                break
            assert json.loads(payload)["type"] == "presence"
        # No zlib object kept per socket: both directions are "no context takeover".
        (handler,) = services.presence.connections()
        assert handler.ws_connection._compressor._compressor is None
        assert handler.ws_connection._decompressor._decompressor is None
    finally:
        raw.close()


@pytest.mark.gen_test
async def test_without_an_offer_the_snapshot_is_plain(user_factory: Any, http_port: int) -> None:
    alice = await user_factory("alice")
    for extensions in (None, "permessage-deflate; server_max_window_bits=9"):
        raw = await RawSocket.open(http_port, alice.cookie_header(), extensions)
        try:
            assert b"sec-websocket-extensions" not in raw.head.lower()
            first, payload = await raw.frame()
            assert first == 0x81 and json.loads(payload)["me"] == "alice"
        finally:
            raw.close()


@pytest.mark.gen_test
async def test_ping_sent_before_the_snapshot_is_answered_after_it(
    user_factory: Any, http_port: int
) -> None:
    alice = await user_factory("alice")
    raw = await RawSocket.open(http_port, alice.cookie_header(), None)
    try:
        raw.send_text('{"type":"ping"}')  # before reading anything
        raw.send_text("not json")
        assert (await raw.message())["type"] == "snapshot"
        assert await raw.reply() == {"type": "pong"}
        assert (await raw.reply())["type"] == "error"
    finally:
        raw.close()


@pytest.mark.gen_test
async def test_burst_arrives_as_separate_frames_in_order(
    services: Any, user_factory: Any, http_port: int
) -> None:
    alice = await user_factory("alice")
    raw = await RawSocket.open(http_port, alice.cookie_header(), None)
    try:
        assert (await raw.message())["type"] == "snapshot"
        assert (await raw.message())["username"] == "alice"  # our own online event: quiet now
        await asyncio.sleep(MAX_DELAY * 2)
        flushes = services.presence.fanout.flushes
        for n in range(200):
            services.presence.broadcast(json.dumps({"type": "test", "n": n}))
        got = [(await raw.reply()) for _ in range(200)]
        assert [m["n"] for m in got] == list(range(200))
        assert services.presence.fanout.flushes - flushes == 1, "one flush for the burst"
    finally:
        raw.close()


@pytest.mark.gen_test(timeout=60)
async def test_storm_of_distinct_users_shares_snapshots_and_converges(
    services: Any, user_factory: Any
) -> None:
    clients = [await user_factory(f"storm{n:02d}") for n in range(30)]
    presence = services.presence
    built: list[int] = []
    original = presence.shared_snapshot

    def counting() -> SharedSnapshot:
        snap = original()
        built.append(id(snap))
        return snap

    presence.fanout._snapshot = counting
    sockets = await asyncio.gather(*(c.connect() for c in clients))
    names = {f"storm{n:02d}" for n in range(30)}
    for sock in sockets:
        assert sock.state[sock.me]["online"] is True, "me is online in my own snapshot"
    for sock in sockets:  # every socket converges on "all 30 online"
        for name in names:
            if not sock.online(name):
                await sock.wait_status(name, True, timeout=10)
    assert len(set(built)) < len(sockets), "snapshots were not shared"
