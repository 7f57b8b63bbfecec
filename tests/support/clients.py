"""Scripted browsers for the suites that drive a running server over HTTP: the one test
password and ``PresenceClient`` made signed up, logged in, or sharing another's cookies."""

from __future__ import annotations

from collections.abc import Callable

from presence_app.client import PresenceClient
from tests.support.waiting import run_blocking

PASSWORD = "s3cret-pass"


async def signed_up(base: str, name: str) -> PresenceClient:
    """A client of ``base`` that has just signed ``name`` up (and holds its session)."""
    client = PresenceClient(base)
    await client.signup(name, PASSWORD)
    return client


async def logged_in(base: str, name: str) -> PresenceClient:
    client = PresenceClient(base)
    await client.login(name, PASSWORD)
    return client


def with_cookies(base: str, cookies: dict[str, str]) -> PresenceClient:
    """A client of ``base`` holding a copy of ``cookies``: the same session, another tab or
    another process."""
    client = PresenceClient(base)
    client.cookies = dict(cookies)
    return client


def is_presence(username: str, online: bool | None = None) -> Callable[[dict], bool]:
    """A ``PresenceSocket.wait_for`` predicate: a presence event of ``username`` (and, when
    ``online`` is given, with that status)."""

    def match(message: dict) -> bool:
        return (
            message.get("type") == "presence"
            and message["username"] == username
            and (online is None or message["online"] is online)
        )

    return match


def sign_up(base: str, *names: str) -> None:
    """From synchronous code: accounts with the tests' password on the server at ``base``
    (each signs up; its session is not used)."""

    async def run() -> None:
        for name in names:
            await signed_up(base, name)

    run_blocking(run())
