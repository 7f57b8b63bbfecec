"""The server goes away and comes back: the page says so, then shows the true state."""

from __future__ import annotations

from itertools import pairwise

import pytest

from .helpers import (
    assert_not_reloaded,
    expect,
    expect_status,
    login,
    mark_page,
    row,
    signup,
)

pytestmark = pytest.mark.e2e


def test_server_restart_shows_reconnecting_then_recovers(server, new_context, artifacts):
    a_page = signup(new_context(server.url).new_page(), "alice")
    b_page = signup(new_context(server.url).new_page(), "bob")
    expect_status(a_page, "bob", "Online")
    mark_page(a_page)

    seconds = server.stop()  # SIGTERM: sockets closed with 1001
    assert seconds < 5
    status = a_page.locator("#conn-status")
    expect(status).to_have_attribute("data-state", "reconnecting")
    expect(status).to_contain_text("Reconnecting")
    expect(a_page.locator("#user-list")).to_have_attribute("aria-busy", "true")
    a_page.screenshot(path=artifacts("reconnecting"))

    # While the server is down bob leaves: the true state after the restart is "offline",
    # which the page can only learn from the new server.
    b_page.close()

    server.start()  # same port, same data dir: the sessions survive
    expect(status).to_have_attribute("data-state", "live", timeout=20_000)
    expect(status).to_have_text("Live")
    expect(a_page.locator("#user-list")).not_to_have_attribute("aria-busy", "true")
    expect_status(a_page, "alice", "Online")
    expect_status(a_page, "bob", "Offline")
    expect(a_page.locator("#online-count")).to_have_text("1")
    expect(a_page.locator("#announcer")).to_contain_text("Reconnected")
    a_page.screenshot(path=artifacts("recovered"))
    assert_not_reloaded(a_page)

    # And it is live again: bob comes back.
    login(new_context(server.url).new_page(), "bob")
    expect_status(a_page, "bob", "Online")
    expect(row(a_page, "bob")).not_to_contain_text("last seen")


# Fixes Math.random for the page and records, in the page's own clock, when its sockets
# close (with which code) and when it asks /api/session before each reconnect.
RECONNECT_LOG = """
(() => {
  Math.random = () => %r;
  const log = window.__reconnect = { closes: [], fetches: [] };
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('close',
        (e) => log.closes.push({ t: performance.now(), code: e.code }));
    }
  };
  const nativeFetch = window.fetch;
  window.fetch = function (...args) {
    if (String(args[0]).includes('/api/session')) {
      log.fetches.push(performance.now());
    }
    return nativeFetch.apply(this, args);
  };
})();
"""


def test_first_reconnect_after_a_restart_is_jittered_over_two_seconds(server, new_context):
    """A SIGTERM closes every socket with 1001 at the same moment: the pages come back
    spread over 0-2 s (full jitter), not all within the usual first 0.5 s; while the server
    stays down, the usual backoff follows (0.5 s x 2^attempt, jittered)."""
    pages = {}
    for random in (0.1, 0.9):
        context = new_context(server.url)
        context.add_init_script(script=RECONNECT_LOG % random)
        pages[random] = signup(context.new_page(), f"jitter{int(random * 10)}")

    server.stop()  # 1001 to every socket; the server stays down
    for random, page in pages.items():
        page.wait_for_function("() => window.__reconnect.fetches.length >= 2", timeout=15_000)
        log = page.evaluate("window.__reconnect")
        assert [c["code"] for c in log["closes"]] == [1001], log
        times = [log["closes"][0]["t"]] + log["fetches"][:2]
        waits = [b - a for a, b in pairwise(times)]
        expected = [random * 2000, random * 1000]
        for wait, due in zip(waits, expected, strict=True):
            assert due - 20 <= wait <= due + 300, (random, waits, expected)
