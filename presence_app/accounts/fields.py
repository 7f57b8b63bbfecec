"""What the sign-up and login fields accept: each limit defined once, here.

The checks, the error messages, the sign-up page's hints, the login throttle's key and the
skipped lookups of impossible names all read these constants; nothing else spells them out.
"""

from __future__ import annotations

import re

from presence_app.accounts.errors import (
    FieldTooLong,
    InvalidUsername,
    PasswordHasNul,
    PasswordMismatch,
    PasswordTooLong,
    PasswordTooShort,
)

MIN_USERNAME_CHARS = 3
MAX_USERNAME_CHARS = 32  # also the width of the users.username column
USERNAME_RE = re.compile(rf"^[A-Za-z0-9_.-]{{{MIN_USERNAME_CHARS},{MAX_USERNAME_CHARS}}}$")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 72  # bcrypt's limit (UTF-8); bcrypt 5 raises ValueError past it
#: The most characters any sign-up or login field may carry at all: longer input is refused
#: before it is checked, looked up or hashed (sign-up: "far too long"; login: a failure).
MAX_INPUT_CHARS = 1024


def check_username(username: str) -> str:
    if not USERNAME_RE.fullmatch(username):  # match() lets "name\n" through
        raise InvalidUsername(MIN_USERNAME_CHARS, MAX_USERNAME_CHARS)
    return username


def check_new_password(password: str, confirm: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise PasswordTooShort(MIN_PASSWORD_CHARS)
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        raise PasswordTooLong(MAX_PASSWORD_BYTES)
    if "\x00" in password:
        raise PasswordHasNul()
    if password != confirm:
        raise PasswordMismatch()
    return password


def within_input_limit(*values: str) -> bool:
    return all(len(value) <= MAX_INPUT_CHARS for value in values)


def check_input(*values: str) -> None:
    """Refuse a form whose fields are far longer than any valid value could be."""
    if not within_input_limit(*values):
        raise FieldTooLong(MAX_INPUT_CHARS)


def possible_username(username: str) -> bool:
    """Whether some account could have this name by its length (no query for the rest)."""
    return len(username) <= MAX_USERNAME_CHARS


def clip_username(username: str) -> str:
    """A typed name as shown back on the form, logged and counted by the login throttle:
    clipped one character past the longest possible name, so that memory and pages stay
    small and a clipped name still differs from every real one."""
    return username[: MAX_USERNAME_CHARS + 1]
