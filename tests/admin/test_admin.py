"""Admin commands (``presence users ...``, presence_app/admin/cli.py): exit codes and output
against SQLite and PostgreSQL, and their effect on a running app: sockets closed with 4001,
a deleted user removed from every list (``removed``), disabled accounts refused at login,
closed sign-up. With Redis the running app hears of it at once through the broker; with the
in-process broker within its periodic database check (sync.DATABASE_CHECK_INTERVAL)."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from presence_app.accounts.errors import LOGIN_FAILED
from presence_app.admin import cli as admin
from presence_app.client import ClientError
from presence_app.config import Settings
from presence_app.live.presence import CLOSE_SESSION_ENDED
from presence_app.live.sync import DATABASE_CHECK_INTERVAL
from tests.conftest import PASSWORD

ROOT = Path(__file__).resolve().parents[2]
NEW_PASSWORD = "another-pass-1"


def run_admin(url: str, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = admin.main([*args, "--database-url", url, "--bcrypt-rounds", "4"], out, err)
    return code, out.getvalue(), err.getvalue()


def test_user_commands_and_exit_codes(fresh_database_url: str, monkeypatch: Any) -> None:
    url = fresh_database_url
    monkeypatch.setenv("PRESENCE_PASSWORD", PASSWORD)
    header = f"{'USERNAME':<32}  STATUS    SESSIONS  LAST SEEN             CREATED\n"
    assert run_admin(url, "users", "list")[:2] == (0, header + "0 user(s)\n")
    assert run_admin(url, "users", "add", "Alice")[:2] == (0, "created user Alice\n")
    code, _, err = run_admin(url, "users", "add", "alice")
    assert (code, err) == (1, "error: That username is taken.\n")
    assert run_admin(url, "users", "add", "x!")[0] == 2  # the sign-up rules
    monkeypatch.setenv("PRESENCE_PASSWORD", "short")
    assert run_admin(url, "users", "add", "bob")[0] == 2
    assert run_admin(url, "users", "reset-password", "alice")[0] == 2
    monkeypatch.setenv("PRESENCE_PASSWORD", PASSWORD)

    code, out, _ = run_admin(url, "users", "show", "ALICE")
    assert code == 0 and "username:    Alice\nstatus:      active\n" in out
    assert run_admin(url, "users", "disable", "alice")[:2] == (
        0,
        "disabled user Alice (sessions ended)\n",
    )
    code, out, _ = run_admin(url, "users", "list")
    assert code == 0 and out.splitlines()[1].split()[:3] == ["Alice", "disabled", "0"]
    assert run_admin(url, "users", "enable", "alice")[:2] == (0, "enabled user Alice\n")
    assert "status:      active" in run_admin(url, "users", "show", "alice")[1]
    assert run_admin(url, "users", "revoke-sessions", "alice")[0] == 0
    assert run_admin(url, "users", "reset-password", "alice")[:2] == (
        0,
        "password of Alice reset (sessions ended)\n",
    )
    assert run_admin(url, "users", "delete", "alice")[:2] == (0, "deleted user Alice\n")

    for action in ("show", "delete", "disable", "enable", "reset-password", "revoke-sessions"):
        code, _, err = run_admin(url, "users", action, "alice")
        assert (code, err) == (1, "error: no user named 'alice'\n"), action
    assert run_admin(url, "users", "show", "no such name!")[0] == 1
    for usage in (
        ["users", "frob"],
        ["users", "show"],
        ["users", "list", "alice"],
        ["users", "list", "--port", "99999"],
        ["db", "sideways"],
    ):
        assert run_admin(url, *usage)[0] == 2, usage
    assert admin.main([]) == 2 and admin.main(["serve"]) == 2


def test_passwords_come_from_the_environment_or_a_prompt(monkeypatch: Any) -> None:
    assert admin.read_password({"PRESENCE_PASSWORD": "from-env-1"}) == "from-env-1"
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    answers = iter(["typed-pass-1", "typed-pass-1", "one-pass-11", "other-pass-2"])
    assert admin.read_password({}, prompt=lambda _p: next(answers)) == "typed-pass-1"
    with pytest.raises(admin.UsageError):
        admin.read_password({}, prompt=lambda _p: next(answers))


def test_run_py_dispatches_to_the_admin_commands(tmp_path: Path) -> None:
    """`python run.py users ...` (and the env vars of the server's options) reach admin."""
    import subprocess

    env = dict(
        os.environ,
        PRESENCE_DATA_DIR=str(tmp_path),
        PRESENCE_PASSWORD=PASSWORD,
        PRESENCE_BCRYPT_ROUNDS="4",
    )
    result = subprocess.run(
        [sys.executable, "run.py", "users", "add", "carol"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "created user carol\n"
    assert "no --redis-url" in result.stderr  # the limitation is said where it applies
    assert (tmp_path / "presence.db").exists()


# -- against a running app ------------------------------------------------------------------
async def admin_process(
    settings: Settings, *args: str, password: str = PASSWORD
) -> tuple[int, str, str]:
    """The real command in its own process, as an operator runs it, beside the app."""
    options = [
        "--database-url",
        settings.database_url,
        "--redis-prefix",
        settings.redis_prefix,
        "--bcrypt-rounds",
        "4",
    ]
    if settings.redis_url:
        options += ["--redis-url", settings.redis_url]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "run.py",
        *args,
        *options,
        cwd=ROOT,
        env=dict(os.environ, PRESENCE_PASSWORD=password),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def reach(settings: Settings) -> float:
    """How long the running app may take to apply an admin command: at once with Redis,
    within the periodic database check without it (with slack for a loaded machine)."""
    return 5.0 if settings.redis_url else DATABASE_CHECK_INTERVAL + 6.0


@pytest.mark.gen_test(timeout=60)
async def test_delete_removes_the_user_live_everywhere(
    services: Any, settings: Settings, user_factory: Any
) -> None:
    alice, bob = await user_factory("alice"), await user_factory("bob")
    watcher, victim = await alice.connect(), await bob.connect()
    await watcher.wait_status("bob", True)
    code, out, err = await admin_process(settings, "users", "delete", "BOB")
    assert (code, out) == (0, "deleted user bob\n"), err
    assert await victim.wait_closed(reach(settings)) == CLOSE_SESSION_ENDED
    message = await watcher.wait_for(lambda m: m.get("type") == "removed", reach(settings))
    assert message == {"type": "removed", "username": "bob"}
    await asyncio.sleep(1.0)  # bob's sockets detaching must not bring him back
    assert watcher.state.keys() == {"alice"}
    assert [u["username"] for u in await alice.users()] == ["alice"]
    page = await alice.request("GET", "/")
    assert b'data-username="alice"' in page.body and b'data-username="bob"' not in page.body
    fresh = await alice.connect()
    assert fresh.state.keys() == {"alice"}
    assert "bob" not in await services.sync.backend.states()  # a resync will not revive him
    await services.sync.resync("store_reset")
    assert [u["username"] for u in await alice.users()] == ["alice"]
    # The name is free again, and a new bob shows up like any sign-up.
    again = await user_factory("bob")
    await watcher.wait_status("bob", False)
    await again.connect()
    await watcher.wait_status("bob", True)


@pytest.mark.gen_test(timeout=60)
async def test_disable_ends_sessions_and_refuses_login(
    settings: Settings, user_factory: Any, make_client: Any
) -> None:
    bob = await user_factory("bob")
    sock = await bob.connect()
    code, out, err = await admin_process(settings, "users", "disable", "bob")
    assert (code, out) == (0, "disabled user bob (sessions ended)\n"), err
    assert await sock.wait_closed(reach(settings)) == CLOSE_SESSION_ENDED
    with pytest.raises(ClientError, match="answered 401"):
        await bob.users()  # the session is gone
    refused = await make_client().login("bob", PASSWORD, check=False)
    wrong = await make_client().login("bob", "not-the-password", check=False)
    assert refused.code == wrong.code == 401
    assert LOGIN_FAILED.encode() in refused.body  # the same answer as a wrong password
    assert (await admin_process(settings, "users", "enable", "bob"))[0] == 0
    assert (await make_client().login("bob", PASSWORD, check=False)).code == 302


@pytest.mark.gen_test(timeout=60)
async def test_reset_password_and_revoke_sessions_close_sockets(
    settings: Settings, user_factory: Any, make_client: Any
) -> None:
    bob = await user_factory("bob")
    sock = await bob.connect()
    code, out, _ = await admin_process(settings, "users", "revoke-sessions", "bob")
    assert (code, out) == (0, "ended 1 session(s) of bob\n")
    assert await sock.wait_closed(reach(settings)) == CLOSE_SESSION_ENDED
    again = make_client()
    await again.login("bob", PASSWORD)
    sock = await again.connect()
    code, _, _ = await admin_process(
        settings, "users", "reset-password", "bob", password=NEW_PASSWORD
    )
    assert code == 0
    assert await sock.wait_closed(reach(settings)) == CLOSE_SESSION_ENDED
    assert (await make_client().login("bob", PASSWORD, check=False)).code == 401
    assert (await make_client().login("bob", NEW_PASSWORD, check=False)).code == 302


@pytest.mark.gen_test(timeout=60)
async def test_closed_signup_and_users_add(
    services: Any, settings: Settings, user_factory: Any, make_client: Any
) -> None:
    alice = await user_factory("alice")
    watcher = await alice.connect()
    services.settings = replace(services.settings, signup="closed")
    page = await make_client().request("GET", "/signup")
    assert page.code == 200 and b"Sign-up is closed" in page.body
    assert b'action="/signup"' not in page.body  # no form to fill in for nothing
    refused = await make_client().signup("mallory", PASSWORD, check=False)
    assert refused.code == 403 and b"Sign-up is closed" in refused.body
    code, out, err = await admin_process(settings, "users", "add", "Carol")
    assert (code, out) == (0, "created user Carol\n"), err
    await watcher.wait_status("Carol", False, timeout=reach(settings))  # listed live
    assert (await make_client().login("carol", PASSWORD, check=False)).code == 302


def test_signup_option_is_validated() -> None:
    from presence_app.config import ConfigError, load_settings

    assert load_settings(["--signup", "closed"], env={}).signup == "closed"
    assert load_settings([], env={"PRESENCE_SIGNUP": "closed"}).signup == "closed"
    with pytest.raises(ConfigError, match="--signup must be open or closed"):
        load_settings(["--signup", "invite"], env={})


@pytest.mark.parametrize(
    "args", [["users", "list"], ["users", "delete", "bob"], ["db", "upgrade"], ["db", "current"]]
)
def test_an_unreachable_database_is_one_clear_line(args: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = admin.main([*args, "--database-url", "postgresql://u:secret@127.0.0.1:1/none"], out, err)
    assert code == 1
    assert err.getvalue().startswith("error: ") and err.getvalue().count("\n") == 1
    assert "127.0.0.1:1" in err.getvalue() and "secret" not in err.getvalue()


@pytest.mark.gen_test
async def test_a_pending_row_of_a_deleted_account_does_not_block_the_ledger(
    services: Any, user_factory: Any
) -> None:
    """A socket count waiting to be written for an account deleted meanwhile (a foreign key
    violation) must not make every later write of the online-users table fail."""
    from sqlalchemy import delete, select

    from presence_app.db.database import OnlineUser, User

    await user_factory("alice")
    await user_factory("bob")
    async with services.db.read() as session:
        ids = dict((await session.execute(select(User.username, User.id))).all())
    async with services.db.write() as session:
        await session.execute(delete(User).where(User.username == "bob"))
    services.ledger.mark(ids["bob"], 1)
    services.ledger.mark(ids["alice"], 2)
    await services.ledger.flush()
    async with services.db.read() as session:
        rows = (
            await session.execute(
                select(OnlineUser.user_id, OnlineUser.connections).where(
                    OnlineUser.node_id == "test-node"
                )
            )
        ).all()
    assert [tuple(r) for r in rows] == [(ids["alice"], 2)]
