"""A scripted client of the public contract: the XSRF dance, login, the presence stream.

Shared by the tests, the benchmarks and anyone scripting against a deployment (a bot, a
monitor, a load test); docs/CLIENT.md is its guide::

    client = PresenceClient("http://127.0.0.1:8888", username="alice", password="...")
    async with await client.connect(reconnect=True) as sock:
        async for event in sock:
            print(event)

It imports nothing else of the project (tests/test_architecture.py checks it), so it works
from a plain ``pip install 'presence[client]'`` against a server somewhere else.
"""

from __future__ import annotations

try:  # the server does not need websockets; only this client does (the "client" extra)
    import websockets  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ModuleNotFoundError(
        "presence_app.client needs the websockets package: pip install 'presence[client]'",
        name="websockets",
    ) from exc

from presence_app.client.backoff import reconnect_delay
from presence_app.client.errors import (
    ClientError,
    LoginFailed,
    SessionEnded,
    SignupFailed,
    Throttled,
    WaitTimeout,
)
from presence_app.client.http import PresenceClient
from presence_app.client.reconnect import ConnectionState, ReconnectingSocket
from presence_app.client.socket import PresenceSocket
from presence_app.client.view import PresenceView

__all__ = [
    "ClientError",
    "ConnectionState",
    "LoginFailed",
    "PresenceClient",
    "PresenceSocket",
    "PresenceView",
    "ReconnectingSocket",
    "SessionEnded",
    "SignupFailed",
    "Throttled",
    "WaitTimeout",
    "reconnect_delay",
]
