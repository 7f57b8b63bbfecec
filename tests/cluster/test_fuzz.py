"""Fuzzing a running app (``python run.py``, SQLite, in-process broker) with hypothesis:
WebSocket frames, the sign-up and login forms, and request paths.

What must hold for any input (docs/PROTOCOL.md):
- HTTP: never a 5xx; a POST without the right ``_xsrf`` is a 403; a password is never echoed
  (not in the page, not in the log);
- WebSocket: a frame gets an ``error`` message (the socket stays open and still answers a
  ping), or the socket is closed with a documented code: 1007 for a text frame that is not
  UTF-8, 1009 for a frame over the size limit, 1003 for a binary frame. Never a connection cut
  without a close frame;
- the app logs no traceback and nothing at ERROR.

Clients are plain blocking sockets with hand-built frames and bodies, so that anything can be
sent (invalid UTF-8 in a text frame or a form body, which normal clients refuse to produce).
A failure prints the smallest input found.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from itertools import pairwise
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.cluster.harness import AppProcess
from tests.conftest import IN_CI

pytestmark = pytest.mark.cluster

MAX_MESSAGE = 64 * 1024  # the default --max-message-size
PASSWORD = "fuzz-pass-123"
# Local runs explore; CI replays the same cases every time (derandomized) and keeps no database.
FUZZ = settings(
    max_examples=int(os.environ.get("PRESENCE_FUZZ_EXAMPLES", "150")),
    deadline=None,
    derandomize=IN_CI,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
if IN_CI:  # the same cases on every run, and no example database left behind
    FUZZ = settings(FUZZ, database=None)


# -- the app and its log ---------------------------------------------------------------------
class Served:
    """The running app, a signed-up user's cookies (session and _xsrf), the log read so far."""

    def __init__(self, app: AppProcess, cookies: dict[str, str]) -> None:
        self.app, self.cookies, self.log_offset = app, cookies, 0

    def __repr__(self) -> str:
        return f"<app on port {self.app.port}>"

    def new_log(self) -> str:
        """What the app logged since the last call."""
        with open(self.app.log_path, "rb") as log:
            log.seek(self.log_offset)
            data = log.read()
        self.log_offset += len(data)
        return data.decode("utf-8", "replace")

    def assert_quiet_log(self) -> None:
        text = self.new_log()
        bad = [
            line
            for line in text.splitlines()
            if "Traceback" in line or re.search(r"\bERROR\b|\bCRITICAL\b", line)
        ]
        assert not bad, "the app logged an error:\n" + text[-3000:]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("fuzz")
    app = AppProcess(workdir, "fuzz", f"sqlite+aiosqlite:///{workdir / 'fuzz.db'}", "", "")
    app.start()
    try:
        cookies = xsrf_cookies(app.port)
        status, _, got = post(
            app.port,
            "/signup",
            urlencode(
                {
                    "username": "fuzzer",
                    "password": PASSWORD,
                    "confirm": PASSWORD,
                    "_xsrf": cookies["_xsrf"],
                }
            ).encode(),
            cookies,
        )
        assert status == 302 and "presence_session" in got, status
        cookies.update(got)
        state = Served(app, cookies)
        state.new_log()  # start-up lines
        yield state
    finally:
        app.stop()


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    """One HTTP/1.1 request; returns status, body and the cookies set."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        cookies = {}
        for header in response.headers.get_all("Set-Cookie") or []:
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            cookies.update({name: morsel.value for name, morsel in jar.items()})
        return response.status, response.read(), cookies
    finally:
        conn.close()


def cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def xsrf_cookies(port: int) -> dict[str, str]:
    status, _, cookies = request(port, "GET", "/login")
    assert status == 200 and "_xsrf" in cookies
    return cookies


def post(
    port: int, path: str, body: bytes, cookies: dict[str, str]
) -> tuple[int, bytes, dict[str, str]]:
    return request(
        port,
        "POST",
        path,
        body,
        {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie_header(cookies)},
    )


# -- WebSocket frames ------------------------------------------------------------------------
class CutWithoutClose(AssertionError):
    """The server dropped the TCP connection without a close frame."""


class RawSocket:
    """A WebSocket client that sends any frame, valid or not (blocking, with timeouts)."""

    def __init__(self, port: int, cookie: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n"
            ).encode()
        )
        head = self._read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head[:200]

    def _more(self) -> None:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            raise CutWithoutClose("connection cut without a close frame")
        self.buf += data

    def _read_until(self, end: bytes) -> bytes:
        while end not in self.buf:
            self._more()
        head, self.buf = self.buf.split(end, 1)
        return head

    def _take(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._more()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def send(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        mask = os.urandom(4)
        size = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if size < 126:
            head += bytes([0x80 | size])
        elif size < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", size)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", size)
        key = int.from_bytes((mask * (size // 4 + 1))[:size], "big")
        masked = (int.from_bytes(payload, "big") ^ key).to_bytes(size, "big")
        try:
            self.sock.sendall(head + mask + masked)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed first; what it sent is read next

    def frame(self) -> tuple[int, bytes]:
        first, second = self._take(2)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", self._take(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", self._take(8))[0]
        return first & 0x0F, self._take(size)

    def close(self) -> None:
        self.sock.close()


CUT = -1  # the connection was cut without a close frame


@dataclass
class Outcome:
    replies: list[dict[str, Any]]
    close_code: int | None = None  # None: still open (it answered the ping after the frame)


def exchange(served: Served, fragments: list[tuple[int, bytes]], pongs: int = 1) -> Outcome:
    """Send one message (one or more fragments), then a ping; read until ``pongs`` pongs (2 if
    the message was a ping too) or a close."""
    ws = RawSocket(served.app.port, cookie_header(served.cookies))
    try:
        for index, (opcode, payload) in enumerate(fragments):
            ws.send(opcode if index == 0 else 0, payload, fin=index == len(fragments) - 1)
        ws.send(1, b'{"type":"ping"}')
        replies: list[dict[str, Any]] = []
        while True:
            try:
                opcode, payload = ws.frame()
            except CutWithoutClose:
                return Outcome(replies, CUT)
            if opcode == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return Outcome(replies, code)
            if opcode != 1:
                continue  # a protocol ping
            message = json.loads(payload)
            if message.get("type") in ("error", "pong"):
                replies.append(message)
            if [r["type"] for r in replies].count("pong") == pongs:
                return Outcome(replies)
    finally:
        ws.close()


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def is_ping(opcode: int, payload: bytes) -> bool:
    """Whether the server should take the message for a ping (as the protocol reads it)."""
    try:
        data = json.loads(payload.decode("utf-8")) if opcode == 1 else None
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("type") == "ping"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
text_messages = st.one_of(
    json_values.map(json.dumps),
    st.dictionaries(st.sampled_from(["type", "error", "username"]), json_values, max_size=3).map(
        lambda d: json.dumps({"type": "ping", **d})
    ),
    st.text(max_size=200),  # control characters included
    st.integers(1, 5000).map(lambda n: "[" * n),  # deep nesting
    st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(1, 6000).map(lambda n: "9" * n),  # huge numbers
    st.sampled_from(
        [
            "1e999",
            "-1e999",
            "NaN",
            "-Infinity",
            '{"type":"ping"}',
            "",
            '{"type":"ping","type":"x"}',
            '"\\ud800"',
            "\x00",
            "[]",
            "{}",
        ]
    ),
)
raw_payloads = st.one_of(
    text_messages.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=200),
    st.tuples(
        st.binary(max_size=50),
        st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]),
        st.binary(max_size=50),
    ).map(b"".join),  # surely not UTF-8
    st.integers(MAX_MESSAGE - 2, MAX_MESSAGE + 8).map(lambda n: b" " * n),
)


class Message:
    """One client message: an opcode (1 text, 2 binary) and its payload in 1-3 fragments.
    Its repr keeps failure reports short (``b'[' * 2000``)."""

    def __init__(self, opcode: int, parts: list[bytes]) -> None:
        self.opcode, self.parts = opcode, parts
        self.payload = b"".join(parts)

    def __repr__(self) -> str:
        def short(part: bytes) -> str:
            if len(part) > 40 and part == part[:1] * len(part):
                return f"{part[:1]!r} * {len(part)}"
            return repr(part) if len(part) <= 120 else f"{part[:100]!r} + ... ({len(part)} bytes)"

        kind = {1: "text", 2: "binary"}[self.opcode]
        return f"Message({kind}, [{', '.join(short(p) for p in self.parts)}])"


@st.composite
def messages(draw: Any) -> Message:
    opcode = draw(st.sampled_from([1, 1, 1, 2]))
    payload = draw(raw_payloads)
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=2)))
    bounds = [0, *cuts, len(payload)]
    return Message(opcode, [payload[a:b] for a, b in pairwise(bounds)])


def check_frame(served: Served, message: Message) -> None:
    ping = is_ping(message.opcode, message.payload)
    outcome = exchange(
        served, [(message.opcode, part) for part in message.parts], pongs=2 if ping else 1
    )
    served.assert_quiet_log()
    assert outcome.close_code != CUT, "the server cut the connection without a close frame"
    if len(message.payload) > MAX_MESSAGE:
        assert outcome.close_code == 1009, outcome
        return
    if outcome.close_code is not None:
        allowed = (
            {1003} if message.opcode == 2 else {1007} if not is_utf8(message.payload) else set()
        )
        assert outcome.close_code in allowed, (
            f"closed with {outcome.close_code}; documented here: {sorted(allowed) or 'none'}"
        )
        return
    expected = ["pong", "pong"] if ping else ["error", "pong"]
    assert [reply["type"] for reply in outcome.replies] == expected, (
        f"replies {outcome.replies} to {message}"
    )


@pytest.mark.parametrize("depth", [2000, 100_000 // 2])
def test_deeply_nested_json_gets_an_error_message(served: Served, depth: int) -> None:
    """A stack of ``[`` must not reach json's recursion limit uncaught (a traceback)."""
    check_frame(served, Message(1, [b"[" * depth]))


@pytest.mark.parametrize(
    "payload",
    [b'{"type":"ping","x":"\xff"}', b"\xed\xa0\x80", b"\xc3"],
    ids=["bad-byte", "surrogate", "truncated"],
)
def test_text_frame_not_utf8_is_closed_with_1007(served: Served, payload: bytes) -> None:
    """RFC 6455 8.1: invalid UTF-8 in a text frame fails the connection with 1007; a plain
    TCP cut (what Tornado does by itself) looks like a network error to the client."""
    outcome = exchange(served, [(1, payload)])
    served.assert_quiet_log()
    assert outcome.close_code != CUT, "the server cut the connection without a close frame"
    assert outcome.close_code in (1007, None), f"closed with {outcome.close_code}"
    if outcome.close_code is None:  # or an error message, and the socket stays usable
        assert [r["type"] for r in outcome.replies] == ["error", "pong"]


@settings(FUZZ)
@given(message=messages())
def test_any_frame_gets_an_answer_or_a_documented_close(served: Served, message: Message) -> None:
    check_frame(served, message)


# -- forms -----------------------------------------------------------------------------------
def encoded(value: str | bytes) -> str:
    return (
        quote(value, safe="")
        if isinstance(value, bytes)
        else quote(value.encode("utf-8", "surrogatepass"), safe="")
    )


field_values = st.one_of(
    st.text(max_size=40),
    st.text(min_size=60, max_size=300),
    st.binary(max_size=40),
    st.sampled_from(["", "\x00", "a\x00b", "x" * 73, "é" * 40]),
)
form_fields = st.lists(
    st.tuples(
        st.sampled_from(["username", "password", "confirm", "next", "other", ""]), field_values
    ),
    max_size=6,
)
markers = st.text("0123456789abcdef", min_size=10, max_size=10).map(lambda t: "Pw" + t)


@settings(FUZZ)
@given(
    path=st.sampled_from(["/signup", "/login"]),
    fields=form_fields,
    marker=markers,
    secret=st.binary(max_size=30) | st.text(max_size=30).map(str.encode),
    xsrf=st.sampled_from(["field", "field", "field", "header", "missing", "wrong"]),
)
def test_any_form_gets_a_4xx_or_a_redirect_and_never_echoes_a_password(
    served: Served,
    path: str,
    fields: list[tuple[str, str | bytes]],
    marker: str,
    secret: bytes,
    xsrf: str,
) -> None:
    """Random fields (unicode, NUL, over-long, raw bytes that are not UTF-8, missing, repeated)
    plus one password that starts with ``marker``: the marker must appear nowhere."""
    password = marker.encode() + secret
    pairs = (
        [*fields, ("password", password)]
        if "password" not in dict(fields)
        else [(name, password if name == "password" else value) for name, value in fields]
    )
    cookies = xsrf_cookies(served.app.port)
    token = {"field": cookies["_xsrf"], "header": "", "missing": "", "wrong": "2|0|0|0"}[xsrf]
    if token:
        pairs.append(("_xsrf", token))
    body = "&".join(f"{encoded(name)}={encoded(value)}" for name, value in pairs).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": cookie_header(cookies),
    }
    if xsrf == "header":
        headers["X-XSRFToken"] = cookies["_xsrf"]
    status, page, _ = request(served.app.port, "POST", path, body, headers)
    log = served.new_log()
    served.log_offset -= len(log.encode("utf-8", "surrogateescape"))  # re-read by the check
    served.assert_quiet_log()
    assert status < 500, f"{status}: {page[:300]!r}"
    if xsrf in ("missing", "wrong"):
        assert status == 403, status
    else:
        assert status in {302, 400, 401, 409, 429}, status
    assert marker.encode() not in page, f"the password is echoed in the {status} page"
    assert marker not in log, "the password is in the app's log"


