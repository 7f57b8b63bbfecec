"""``python run.py`` as an operator runs it: zero configuration, signals, one-line errors."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import psutil
import pytest
import tornado.netutil

from presence_app.client import PresenceClient
from tests.conftest import PASSWORD
from tests.support.apps import STOP_SECONDS, clean_env
from tests.support.env import ROOT
from tests.support.http import http_json
from tests.support.ports import free_port


def test_runs_with_no_configuration(app_process, tmp_path):
    server = app_process()
    url, printed_pid = server.printed
    assert url == f"http://127.0.0.1:{server.port}/"
    status, body = http_json(url + "healthz")
    assert status == 200 and body["status"] == "ok" and body["node"]
    data_dir = tmp_path / "data"
    assert (data_dir / "presence.db").is_file()
    secret = data_dir / "cookie_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_text().strip()) >= 32
    # No launcher in between: the process we started is the one listening.
    assert printed_pid == server.proc.pid
    process = psutil.Process(server.proc.pid)
    listening = [c for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    assert [c.laddr.port for c in listening] == [server.port]
    assert process.children(recursive=True) == []
    took = server.terminate(STOP_SECONDS)
    assert server.proc.returncode == 0, server.log()
    assert took < STOP_SECONDS
    assert "Traceback" not in server.log()


async def _sign_up_and_wait_for_shutdown(url: str, proc: subprocess.Popen) -> dict[str, str]:
    client = PresenceClient(url)
    await client.signup("alice", PASSWORD)
    sock = await client.connect()
    assert sock.online("alice") is True
    proc.send_signal(signal.SIGTERM)
    assert await sock.wait_closed(timeout=STOP_SECONDS) == 1001
    return client.cookies


async def _users_after_restart(url: str, cookies: dict[str, str]) -> list[dict]:
    client = PresenceClient(url)
    client.cookies = dict(cookies)
    return await client.users()


def test_sigterm_closes_sockets_1001_and_a_restart_keeps_sessions(app_process, tmp_path):
    server = app_process()
    cookies = asyncio.run(_sign_up_and_wait_for_shutdown(server.url + "/", server.proc))
    assert server.proc.wait(timeout=STOP_SECONDS) == 0
    assert "Traceback" not in server.log()
    again = app_process(data_dir=tmp_path / "data")
    users = asyncio.run(_users_after_restart(again.url + "/", cookies))  # same secret file
    assert [(u["username"], u["online"]) for u in users] == [("alice", False)]
    assert users[0]["last_seen"] is not None
    again.terminate(STOP_SECONDS)
    assert again.proc.returncode == 0


def run_bad(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run.py", "--data-dir", str(tmp_path / "data"), *args],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, mentions: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    # One error line; anything else on stderr is an ordinary log line (e.g. the generated
    # cookie secret), never part of an error report.
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("run.py: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert all(" INFO " in line for line in lines[:-1]), result.stderr
    assert mentions in errors[0]


@pytest.mark.parametrize(
    "args,mentions",
    [
        (["--port", "abc"], "--port"),
        (["--bcrypt-rounds", "2"], "--bcrypt-rounds"),
        (["--processes", "2"], "--redis-url"),
        (["--database-url", "mysql://x"], "--database-url"),
        (["--session-days", "inf"], "--session-days"),
        (["--database-url", "postgresql://nobody@127.0.0.1:1/nothing"], "database"),
    ],
    ids=[
        "port-abc",
        "bcrypt-2",
        "processes-without-redis",
        "mysql",
        "session-days-inf",
        "unreachable-database",
    ],
)
def test_bad_configuration_is_one_stderr_line_and_exit_2(tmp_path, args, mentions):
    assert_one_line_error(run_bad(tmp_path, "--port", str(free_port()), *args), mentions)


def test_port_in_use_is_one_stderr_line_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_bad(tmp_path, "--port", str(port))
    assert_one_line_error(result, str(port))


def test_unusable_data_dir_is_one_stderr_line_and_exit_2(tmp_path):
    (tmp_path / "data").write_text("a file, not a directory")
    assert_one_line_error(run_bad(tmp_path, "--port", str(free_port())), "data directory")


def test_a_hung_shutdown_is_cut_short_by_the_watchdog() -> None:
    """Whatever hangs after SIGTERM (here a non-daemon thread that would keep the interpreter
    waiting for 30 s), the process is gone at the watchdog's deadline, with exit code 1 and
    one error line."""
    code = (
        "import threading, time, run\n"
        "run.setup_logging(run.load_settings([]))\n"
        "run.start_shutdown_watchdog(0.5)\n"
        "threading.Thread(target=time.sleep, args=(30,)).start()\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=20
    )
    took = time.monotonic() - started
    assert done.returncode == 1 and took < 10, (done.returncode, took, done.stderr)
    assert "Shutdown did not finish within 0.5 s; exiting now" in done.stderr


def test_listen_backlog_holds_a_reconnect_storm() -> None:
    """The listening socket queues thousands of handshakes (a restart's reconnect storm), not
    Tornado's default 128 whose overflow costs clients 1-15 s SYN retries."""
    import run

    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", backlog=run.LISTEN_BACKLOG)
    try:
        port = sockets[0].getsockname()[1]
        # Not accepted: the kernel holds them in the accept queue, up to the backlog.
        clients = []
        for _ in range(600):
            c = socket.create_connection(("127.0.0.1", port), timeout=2)
            clients.append(c)
        assert len(clients) == 600
    finally:
        for c in locals().get("clients", []):
            c.close()
        for s in sockets:
            s.close()


SIGNUPS = 40
SLOW_COST = "11"  # ~0.1-0.3 s a hash here: 40 sign-ups on one thread outlast any drain


async def _sign_ups_across_a_sigterm(
    url: str, proc: subprocess.Popen, count: int = SIGNUPS
) -> tuple[dict, float]:
    """``count`` sign-ups at once; SIGTERM as soon as the first one is through. Returns
    each name's status (599: no answer) and how long the process took to exit."""
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError

    http = AsyncHTTPClient(force_instance=True, max_clients=count + 10)
    try:
        client = PresenceClient(url)
        client.http = http
        token = await client.xsrf()

        async def signup(name: str) -> int:
            body = urlencode(
                {"username": name, "password": PASSWORD, "confirm": PASSWORD, "_xsrf": token}
            )
            try:
                response = await http.fetch(
                    url + "signup",
                    method="POST",
                    body=body,
                    raise_error=False,
                    headers={"Cookie": client.cookie_header()},
                    follow_redirects=False,
                    request_timeout=15,
                )
            except (HTTPClientError, OSError):  # refused, reset or closed: no answer
                return 599
            return response.code

        names = [f"drain{i:02d}" for i in range(count)]
        tasks = [asyncio.ensure_future(signup(name)) for name in names]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        await asyncio.to_thread(proc.wait, STOP_SECONDS + 5)
        took = time.monotonic() - start
        codes = await asyncio.gather(*tasks)
        return dict(zip(names, codes, strict=True)), took
    finally:
        http.close()


def test_sigterm_lets_requests_finish_or_refuses_them_having_done_nothing(app_process, tmp_path):
    """Each request in flight at a SIGTERM either completes (302, the account exists) or is
    refused having done nothing (503 or no connection: no account); never a 500, and the
    process is still gone within 5 s."""
    server = app_process("--bcrypt-rounds", SLOW_COST, "--bcrypt-threads", "1")
    codes, took = asyncio.run(_sign_ups_across_a_sigterm(server.url + "/", server.proc))
    log = server.log()
    with sqlite3.connect(tmp_path / "data" / "presence.db") as db:
        created = {row[0] for row in db.execute("SELECT username FROM users")}
    print(
        f"\nsign-ups across a SIGTERM: {sorted(codes.values()).count(302)} completed, "
        f"{list(codes.values()).count(503)} refused with 503, "
        f"{list(codes.values()).count(599)} without an answer; exit after {took:.2f} s"
    )
    assert server.proc.returncode == 0, log
    assert took < STOP_SECONDS
    assert set(codes.values()) <= {302, 503, 599}, codes
    assert {name for name, code in codes.items() if code == 302} == created
    assert 302 in codes.values() and 503 in codes.values(), codes  # both paths were taken
    assert "cannot schedule new futures" not in log and "Traceback" not in log, log


def test_sigterm_lets_running_requests_finish(app_process, tmp_path):
    """Within the drain timeout, the requests running at a SIGTERM all complete."""
    server = app_process(
        "--bcrypt-rounds", SLOW_COST, "--bcrypt-threads", "1", "--drain-timeout", "2.5"
    )
    codes, took = asyncio.run(_sign_ups_across_a_sigterm(server.url + "/", server.proc, count=3))
    with sqlite3.connect(tmp_path / "data" / "presence.db") as db:
        created = {row[0] for row in db.execute("SELECT username FROM users")}
    assert list(codes.values()) == [302] * 3 and set(codes) == created, codes
    assert server.proc.returncode == 0 and took < STOP_SECONDS
    assert "Traceback" not in server.log()
