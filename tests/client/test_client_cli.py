"""``presence watch`` and ``presence who`` as processes against a real server, both brokers."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys

import pytest

from presence_app.client import PresenceClient, PresenceSocket
from tests.support.apps import AppProcess, clean_env
from tests.support.clients import PASSWORD, is_presence, logged_in, sign_up
from tests.support.env import ROOT
from tests.support.lines import Lines
from tests.support.processes import stop_process

pytestmark = pytest.mark.cluster
CLOCK = r"\d\d:\d\d:\d\d"


def run_cli(*args: str, **env: str) -> subprocess.Popen[str]:
    """``python run.py <args>`` (the ``presence`` command) from a directory outside the
    repository, stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT.parent,
        env=clean_env(**env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def online(url: str, name: str) -> PresenceSocket:
    return await (await logged_in(url, name)).connect()


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Ctrl+C (SIGKILL if it is still running 10 s later): the exit code and stderr."""
    stop_process(proc, signal.SIGINT, 10)
    assert proc.stderr is not None
    return proc.returncode, proc.stderr.read()


def test_watch_json_prints_the_snapshot_then_each_change(server: AppProcess) -> None:
    sign_up(server.url, "alice", "bob")
    proc = run_cli("watch", server.url, "--user", "alice", "--json", PRESENCE_PASSWORD=PASSWORD)
    lines = Lines(proc)
    try:
        snapshot = lines.expect_json(lambda m: True)
        assert snapshot["type"] == "snapshot" and snapshot["me"] == "alice"
        assert {u["username"]: u["online"] for u in snapshot["users"]} == {
            "alice": True,
            "bob": False,
        }

        async def scenario() -> None:
            bob = await online(server.url, "bob")
            await asyncio.to_thread(lines.expect_json, is_presence("bob", True))
            await bob.close()
            await asyncio.to_thread(lines.expect_json, is_presence("bob", False))

        asyncio.run(scenario())
        server.restart()  # watch reconnects
        assert lines.expect_json(lambda m: m["type"] == "disconnected")["code"] == 1001
        back = lines.expect_json(lambda m: m["type"] == "reconnected")
        assert {u["username"] for u in back["users"]} == {"alice", "bob"}
        asyncio.run(scenario())  # and goes on reporting
        assert all(json.loads(line) for line in lines.seen)  # every line is one JSON object
    finally:
        code, stderr = interrupt(proc)
    assert code == 0, stderr
    assert "Traceback" not in stderr


def test_watch_prints_the_list_then_one_line_per_change(server: AppProcess) -> None:
    sign_up(server.url, "alice", "bob")
    proc = run_cli("watch", server.url, "-u", "alice", PRESENCE_PASSWORD=PASSWORD)
    lines = Lines(proc)
    try:
        assert re.fullmatch(rf"{CLOCK} connected as alice: 1 of 2 online", lines.expect(bool))
        assert [lines.expect(bool), lines.expect(bool)] == ["  alice online", "  bob offline"]

        async def scenario() -> None:
            bob = await online(server.url, "bob")
            line = await asyncio.to_thread(lines.expect, bool)
            assert re.fullmatch(rf"{CLOCK} bob online", line), line
            await bob.close()
            line = await asyncio.to_thread(lines.expect, bool)
            assert re.fullmatch(rf"{CLOCK} bob offline", line), line

        asyncio.run(scenario())
    finally:
        code, stderr = interrupt(proc)
    assert code == 0, stderr


def test_who_prints_who_is_online_and_exits(server: AppProcess) -> None:
    sign_up(server.url, "alice", "bob", "carol")

    async def scenario() -> None:
        socks = [await online(server.url, name) for name in ("bob", "alice")]
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(ROOT / "run.py"), "who", server.url, "--user", "carol"],
            env=clean_env(PRESENCE_PASSWORD=PASSWORD),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "alice\nbob\n", "")
        # --json, and the password as one line of stdin when there is no terminal
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(ROOT / "run.py"), "who", server.url, "--json"],
            env=clean_env(PRESENCE_USER="carol"),
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert [u["username"] for u in json.loads(done.stdout)["online"]] == ["alice", "bob"]
        reader = PresenceClient(server.url)
        await reader.login("bob", PASSWORD)
        users = {u["username"]: u["online"] for u in await reader.users()}
        assert users["carol"] is False  # asking opened no socket
        for sock in socks:
            await sock.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "args,env,code,message",
    [
        (
            ["who", "{url}", "--user", "alice"],
            {"PRESENCE_PASSWORD": "wrong password"},
            1,
            "who: error: login failed (HTTP 401): Wrong username or password.",
        ),
        (
            ["watch", "{url}", "--user", "alice"],
            {"PRESENCE_PASSWORD": "wrong password"},
            1,
            "watch: error: login failed (HTTP 401)",
        ),
        (
            ["watch", "{url}"],
            {"PRESENCE_PASSWORD": PASSWORD},
            2,
            "--user NAME (or PRESENCE_USER) is required",
        ),
        (
            ["watch", "http://127.0.0.1:1", "--user", "alice"],
            {"PRESENCE_PASSWORD": PASSWORD},
            1,
            "watch: error: ",
        ),
        (["who"], {}, 2, "the following arguments are required: url"),
    ],
)
def test_cli_failures_are_one_line_and_an_exit_code(server, args, env, code, message):
    sign_up(server.url, "alice")
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *[a.format(url=server.url) for a in args]],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == code, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_without_websockets_the_commands_say_what_to_install() -> None:
    code = (
        "import sys; sys.modules['websockets'] = None; import run; "
        "sys.exit(run.main(['watch', 'http://127.0.0.1:1', '--user', 'a']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert (
        done.stderr == "run.py: error: 'watch' needs the websockets package: "
        "pip install 'presence[client]'\n"
    )
