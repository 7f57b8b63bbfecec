"""BaseHandler: services, the session cookie, Jinja2 rendering, errors without tracebacks."""

from __future__ import annotations

import json
import logging
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import tornado.web
from markupsafe import Markup

from handlers.tornado_internals import reason_phrase
from handlers.xsrf import SessionXsrfMixin
from presence_app.accounts.auth import AuthService
from presence_app.accounts.errors import (
    FieldTooLong,
    InvalidCredentials,
    InvalidUsername,
    LoginThrottled,
    PasswordHasNul,
    PasswordMismatch,
    PasswordTooLong,
    PasswordTooShort,
    UsernameTaken,
)
from presence_app.accounts.passwords import HashingBusy, ShuttingDown
from presence_app.accounts.service import AccountService, SessionUser
from presence_app.db.database import DatabaseWriteError
from presence_app.live.presence import PresenceService
from presence_app.runtime.inflight import RequestScope
from presence_app.services import Services

log = logging.getLogger(__name__)

SESSION_COOKIE = "presence_session"
#: Sent instead of Tornado's ``TornadoServer/<version>``: no version to look vulnerabilities up by.
SERVER_HEADER = "presence"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'",
}
#: A form field that is not UTF-8: the answer names the field, never echoes its bytes (it may
#: be a password), unlike Tornado's "Invalid unicode in password: b'...'".
INVALID_TEXT = "A form field is not valid UTF-8 text."


class Answer(NamedTuple):
    """How the web answers one kind of service error."""

    status: int
    message: str | None = None  # None: the error's own words (written for the user)


#: THE table from every error a service raises on purpose (not a bug) to its HTTP answer;
#: anything else is a plain 500. The domain never names a status: this is where it is chosen.
#: Sign-up and login errors show the form again with this status (``render_refusal``); the
#: rest an error page or JSON (``write_error``). ``Retry-After`` comes from an error's
#: ``retry_after`` (seconds), or is RETRY_AFTER for a 503.
SERVICE_ERRORS: dict[type[Exception], Answer] = {
    FieldTooLong: Answer(400),
    InvalidUsername: Answer(400),
    PasswordTooShort: Answer(400),
    PasswordTooLong: Answer(400),
    PasswordHasNul: Answer(400),
    PasswordMismatch: Answer(400),
    UsernameTaken: Answer(409),
    InvalidCredentials: Answer(401),
    LoginThrottled: Answer(429),
    DatabaseWriteError: Answer(
        503,
        "The server cannot save anything right now, so this did "
        "not happen. Please try again in a moment.",
    ),
    ShuttingDown: Answer(
        503, "The server is restarting, so this did not happen. Please try again in a moment."
    ),
    HashingBusy: Answer(
        429, "Too many password checks from your address are waiting. Please try again in a moment."
    ),
}

#: Seconds a client is told to wait (``Retry-After``) after a 503 of SERVICE_ERRORS.
RETRY_AFTER = 5


def set_security_headers(handler: tornado.web.RequestHandler) -> None:
    """Every response (pages, errors, static files, WebSocket answers) carries these; Tornado
    calls ``set_default_headers`` from ``clear()``, so error pages keep them too."""
    handler.set_header("Server", SERVER_HEADER)
    for name, value in SECURITY_HEADERS.items():
        handler.set_header(name, value)


def service_error(exc: BaseException | None) -> tuple[int, str] | None:
    """The (status, message) of a known service error, None for anything else."""
    for kind, answer in SERVICE_ERRORS.items():
        if isinstance(exc, kind):
            return answer.status, answer.message or str(exc)
    return None


