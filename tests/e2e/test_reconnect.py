"""The server goes away and comes back: the page says so, then shows the true state."""
from __future__ import annotations

import pytest

from .helpers import (
    assert_not_reloaded, expect, expect_status, login, mark_page, row, signup,
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
