"""``presence watch URL --user NAME`` and ``presence who URL --user NAME``: the client for
people and shell scripts (run.py dispatches here; see docs/CLIENT.md).

``watch`` prints who is online, then one line per change (``12:03:04 bob online``), and
reconnects across server restarts; ``--json`` prints one JSON object per message instead
(the snapshot first). ``who`` prints who is online now and exits. The password comes from
``PRESENCE_PASSWORD``, else a prompt (one line of standard input when it is not a terminal),
never a flag: flags show in ``ps`` and shell histories.

Exit codes: 0 done (``watch``: stopped with Ctrl+C or SIGTERM), 1 the server refused or
could not be reached (login failed, session ended), 2 usage, 130 interrupted at the password
prompt (or ``who`` while it asks the server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TextIO

from presence_app.client.errors import ClientError
from presence_app.client.http import PresenceClient
from presence_app.client.socket import PresenceSocket, status_word
from presence_app.client.view import Message

OK, FAILED, USAGE = 0, 1, 2


def make_parser(
    prog: str = "presence", env: Mapping[str, str] | None = None
) -> argparse.ArgumentParser:
    """The ``watch`` and ``who`` commands; ``--user`` defaults to ``PRESENCE_USER``."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog=prog, description="Watch a Presence server.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{watch,who}")
    for name, text in (
        ("watch", "print who is online, then every change, until Ctrl+C"),
        ("who", "print who is online now"),
    ):
        command = commands.add_parser(
            name,
            help=text,
            description=text + ". The password comes from PRESENCE_PASSWORD or a prompt.",
        )
        command.add_argument("url", help="the server, e.g. http://127.0.0.1:8888")
        command.add_argument(
            "--user",
            "-u",
            default=env.get("PRESENCE_USER"),
            help="log in as this user (default: PRESENCE_USER)",
        )
        command.add_argument(
            "--json", action="store_true", help="one JSON object per line instead of text"
        )
        if name == "watch":
            command.add_argument(
                "--no-reconnect",
                action="store_true",
                help="exit (code 1) when the connection drops",
            )
    return parser


def read_password(env: Mapping[str, str], prompt: Callable[[str], str] = getpass.getpass) -> str:
    """``PRESENCE_PASSWORD``, else a prompt, else (no terminal) one line of stdin."""
    if "PRESENCE_PASSWORD" in env:
        return env["PRESENCE_PASSWORD"]
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    return prompt("Password: ")


def main(
    argv: Sequence[str],
    out: TextIO | None = None,
    err: TextIO | None = None,
    env: Mapping[str, str] | None = None,
    prog: str = "presence",
) -> int:
    """``argv`` starts with ``watch`` or ``who``; returns the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    env = os.environ if env is None else env
    try:
        args = make_parser(prog, env).parse_args(list(argv))
    except SystemExit as exc:  # --help is 0, a usage error 2
        return int(exc.code or 0)
    if not args.user:
        print(f"{prog} {args.command}: error: --user NAME (or PRESENCE_USER) is required", file=err)
        return USAGE
    command = watch if args.command == "watch" else who
    try:
        password = read_password(env)
        # The client is made inside the loop: its HTTP client belongs to the running loop.
        return asyncio.run(command(args, password, out))
    except ClientError as exc:
        print(f"{prog} {args.command}: error: {exc}", file=err)
        return FAILED
    except KeyboardInterrupt:  # at the prompt or before watching began (watching: exit 0)
        return 130
    except BrokenPipeError:  # ``presence watch ... | head``: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK


async def who(args: argparse.Namespace, password: str, out: TextIO) -> int:
    """Log in, read ``/api/users``, print the online ones, log out (no socket is opened, so
    asking does not make the asker show online)."""
    client = PresenceClient(args.url, username=args.user, password=password)
    await client.relogin()
    try:
        online = [u for u in await client.users() if u["online"]]
    finally:
        await client.logout()
    online.sort(key=lambda u: (u["username"].lower(), u["username"]))
    if args.json:
        print(json.dumps({"online": online}), file=out, flush=True)
    else:
        for user in online:
            print(user["username"], file=out, flush=True)
    return OK


async def watch(args: argparse.Namespace, password: str, out: TextIO) -> int:
    """Follow the stream until SIGINT/SIGTERM (0) or its end (1: closed, session ended)."""
    client = PresenceClient(args.url, username=args.user, password=password)
    stop = asyncio.Event()
    with stop_on_signals(stop):
        sock = await client.connect(reconnect=not args.no_reconnect)
        try:
            show = print_json if args.json else TextPrinter()
            show(sock.last_message or {}, sock, out)
            await first_of(follow(sock, show, out), stop.wait())
        finally:
            await sock.close()
            try:  # leave no session behind; a server that is gone has nothing to clean up
                await asyncio.wait_for(client.logout(), 3)
            except (TimeoutError, ClientError, OSError):
                pass
    if not stop.is_set():
        raise ClientError(f"the connection closed (code {sock.close_code})")
    return OK


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Ctrl+C and SIGTERM set ``stop`` (a clean exit 0) instead of raising."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def first_of(*waits: Awaitable[Any]) -> None:
    """Run ``waits`` until one ends, cancel the others; re-raise what the first raised."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()