# -- paths -----------------------------------------------------------------------------------
segments = st.one_of(
    st.sampled_from(
        [
            "%00",
            "style.css",
            "style.css%00.js",
            "main.js",
            "favicon.ico",
            "%ff",
            "..",
            "%2e%2e",
            "%2f",
            "%5c",
            "",
            "%0d%0a",
            "%",
            "%c0%ae",
            "users",
            "session",
            "?v=1",
            "?next=%00",
            "x%00y",
        ]
    ),
    st.text(max_size=8).map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="")),
    st.binary(max_size=6).map(lambda b: quote(b, safe="")),
)
roots = st.sampled_from(["static", "static/js", "api", "", "favicon.ico", "ws", "login", "healthz"])


@settings(FUZZ)
@given(
    root=roots,
    parts=st.lists(segments, max_size=3),
    method=st.sampled_from(["GET", "HEAD"]),
    logged_in=st.booleans(),
)
@example(root="static", parts=["style.css%00.js"], method="GET", logged_in=False)
def test_any_path_is_answered_without_a_5xx(
    served: Served, root: str, parts: list[str], method: str, logged_in: bool
) -> None:
    path = "/" + "/".join([root, *parts])
    headers = {"Cookie": cookie_header(served.cookies)} if logged_in else {}
    status, page, _ = request(served.app.port, method, path, headers=headers)
    served.assert_quiet_log()
    assert status < 500, f"{method} {path}: {status} {page[:200]!r}"
