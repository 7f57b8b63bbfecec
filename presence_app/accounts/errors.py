"""What can go wrong at sign-up and login, as types the callers tell apart.

Each error says what went wrong in words written for the person who can fix it (the web
pages and ``presence users`` show the same words) and carries what it needs (the limit that
was crossed, the seconds to wait). None says how to answer: the web layer maps every type to
an HTTP status in one table (``handlers.base.SERVICE_ERRORS``); the domain speaks no HTTP.
"""

from __future__ import annotations

LOGIN_FAILED = "Wrong username or password."


class AccountError(Exception):
    """A sign-up or login problem the user can fix; ``str(error)`` tells them what."""


class InvalidUsername(AccountError):
    def __init__(self, min_chars: int, max_chars: int) -> None:
        super().__init__(
            f"Usernames are {min_chars}-{max_chars} characters: letters, digits, _ . or -."
        )
        self.min_chars, self.max_chars = min_chars, max_chars


class PasswordTooShort(AccountError):
    def __init__(self, min_chars: int) -> None:
        super().__init__(f"Passwords need at least {min_chars} characters.")
        self.min_chars = min_chars


class PasswordTooLong(AccountError):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"Passwords can be at most {max_bytes} bytes long.")
        self.max_bytes = max_bytes


class PasswordHasNul(AccountError):
    """Forms turn NUL into a space; other callers (the admin command) may not."""

    def __init__(self) -> None:
        super().__init__("Passwords cannot contain NUL characters.")


class PasswordMismatch(AccountError):
    def __init__(self) -> None:
        super().__init__("The two passwords do not match.")


class FieldTooLong(AccountError):
    """A sign-up field far longer than any valid value: refused before any check."""

    def __init__(self, max_chars: int) -> None:
        super().__init__("A field is far too long.")
        self.max_chars = max_chars


class UsernameTaken(AccountError):
    """Names are compared without case: "Alice" takes "alice" too."""

    def __init__(self) -> None:
        super().__init__("That username is taken.")


class InvalidCredentials(AccountError):
    """One answer for an unknown name, a wrong password and a disabled account alike: the
    login page must not tell anyone which names exist."""

    def __init__(self) -> None:
        super().__init__(LOGIN_FAILED)


class LoginThrottled(AccountError):
    """Too many failed logins of this name from this address; the right password is refused
    too, or the different answer would give it away. ``retry_after``: whole seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many failed attempts. Try again in {retry_after} s.")
        self.retry_after = retry_after
