"""The fastest Python limit: the reference server of ``bench/reference_server.py`` on
``picows`` (Cython frame parser and writer) instead of ``websockets``.

Same behaviour: no auth, the user is whatever the ``bench_user`` cookie says; a snapshot
first, then a ``presence`` event whenever a user's first socket opens or last socket closes,
JSON-encoded once and written to every connection; ``{"type": "ping"}`` gets a pong, anything
else an error; no compression (picows has none), 64 KiB frame limit, backlog 128, protocol
pings every ``--ping-interval`` s; ``GET /healthz`` answers with the socket count; SIGTERM
closes every socket with 1001.

    python bench/picows_server.py --port 8766
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import signal
from http.cookies import SimpleCookie
from typing import Any

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)


def iso_now() -> str:
    now = dt.datetime.now(dt.UTC)
    return now.isoformat(timespec="milliseconds")[:-6] + "Z"


class Presence:
    """Who is online and every open transport (the same bookkeeping as the websockets one)."""

    def __init__(self) -> None:
        self.transports: dict[WSTransport, str] = {}
        self.sockets_of: dict[str, int] = {}
        self.users: dict[str, dict[str, object]] = {}
        self._users_json: str | None = None

    def changed(self, username: str, online: bool) -> None:
        state = self.users.get(username)
        version = int(state["version"]) + 1 if state else 1  # type: ignore[call-overload]
        state = {"username": username, "online": online, "last_seen": iso_now(), "version": version}
        self.users[username] = state
        self._users_json = None
        payload = json.dumps({"type": "presence", **state}, separators=(",", ":")).encode()
        for transport in self.transports:
            if not transport.is_close_frame_sent:
                transport.send(WSMsgType.TEXT, payload)

    def snapshot(self, me: str) -> bytes:
        if self._users_json is None:
            users = sorted(
                self.users.values(), key=lambda u: (not u["online"], str(u["username"]).lower())
            )
            self._users_json = json.dumps(users, separators=(",", ":"))
        # %-formatting: JSON text, whose braces an f-string would need doubled
        return (
            '{"type":"snapshot","me":%s,"users":%s}'  # noqa: UP031
            % (json.dumps(me), self._users_json)
        ).encode()

    def opened(self, transport: WSTransport, username: str) -> None:
        count = self.sockets_of.get(username, 0) + 1
        self.sockets_of[username] = count
        if count == 1:
            self.users.setdefault(
                username, {"username": username, "online": False, "last_seen": None, "version": 0}
            )
            self.changed(username, True)
        transport.send(WSMsgType.TEXT, self.snapshot(username))
        self.transports[transport] = username

    def closed(self, transport: WSTransport) -> None:
        username = self.transports.pop(transport, None)
        if username is None:
            return
        left = self.sockets_of[username] - 1
        if left:
            self.sockets_of[username] = left
        else:
            del self.sockets_of[username]
            self.changed(username, False)


class PresenceListener(WSListener):  # type: ignore[misc]
    def __init__(self, presence: Presence, username: str) -> None:
        self.presence = presence
        self.username = username

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.presence.opened(transport, self.username)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type == WSMsgType.TEXT and frame.fin:
            try:
                kind = json.loads(frame.get_payload_as_bytes()).get("type")
            except (ValueError, AttributeError):
                kind = None
            if kind == "ping":
                transport.send(WSMsgType.TEXT, b'{"type":"pong"}')
            else:
                transport.send(WSMsgType.TEXT, b'{"type":"error","error":"unknown message"}')

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.presence.closed(transport)


def user_of(request: WSUpgradeRequest) -> str:
    jar: SimpleCookie = SimpleCookie()
    jar.load(request.headers.get("Cookie", ""))
    morsel = jar.get("bench_user")
    return morsel.value if morsel is not None else "anonymous"


async def main(port: int, address: str, backlog: int, ping_interval: float) -> None:
    presence = Presence()

    def route(request: WSUpgradeRequest) -> Any:
        if request.path.split(b"?")[0] == b"/healthz":
            body = (
                json.dumps(
                    {
                        "status": "ok",
                        "sockets": len(presence.transports),
                        "online_users": len(presence.sockets_of),
                    }
                )
                + "\n"
            )
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_ok_response(
                    body.encode(), {"Content-Type": "application/json"}
                ),
                None,
            )
        return PresenceListener(presence, user_of(request))

    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    server = await ws_create_server(
        route,
        address,
        port,
        max_frame_size=64 * 1024,
        enable_auto_ping=True,
        auto_ping_idle_timeout=ping_interval,
        auto_ping_reply_timeout=ping_interval,
        auto_ping_strategy=WSAutoPingStrategy.PING_PERIODICALLY,
        backlog=backlog,
    )
    bound = server.sockets[0].getsockname()
    print(
        f"Reference server running at http://{bound[0]}:{bound[1]}/ (picows, pid {os.getpid()})",
        flush=True,
    )
    try:
        await stop
    finally:
        server.close()
        for transport in list(presence.transports):
            transport.send_close(WSCloseCode.GOING_AWAY, b"server shutting down")
            transport.disconnect()
        await asyncio.sleep(0.1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument(
        "--backlog",
        type=int,
        default=128,
        help="listen backlog (128: the same as Tornado's default)",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=20.0,
        help="seconds between protocol pings and to wait for the pong",
    )
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main(args.port, args.address, args.backlog, args.ping_interval))
