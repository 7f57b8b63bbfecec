"""What can go wrong in a scripted client, as exceptions that say what happened.

Every one is a :class:`ClientError`, so ``except ClientError`` catches them all; each keeps
the HTTP ``status`` (or ``None``) that earlier versions of the client already exposed.
"""

from __future__ import annotations

import html
import re
from typing import Any

#: The close code of a session the server ended (logout, rotation, expiry, revocation).
SESSION_ENDED = 4001
#: The close code of a socket that was never (or is no longer) authenticated.
NOT_AUTHENTICATED = 4401

_FORM_ERROR = re.compile(r'<div[^>]*id="form-error"[^>]*>(.*?)</div>', re.S)


class ClientError(Exception):
    """The server answered something the contract calls a failure (or did not answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LoginFailed(ClientError):
    """``POST /login`` did not log in: 401 is a wrong name or password (or a disabled
    account: the server does not say which), 400 a malformed form, 5xx the server."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"login failed (HTTP {status}): {message}", status)
        self.message = message


class SignupFailed(ClientError):
    """``POST /signup`` created no account: 409 the name is taken, 400 the form (name or
    password rules, confirmation), 403 sign-up is closed on this server."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"sign-up failed (HTTP {status}): {message}", status)
        self.message = message


class Throttled(ClientError):
    """HTTP 429: too many failed logins for this name from this address, a full password
    queue, or a socket cap. Nothing was done; try again after ``retry_after`` seconds
    (``None`` when the server did not say)."""

    def __init__(self, retry_after: float | None, message: str = "throttled") -> None:
        after = "" if retry_after is None else f"; retry after {retry_after:g} s"
        super().__init__(f"{message} (HTTP 429{after})", 429)
        self.retry_after = retry_after


class SessionEnded(ClientError):
    """The server no longer accepts this client's session: its socket was closed with 4001
    (logout, in another tab too, login rotation, expiry, an operator revoking, disabling or
    deleting the account), or a request or upgrade answered 401 (never logged in, or the
    session is gone). ``close_code`` is 4001/4401 for a close, ``None`` for a 401."""

    def __init__(
        self, reason: str, status: int | None = None, close_code: int | None = None
    ) -> None:
        super().__init__(reason, status)
        self.close_code = close_code


class WaitTimeout(ClientError, TimeoutError):
    """A wait ran out of time. ``what`` says what was awaited ("bob to be online", "a
    message"), ``last_seen_state`` what the client last knew about it (the user's entry, the
    last message, ``None``). Also a ``TimeoutError`` (so ``asyncio.TimeoutError`` too)."""

    def __init__(
        self, what: str, last_seen_state: Any = None, timeout: float | None = None
    ) -> None:
        after = "" if timeout is None else f" after {timeout:g} s"
        super().__init__(f"timed out{after} waiting for {what}; last seen: {last_seen_state!r}")
        self.what = what
        self.last_seen_state = last_seen_state
        self.timeout = timeout


def form_error(body: bytes) -> str:
    """The visible error of a re-rendered form page (the ``form-error`` alert), as text."""
    found = _FORM_ERROR.search(body.decode("utf-8", "replace"))
    if not found:
        return "no message"
    return html.unescape(re.sub(r"<[^>]+>", "", found.group(1))).strip() or "no message"


def retry_after(headers: Any) -> float | None:
    """The ``Retry-After`` seconds of a 429, or ``None`` when absent or not a number."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
