"""handlers/tornado_internals.py: the start-up check passes on the pinned Tornado and names
what a changed Tornado lacks; both paths (fast and public-API fallback) work end to end with
the bound and the order of events; nothing else in handlers/ reads Tornado's internals."""

from __future__ import annotations

import ast
import asyncio
import functools
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import tornado
import tornado.httputil
import tornado.iostream
import tornado.web
from tornado.websocket import WebSocketHandler, WebSocketProtocol13

from handlers import make_app
from handlers.tornado_internals import (
    BoundedWriter,
    TornadoInternals,
    check,
    checked,
    internals_for,
    reason_phrase,
)
from handlers.wsio import MessageWriter, frame_payloads
from presence_app.config import Settings
from presence_app.live.frames import SharedSnapshot, text_frame
from tests.support.bounded import LIMIT, Unretrieved, ping_flood_peak, stalled_client_peak

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "handlers" / "tornado_internals.py"
FAST, FALLBACK = TornadoInternals(), TornadoInternals(("forced by the test",))


# --- the start-up check ----------------------------------------------------------------------


def test_the_check_finds_nothing_on_the_pinned_tornado() -> None:
    """Fails when a Tornado upgrade changes an internal the fast path relies on: then read
    the problems, fix handlers/tornado_internals.py (or accept the fallback) and re-pin."""
    assert check() == [], f"Tornado {tornado.version}"
    assert checked().fast


