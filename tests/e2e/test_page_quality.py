"""What the list looks like and how it behaves: order, count, "last seen", small screens,
accessibility basics, nothing fetched from elsewhere, the favicon, the README screenshot."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from .helpers import (
    PASSWORD,
    ROOT,
    Guard,
    assert_not_reloaded,
    expect,
    expect_status,
    fill_signup,
    listed_names,
    login,
    mark_page,
    row,
    server_order,
    signup,
    wait_live,
)

pytestmark = pytest.mark.e2e

ROW_STATUS = re.compile(r"\b(Online|Offline)\b")


def sign_up_people(new_context, url, online, offline):
    """Each person signs up in a browser of their own; the offline ones leave again."""
    pages = {}
    for name in list(online) + list(offline):
        context = new_context(url)
        pages[name] = signup(context.new_page(), name)
    for name in offline:
        pages.pop(name).close()
    return pages


def assert_rows_consistent(page, expected):
    """Order, status words, "last seen" only on offline rows, and the online count."""
    assert listed_names(page) == server_order(expected)
    for name, online in expected.items():
        text = row(page, name).inner_text()
        words = ROW_STATUS.findall(text)
        assert words == ["Online" if online else "Offline"], (name, text)
        assert ("last seen" in text) is (not online), (name, text)
    expect(page.locator("#online-count")).to_have_text(str(sum(expected.values())))


def test_order_online_count_and_last_seen(server, new_context, artifacts):
    # Names where a locale collation and the server's lower()-then-code-unit order differ.
    expected = {
        "zoe": True,
        "dev_x": True,
        "Bob": True,
        "dev-x": False,
        "dev1x": False,
        "Dev.y": False,
        "_zed": False,
        "carol": False,
    }
    pages = sign_up_people(
        new_context,
        server.url,
        [n for n, o in expected.items() if o],
        [n for n, o in expected.items() if not o],
    )
    viewer = pages["zoe"]
    for name, online in expected.items():
        expect_status(viewer, name, "Online" if online else "Offline")
    assert_rows_consistent(viewer, expected)
    mark_page(viewer)

    # Live changes re-sort the list the way the server would.
    pages["dev1x"] = login(new_context(server.url).new_page(), "dev1x")
    expected["dev1x"] = True
    expect_status(viewer, "dev1x", "Online")
    assert_rows_consistent(viewer, expected)

    pages.pop("Bob").close()
    expected["Bob"] = False
    expect_status(viewer, "Bob", "Offline")
    assert_rows_consistent(viewer, expected)
    viewer.screenshot(path=artifacts("sorted"))
    assert_not_reloaded(viewer)

    # A fresh page load (server-rendered, then the snapshot) tells the same story.
    viewer.reload()
    wait_live(viewer)
    assert_rows_consistent(viewer, expected)


def test_last_seen_times_keep_updating(server, new_context):
    context = new_context(server.url)
    context.clock.install()  # runs at the real pace until fast-forwarded
    sockets = []
    page = context.new_page()
    page.on("websocket", lambda ws: sockets.append(ws))
    signup(page, "alice")
    bob = signup(new_context(server.url).new_page(), "bob")
    bob.close()
    seen = row(page, "bob").locator("time")
    expect(seen).to_have_text("just now")
    expect(seen).to_have_attribute("title", re.compile(r"\d"))  # the absolute time

    # Two half-minute steps, each answered by the server, so the page's own
    # "connection went silent" check never fires: only the refresh timer changes the text.
    for _ in range(2):
        with sockets[-1].expect_event("framereceived", lambda f: '"pong"' in str(f)):
            page.clock.fast_forward(30_500)
    expect(seen).to_have_text("1 min ago")
    expect(page.locator("#conn-status")).to_have_attribute("data-state", "live")


def test_small_screen_has_no_horizontal_scroll(server, new_context, artifacts):
    long_names = ["a_very_long_username_for_layout1", "another.rather-long.name_0123456"]
    sign_up_people(new_context, server.url, [long_names[0]], [long_names[1], "bob"])
    context = new_context(
        server.url,
        viewport={"width": 375, "height": 740},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
    )
    page = context.new_page()

    def assert_fits(step):
        width = page.evaluate("document.documentElement.scrollWidth")
        inner = page.evaluate("window.innerWidth")
        assert width <= inner, f"{step}: scrollWidth {width} > {inner}"
        overflowing = page.evaluate(
            "[...document.querySelectorAll('body *')].filter(e => {"
            " const r = e.getBoundingClientRect(); return r.width && r.right > innerWidth + 0.5;"
            "}).map(e => e.tagName + '.' + e.className)"
        )
        assert not overflowing, f"{step}: wider than the screen: {overflowing}"
        page.screenshot(path=artifacts(step), full_page=True)

    page.goto("/login")
    assert_fits("login-375")
    fill_signup(page, "xx")  # too short: the error is shown next to the form
    expect(page.get_by_role("alert")).to_be_visible()
    assert_fits("signup-error-375")
    signup(page, "maximilian_the_thirty_two_chars")
    expect(page.locator("#user-list > [data-username]")).to_have_count(4)
    expect_status(page, long_names[1], "Offline")
    assert_fits("list-375")


def test_accessibility_basics(server, new_context, artifacts):
    bob = signup(new_context(server.url).new_page(), "bob")
    page = new_context(server.url).new_page()

    for path, title in (("/login", "Log in · Presence"), ("/signup", "Sign up · Presence")):
        page.goto(path)
        expect(page).to_have_title(title)
        assert page.get_attribute("html", "lang") == "en"
        unlabelled = page.evaluate(
            "[...document.querySelectorAll('input:not([type=hidden]), button, select,"
            " textarea')].filter(e => !(e.labels && e.labels.length) &&"
            " !e.getAttribute('aria-label') && !e.textContent.trim()).map(e => e.outerHTML)"
        )
        assert not unlabelled, f"{path}: controls without a label: {unlabelled}"
        expect(page.get_by_role("heading", level=1)).to_be_visible()

    # The keyboard alone: the name field has the focus, Tab to the password, Enter.
    page.goto("/signup")
    expect(page.get_by_label("Username")).to_be_focused()
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password", exact=True)).to_be_focused()
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Confirm password")).to_be_focused()
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/$"))
    wait_live(page)
    expect(page).to_have_title("2 online · 2 users · Who's online · Presence")

    # The list: labelled, status in words, changes announced politely.
    expect(page.get_by_role("list", name="Users")).to_be_visible()
    announcer = page.locator("[aria-live=polite]")
    expect(announcer).to_have_count(1)
    bob.close()
    expect_status(page, "bob", "Offline")
    expect(announcer).to_have_text(re.compile(r"bob is now offline"))
    for name in ("alice", "bob"):
        expect(row(page, name)).to_contain_text(ROW_STATUS)
    expect(page.locator("#conn-status")).to_have_text("Live")

    # Skip link first, then on to the logout button, which works from the keyboard.
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    logout_button = page.get_by_role("button", name="Log out")
    for _ in range(5):
        if logout_button.evaluate("b => b === document.activeElement"):
            break
        page.keyboard.press("Tab")
    expect(logout_button).to_be_focused()
    page.screenshot(path=artifacts("focus-on-logout"))
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/login$"))


def test_favicon_and_no_external_requests(server, new_context):
    context = new_context(server.url)  # guarded: any non-127.0.0.1 request fails the test
    seen = []
    context.on("request", lambda request: seen.append(request.url))
    page = context.new_page()
    with page.expect_response(lambda r: "favicon" in r.url) as icon:
        page.goto("/login")
    assert icon.value.status == 200
    assert icon.value.header_value("content-type").startswith("image/svg+xml")
    assert page.locator("link[rel=icon]").count() == 1

    # Browsers also ask for /favicon.ico on pages without a <link rel=icon> (the JSON API).
    ico = page.request.get("/favicon.ico")
    assert ico.status == 200, f"/favicon.ico answered {ico.status}"
    assert ico.headers["content-type"].startswith("image/"), ico.headers["content-type"]
    assert len(ico.body()) > 100

    signup(page, "alice")
    page.goto("/no-such-page")
    expect(page.get_by_role("alert")).to_be_visible()
    hosts = {re.sub(r"^\w+://([^/:]+).*$", r"\1", url) for url in seen}
    assert hosts == {"127.0.0.1"}, hosts
    css = page.request.get(page.locator("link[rel=stylesheet]").get_attribute("href")).text()
    assert "@import" not in css and not re.search(r"url\(\s*['\"]?(https?:)?//", css)


def test_guard_catches_external_requests(browser):
    """The guard itself: a page reaching for a CDN is caught (and aborted)."""
    guard = Guard()
    context = browser.new_context()
    try:
        guard.attach(context)
        page = context.new_page()
        page.set_content(
            '<img src="http://cdn.example.invalid/x.png">'
            '<link rel="stylesheet" href="https://fonts.example.invalid/a.css">'
        )
        result = page.evaluate(
            "() => fetch('http://203.0.113.9/api').then(() => 'fetched', () => 'blocked')"
        )
        assert result == "blocked"
        assert any("cdn.example.invalid" in url for url in guard.external), guard.external
        assert any("fonts.example.invalid" in url for url in guard.external), guard.external
        assert any("203.0.113.9" in url for url in guard.external), guard.external
        with pytest.raises(AssertionError):
            guard.check()
    finally:
        context.close()


def test_screenshot_of_live_list(server, new_context, artifacts):
    """tests/artifacts/...-list.png every run; docs/screenshot.png with
    PRESENCE_UPDATE_SCREENSHOT=1 (the README shows it)."""
    people = {
        "alice": True,
        "bob": True,
        "Chloe": False,
        "dave": True,
        "erin": False,
        "farid": False,
    }
    pages = sign_up_people(new_context, server.url, ["bob", "dave"], ["Chloe", "erin", "farid"])
    context = new_context(
        server.url,
        viewport={"width": 760, "height": 500},
        color_scheme="light",
        reduced_motion="reduce",
    )
    page = signup(context.new_page(), "alice")
    for name, online in people.items():
        expect_status(page, name, "Online" if online else "Offline")
    assert_rows_consistent(page, people)
    assert len(pages) == 2
    page.mouse.move(0, 0)
    path = artifacts("list")
    page.screenshot(path=path)
    if os.environ.get("PRESENCE_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(path, ROOT / "docs" / "screenshot.png")
    page.emulate_media(color_scheme="dark")
    page.screenshot(path=artifacts("list-dark"))
