"""The ``_xsrf`` token, bound to the session it was issued for.

Tornado's own check only compares the ``_xsrf`` cookie with the ``_xsrf`` field, so any
equal pair passes (a cookie planted by a sibling subdomain, say) and the query string is
accepted too. Here the cookie holds ``nonce.HMAC(cookie_secret, nonce | session id)``, where
the session id is the hash of the session cookie's token (empty when anonymous). A POST
passes only when the body field (or the ``X-XSRFToken`` header) equals the cookie and the
cookie verifies for the session the request presents. Whenever the session changes (login,
sign-up, logout) the response carries a fresh token bound to the new session; a page GET
whose cookie does not verify is given a new one. The scripted-client contract is unchanged:
GET a form page, read the ``_xsrf`` cookie, post it back.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING, Any

import tornado.web

from presence_app.accounts.service import token_hash

XSRF_COOKIE = "_xsrf"
NONCE_BYTES = 16


def _mac(secret: str, nonce: str, session_id: str) -> str:
    message = f"xsrf|{nonce}|{session_id}".encode("ascii", "replace")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def make_token(secret: str, session_id: str) -> str:
    nonce = secrets.token_hex(NONCE_BYTES)
    return f"{nonce}.{_mac(secret, nonce, session_id)}"


def token_valid(secret: str, token: str, session_id: str) -> bool:
    nonce, dot, mac = token.partition(".")
    if not dot or len(nonce) != 2 * NONCE_BYTES or not nonce.isascii():
        return False
    return hmac.compare_digest(
        mac.encode("ascii", "replace"), _mac(secret, nonce, session_id).encode("ascii")
    )


class SessionXsrfMixin:
    """Overrides Tornado's public ``xsrf_token`` / ``check_xsrf_cookie`` hooks.

    The host class provides ``session_token()`` (the raw session cookie token or None).
    """

    settings: dict[str, Any]
    request: Any

    if TYPE_CHECKING:

        def session_token(self) -> str | None: ...

    @staticmethod
    def _xsrf_session_id(session_token: str | None) -> str:
        return token_hash(session_token) if session_token else ""

    def _xsrf_secret(self) -> str:
        return str(self.settings["cookie_secret"])

    @property
    def xsrf_token(self) -> bytes:
        """This request's token: the cookie's if it verifies for this session, else a new
        one (and the cookie is set)."""
        cached = getattr(self, "_bound_xsrf", None)
        if cached is None:
            cookie = self.get_cookie(XSRF_COOKIE)  # type: ignore[attr-defined]
            session_id = self._xsrf_session_id(self.session_token())
            if cookie and token_valid(self._xsrf_secret(), cookie, session_id):
                cached = self._bound_xsrf = cookie
            else:
                cached = self.issue_xsrf_token(self.session_token())
        return cached.encode("ascii")

    def issue_xsrf_token(self, session_token: str | None) -> str:
        """Set a fresh ``_xsrf`` cookie bound to ``session_token`` (None: anonymous) and use
        it for the rest of this response: called whenever the session cookie changes."""
        token = make_token(self._xsrf_secret(), self._xsrf_session_id(session_token))
        kwargs = dict(self.settings.get("xsrf_cookie_kwargs", {}))
        kwargs.setdefault("expires_days", 30)
        self.set_cookie(XSRF_COOKIE, token, **kwargs)  # type: ignore[attr-defined]
        self._bound_xsrf = token
        return token

    def check_xsrf_cookie(self) -> None:
        """The body field or header must equal the cookie, and the cookie must verify for
        the session this request presents. Never read from the query string."""
        supplied = (
            self.request.body_arguments.get(XSRF_COOKIE, [b""])[0]
            or self.request.headers.get("X-Xsrftoken", "").encode("latin-1")
            or self.request.headers.get("X-Csrftoken", "").encode("latin-1")
        )
        if not supplied:
            raise tornado.web.HTTPError(403, "'_xsrf' argument missing from POST")
        cookie = self.get_cookie(XSRF_COOKIE) or ""  # type: ignore[attr-defined]
        if not cookie or not hmac.compare_digest(supplied, cookie.encode("latin-1", "replace")):
            raise tornado.web.HTTPError(403, "XSRF cookie does not match POST argument")
        session_id = self._xsrf_session_id(self.session_token())
        if not token_valid(self._xsrf_secret(), cookie, session_id):
            # Also what a form rendered before a login or logout in another tab gets.
            raise tornado.web.HTTPError(
                403,
                "This form is out of date (you logged in or out "
                "meanwhile, maybe in another tab): reload the "
                "page and try again.",
            )
