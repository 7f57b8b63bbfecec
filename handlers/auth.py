"""Sign-up, login and logout."""
from __future__ import annotations

import logging

from handlers.base import BaseHandler, safe_next
from presence_app.accounts import LOGIN_FAILED, AccountError

log = logging.getLogger(__name__)
MAX_FIELD = 1024  # characters; anything longer is an error, not something to hash


class SignupHandler(BaseHandler):
    def get(self) -> None:
        self.render("signup.html", title="Sign up", error=None, username="")

    async def post(self) -> None:
        username = self.get_body_argument("username", "").strip()
        password = self.get_body_argument("password", "", strip=False)
        confirm = self.get_body_argument("confirm", "", strip=False)
        try:
            if max(len(username), len(password), len(confirm)) > MAX_FIELD:
                raise AccountError(400, "A field is far too long.")
            await self.accounts.signup(username, password, confirm)
        except AccountError as exc:
            self.set_status(exc.status)
            self.render("signup.html", title="Sign up", error=exc.message,
                        username=username[:64])
            return
        log.info("New account %s", username)
        await self.presence.user_signed_up(username)
        user = await self.accounts.authenticate(username, password)
        if user is None:  # cannot happen unless the account vanished meanwhile
            self.redirect("/login")
            return
        self.set_session_cookie(await self.accounts.start_session(user, self.session_token()))
        self.redirect("/")


class LoginHandler(BaseHandler):
    def get(self) -> None:
        self.render("login.html", title="Log in", error=None, username="",
                    next=safe_next(self.get_query_argument("next", "")))

    async def post(self) -> None:
        username = self.get_body_argument("username", "").strip()
        password = self.get_body_argument("password", "", strip=False)
        target = safe_next(self.get_body_argument("next", ""))
        throttle, address = self.services.throttle, self.request.remote_ip or ""
        wait = await throttle.reserve(username[:64], address)  # simultaneous guesses wait
        if wait > 0:
            self.set_status(429)
            self.set_header("Retry-After", str(int(wait) + 1))
            self.render("login.html", title="Log in", username=username[:64], next=target,
                        error=f"Too many failed attempts. Try again in {int(wait) + 1} s.")
            return
        user, ok = None, None
        try:  # over-long fields are failures too, without a bcrypt check
            if len(username) <= MAX_FIELD and len(password) <= MAX_FIELD:
                user = await self.accounts.authenticate(username, password)
            ok = user is not None
        finally:
            throttle.release(username[:64], address, ok)
        if user is None:
            log.info("Failed login for %r from %s", username[:64], address)
            self.set_status(401)
            self.render("login.html", title="Log in", error=LOGIN_FAILED,
                        username=username[:64], next=target)
            return
        # Rotation: a fresh token on every login; the one presented before is revoked.
        token = await self.accounts.start_session(user, replaces=self.session_token())
        self.set_session_cookie(token)
        self.redirect(target)


class LogoutHandler(BaseHandler):
    async def post(self) -> None:
        token = self.session_token()
        if token:
            session_id = await self.accounts.end_session(token)
            await self.presence.end_session(session_id)
        self.clear_session_cookie()
        self.redirect("/login")
