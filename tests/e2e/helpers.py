"""Processes (the app, nginx) and page actions shared by the end-to-end tests.

Every page action goes through the real pages and forms: fill the labelled fields, click
the buttons. Waits are Playwright's own (``expect``, ``wait_for_url``), never sleeps.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

try:
    from playwright.sync_api import expect
except ImportError:  # the ``browser`` fixture skips (or, under CI=true, fails) first
    expect = None  # type: ignore[assignment]

from tests.cluster.harness import (
    free_port, http_json, nginx_config, stop_process, wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("PRESENCE_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-quic",
               "--disable-sync"]
PASSWORD = "correct-horse-42"
LOCAL_HOSTS = {"127.0.0.1"}


def artifact_name(test_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)


def redis_ping(url: str) -> bool:
    try:
        import redis
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def redis_drop(url: str, prefix: str) -> None:
    import redis
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class AppServer:
    """``python run.py`` on a fixed port and data dir; stop() and start() again at will."""

    READY = "Presence is running at"

    def __init__(self, workdir: Path, name: str, *extra: str, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.data_dir = workdir / f"{name}-data"
        self.log_path = workdir / f"{name}.log"
        self.args = [sys.executable, str(ROOT / "run.py"), "--port", str(self.port),
                     "--data-dir", str(self.data_dir), "--bcrypt-rounds", "4", *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "AppServer":
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.log()}")
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return self.READY.encode() in log.read()
        wait_until(ready, timeout, f"{self.name} to print {self.READY!r}")
        return self

    def stop(self, timeout: float = 5.0) -> float:
        """SIGTERM; returns the seconds it took (killed after ``timeout``)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"{self.name} did not stop within {timeout} s of SIGTERM")
        return time.monotonic() - started

    def health(self) -> Any:
        return http_json(self.url + "/healthz")[1]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


class Nginx:
    """A private nginx running the shipped deploy/nginx.conf (its least_conn spreads the
    sockets over the processes) in front of the given app ports; only ports and paths are
    templated (tests/cluster/nginx_site.py)."""

    def __init__(self, binary: str, workdir: Path, upstream_ports: list[int]) -> None:
        self.binary = binary
        self.tmp = workdir / "nginx"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = self.tmp / "nginx.conf"
        self.conf.write_text(nginx_config(self.port, upstream_ports, self.tmp))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Nginx":
        with open(self.tmp / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf), "-p", str(self.tmp),
                 "-e", str(self.tmp / "nginx-error.log")],
                stdout=out, stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.log()}")
            return http_json(self.url + "/healthz", timeout=1)[0] == 200
        wait_until(ready, 15, "nginx to proxy /healthz")
        return self

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)

    def log(self) -> str:
        text = ""
        for name in ("stdout.log", "nginx-error.log"):
            try:
                text += (self.tmp / name).read_text(errors="replace")[-3000:]
            except OSError:
                pass
        return text


class Guard:
    """Watches every request and socket of a context: only 127.0.0.1 may be contacted."""

    def __init__(self) -> None:
        self.external: list[str] = []
        self.page_errors: list[str] = []

    def attach(self, context: Any) -> None:
        context.route("**/*", self._route)
        context.on("page", self._watch_page)

    def _local(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about"):
            return True
        return parts.hostname in LOCAL_HOSTS

    def _route(self, route: Any) -> None:
        url = route.request.url
        if self._local(url):
            route.fallback()
        else:
            self.external.append(url)
            route.abort("blockedbyclient")

    def _watch_page(self, page: Any) -> None:
        page.on("websocket", lambda ws: None if self._local(ws.url)
                else self.external.append(ws.url))
        page.on("pageerror", lambda exc: self.page_errors.append(f"{page.url}: {exc}"))

    def check(self) -> None:
        assert not self.external, f"requests to external hosts: {self.external}"
        assert not self.page_errors, f"uncaught errors in pages: {self.page_errors}"


# ---------------------------------------------------------------- page actions

def fill_signup(page: Any, username: str, password: str = PASSWORD,
                confirm: str | None = None) -> None:
    page.goto("/signup")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("Confirm password").fill(password if confirm is None else confirm)
    page.get_by_role("button", name="Create account").click()


def signup(page: Any, username: str, password: str = PASSWORD) -> Any:
    """Signs up through the form; ends on the live list, connected."""
    fill_signup(page, username, password)
    page.wait_for_url(re.compile(r"/$"))
    wait_live(page)
    return page


def fill_login(page: Any, username: str, password: str = PASSWORD, path: str = "/login") -> None:
    page.goto(path)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def login(page: Any, username: str, password: str = PASSWORD) -> Any:
    fill_login(page, username, password)
    page.wait_for_url(re.compile(r"/$"))
    wait_live(page)
    return page


def logout(page: Any) -> None:
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r"/login$"))


def open_list(page: Any) -> Any:
    page.goto("/")
    wait_live(page)
    return page


def wait_live(page: Any) -> None:
    expect(page.locator("#conn-status")).to_have_attribute("data-state", "live")


def row(page: Any, username: str) -> Any:
    return page.locator(f'#user-list > [data-username="{username}"]')


def expect_status(page: Any, username: str, status: str, **kwargs: Any) -> None:
    """``status`` is the word the row shows: "Online" or "Offline"."""
    expect(row(page, username).locator(".status")).to_have_text(status, **kwargs)


def listed_names(page: Any) -> list[str]:
    return page.locator("#user-list > [data-username]").evaluate_all(
        "els => els.map(e => e.getAttribute('data-username'))")


def server_order(users: dict[str, bool]) -> list[str]:
    """The server's order (presence_app/live/presence.py): online first, then lower(), then name."""
    return sorted(users, key=lambda name: (not users[name], name.lower(), name))


def mark_page(page: Any) -> None:
    """Marks the document: ``assert_not_reloaded`` proves later updates came live."""
    page.evaluate("window.__e2eMark = 'still-here'")


def assert_not_reloaded(page: Any) -> None:
    assert page.evaluate("window.__e2eMark") == "still-here", "the page was reloaded"
