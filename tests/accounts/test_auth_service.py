"""The sign-up, login and logout use cases (``AuthService``) on the real database, hasher and
throttle: what they return, the bcrypt work they do (counted by the hasher's own hook), the
typed error of each refusal, and the field limits from their one definition."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import update

from presence_app.accounts import fields
from presence_app.accounts.auth import AuthService, SignedIn
from presence_app.accounts.errors import (
    LOGIN_FAILED,
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
from presence_app.accounts.passwords import PasswordHasher
from presence_app.backends.throttle import LoginThrottle
from presence_app.db.database import User, utcnow
from tests.conftest import PASSWORD

ADDRESS = "192.0.2.7"


class Events:
    """The live-presence side of the use cases, recorded (``SessionEvents``)."""

    def __init__(self) -> None:
        self.ended: list[str] = []
        self.signed_up: list[str] = []

    async def end_session(self, session_id: str) -> None:
        self.ended.append(session_id)

    async def user_signed_up(self, username: str) -> None:
        self.signed_up.append(username)


@contextmanager
def bcrypt_jobs(hasher: PasswordHasher) -> Iterator[list[float]]:
    """Every bcrypt job (hash or check) the hasher starts meanwhile, through its
    ``observe_wait`` hook; the metrics' observer still gets each one."""
    jobs: list[float] = []
    before = hasher.observe_wait

    def observe(wait: float) -> None:
        jobs.append(wait)
        if before is not None:
            before(wait)

    hasher.observe_wait = observe
    try:
        yield jobs
    finally:
        hasher.observe_wait = before


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def auth(services: Any, events: Events) -> AuthService:
    """The use cases over the real accounts, with a throttle of 3 failures a minute."""
    return AuthService(services.accounts, LoginThrottle(3, 60.0), events)


# -- register -----------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_register_returns_user_and_token_with_one_bcrypt(
    services: Any, auth: AuthService, events: Events
) -> None:
    with bcrypt_jobs(services.accounts.hasher) as jobs:
        user, token = await auth.register("Alice", PASSWORD, PASSWORD)
    assert len(jobs) == 1  # the hash; no second check of the password just chosen
    assert user.username == "Alice" and user.session_id
    assert await services.accounts.session_user(token) == user  # the token is a session
    assert events.signed_up == ["Alice"] and events.ended == []


@pytest.mark.gen_test
async def test_register_replaces_the_presented_session(
    services: Any, auth: AuthService, events: Events
) -> None:
    first = await auth.register("alice", PASSWORD, PASSWORD)
    second = await auth.register("carol", PASSWORD, PASSWORD, replaces=first.token)
    assert events.ended == [first.user.session_id]  # its sockets are closed everywhere
    assert await services.accounts.session_user(first.token) is None
    assert (await services.accounts.session_user(second.token)).username == "carol"


@pytest.mark.gen_test
async def test_logout_ends_the_session_and_its_sockets(
    services: Any, auth: AuthService, events: Events
) -> None:
    alice = await auth.register("alice", PASSWORD, PASSWORD)
    await auth.logout(alice.token)
    assert await services.accounts.session_user(alice.token) is None
    assert events.ended == [alice.user.session_id]  # its sockets close in every process


@pytest.mark.parametrize(
    "username,password,confirm,error",
    [
        ("a" * (fields.MAX_INPUT_CHARS + 1), PASSWORD, PASSWORD, FieldTooLong),
        ("alice", PASSWORD, "p" * (fields.MAX_INPUT_CHARS + 1), FieldTooLong),
        ("al", PASSWORD, PASSWORD, InvalidUsername),
        ("alice\n", PASSWORD, PASSWORD, InvalidUsername),
        ("alice", "short", "short", PasswordTooShort),
        ("alice", "x" * 73, "x" * 73, PasswordTooLong),
        ("alice", PASSWORD + "\x00", PASSWORD + "\x00", PasswordHasNul),
        ("alice", PASSWORD, PASSWORD + "x", PasswordMismatch),
    ],
    ids=[
        "long-field",
        "long-confirm",
        "short-name",
        "newline",
        "short-password",
        "long-password",
        "nul",
        "mismatch",
    ],
)
@pytest.mark.gen_test
async def test_register_refusals_are_typed_and_change_nothing(
    services: Any,
    auth: AuthService,
    events: Events,
    username: str,
    password: str,
    confirm: str,
    error: type[AccountError],
) -> None:
    with bcrypt_jobs(services.accounts.hasher) as jobs, pytest.raises(error):
        await auth.register(username, password, confirm)
    assert jobs == []  # refused before any hashing
    assert await services.accounts.all_users() == []
    assert events.signed_up == []


