"""The HTTP side of the client: cookies like a browser, the ``_xsrf`` dance, sign-up, login,
``/api/users``, and opening ``/ws`` with the session cookie."""

from __future__ import annotations

import json
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Any, Literal, overload
from urllib.parse import urlencode, urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from presence_app.client.errors import (
    ClientError,
    LoginFailed,
    SessionEnded,
    SignupFailed,
    Throttled,
    WaitTimeout,
    form_error,
    retry_after,
)

if TYPE_CHECKING:
    from presence_app.client.reconnect import ReconnectingSocket
    from presence_app.client.socket import PresenceSocket


class PresenceClient:
    """One user agent: keeps cookies like a browser would (per client instance).

    With ``username`` and ``password`` the client can log in by itself: ``connect()`` logs in
    first when it holds no session, and a reconnecting socket logs in again when a reconnect
    finds the session gone. Without them it never sends a password it was not handed.
    """

    def __init__(
        self,
        base_url: str,
        origin: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.origin = origin
        self.cookies: dict[str, str] = {}
        self.http = AsyncHTTPClient()
        self.username = username
        self._password = password

    @property
    def has_credentials(self) -> bool:
        """True if the client was given a username and password to log in with."""
        return self.username is not None and self._password is not None

    def cookie_header(self) -> str:
        """The ``Cookie`` header this client sends."""
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
        """One request, no redirects followed, no exception for 4xx/5xx; ``ClientError``
        (status ``None``) when the server does not answer at all."""
        all_headers = {"Cookie": self.cookie_header()} if self.cookies else {}
        all_headers.update(headers or {})
        encoded = None
        if body is not None:
            encoded = urlencode(body)
            all_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        try:
            response = await self.http.fetch(
                self.base_url + path,
                method=method,
                body=encoded,
                headers=all_headers,
                follow_redirects=False,
                raise_error=False,
                **kwargs,
            )
        except (OSError, HTTPClientError) as exc:  # refused, reset, timed out: no answer
            raise ClientError(f"{method} {self.base_url}{path}: {exc}") from exc
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
        """POST a form with the ``_xsrf`` field, as the page's forms do."""
        return await self.request("POST", path, {**fields, "_xsrf": await self.xsrf()})

    async def signup(
        self, username: str, password: str, confirm: str | None = None, check: bool = True
    ) -> HTTPResponse:
        """Create an account (the session cookie is set: signed up is logged in). With
        ``check``: ``Throttled`` on 429, ``SignupFailed`` on anything but the 302."""
        response = await self.post_form(
            "/signup",
            {
                "username": username,
                "password": password,
                "confirm": password if confirm is None else confirm,
            },
        )
        if check and response.code != 302:
            raise_for_form(response, SignupFailed)
        return response

    async def login(
        self, username: str, password: str, next: str | None = None, check: bool = True
    ) -> HTTPResponse:
        """Log in (``next`` is where the 302 points). With ``check``: ``Throttled`` on 429,
        ``LoginFailed`` on anything but the 302."""
        fields = {"username": username, "password": password}
        if next is not None:
            fields["next"] = next
        response = await self.post_form("/login", fields)
        if check and response.code != 302:
            raise_for_form(response, LoginFailed)
        return response

    async def relogin(self) -> None:
        """Log in with the credentials the client was given (``ClientError`` if none)."""
        if self.username is None or self._password is None:
            raise ClientError("this client was given no credentials to log in with")
        await self.login(self.username, self._password)

    async def logout(self) -> HTTPResponse:
        """End this session server-side; its sockets close with 4001 everywhere."""
        return await self.post_form("/logout", {})

    async def session(self) -> str | None:
        """Who this session is (``GET /api/session``), ``None`` when it is gone (401): the
        page's cheap check before a reconnect. ``ClientError`` for any other answer."""
        response = await self.request("GET", "/api/session")
        if response.code == 401:
            return None
        if response.code != 200:
            raise ClientError(f"/api/session answered {response.code}", response.code)
        return str(json.loads(response.body)["username"])

    async def users(self) -> list[dict[str, Any]]:
        """Every user with ``online`` and ``last_seen`` (``GET /api/users``);
        ``SessionEnded`` on 401."""
        response = await self.request("GET", "/api/users")
        if response.code == 401:
            raise SessionEnded("/api/users answered 401: not logged in", 401)
        if response.code != 200:
            raise ClientError(f"/api/users answered {response.code}", response.code)
        return list(json.loads(response.body)["users"])

    def ws_url(self) -> str:
        """``ws://host/ws`` (``wss://`` for an https base URL)."""
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}/ws"

    async def open_ws(
        self, origin: str | None = None, timeout: float | None = 10.0, **kwargs: Any
    ) -> ClientConnection:
        """Open ``/ws`` with this client's cookies (the snapshot is not read yet).
        ``SessionEnded`` on 401, ``Throttled`` on 429, ``WaitTimeout`` past ``timeout``,
        ``ClientError`` on other refusals and when the server cannot be reached."""
        headers = {"Cookie": self.cookie_header()} if self.cookies else {}
        # permessage-deflate offered like a browser does (snapshots then arrive compressed);
        # pass compression=None to turn it off.
        kwargs.setdefault("compression", "deflate")
        try:
            return await connect(
                self.ws_url(),
                additional_headers=headers,
                origin=origin or self.origin,  # type: ignore[arg-type]
                open_timeout=timeout,
                proxy=None,
                **kwargs,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401:
                raise SessionEnded(
                    "WebSocket refused with HTTP 401: not logged in, or the session has ended", 401
                ) from None
            if status == 429:
                raise Throttled(
                    retry_after(exc.response.headers), "WebSocket refused: a socket cap is reached"
                ) from None
            raise ClientError(f"WebSocket refused with HTTP {status}", status) from None
        except TimeoutError:
            raise WaitTimeout("the WebSocket to open", None, timeout) from None
        except (OSError, InvalidHandshake) as exc:  # refused, reset, not a WebSocket server
            raise ClientError(f"cannot open {self.ws_url()}: {exc}") from exc

    @overload
    async def connect(
        self,
        origin: str | None = None,
        timeout: float | None = 10.0,
        *,
        reconnect: Literal[False] = False,
        **kwargs: Any,
    ) -> PresenceSocket: ...

    @overload
    async def connect(
        self,
        origin: str | None = None,
        timeout: float | None = 10.0,
        *,
        reconnect: Literal[True],
        **kwargs: Any,
    ) -> ReconnectingSocket: ...

    @overload
    async def connect(
        self,
        origin: str | None = None,
        timeout: float | None = 10.0,
        *,
        reconnect: bool,
        **kwargs: Any,
    ) -> PresenceSocket: ...

    async def connect(
        self,
        origin: str | None = None,
        timeout: float | None = 10.0,
        *,
        reconnect: bool = False,
        **kwargs: Any,
    ) -> PresenceSocket:
        """Open ``/ws`` and read the snapshot (already applied when this returns).

        ``reconnect=False`` (the default, what the project's tests and benchmarks use): one
        connection; when it closes, reading raises ``websockets.ConnectionClosed``.
        ``reconnect=True`` (what a long-lived bot wants): a :class:`ReconnectingSocket` that
        comes back after a server restart with the page's backoff and jitter. With
        credentials, a client whose upgrade is refused with 401 logs in and tries once more.
        Extra keyword arguments go to ``websockets.connect`` (``compression=None``, ...).
        """
        from presence_app.client.reconnect import ReconnectingSocket
        from presence_app.client.socket import PresenceSocket

        if self.has_credentials and not set(self.cookies) - {"_xsrf"}:
            await self.relogin()  # no session cookie yet: spare the server a refused upgrade
        try:
            ws = await self.open_ws(origin, timeout, **kwargs)
        except SessionEnded:
            if not self.has_credentials:
                raise
            await self.relogin()  # not logged in yet, or the session is gone: log in
            ws = await self.open_ws(origin, timeout, **kwargs)
        if not reconnect:
            sock = PresenceSocket(ws)
            await sock.read_snapshot(timeout)
            return sock
        return await ReconnectingSocket.start(self, ws, timeout, origin=origin, **kwargs)


def raise_for_form(response: HTTPResponse, error: type[LoginFailed] | type[SignupFailed]) -> None:
    """The typed error of a form POST that did not redirect."""
    if response.code == 429:
        raise Throttled(retry_after(response.headers), form_error(response.body or b""))
    raise error(response.code, form_error(response.body or b""))
