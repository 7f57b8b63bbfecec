"""End-to-end fixtures: Debian's Chromium driven by Playwright's sync API, the app as a
real ``python run.py`` subprocess on a free port with a data dir of its own.

No pytest-playwright (its ``base_url`` fixture would shadow pytest-tornado's): the browser
is launched here. Every browser context is guarded: any request to a host other than
127.0.0.1 is aborted and fails the test, and so does an uncaught script error.

Redis: tests that need it take ``real_redis_url`` (tests/conftest.py, the machine's Redis,
once). The parametrised ``redis_url`` there (in-process and Redis brokers) is for in-process
tests; no e2e test takes it, and this package does not override it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, TypeAlias

import pytest

from tests.support.env import unavailable

from .helpers import ARTIFACTS, CHROMIUM, LAUNCH_ARGS, AppServer, Guard, artifact_name, expect

# playwright.sync_api types; Any keeps this importable without it
Browser: TypeAlias = Any
BrowserContext: TypeAlias = Any

if expect is not None:
    expect.set_options(timeout=10_000)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One Chromium for the whole e2e package, closed before any later test runs."""
    if not os.path.exists(CHROMIUM):
        unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable(f"playwright is not installed: {exc}")
    with sync_playwright() as pw:
        try:
            chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        except Exception as exc:
            unavailable(f"{CHROMIUM} does not start: {exc}")
        yield chromium
        chromium.close()


@pytest.fixture
def artifacts(request: Any) -> Callable[[str], Path]:
    """``artifacts("step")`` -> tests/artifacts/<test>-step.png (the folder is gitignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return lambda step: ARTIFACTS / f"{artifact_name(request.node.name)}-{step}.png"


@pytest.fixture
def new_context(browser: Browser, request: Any) -> Iterator[Callable[..., BrowserContext]]:
    """Factory of guarded browser contexts (one per simulated person)."""
    guard = Guard()
    contexts: list[BrowserContext] = []

    def make(base_url: str, **options: Any) -> BrowserContext:
        options.setdefault("viewport", {"width": 900, "height": 700})
        options.setdefault("locale", "en-US")
        options.setdefault("timezone_id", "UTC")
        context = browser.new_context(base_url=base_url, **options)
        context.set_default_timeout(10_000)
        guard.attach(context)
        contexts.append(context)
        return context

    yield make
    node = request.node
    failed = getattr(node, "rep_call", None) is not None and node.rep_call.failed
    if failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for i, context in enumerate(contexts):
            for j, page in enumerate(context.pages):
                try:
                    page.screenshot(
                        path=str(
                            ARTIFACTS / (f"FAILED-{artifact_name(node.name)}-ctx{i}-page{j}.png")
                        ),
                        full_page=True,
                    )
                except Exception:
                    pass
    for context in contexts:
        try:
            context.close()
        except Exception:
            pass
    guard.check()


@pytest.fixture
def server(tmp_path: Path, request: Any) -> Iterator[AppServer]:
    """The app in its own process: SQLite and a cookie secret in a tmp data dir."""
    app = AppServer(tmp_path, "app").start()
    yield app
    app.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(f"--- server log ({app.name}) ---\n{app.log(6000)}")
