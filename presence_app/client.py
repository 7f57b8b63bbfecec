"""A scripted client of docs/PROTOCOL.md: the XSRF dance, login, the presence stream.

Shared by the tests, the benchmarks and anyone scripting against a deployment::

    client = PresenceClient("http://127.0.0.1:8888")
    await client.login("alice", "correct horse")
    async with await client.connect() as sock:
        async for event in sock.events():
            print(event)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode, urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPResponse

try:  # the server does not need websockets; only this client does (the "client" extra)
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "presence_app.client needs the websockets package: pip install 'presence[client]'"
    ) from exc


class ClientError(Exception):
    """The server answered something docs/PROTOCOL.md calls a failure."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PresenceClient:
    """HTTP side: keeps cookies like a browser would (per client instance)."""

    def __init__(self, base_url: str, origin: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.origin = origin
        self.cookies: dict[str, str] = {}
        self.http = AsyncHTTPClient()

    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def _keep_cookies(self, response: HTTPResponse) -> None:
        for header in response.headers.get_list("Set-Cookie"):
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                expired = (
                    morsel["expires"] and "1970" in morsel["expires"] or morsel["max-age"] == "0"
                )
                if expired or morsel.value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> HTTPResponse:
        """One request, no redirects followed, no exception for 4xx/5xx."""
        all_headers = {"Cookie": self.cookie_header()} if self.cookies else {}
        all_headers.update(headers or {})
        encoded = None
        if body is not None:
            encoded = urlencode(body)
            all_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        response = await self.http.fetch(
            self.base_url + path,
            method=method,
            body=encoded,
            headers=all_headers,
            follow_redirects=False,
            raise_error=False,
            **kwargs,
        )
        if response.code == 599:
            raise ClientError(f"{method} {path}: {response.error}")
        self._keep_cookies(response)
        return response

    async def xsrf(self) -> str:
        """The ``_xsrf`` token: any GET of a form page sets the cookie."""
        if "_xsrf" not in self.cookies:
            await self.request("GET", "/login")
        return self.cookies["_xsrf"]

    async def post_form(self, path: str, fields: dict[str, str]) -> HTTPResponse:
        return await self.request("POST", path, {**fields, "_xsrf": await self.xsrf()})

    async def signup(
        self, username: str, password: str, confirm: str | None = None, check: bool = True
    ) -> HTTPResponse:
        response = await self.post_form(
            "/signup",
            {
                "username": username,
                "password": password,
                "confirm": password if confirm is None else confirm,
            },
        )
        if check and response.code != 302:
            raise ClientError(f"sign-up of {username} failed: {response.code}", response.code)
        return response

    async def login(
        self, username: str, password: str, next: str | None = None, check: bool = True
    ) -> HTTPResponse:
        fields = {"username": username, "password": password}
        if next is not None:
            fields["next"] = next
        response = await self.post_form("/login", fields)
        if check and response.code != 302:
            raise ClientError(f"login of {username} failed: {response.code}", response.code)
        return response

    async def logout(self) -> HTTPResponse:
        return await self.post_form("/logout", {})

    async def users(self) -> list[dict[str, Any]]:
        response = await self.request("GET", "/api/users")
        if response.code != 200:
            raise ClientError(f"/api/users answered {response.code}", response.code)
        return json.loads(response.body)["users"]

    def ws_url(self) -> str:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}/ws"

    async def connect(
        self, origin: str | None = None, timeout: float = 10.0, **kwargs: Any
    ) -> PresenceSocket:
        """Open /ws with this client's cookies and read the snapshot (ClientError on refusal)."""
        headers = {"Cookie": self.cookie_header()} if self.cookies else {}
        # permessage-deflate offered like a browser does (snapshots then arrive compressed);
        # pass compression=None to turn it off.
        kwargs.setdefault("compression", "deflate")
        try:
            ws = await connect(
                self.ws_url(),
                additional_headers=headers,
                origin=origin or self.origin,  # type: ignore[arg-type]
                open_timeout=timeout,
                proxy=None,
                **kwargs,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ClientError(f"WebSocket refused with HTTP {status}", status) from None
        sock = PresenceSocket(ws)
        await sock.read_snapshot(timeout)
        return sock


class PresenceSocket:
    """The presence stream, with the protocol's client-side rule built in: per user, an
    event is applied only if its version is newer than what is known."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.me: str | None = None
        self.state: dict[str, dict[str, Any]] = {}
        self.stale: list[dict[str, Any]] = []  # events that arrived out of order (ignored)

    async def __aenter__(self) -> PresenceSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def read_snapshot(self, timeout: float) -> None:
        first = await self.recv(timeout)
        if first.get("type") != "snapshot":
            raise ClientError(f"expected a snapshot first, got {first!r}")

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next message, already applied to ``state``; raises on close or timeout."""
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        message = json.loads(raw)
        self.apply(message)
        return message

    def apply(self, message: dict[str, Any]) -> None:
        if message.get("type") == "snapshot":
            self.me = message["me"]
            self.state = {u["username"]: u for u in message["users"]}
        elif message.get("type") == "presence":
            known = self.state.get(message["username"])
            if known is None or message.get("version", 0) > known.get("version", 0):
                self.state[message["username"]] = message
            else:
                self.stale.append(message)
        elif message.get("type") == "removed":  # an account deleted by an operator
            self.state.pop(str(message.get("username")), None)

    async def events(self, timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every further message until the socket closes."""
        while True:
            try:
                yield await self.recv(timeout) if timeout else await self.recv(1e9)
            except ConnectionClosed:
                return

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """Read until a message satisfies ``predicate``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"no matching message within {timeout} s")
            message = await self.recv(left)
            if predicate(message):
                return message

    async def wait_status(
        self, username: str, online: bool, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Read until ``state`` says ``username`` has ``online`` (maybe already)."""
        if self.online(username) is online:
            return self.state[username]
        await self.wait_for(lambda _m: self.online(username) is online, timeout)
        return self.state[username]

    def online(self, username: str) -> bool | None:
        user = self.state.get(username)
        return None if user is None else bool(user["online"])

    async def send_json(self, message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def ping(self, timeout: float = 10.0) -> dict[str, Any]:
        await self.send_json({"type": "ping"})
        return await self.wait_for(lambda m: m.get("type") == "pong", timeout)

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        """Read until the server closes; returns the close code it sent."""
        try:
            while True:
                await self.recv(timeout)
        except ConnectionClosed:
            pass
        return self.close_code

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
