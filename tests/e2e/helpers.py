"""The app process and page actions shared by the end-to-end tests.

Every page action goes through the real pages and forms: fill the labelled fields, click
the buttons. Waits are Playwright's own (``expect``, ``wait_for_url``), never sleeps.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

try:
    from playwright.sync_api import expect
except ImportError:  # the ``browser`` fixture skips (or, under CI=true, fails) first
    expect = None  # type: ignore[assignment]

from tests.support.apps import STOP_SECONDS, AppProcess
from tests.support.env import ROOT

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("PRESENCE_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]
PASSWORD = "correct-horse-42"
LOCAL_HOSTS = {"127.0.0.1"}


def artifact_name(test_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)


class AppServer(AppProcess):
    """``python run.py`` on a fixed port and data dir (``workdir/<name>-data``); stop() and
    start() again at will. A stop that SIGTERM alone does not achieve within ``timeout``
    fails the test: a browser user's server must shut down cleanly."""

    def stop(self, timeout: float = STOP_SECONDS, strict: bool = True) -> float:
        return super().stop(timeout, strict)


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
        page.on(
            "websocket", lambda ws: None if self._local(ws.url) else self.external.append(ws.url)
        )
        page.on("pageerror", lambda exc: self.page_errors.append(f"{page.url}: {exc}"))

    def check(self) -> None:
        assert not self.external, f"requests to external hosts: {self.external}"
        assert not self.page_errors, f"uncaught errors in pages: {self.page_errors}"


# ---------------------------------------------------------------- page actions


def fill_signup(
    page: Any, username: str, password: str = PASSWORD, confirm: str | None = None
) -> None:
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
        "els => els.map(e => e.getAttribute('data-username'))"
    )


def server_order(users: dict[str, bool]) -> list[str]:
    """The server's order (presence_app/live/presence.py): online first, then lower(), then name."""
    return sorted(users, key=lambda name: (not users[name], name.lower(), name))


def mark_page(page: Any) -> None:
    """Marks the document: ``assert_not_reloaded`` proves later updates came live."""
    page.evaluate("window.__e2eMark = 'still-here'")


def assert_not_reloaded(page: Any) -> None:
    assert page.evaluate("window.__e2eMark") == "still-here", "the page was reloaded"
