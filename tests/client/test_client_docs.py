"""docs/CLIENT.md's examples run as written: the bot (through a server restart), the curl
steps and the raw WebSocket, each a fenced block taken from the page."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.apps import AppProcess, clean_env
from tests.support.clients import PASSWORD, logged_in, sign_up
from tests.support.env import ROOT
from tests.support.lines import Lines
from tests.support.processes import stop_process

pytestmark = pytest.mark.cluster
DOC = ROOT / "docs" / "CLIENT.md"


def fenced(heading: str, language: str) -> str:
    """The first ``language`` block under ``heading`` in docs/CLIENT.md."""
    text = DOC.read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert found, f"docs/CLIENT.md: no {language} block under '## {heading}'"
    return found.group(1)


def test_the_bot_example_runs_as_written(server: AppProcess, tmp_path: Path) -> None:
    sign_up(server.url, "greeter", "bob")
    script = tmp_path / "greeter.py"
    script.write_text(fenced("A complete bot", "python"))
    bot = subprocess.Popen(  # a script of its own, run from elsewhere, as a user would
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        env=clean_env(
            PYTHONPATH=str(ROOT),  # the repository is not installed: let it import the client
            PRESENCE_URL=server.url,
            PRESENCE_USER="greeter",
            PRESENCE_PASSWORD=PASSWORD,
            PRESENCE_FRIEND="bob",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = Lines(bot)
    try:
        assert lines.expect(bool) == "online now: greeter"

        async def bob_visits() -> None:
            """bob comes online, the bot says so, bob leaves."""
            sock = await (await logged_in(server.url, "bob")).connect()
            await asyncio.to_thread(lines.expect, lambda line: line.startswith("bob is "))
            await sock.close()

        asyncio.run(bob_visits())
        assert lines.seen[-1] == "bob is here, hello!"
        lines.expect(lambda line: line == "bob is offline")
        asyncio.run(bob_visits())
        assert lines.seen[-1] == "bob is online"
        lines.expect(lambda line: line == "bob is offline")

        async def bob_stays() -> None:
            sock = await (await logged_in(server.url, "bob")).connect()
            await asyncio.to_thread(lines.expect, lambda line: line == "bob is online")
            await asyncio.to_thread(server.restart)  # bob's socket dies with the server
            await asyncio.to_thread(lines.expect, lambda line: line.startswith("back; online:"))
            await asyncio.to_thread(lines.expect, lambda line: line.startswith("bob is offline"))
            await sock.close()

        asyncio.run(bob_stays())
        assert "connection lost (code 1001), reconnecting" in lines.seen
        assert "back; online: greeter" in lines.seen
        asyncio.run(bob_visits())  # the bot still reports, on its new connection
        assert lines.seen[-1] == "bob is online"
    finally:
        stop_process(bot, signal.SIGINT, 10)  # Ctrl+C
    assert bot.stderr is not None
    stderr = bot.stderr.read()
    assert bot.returncode == 0, stderr
    assert "Traceback" not in stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_raw_protocol_steps_run_as_written(server: AppProcess, tmp_path: Path) -> None:
    sign_up(server.url, "alice")
    steps = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", fenced("Other languages: the raw protocol", "sh")],
        cwd=tmp_path,
        env=clean_env(BASE=server.url, PRESENCE_PASSWORD=PASSWORD),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert steps.returncode == 0, steps.stderr
    out = steps.stdout.splitlines()
    assert out[0] == "login: 302"
    assert [u["username"] for u in json.loads(out[1])["users"]] == ["alice"]
    cookie = out[2].removeprefix("Cookie: ")
    assert re.fullmatch(r"presence_session=\S+", cookie), out[2]

    raw = tmp_path / "raw.py"
    raw.write_text(fenced("Other languages: the raw protocol", "python"))
    ws_url = server.url.replace("http://", "ws://") + "/ws"
    done = subprocess.run(
        [sys.executable, str(raw)],
        cwd=tmp_path,
        capture_output=True,
        env=clean_env(PRESENCE_COOKIE=cookie, PRESENCE_WS=ws_url),
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "snapshot alice ['alice']\n"), done.stderr
