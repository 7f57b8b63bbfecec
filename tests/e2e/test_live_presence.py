"""Presence, live: two people in two browser contexts, tabs, logout, new sign-ups."""

from __future__ import annotations

import re
import time

import pytest

from .helpers import (
    assert_not_reloaded,
    expect,
    expect_status,
    logout,
    mark_page,
    open_list,
    row,
    signup,
)

pytestmark = pytest.mark.e2e


def test_sees_other_user_go_online_and_offline_live(server, new_context, artifacts):
    b_context = new_context(server.url)
    b_page = signup(b_context.new_page(), "bob")
    b_page.close()  # bob has been online once: offline now, with a "last seen"

    a_page = signup(new_context(server.url).new_page(), "alice")
    expect_status(a_page, "bob", "Offline")
    mark_page(a_page)

    b_page = open_list(b_context.new_page())
    expect_status(a_page, "bob", "Online")
    expect(row(a_page, "bob")).not_to_contain_text("last seen")
    expect(a_page.locator("#online-count")).to_have_text("2")
    a_page.screenshot(path=artifacts("bob-online"))

    b_page.close()
    expect_status(a_page, "bob", "Offline")
    expect(row(a_page, "bob")).to_contain_text("last seen")
    expect(a_page.locator("#online-count")).to_have_text("1")
    expect(a_page.locator("#announcer")).to_contain_text("bob is now offline")
    a_page.screenshot(path=artifacts("bob-offline"))
    assert_not_reloaded(a_page)


def alice_watching_bob_in_two_tabs(server, new_context):
    """Alice's list page (marked, to catch a reload) showing bob online in two tabs."""
    a_page = signup(new_context(server.url).new_page(), "alice")
    mark_page(a_page)
    b_context = new_context(server.url)
    b_tab1 = signup(b_context.new_page(), "bob")
    b_tab2 = open_list(b_context.new_page())
    expect_status(a_page, "bob", "Online")
    return a_page, b_tab1, b_tab2


def test_closing_one_of_two_tabs_keeps_user_online(server, new_context):
    a_page, b_tab1, b_tab2 = alice_watching_bob_in_two_tabs(server, new_context)

    b_tab1.close()
    # Nothing may change: watch A's row for a moment, then ask the server too.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        expect_status(a_page, "bob", "Online", timeout=100)
        a_page.wait_for_timeout(100)
    users = {u["username"]: u for u in a_page.request.get("/api/users").json()["users"]}
    assert users["bob"]["online"] is True
    expect_status(b_tab2, "bob", "Online")

    b_tab2.close()  # the last tab: now bob is offline, at once
    expect_status(a_page, "bob", "Offline")
    assert_not_reloaded(a_page)


def test_logout_in_one_tab_signs_out_the_other(server, new_context, artifacts):
    a_page, b_tab1, b_tab2 = alice_watching_bob_in_two_tabs(server, new_context)

    logout(b_tab1)
    b_tab2.wait_for_url(re.compile(r"/login"))
    expect(b_tab2.get_by_role("heading", name="Log in")).to_be_visible()
    b_tab2.screenshot(path=artifacts("other-tab-at-login"))
    expect_status(a_page, "bob", "Offline")
    assert_not_reloaded(a_page)

    # The session is really gone: the list asks for a login again.
    b_tab2.goto("/")
    expect(b_tab2).to_have_url(re.compile(r"/login\?next="))


def test_new_signup_appears_live(server, new_context, artifacts):
    a_page = signup(new_context(server.url).new_page(), "alice")
    mark_page(a_page)
    expect(a_page.locator("#user-list > [data-username]")).to_have_count(1)

    c_page = signup(new_context(server.url).new_page(), "carol")
    expect(row(a_page, "carol")).to_be_visible()
    expect_status(a_page, "carol", "Online")
    expect(a_page.locator("#online-count")).to_have_text("2")
    expect(a_page.locator("#announcer")).to_contain_text("carol")
    a_page.screenshot(path=artifacts("carol-appeared"))
    assert_not_reloaded(a_page)

    c_page.close()
    expect_status(a_page, "carol", "Offline")
