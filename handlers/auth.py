"""Sign-up, login and logout."""
from __future__ import annotations

import asyncio
import logging
import math

import tornado.web

from handlers.base import BaseHandler, safe_next
from presence_app.accounts.service import LOGIN_FAILED, AccountError
from presence_app.db.database import DatabaseWriteError

log = logging.getLogger(__name__)
MAX_FIELD = 1024  # characters; anything longer is an error, not something to hash
#: What a login password that is not UTF-8 becomes. Sign-up stores only UTF-8 passwords, so
#: such bytes are a wrong password: answered like one (401, the same message, a dummy bcrypt
#: check: over 72 bytes), never echoed. NUL and 73 bytes: no stored password can equal it.
NOT_A_PASSWORD = "\x00" * 73
#: Pauses between the attempts of a logout whose database write fails (then: 503).
LOGOUT_RETRIES = (0.1, 0.4)
SIGNUP_CLOSED = ("Sign-up is closed on this server: ask an administrator for an account "
                 "(presence users add).")
NOT_LOGGED_OUT = ("You are NOT logged out: the server could not end your session. "
                  "Please try again in a moment.")


class SignupHandler(BaseHandler):
    def get(self) -> None:
        self.render("signup.html", title="Sign up", error=None, username="",
                    closed=self.closed())

    def closed(self) -> str | None:
        """The message of a closed sign-up (``--signup closed``), else None."""
        return SIGNUP_CLOSED if self.services.settings.signup == "closed" else None

    async def post(self) -> None:
        if self.closed():
            self.set_status(403)
            self.render("signup.html", title="Sign up", error=None, username="",
                        closed=self.closed())
            return
        username = self.get_body_argument("username", "").strip()
        password = self.get_body_argument("password", "", strip=False)
        confirm = self.get_body_argument("confirm", "", strip=False)
        try:
            if max(len(username), len(password), len(confirm)) > MAX_FIELD:
                raise AccountError(400, "A field is far too long.")
            # One bcrypt; the account and its session are written in one transaction.
            created = await self.accounts.register(username, password, confirm,
                                                   replaces=self.session_token())
        except AccountError as exc:
            self.set_status(exc.status)
            self.render("signup.html", title="Sign up", error=exc.message,
                        username=username[:64], closed=None)
            return
        log.info("New account %s", username)
        self.services.metrics.signups.inc()
        if created.revoked:  # the browser's earlier session: its sockets close everywhere
            await self.presence.end_session(created.revoked)
        await self.presence.user_signed_up(username)
        self.set_session_cookie(created.token)
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
        self.render("login.html", title="Log in", error=None, username="",
                    next=safe_next(self.get_query_argument("next", "")))

    async def post(self) -> None:
        username = self.get_body_argument("username", "").strip()
        password = self.get_body_argument("password", "", strip=False)
        target = safe_next(self.get_body_argument("next", ""))
        throttle, address = self.services.throttle, self.request.remote_ip or ""
        wait = await throttle.reserve(username[:64], address)  # simultaneous guesses wait
        if wait > 0:  # also with the right password: a different answer would give it away
            self.services.metrics.logins.labels("throttled").inc()
            seconds = max(math.ceil(wait), 1)
            self.set_status(429)
            self.set_header("Retry-After", str(seconds))
            self.render("login.html", title="Log in", username=username[:64], next=target,
                        error=f"Too many failed attempts. Try again in {seconds} s.")
            return
        user, ok = None, None
        try:  # over-long fields are failures too, without a bcrypt check
            if len(username) <= MAX_FIELD and len(password) <= MAX_FIELD:
                user = await self.accounts.authenticate(username, password)
            ok = user is not None
        finally:
            await throttle.release(username[:64], address, ok)
        self.services.metrics.logins.labels("ok" if user is not None else "failed").inc()
        if user is None:
            log.info("Failed login for %r from %s", username[:64], address)
            self.set_status(401)
            self.render("login.html", title="Log in", error=LOGIN_FAILED,
                        username=username[:64], next=target)
            return
        # Rotation: a fresh token on every login; the one presented before is revoked, and
        # its sockets are closed in every process, as at logout.
        opened = await self.accounts.open_session(user, replaces=self.session_token())
        if opened.revoked:
            await self.presence.end_session(opened.revoked)
        self.set_session_cookie(opened.token)
        self.redirect(target)


class LogoutHandler(BaseHandler):
    async def post(self) -> None:
        token = self.session_token()
        if token:
            session_id = await self.end_session(token)
            if session_id is None:
                # Never a silent failure: the session is still valid, and the user is told.
                raise tornado.web.HTTPError(503, NOT_LOGGED_OUT)
            await self.presence.end_session(session_id)
        self.clear_session_cookie()
        self.redirect("/login")

    async def end_session(self, token: str) -> str | None:
        """Delete the session, retrying a database that cannot write (a moment of lock
        contention or disk pressure); None if it still could not."""
        for delay in LOGOUT_RETRIES:
            try:
                return await self.accounts.end_session(token)
            except DatabaseWriteError:
                log.warning("Logout could not delete the session; retrying in %.1f s", delay)
                await asyncio.sleep(delay)
        try:
            return await self.accounts.end_session(token)
        except DatabaseWriteError as exc:
            log.warning("Logout failed after %d attempts: %s", len(LOGOUT_RETRIES) + 1, exc)
            return None