@pytest.mark.parametrize("second", ["alice", "ALICE"])
@pytest.mark.gen_test
async def test_register_a_taken_name(services: Any, auth: AuthService, second: str) -> None:
    await auth.register("Alice", PASSWORD, PASSWORD)
    with bcrypt_jobs(services.accounts.hasher) as jobs, pytest.raises(UsernameTaken) as info:
        await auth.register(second, PASSWORD, PASSWORD)
    assert jobs == []  # found taken before hashing
    assert str(info.value) == "That username is taken."


# -- login --------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_login_rotates_the_presented_session(
    services: Any, auth: AuthService, events: Events
) -> None:
    signed_up = await auth.register("alice", PASSWORD, PASSWORD)
    with bcrypt_jobs(services.accounts.hasher) as jobs:
        logged_in = await auth.login("ALICE", PASSWORD, ADDRESS, replaces=signed_up.token)
    assert isinstance(logged_in, SignedIn) and len(jobs) == 1
    assert logged_in.user.username == "alice" and logged_in.token != signed_up.token
    assert events.ended == [signed_up.user.session_id]
    assert await services.accounts.session_user(signed_up.token) is None
    assert await services.accounts.session_user(logged_in.token) == logged_in.user


async def disable(services: Any, username: str) -> None:
    async with services.db.write() as session:
        await session.execute(
            update(User).where(User.username_key == username).values(disabled_at=utcnow())
        )


@pytest.mark.parametrize(
    "username,password,checks",
    [
        ("alice", "wrong password", 1),
        ("nobody", PASSWORD, 1),  # a dummy check: as slow as a wrong password
        ("alice", "é" * 40, 1),  # over the byte limit: the dummy check too
        ("disabled", PASSWORD, 1),
        ("a" * (fields.MAX_INPUT_CHARS + 1), PASSWORD, 0),  # over any field's limit: no work
        ("alice", "p" * (fields.MAX_INPUT_CHARS + 1), 0),
    ],
    ids=["wrong-password", "unknown", "80-bytes", "disabled", "long-name", "long-password"],
)
@pytest.mark.gen_test
async def test_login_failures_are_one_typed_error(
    services: Any, auth: AuthService, events: Events, username: str, password: str, checks: int
) -> None:
    await auth.register("alice", PASSWORD, PASSWORD)
    await auth.register("disabled", PASSWORD, PASSWORD)
    await disable(services, "disabled")
    with pytest.raises(InvalidCredentials):  # makes the dummy hash, outside the count
        await auth.login("nobody", PASSWORD, "198.51.100.1")
    with bcrypt_jobs(services.accounts.hasher) as jobs, pytest.raises(InvalidCredentials) as info:
        await auth.login(username, password, ADDRESS)
    assert str(info.value) == LOGIN_FAILED
    assert len(jobs) == checks
    assert events.ended == []