class RenamedBuffer(tornado.iostream.IOStream):
    """A stand-in for a Tornado whose IOStream keeps its write buffer under another name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending_writes = self.__dict__.pop("_write_buffer")


class OldProtocol(WebSocketProtocol13):
    """A stand-in protocol whose message hook takes other arguments."""

    def _handle_message(self, frame: Any) -> Any:  # type: ignore[override]
        return None


class OldHandler(WebSocketHandler):
    def get_websocket_protocol(self) -> Any:
        protocol = super().get_websocket_protocol()
        protocol.__class__ = OldProtocol
        return protocol


def test_a_missing_write_buffer_is_named_and_the_process_falls_back(caplog: Any) -> None:
    problems = check(stream_class=RenamedBuffer)
    assert problems == ["IOStream._write_buffer is missing or has no len()"]
    with caplog.at_level(logging.WARNING, logger="handlers.tornado_internals"):
        internals = internals_for(problems)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "IOStream._write_buffer" in warnings[0].getMessage()
    assert "public API only" in warnings[0].getMessage()
    assert not internals.fast and not internals.deflate


def test_a_changed_protocol_is_named() -> None:
    problems = check(handler_class=OldHandler)
    assert any("OldProtocol._handle_message(opcode, data)" in p for p in problems), problems
    assert any("not a WebSocketProtocol13" in p for p in problems), problems


def test_a_missing_compressor_hook_is_named(monkeypatch: Any) -> None:
    monkeypatch.delattr(WebSocketProtocol13, "_create_compressors")
    assert check() == [
        "WebSocketProtocol13._create_compressors(side, agreed_parameters) is missing or changed"
    ]


def test_no_warning_when_nothing_is_missing(caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="handlers.tornado_internals"):
        assert internals_for([]).fast
    assert not caplog.records


class _Connection(tornado.httputil.HTTPConnection):
    def set_close_callback(self, callback: Any) -> None:
        pass


@pytest.mark.parametrize(
    "status, reason",
    [
        (404, None),
        (503, None),
        (418, None),
        (299, None),
        (599, None),
        (400, "Custom"),
        (400, "tab\tand space"),
        (400, "caf\xe9"),
        (400, "<b>x</b>"),
        (400, "two\nlines"),
        (400, ""),
        (400, "\u20ac"),
    ],
)
def test_reason_phrase_is_what_tornado_puts_on_the_status_line(
    status: int, reason: str | None
) -> None:
    """base.py's error pages read the phrase from public data; Tornado keeps it in
    ``_reason``. Fails if Tornado changes how it picks or checks the phrase."""
    request = tornado.httputil.HTTPServerRequest(
        start_line=tornado.httputil.RequestStartLine("GET", "/", "HTTP/1.1"),
        headers=tornado.httputil.HTTPHeaders({"Host": "localhost"}),
        connection=_Connection(),
    )
    handler = tornado.web.RequestHandler(tornado.web.Application(), request)
    handler.set_status(status, reason)
    assert reason_phrase(status, {"reason": reason}) == handler._reason
    error = tornado.web.HTTPError(status, reason=reason)
    expected = handler._reason if reason else tornado.httputil.responses.get(status, "Unknown")
    assert reason_phrase(status, {"exc_info": (type(error), error, None)}) == expected


# --- frames back to payloads (the fallback) --------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_frame_payloads_round_trip(size: int) -> None:
    texts = ["a" * size, "\u00e9" * 3, '{"type":"pong"}']
    data = b"".join(text_frame(t) for t in texts)
    assert frame_payloads(data) == [t.encode("utf-8") for t in texts]


def test_frame_payloads_of_an_uncompressed_snapshot() -> None:
    snapshot = SharedSnapshot(json.dumps([{"username": "u" * 300}]).encode())
    (payload,) = frame_payloads(b"".join(snapshot.parts("alice", compressed=False)))
    assert json.loads(payload)["me"] == "alice"


@pytest.mark.parametrize(
    "data",
    [
        b"\x81",
        text_frame("abc")[:-1],
        b"\x01\x03abc",
        b"\xc1\x03abc",
        b"\x81\x83abcdefg",
        b"\x82\x03abc",
    ],
)
def test_frame_payloads_refuses_what_fanout_never_builds_without_deflate(data: bytes) -> None:
    with pytest.raises(ValueError):
        frame_payloads(data)


# --- both paths, end to end --------------------------------------------------------------------


@pytest.fixture(params=["fast", "fallback"])
def internals(request: Any) -> TornadoInternals:
    return FAST if request.param == "fast" else FALLBACK


@pytest.fixture
def app(services: Any, internals: TornadoInternals) -> Any:
    return make_app(services, internals)


@pytest.mark.gen_test(timeout=60)
async def test_events_arrive_in_order_with_replies_and_presence(
    services: Any, user_factory: Any, internals: TornadoInternals
) -> None:
    alice = await user_factory("alice")
    sock = await alice.connect()  # offers permessage-deflate, as browsers do
    agreed = sock.ws.response.headers.get("Sec-WebSocket-Extensions")
    assert (agreed is not None) is internals.fast
    (conn,) = services.presence.connections()
    assert type(conn.writer) is (BoundedWriter if internals.fast else MessageWriter)
    assert (await sock.ping())["type"] == "pong"
    reader = asyncio.ensure_future(_numbers(sock, 300))
    for n in range(300):  # every frame header length; within the limit, paced
        pad = 70_000 if n % 60 == 0 else 200 if n % 2 else 10
        services.presence.broadcast(json.dumps({"type": "test", "n": n, "pad": "x" * pad}))
        if n % 20 == 0:
            await asyncio.sleep(0.02)
    assert await reader == list(range(300))
    bob = await user_factory("bob")
    await bob.connect()
    await sock.wait_status("bob", online=True)
    assert (await sock.ping())["type"] == "pong"


async def _numbers(sock: Any, count: int) -> list[int]:
    got: list[int] = []
    while len(got) < count:
        message = await sock.recv(10)
        if message["type"] == "test":
            got.append(message["n"])
    return got


class TestBoundedOnTheFallback:
    """tests/handlers/test_bounded_writes.py's two bounds, on the public-API path (the fast path is
    what that module tests). The kernel buffer is not capped here: the drop comes later."""

    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return replace(settings, send_buffer_limit=LIMIT, client_message_rate=0.0)

    @pytest.fixture
    def app(self, services: Any) -> Any:
        return make_app(services, FALLBACK)

    @pytest.mark.gen_test(timeout=60)
    async def test_a_stalled_client_costs_at_most_twice_its_limit(
        self, services: Any, user_factory: Any, http_port: int
    ) -> None:
        peak = await stalled_client_peak(services, user_factory, http_port)
        assert peak <= 2 * LIMIT + 32 * 1024

    @pytest.mark.gen_test(timeout=60)
    async def test_a_ping_flood_is_dropped_with_bounded_memory(
        self, services: Any, user_factory: Any, http_port: int
    ) -> None:
        watcher = Unretrieved()
        peak = await ping_flood_peak(services, user_factory, http_port)
        await asyncio.sleep(0.2)
        assert peak <= 2 * LIMIT + 64 * 1024
        assert watcher.check() == []


# --- nothing else in handlers/ reads Tornado's internals ---------------------------------------

#: Undocumented (though not underscored) attributes of Tornado objects the adapter owns.
UNDOCUMENTED = {"ws_connection", "stream", "socket"}


@functools.cache
def tornado_private_names() -> set[str]:
    """Every ``_name`` Tornado's own source uses as an attribute or defines as a method."""
    names: set[str] = set()
    for path in Path(tornado.__file__).parent.rglob("*.py"):
        if "test" in path.relative_to(Path(tornado.__file__).parent).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def internals_read(source: str, private: set[str]) -> list[str]:
    """``x._name`` / ``getattr(x, "_name")`` for a Tornado-private name, or an undocumented
    attribute; attributes of imported modules (``socket.AF_INET``) do not count. Our own
    attributes count too when Tornado uses the name (on a handler they would shadow
    Tornado's): rename them."""
    tree = ast.parse(source)
    modules = {
        alias.asname or alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    wanted = private | UNDOCUMENTED
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in wanted:
            if not (isinstance(node.value, ast.Name) and node.value.id in modules):
                found.append(f"line {node.lineno}: .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "setattr", "hasattr", "delattr"}
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in wanted
        ):
            found.append(f"line {node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    return found


def test_the_internals_checker_sees_what_it_must() -> None:
    private = tornado_private_names()
    assert {
        "_finished",
        "_headers_written",
        "_reason",
        "_write_buffer",
        "_handle_message",
        "_create_compressors",
    } <= private
    sample = (
        "import socket\nclass H:\n    def f(self, conn):\n"
        "        if self._finished or self._headers_written: pass\n"
        "        conn.ws_connection.stream.socket.sendmsg([])\n"
        "        getattr(conn, '_write_buffer')\n"
        "        self._scope = socket.AF_INET\n"
    )
    assert sorted(internals_read(sample, private)) == [
        "line 4: ._finished",
        "line 4: ._headers_written",
        "line 5: .socket",
        "line 5: .stream",
        "line 5: .ws_connection",
        "line 6: getattr(..., '_write_buffer')",
    ]


@pytest.mark.parametrize(
    "path", sorted(set((ROOT / "handlers").rglob("*.py")) - {ADAPTER}), ids=lambda p: p.name
)
def test_only_the_adapter_reads_tornado_internals(path: Path) -> None:
    assert internals_read(path.read_text(), tornado_private_names()) == []
