"""The raw limit: a minimal presence server on the ``websockets`` library.

No auth, no database, no sessions: the user is whatever the ``bench_user`` cookie says.
Same message shapes as the app: a snapshot first, then a ``presence`` event whenever a
user's first socket opens or last socket closes, JSON-encoded once and written to every
connection with ``websockets.broadcast()``. ``GET /healthz`` answers with the socket count.

    python -m bench.reference_server --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http
import json
import os
import resource
import signal
from http.cookies import SimpleCookie

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response


def iso_now() -> str:
    now = dt.datetime.now(dt.UTC)
    return now.isoformat(timespec="milliseconds")[:-6] + "Z"


class Presence:
    def __init__(self) -> None:
        self.connections: set[ServerConnection] = set()
        self.sockets_of: dict[str, int] = {}
        self.users: dict[str, dict[str, object]] = {}
        self._users_json: str | None = None

    def changed(self, username: str, online: bool) -> None:
        state = self.users.get(username)
        version = int(state["version"]) + 1 if state else 1  # type: ignore[call-overload]
        state = {"username": username, "online": online, "last_seen": iso_now(), "version": version}
        self.users[username] = state
        self._users_json = None
        broadcast(
            self.connections, json.dumps({"type": "presence", **state}, separators=(",", ":"))
        )

    def snapshot(self, me: str) -> str:
        if self._users_json is None:
            users = sorted(
                self.users.values(), key=lambda u: (not u["online"], str(u["username"]).lower())
            )
            self._users_json = json.dumps(users, separators=(",", ":"))
        # %-formatting: JSON text, whose braces an f-string would need doubled
        return (
            '{"type":"snapshot","me":%s,"users":%s}'  # noqa: UP031
            % (json.dumps(me), self._users_json)
        )

    async def handler(self, ws: ServerConnection) -> None:
        username = user_of(ws.request)  # type: ignore[arg-type]
        count = self.sockets_of.get(username, 0) + 1
        self.sockets_of[username] = count
        if count == 1:
            self.users.setdefault(
                username, {"username": username, "online": False, "last_seen": None, "version": 0}
            )
            self.changed(username, True)
        await ws.send(self.snapshot(username))
        self.connections.add(ws)
        try:
            async for message in ws:
                try:
                    kind = json.loads(message).get("type")
                except (ValueError, AttributeError):
                    kind = None
                if kind == "ping":
                    await ws.send('{"type":"pong"}')
                else:
                    await ws.send('{"type":"error","error":"unknown message"}')
        except Exception:
            pass
        finally:
            self.connections.discard(ws)
            left = self.sockets_of[username] - 1
            if left:
                self.sockets_of[username] = left
            else:
                del self.sockets_of[username]
                self.changed(username, False)

    def health(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            body = json.dumps(
                {
                    "status": "ok",
                    "sockets": len(self.connections),
                    "online_users": len(self.sockets_of),
                }
            )
            response = connection.respond(http.HTTPStatus.OK, body + "\n")
            response.headers["Content-Type"] = "application/json"
            return response
        return None


def user_of(request: Request) -> str:
    jar: SimpleCookie = SimpleCookie()
    jar.load(request.headers.get("Cookie", ""))
    morsel = jar.get("bench_user")
    return morsel.value if morsel is not None else "anonymous"


async def main(port: int, address: str, backlog: int, ping_interval: float) -> None:
    presence = Presence()
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def stop_once() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_once)
    async with serve(
        presence.handler,
        address,
        port,
        process_request=presence.health,
        compression=None,
        max_size=64 * 1024,
        ping_interval=ping_interval,
        ping_timeout=ping_interval,
        backlog=backlog,
    ) as server:
        bound = next(iter(server.sockets)).getsockname()
        print(
            f"Reference server running at http://{bound[0]}:{bound[1]}/ (pid {os.getpid()})",
            flush=True,
        )
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8765)
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