async def follow(
    sock: PresenceSocket, show: Callable[[Message, PresenceSocket, TextIO], None], out: TextIO
) -> None:
    """Show every message of ``sock`` until the stream ends."""
    async for event in sock:
        show(event, sock, out)


def print_json(message: Message, sock: PresenceSocket, out: TextIO) -> None:
    """One JSON object per line, as the server sent it (markers as documented)."""
    if message.get("type") != "pong":
        print(json.dumps(message), file=out, flush=True)


class TextPrinter:
    """The list after connecting, then one timestamped line per change of a user's status
    (an event that repeats what was shown, as after a reconnect, prints nothing)."""

    def __init__(self) -> None:
        self.shown: dict[str, bool] = {}

    def __call__(self, message: Message, sock: PresenceSocket, out: TextIO) -> None:
        for line in self.lines(message, sock):
            print(
                f"{time.strftime('%H:%M:%S')} {line}" if line[0] != " " else line,
                file=out,
                flush=True,
            )

    def lines(self, message: Message, sock: PresenceSocket) -> list[str]:
        """What to print for ``message`` (already applied to ``sock``'s view)."""
        kind = message.get("type")
        if kind == "snapshot":
            self.shown = {name: bool(user["online"]) for name, user in sock.state.items()}
            return [f"connected as {sock.me}: {summary(sock)}"] + [
                f"  {user_line(sock.state[name])}" for name in listed(sock.state)
            ]
        if kind == "reconnected":
            return [f"reconnected after {message.get('offline_for', 0):.1f} s: {summary(sock)}"]
        if kind == "caught_up":
            return [f"caught up: {summary(sock)}"]
        if kind == "disconnected":
            return [f"connection lost (code {message.get('code')}), reconnecting"]
        if kind == "removed":
            self.shown.pop(str(message.get("username")), None)
            return [f"{message.get('username')} removed"]
        if kind != "presence" or self.shown.get(message["username"]) == message["online"]:
            return []
        self.shown[message["username"]] = bool(message["online"])
        missed = " (while disconnected)" if message.get("missed") else ""
        return [f"{message['username']} {status_word(message['online'])}{missed}"]


def summary(sock: PresenceSocket) -> str:
    """``2 of 3 online``."""
    return f"{len(sock.online_users())} of {len(sock.state)} online"


def listed(state: dict[str, Any]) -> list[str]:
    """Online first, then by lower-case name: the page's order."""
    return sorted(state, key=lambda n: (not state[n]["online"], n.lower(), n))


def user_line(user: Message) -> str:
    """``bob online``, ``carol offline (last seen ...)``."""
    if user["online"]:
        return f"{user['username']} online"
    seen = user.get("last_seen")
    return f"{user['username']} offline" + (f" (last seen {seen})" if seen else "")
