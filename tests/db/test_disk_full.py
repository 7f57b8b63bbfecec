"""A full disk under SQLite: /healthz says so, sign-up, login and logout answer 503 (a logout
is retried, then reported, never silently left undone), the log says it once, and everything
recovers when space is back.

The full disk is a real one: a small tmpfs mounted for the test (the tests run as root in
CI and in the sandbox; elsewhere they are skipped, or fail under CI=true), filled to ENOSPC.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from handlers.base import SESSION_COOKIE
from presence_app.config import Settings
from tests.conftest import PASSWORD, unavailable

FILLER = "filler"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture
def database_url(small_disk: Path) -> str:
    return f"sqlite+aiosqlite:///{small_disk / 'presence.db'}"


@pytest.fixture
def redis_url() -> str:
    return ""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, write_probe_interval=0.3)


def fill(disk: Path) -> None:
    """Write a file until the filesystem says ENOSPC."""
    fd = os.open(disk / FILLER, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 512, 1):
            while True:
                try:
                    if os.write(fd, b"\0" * size) < size:
                        break
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)


def free(disk: Path) -> None:
    (disk / FILLER).unlink(missing_ok=True)


async def health(client: Any) -> tuple[int, dict]:
    response = await client.request("GET", "/healthz")
    return response.code, json.loads(response.body)


async def wait_health(client: Any, code: int, within: float) -> dict:
    deadline = time.monotonic() + within
    while True:
        status, body = await health(client)
        if status == code or time.monotonic() > deadline:
            assert status == code, body
            return body
        await asyncio.sleep(0.1)


def messages(caplog: Any, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


def assert_no_traceback(caplog: Any) -> None:
    for record in caplog.records:
        assert not record.exc_info, record.getMessage()
        if record.name != "tornado.access":  # which logs every 5xx answer at ERROR
            assert record.levelno < logging.ERROR, record.getMessage()


@pytest.mark.gen_test(timeout=60)
async def test_full_disk_is_503_everywhere_logged_once_and_recovers(
    small_disk, user_factory, make_client, caplog
):
    caplog.set_level(logging.INFO)
    alice = await user_factory("alice")
    probe = make_client()
    assert (await health(probe))[0] == 200
    fill(small_disk)
    try:
        bob = make_client()
        response = await bob.signup("bob", PASSWORD, check=False)
        assert response.code == 503, response.body
        assert "cannot save" in response.body.decode()
        assert response.headers.get("Retry-After")
        body = await wait_health(probe, 503, within=1.0)
        assert body["status"] == "unavailable" and "database cannot write" in body["reason"]
        carol = make_client()
        response = await carol.login("alice", PASSWORD, check=False)
        assert response.code == 503
        assert SESSION_COOKIE not in carol.cookies
        # A socket opens (reads work); the ledger cannot record it and retries every 0.05 s.
        sock = await alice.connect()
        await asyncio.sleep(1.0)
        assert (await health(probe))[0] == 503
    finally:
        free(small_disk)
    await wait_health(probe, 200, within=5.0)  # the probe or the ledger writes again
    assert (await bob.signup("bob", PASSWORD, check=False)).code == 302
    await sock.close()
    assert len(messages(caplog, "Database writes fail")) == 1
    assert len(messages(caplog, "Database writes succeed again")) == 1
    assert len(messages(caplog, "Writing the online-users table failed")) == 1
    assert len(messages(caplog, "Writing the online-users table works again")) == 1
    assert_no_traceback(caplog)


@pytest.mark.gen_test(timeout=60)
async def test_the_probe_notices_a_full_disk_with_no_traffic(small_disk, make_client, caplog):
    probe = make_client()
    assert (await health(probe))[0] == 200
    fill(small_disk)
    try:
        body = await wait_health(probe, 503, within=3.0)  # the probe writes every 0.3 s
        assert "database cannot write" in body["reason"]
    finally:
        free(small_disk)
    await wait_health(probe, 200, within=3.0)
    assert_no_traceback(caplog)


@pytest.mark.gen_test(timeout=60)
async def test_a_logout_that_cannot_be_saved_is_retried_then_reported(
    small_disk, user_factory, caplog
):
    alice = await user_factory("alice")
    fill(small_disk)
    try:
        started = time.monotonic()
        response = await alice.logout()
        took = time.monotonic() - started
        assert response.code == 503
        assert "NOT logged out" in response.body.decode()
        assert 0.4 <= took < 5.0, took  # retried (0.1 s + 0.4 s), not forever
        assert not any(
            h.startswith(SESSION_COOKIE + "=") for h in response.headers.get_list("Set-Cookie")
        )
        assert SESSION_COOKIE in alice.cookies
        assert (await alice.request("GET", "/api/users")).code == 200  # and truly still valid
    finally:
        free(small_disk)
    await asyncio.sleep(0.1)
    assert (await alice.logout()).code == 302
    assert (await alice.request("GET", "/api/users")).code == 401
    assert len(messages(caplog, "Logout failed after 3 attempts")) == 1
    assert_no_traceback(caplog)
