"""The one table from service errors to HTTP answers (handlers/base.py SERVICE_ERRORS): every
error a service raises on purpose has exactly one row, with the status docs/PROTOCOL.md
documents, and the sign-up page states the limits from their one definition."""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import pytest

from handlers.base import SERVICE_ERRORS, service_error
from presence_app.accounts import errors, fields
from presence_app.accounts.errors import (
    AccountError,
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
from presence_app.db.database import DatabaseWriteError

#: docs/PROTOCOL.md, the rows of /signup and /login: an example of each error, its status.
DOCUMENTED: dict[type[Exception], tuple[Exception, int]] = {
    FieldTooLong: (FieldTooLong(fields.MAX_INPUT_CHARS), 400),
    InvalidUsername: (InvalidUsername(fields.MIN_USERNAME_CHARS, fields.MAX_USERNAME_CHARS), 400),
    PasswordTooShort: (PasswordTooShort(fields.MIN_PASSWORD_CHARS), 400),
    PasswordTooLong: (PasswordTooLong(fields.MAX_PASSWORD_BYTES), 400),
    PasswordHasNul: (PasswordHasNul(), 400),
    PasswordMismatch: (PasswordMismatch(), 400),
    UsernameTaken: (UsernameTaken(), 409),
    InvalidCredentials: (InvalidCredentials(), 401),
    LoginThrottled: (LoginThrottled(42), 429),
    HashingBusy: (HashingBusy(3), 429),
    DatabaseWriteError: (DatabaseWriteError("disk full"), 503),
    ShuttingDown: (ShuttingDown(), 503),
}


def account_errors() -> set[type[Exception]]:
    """Every error class of accounts/errors.py but the common base."""
    return {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, AccountError) and value is not AccountError
    }


def test_every_account_error_is_documented() -> None:
    assert account_errors() <= set(DOCUMENTED), "a new error needs its documented status here"


def test_the_table_has_no_other_rows() -> None:
    assert set(SERVICE_ERRORS) == set(DOCUMENTED)
    assert AccountError not in SERVICE_ERRORS  # no catch-all: each error has its own row


@pytest.mark.parametrize(
    "kind", sorted(DOCUMENTED, key=attrgetter("__name__")), ids=attrgetter("__name__")
)
def test_each_error_has_exactly_one_row_with_its_documented_status(kind: type) -> None:
    example, status = DOCUMENTED[kind]
    assert [row for row in SERVICE_ERRORS if isinstance(example, row)] == [kind]
    assert SERVICE_ERRORS[kind].status == status
    answered = service_error(example)
    assert answered is not None and answered[0] == status
    if isinstance(example, AccountError):  # the user's own words, as the admin command shows
        assert answered[1] == str(example) and SERVICE_ERRORS[kind].message is None
    else:  # infrastructure: fixed words for the user, never the internal message
        assert answered[1] == SERVICE_ERRORS[kind].message and "disk full" not in answered[1]


def test_a_bug_is_not_in_the_table() -> None:
    assert service_error(ValueError("bug")) is None
    assert service_error(None) is None


@pytest.mark.gen_test
async def test_the_signup_page_states_the_limits(make_client: Any) -> None:
    page = (await make_client().request("GET", "/signup")).body.decode()
    assert f"{fields.MIN_USERNAME_CHARS}–{fields.MAX_USERNAME_CHARS} characters" in page
    assert (
        f"At least {fields.MIN_PASSWORD_CHARS} characters "
        f"(at most {fields.MAX_PASSWORD_BYTES} bytes)"
    ) in page
