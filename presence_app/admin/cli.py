"""Operator commands: ``presence db upgrade|current`` and ``presence users ...``.

They take the server's options (flags or ``PRESENCE_*`` variables, one table in config.py),
so they reach the same database and Redis as the server they administer. Passwords come from
``PRESENCE_PASSWORD`` or a prompt (or one line of standard input when it is not a terminal),
never from a flag: flags show in ``ps`` and shell histories.

Exit codes: 0 done, 1 no such user (or the change could not be made: the account exists, the
database or Redis is unreachable), 2 usage (unknown command, bad option, a name or password
the sign-up rules refuse).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from presence_app.accounts.errors import AccountError, UsernameTaken
from presence_app.accounts.passwords import PasswordHasher
from presence_app.accounts.service import AccountService
from presence_app.admin.users import UserAdmin, UserInfo, UserNotFound
from presence_app.config import ConfigError, Settings, make_parser, settings_from_args
from presence_app.db.database import Database

OK, FAILED, USAGE = 0, 1, 2
DB_ACTIONS = {
    "upgrade": "migrate the schema to the latest revision",
    "current": "print the schema revision and the latest one",
}
USER_ACTIONS = {
    "list": "every account",
    "show": "one account",
    "add": "create an account (password from PRESENCE_PASSWORD or a prompt)",
    "disable": "refuse logins and end every session",
    "enable": "allow logins again",
    "delete": "delete the account everywhere",
    "reset-password": "set a new password and end every session",
    "revoke-sessions": "end every session (sockets close with 4001)",
}
NEEDS_NAME = set(USER_ACTIONS) - {"list"}
CHANGES = NEEDS_NAME - {"show"}


class UsageError(Exception):
    pass


def make_admin_parser(group: str) -> argparse.ArgumentParser:
    actions = DB_ACTIONS if group == "db" else USER_ACTIONS
    parser = make_parser(os.environ)
    parser.prog = f"presence {group}"
    parser.usage = (
        f"%(prog)s {{{','.join(actions)}}}"
        + (" [NAME]" if group == "users" else "")
        + " [server options: --database-url, --redis-url, --redis-prefix, --data-dir, ...]"
    )
    parser.description = "; ".join(f"{name}: {what}" for name, what in actions.items())
    parser.add_argument("action", choices=list(actions), help="what to do")
    if group == "users":
        parser.add_argument("name", nargs="?", help="the username (any case)")
    return parser


def main(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``argv`` starts with ``db`` or ``users``; returns the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    if not argv or argv[0] not in ("db", "users"):
        print(
            "usage: presence db {upgrade,current} | presence users "
            "{" + ",".join(USER_ACTIONS) + "} [NAME] [options]",
            file=err,
        )
        return USAGE
    group = argv[0]
    parser = make_admin_parser(group)
    try:
        args = parser.parse_args(list(argv[1:]))
    except SystemExit as exc:  # argparse printed the usage (or --help)
        return int(exc.code or 0) and USAGE
    try:
        settings = settings_from_args(args)
        name = getattr(args, "name", None)
        if group == "users" and (args.action in NEEDS_NAME) != bool(name):
            raise UsageError(
                f"users {args.action} "
                + ("needs a NAME" if args.action in NEEDS_NAME else "takes no NAME")
            )
        if group == "db":
            return asyncio.run(run_db(settings, args.action, out, err))
        password = read_password() if args.action in ("add", "reset-password") else ""
        return asyncio.run(run_users(settings, args.action, name or "", password, out, err))
    except (ConfigError, UsageError) as exc:
        print(f"{parser.prog}: error: {exc}", file=err)
        return USAGE


def read_password(
    env: dict[str, str] | None = None, prompt: Callable[[str], str] = getpass.getpass
) -> str:
    """``PRESENCE_PASSWORD``, else a prompt asked twice, else (no terminal) one stdin line."""
    env = dict(os.environ) if env is None else env
    if "PRESENCE_PASSWORD" in env:
        return env["PRESENCE_PASSWORD"]
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    password = prompt("New password: ")
    if prompt("Repeat it: ") != password:
        raise UsageError("the two passwords do not match")
    return password


async def run_db(settings: Settings, action: str, out: TextIO, err: TextIO) -> int:
    prepare_sqlite_dir(settings)
    db = Database(settings.database_url)
    try:
        return await db_action(db, action, out)
    except Exception as exc:  # unreachable, refused, a failing migration: one clear line
        url = db.engine.url.render_as_string(hide_password=True)
        print(
            f"error: database {url}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}",
            file=err,
        )
        return FAILED
    finally:
        await db.close()


async def db_action(db: Database, action: str, out: TextIO) -> int:
    if action == "upgrade":
        before, after = await db.upgrade_schema()
        print(
            f"database at revision {after}"
            + ("" if before == after else f" (was {before or 'empty'})"),
            file=out,
        )
    else:
        from presence_app.db import migrations

        print(
            f"current: {await db.schema_revision() or 'none'}\n"
            f"latest: {migrations.head_revision()}",
            file=out,
        )
    return OK


def prepare_sqlite_dir(settings: Settings) -> None:
    if settings.database_url.startswith("sqlite") and ":memory:" not in settings.database_url:
        path = settings.database_url.split(":///", 1)[1]
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)


async def run_users(
    settings: Settings, action: str, name: str, password: str, out: TextIO, err: TextIO
) -> int:
    """Open the database (upgraded, as the server would) and, for changes with Redis, the
    backend; run one use case; close everything."""
    from presence_app.backends import make_backend

    prepare_sqlite_dir(settings)
    db = Database(settings.database_url)
    hasher = PasswordHasher(settings.bcrypt_rounds, 1)
    backend = make_backend(
        settings.broker_url, settings.redis_prefix, timeout=settings.redis_timeout
    )
    # Redis being unreachable is reported below, in one line: not as a warning too.
    logging.getLogger("presence_app.backends.redis_pubsub").setLevel(logging.ERROR)
    try:
        try:
            await db.upgrade_schema()
        except Exception as exc:
            url = db.engine.url.render_as_string(hide_password=True)
            print(
                f"error: cannot open the database {url}: {exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0][:200]}",
                file=err,
            )
            return FAILED
        if action in CHANGES and settings.redis_url:
            await backend.connect()
            if backend.problem:  # change nothing that running servers would not hear of
                print(f"error: {backend.problem}; nothing changed", file=err)
                return FAILED
        admin = UserAdmin(db, AccountService(db, hasher, settings.session_days), backend)
        code = await run_action(admin, action, name, password, out)
        if action in CHANGES and not settings.redis_url and code == OK:
            print(
                "note: no --redis-url: a running server applies this within a few seconds "
                "(its periodic database check)",
                file=err,
            )
        return code
    except UserNotFound as exc:
        print(f"error: {exc}", file=err)
        return FAILED
    except AccountError as exc:  # the words the sign-up page would show
        print(f"error: {exc}", file=err)
        return FAILED if isinstance(exc, UsernameTaken) else USAGE
    except Exception as exc:  # unreachable database, Redis failing mid-way: one clear line
        print(f"error: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}", file=err)
        return FAILED
    finally:
        await backend.close()
        hasher.close()
        await db.close()


async def run_action(admin: UserAdmin, action: str, name: str, password: str, out: TextIO) -> int:
    if action == "list":
        users = await admin.all()
        print(
            f"{'USERNAME':<32}  {'STATUS':<8}  {'SESSIONS':>8}  {'LAST SEEN':<20}  CREATED",
            file=out,
        )
        for user in users:
            print(
                f"{user.username:<32}  {status(user):<8}  {user.sessions:>8}  "
                f"{when(user.last_seen):<20}  {when(user.created_at)}",
                file=out,
            )
        print(f"{len(users)} user(s)", file=out)
    elif action == "show":
        user = await admin.show(name)
        for label, value in (
            ("username", user.username),
            ("status", status(user)),
            ("disabled at", when(user.disabled_at)),
            ("sessions", str(user.sessions)),
            ("last seen", when(user.last_seen)),
            ("created", when(user.created_at)),
        ):
            print(f"{label + ':':<13}{value}", file=out)
    elif action == "add":
        print(f"created user {await admin.add(name, password)}", file=out)
    elif action in ("disable", "enable"):
        stored = await admin.set_disabled(name, action == "disable")
        print(
            f"{action}d user {stored}" + (" (sessions ended)" if action == "disable" else ""),
            file=out,
        )
    elif action == "delete":
        print(f"deleted user {await admin.delete(name)}", file=out)
    elif action == "reset-password":
        print(
            f"password of {await admin.reset_password(name, password)} reset (sessions ended)",
            file=out,
        )
    else:
        count = await admin.revoke_sessions(name)
        print(f"ended {count} session(s) of {name}", file=out)
    return OK


def status(user: UserInfo) -> str:
    return "disabled" if user.disabled_at else "active"


def when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