@pytest.mark.gen_test
async def test_login_throttled_refuses_even_the_right_password(
    services: Any, auth: AuthService
) -> None:
    await auth.register("alice", PASSWORD, PASSWORD)
    for _ in range(3):
        with pytest.raises(InvalidCredentials):
            await auth.login("alice", "wrong password", ADDRESS)
    with bcrypt_jobs(services.accounts.hasher) as jobs, pytest.raises(LoginThrottled) as info:
        await auth.login("Alice", PASSWORD, ADDRESS)
    assert jobs == []  # nothing checked while locked
    assert 1 <= info.value.retry_after <= 60
    assert str(info.value) == f"Too many failed attempts. Try again in {info.value.retry_after} s."
    # Another address is not affected, and the right password there clears nothing here.
    assert (await auth.login("alice", PASSWORD, "198.51.100.2")).user.username == "alice"
    with pytest.raises(LoginThrottled):
        await auth.login("alice", PASSWORD, ADDRESS)


@pytest.mark.gen_test
async def test_over_long_names_are_throttled_by_their_clipped_name(auth: AuthService) -> None:
    long_name = "b" * (fields.MAX_INPUT_CHARS + 1)
    for n in range(3):  # names that differ past the clip count as one
        with pytest.raises(InvalidCredentials):
            await auth.login(long_name[:-1] + str(n), PASSWORD, ADDRESS)
    with pytest.raises(LoginThrottled):
        await auth.login(long_name, PASSWORD, ADDRESS)
    assert fields.clip_username(long_name) == "b" * (fields.MAX_USERNAME_CHARS + 1)


# -- the limits, from their one definition ------------------------------------------------------


def test_username_limits() -> None:
    shortest, longest = "a" * fields.MIN_USERNAME_CHARS, "a" * fields.MAX_USERNAME_CHARS
    assert fields.check_username(shortest) == shortest
    assert fields.check_username(longest) == longest
    for name in (shortest[1:], longest + "a"):
        with pytest.raises(InvalidUsername) as info:
            fields.check_username(name)
        assert (info.value.min_chars, info.value.max_chars) == (
            fields.MIN_USERNAME_CHARS,
            fields.MAX_USERNAME_CHARS,
        )
        assert f"{fields.MIN_USERNAME_CHARS}-{fields.MAX_USERNAME_CHARS} characters" in str(
            info.value
        )
    assert fields.possible_username(longest) and not fields.possible_username(longest + "a")
    assert fields.clip_username(longest) == longest  # a real name is never clipped


def test_password_limits() -> None:
    shortest = "p" * fields.MIN_PASSWORD_CHARS
    longest = "é" * (fields.MAX_PASSWORD_BYTES // 2)  # two bytes each in UTF-8
    for password in (shortest, longest):
        assert fields.check_new_password(password, password) == password
    with pytest.raises(PasswordTooShort) as short:
        fields.check_new_password(shortest[1:], shortest[1:])
    assert short.value.min_chars == fields.MIN_PASSWORD_CHARS
    assert f"at least {fields.MIN_PASSWORD_CHARS} characters" in str(short.value)
    with pytest.raises(PasswordTooLong) as too_long:
        fields.check_new_password(longest + "p", longest + "p")
    assert too_long.value.max_bytes == fields.MAX_PASSWORD_BYTES
    assert f"at most {fields.MAX_PASSWORD_BYTES} bytes" in str(too_long.value)


def test_input_limit() -> None:
    fields.check_input("a" * fields.MAX_INPUT_CHARS, "")
    with pytest.raises(FieldTooLong) as info:
        fields.check_input("", "a" * (fields.MAX_INPUT_CHARS + 1))
    assert info.value.max_chars == fields.MAX_INPUT_CHARS
    assert fields.within_input_limit("a" * fields.MAX_INPUT_CHARS)
    assert not fields.within_input_limit("", "a" * (fields.MAX_INPUT_CHARS + 1))


@pytest.mark.gen_test
async def test_the_hasher_refuses_what_the_password_limit_refuses() -> None:
    hasher = PasswordHasher(4, 1)
    try:
        await hasher.hash("p" * fields.MAX_PASSWORD_BYTES)
        with pytest.raises(ValueError):
            await hasher.hash("p" * (fields.MAX_PASSWORD_BYTES + 1))
    finally:
        hasher.close()
