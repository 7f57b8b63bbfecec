"""Sign-up, login and logout through the real forms, with their errors next to the form."""

from __future__ import annotations

import re

import pytest

from .helpers import (
    PASSWORD,
    expect,
    expect_status,
    fill_login,
    fill_signup,
    login,
    logout,
    row,
    signup,
    wait_live,
)

pytestmark = pytest.mark.e2e


def test_signup_and_login_through_forms(server, new_context, artifacts):
    page = new_context(server.url).new_page()

    page.goto("/")  # login required: to the form, the way back kept in ``next``
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    expect(page).to_have_title("Log in · Presence")
    page.screenshot(path=artifacts("login"))

    page.goto("/signup")
    expect(page).to_have_title("Sign up · Presence")
    page.screenshot(path=artifacts("signup"))

    # Errors are shown next to the form, the typed name kept.
    fill_signup(page, "alice", PASSWORD, confirm="something-else")
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible()
    expect(alert).not_to_be_empty()
    expect(page.get_by_label("Username")).to_have_value("alice")
    expect(page.get_by_label("Username")).to_have_attribute("aria-invalid", "true")
    page.screenshot(path=artifacts("signup-error"))

    signup(page, "alice")
    expect(page).to_have_title("1 online · 1 user · Who's online · Presence")
    expect(page.locator(".account__name")).to_have_text("alice")
    expect_status(page, "alice", "Online")
    expect(row(page, "alice")).to_contain_text("(you)")
    page.screenshot(path=artifacts("signed-up"))

    # A taken name is refused next to the form.
    other = new_context(server.url).new_page()
    fill_signup(other, "alice")
    expect(other.get_by_role("alert")).to_contain_text(re.compile("taken|exists", re.I))

    logout(page)
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()

    # A wrong password: the form again with the error; then the right one.
    fill_login(page, "alice", "wrong-password-1")
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page.get_by_label("Username")).to_have_value("alice")
    page.screenshot(path=artifacts("login-error"))
    fill_login(page, "nobody-here", PASSWORD)
    expect(page.get_by_role("alert")).to_be_visible()

    login(page, "alice")
    expect_status(page, "alice", "Online")

    # ``next`` is followed after login.
    fresh = new_context(server.url).new_page()
    fresh.goto("/")
    fresh.get_by_label("Username").fill("alice")
    fresh.get_by_label("Password").fill(PASSWORD)
    fresh.get_by_role("button", name="Log in").click()
    fresh.wait_for_url(re.compile(r"/$"))
    wait_live(fresh)
