"""Sign-up, login and logout."""

from __future__ import annotations

from typing import Any

import tornado.web

from handlers.base import BaseHandler, safe_next
from presence_app.accounts import fields
from presence_app.accounts.errors import AccountError, LoginThrottled
from presence_app.db.database import DatabaseWriteError

#: What a login password that is not UTF-8 becomes. Sign-up stores only UTF-8 passwords, so
#: such bytes are a wrong password: answered like one (401, the same message, a dummy bcrypt
#: check: over 72 bytes), never echoed. NUL and 73 bytes: no stored password can equal it.
NOT_A_PASSWORD = "\x00" * (fields.MAX_PASSWORD_BYTES + 1)
SIGNUP_CLOSED = (
    "Sign-up is closed on this server: ask an administrator for an account (presence users add)."
)
NOT_LOGGED_OUT = (
    "You are NOT logged out: the server could not end your session. Please try again in a moment."
)


class SignupHandler(BaseHandler):
    def get(self) -> None:
        self.render("signup.html", title="Sign up", error=None, username="", closed=self.closed())

    def closed(self) -> str | None:
        """The message of a closed sign-up (``--signup closed``), else None."""
        return SIGNUP_CLOSED if self.services.settings.signup == "closed" else None

    def render_string(self, template_name: str, **kwargs: Any) -> bytes:
        # The page's hints state the limits from their one definition.
        return super().render_string(template_name, fields=fields, **kwargs)

    async def post(self) -> None:
        if self.closed():
            self.set_status(403)
            self.render(
                "signup.html", title="Sign up", error=None, username="", closed=self.closed()
            )
            return
        username = self.get_body_argument("username", "").strip()
        password = self.get_body_argument("password", "", strip=False)
        confirm = self.get_body_argument("confirm", "", strip=False)
        try:
            _, token = await self.auth.register(
                username, password, confirm, replaces=self.session_token()
            )
        except AccountError as exc:
            self.render_refusal(
                "signup.html",
                exc,
                title="Sign up",
                username=fields.clip_username(username),
                closed=None,
            )
            return
        self.services.metrics.signups.inc()
        self.set_session_cookie(token)
        self.redirect("/")


class LoginHandler(BaseHandler):
    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        if name == "password":
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return NOT_A_PASSWORD
        return super().decode_argument(value, name)

    def get(self) -> None:
        self.render(
            "login.html",
            title="Log in",
            error=None,
            username="",
            next=safe_next(self.get_query_argument("next", "")),
        )

    async def post(self) -> None:
        username = self.get_body_argument("username", "").strip()
        password = self.get_body_argument("password", "", strip=False)
        target = safe_next(self.get_body_argument("next", ""))
        try:
            _, token = await self.auth.login(
                username, password, self.request.remote_ip or "", replaces=self.session_token()
            )
        except AccountError as exc:  # throttled, or one answer for every failure
            result = "throttled" if isinstance(exc, LoginThrottled) else "failed"
            self.services.metrics.logins.labels(result).inc()
            self.render_refusal(
                "login.html",
                exc,
                title="Log in",
                username=fields.clip_username(username),
                next=target,
            )
            return
        self.services.metrics.logins.labels("ok").inc()
        self.set_session_cookie(token)
        self.redirect(target)


class LogoutHandler(BaseHandler):
    async def post(self) -> None:
        token = self.session_token()
        if token:
            try:
                await self.auth.logout(token)
            except DatabaseWriteError:
                # Never a silent failure: the session is still valid, and the user is told.
                raise tornado.web.HTTPError(503, NOT_LOGGED_OUT) from None
        self.clear_session_cookie()
        self.redirect("/login")