def safe_next(target: str | None) -> str:
    """A same-site path to go to after login, or "/" for anything else (CWE-601)."""
    if not target or any(ord(c) < 32 or ord(c) == 127 or c == "\\" for c in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


class SessionMixin:
    """Loads the session user in an async ``prepare`` (get_current_user cannot be async)."""

    settings: dict[str, Any]
    current_user: Any

    @property
    def services(self) -> Services:
        return self.settings["services"]

    @property
    def accounts(self) -> AccountService:
        return self.services.accounts

    @property
    def auth(self) -> AuthService:
        return self.services.auth

    @property
    def presence(self) -> PresenceService:
        return self.services.presence

    def session_token(self) -> str | None:
        raw = self.get_signed_cookie(  # type: ignore[attr-defined]
            SESSION_COOKIE, max_age_days=self.services.settings.session_days + 1
        )
        if raw is None:
            return None
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            return None

    async def load_user(self) -> SessionUser | None:
        user = await self.accounts.session_user(self.session_token())
        self.current_user = user
        return user


class BaseHandler(SessionMixin, SessionXsrfMixin, tornado.web.RequestHandler):
    _scope: RequestScope | None = None

    def set_default_headers(self) -> None:
        set_security_headers(self)

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """Tornado's 400 for bad UTF-8 quotes the first 40 bytes (a password, maybe) on the
        page and in the log; this one quotes nothing."""
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise tornado.web.HTTPError(400, INVALID_TEXT) from None

    async def prepare(self) -> None:
        # Counted until on_finish, so that a stop can let this request finish first.
        self._scope = self.services.requests.begin(self.request.remote_ip or "")
        if self._scope is None:
            raise tornado.web.HTTPError(503, "shutting down")
        await self.load_user()

    def on_finish(self) -> None:
        if self._scope is not None:
            self.services.requests.end(self._scope)
            self._scope = None

    def set_cookie(self, name: str, value: str | bytes, *args: Any, **kwargs: Any) -> None:
        """Every cookie (session and _xsrf) is Secure when the request came over HTTPS."""
        if self.request.protocol == "https":
            kwargs.setdefault("secure", True)
        kwargs.setdefault("samesite", "Lax")
        super().set_cookie(name, value, *args, **kwargs)

    def set_session_cookie(self, token: str) -> None:
        """Also re-issues ``_xsrf``, bound to the new session, so the next POST works."""
        self.set_signed_cookie(
            SESSION_COOKIE,
            token,
            expires_days=self.services.settings.session_days,
            httponly=True,
            samesite="Lax",
        )
        self.issue_xsrf_token(token)

    def clear_session_cookie(self) -> None:
        self.clear_cookie(SESSION_COOKIE, httponly=True, samesite="Lax")
        self.issue_xsrf_token(None)

    def render_string(self, template_name: str, **kwargs: Any) -> bytes:
        template = self.settings["jinja_env"].get_template(template_name)
        namespace = {
            "static_url": self.static_url,
            "xsrf_form_html": lambda: Markup(self.xsrf_form_html()),
            "current_user": self.current_user.username if self.current_user else None,
            "request": self.request,
        }
        namespace.update(kwargs)
        return template.render(**namespace).encode("utf-8")

    def render_refusal(self, template_name: str, error: Exception, **kwargs: Any) -> None:
        """The form again, with the status and words SERVICE_ERRORS gives ``error`` and its
        ``Retry-After`` if it has one (a throttled login)."""
        known = service_error(error)
        if known is None:  # not a refusal but a bug: a 500 as usual
            raise error
        status, message = known
        self.set_status(status)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            self.set_header("Retry-After", str(retry_after))
        self.render(template_name, error=message, **kwargs)

    def wants_json(self) -> bool:
        return self.request.path.startswith(("/api/", "/healthz"))

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        """A known service error (the database cannot write) is one line, not a traceback:
        the database layer has already said why, once."""
        known = service_error(value)
        if known is not None:
            # A stop refuses many at once and says how many (Services.drain): one line each
            # only when debugging. A busy address is worth a line, a failing database more.
            level = (
                logging.DEBUG
                if isinstance(value, ShuttingDown)
                else logging.INFO
                if isinstance(value, HashingBusy)
                else logging.WARNING
            )
            log.log(
                level,
                "%s %s from %s answered %d: %s",
                self.request.method,
                self.request.path,
                self.request.remote_ip,
                known[0],
                value,
            )
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors as a short page or JSON; never a traceback, whatever ``debug`` says."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        reason = reason_phrase(status_code, kwargs)
        if (
            isinstance(exc, tornado.web.HTTPError)
            and exc.log_message
            and (status_code < 500 or status_code == 503)
        ):  # 503s say what to do
            reason = exc.log_message % exc.args if exc.args else exc.log_message
        known = service_error(exc)
        if known is not None:
            status_code, reason = known
            self.set_status(status_code)
        retry_after = getattr(exc, "retry_after", None) if known else None  # HashingBusy's
        if retry_after is not None:
            self.set_header("Retry-After", str(retry_after))
        elif status_code == 503:
            self.set_header("Retry-After", str(RETRY_AFTER))
        if self.wants_json():
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"error": reason, "status": status_code}))
            return
        self.finish(
            self.render_string(
                "error.html", title=f"{status_code} {reason}", status=status_code, message=reason
            )
        )


class NotFoundHandler(BaseHandler):
    async def prepare(self) -> None:
        await super().prepare()
        raise tornado.web.HTTPError(404, "Page not found")
