"""The page with 5,000 users, in Chromium: live within 1 s of logging in, a search that
narrows the list within 100 ms, a small DOM, and no main-thread stall over 100 ms while
1,000 people come online (and leave) at once; the counts are right at the end.

One server for the module: 5,000 accounts written through the app's models before it
starts, three of them online from the start through raw sockets (see crowd.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import sqlite_url
from tests.support.waiting import wait_until

from .crowd import Crowd, seed, session_cookie
from .helpers import PASSWORD, AppServer, expect, fill_login, wait_live
from .rawchrome import RawChromium

pytestmark = pytest.mark.e2e

PROBE = (Path(__file__).parent / "probe.js").read_text()
MEMBERS = [f"member-{i:05d}" for i in range(4999)]
VIEWER = "viewer"
TOTAL = len(MEMBERS) + 1  # 5,000 users
EARLY = ["member-02500", "member-04990", "member-04995"]  # online for the whole module
BURST = MEMBERS[:1000]  # come online together, then leave together
PAGE = 100  # rows per page (handlers/users.py OFFLINE_PAGE)


class BigList:
    def __init__(self, server: AppServer, crowd: Crowd, cookies: dict[str, str]) -> None:
        self.server, self.crowd, self.cookies = server, crowd, cookies

    @property
    def url(self) -> str:
        return self.server.url

    def online_now(self) -> set[str]:
        return set(EARLY) | {VIEWER}


@pytest.fixture(scope="module")
def big(tmp_path_factory: Any) -> Iterator[BigList]:
    workdir = tmp_path_factory.mktemp("big")
    secret = "e2e-big-list-" + uuid.uuid4().hex
    started = dt.datetime.now(dt.UTC)
    users: list[tuple[str, dt.datetime | None]] = [
        (name, None if i % 10 == 9 else started - dt.timedelta(minutes=i + 1))
        for i, name in enumerate(MEMBERS)
    ]
    users.append((VIEWER, None))
    data_dir = workdir / "app-data"
    data_dir.mkdir()
    tokens = seed(sqlite_url(data_dir / "presence.db"), users, PASSWORD, EARLY + BURST + [VIEWER])
    cookies = {name: session_cookie(secret, token) for name, token in tokens.items()}
    # Protocol pings every 2 minutes: the crowd only drains, it never answers them.
    server = AppServer(workdir, "app", "--cookie-secret", secret, "--ping-interval", "120")
    server.start()
    try:
        yield from _with_crowd(server, cookies)
    finally:
        server.stop(timeout=10)


def _with_crowd(server: AppServer, cookies: dict[str, str]) -> Iterator[BigList]:
    # This machine is the browser, the server and 1,000 clients at once; in real life they
    # are not. The server and the crowd yield the CPU to Chromium, so a stall measured in
    # the page is the page's own.
    assert server.proc is not None
    os.setpriority(os.PRIO_PROCESS, server.proc.pid, 10)
    crowd = Crowd("127.0.0.1", server.port, nice=10)
    try:
        crowd.connect({name: cookies[name] for name in EARLY})
        wait_until(
            lambda: server.health()[1].get("online_users") == len(EARLY),
            10,
            "the early users online",
        )
        yield BigList(server, crowd, cookies)
    finally:
        crowd.stop()


def open_viewer(big: BigList, new_context: Any) -> Any:
    context = new_context(big.url)
    context.add_init_script(script=PROBE)
    page = context.new_page()
    fill_login(page, VIEWER)
    page.wait_for_url(re.compile(r"/$"))
    wait_live(page)
    return page


def rendered_names(page: Any) -> list[str]:
    return page.locator("#user-list > [data-username]").evaluate_all(
        "els => els.map(e => e.getAttribute('data-username'))"
    )


def expected_order(online: set[str]) -> list[str]:
    names = MEMBERS + [VIEWER]
    return sorted(names, key=lambda n: (n not in online, n.lower(), n))


def test_live_within_a_second_of_logging_in(big: BigList, new_context: Any) -> None:
    page = open_viewer(big, new_context)
    submitted = int(page.evaluate("sessionStorage.getItem('e2eSubmittedAt')"))
    live_at = page.evaluate("window.__probe.liveAt")
    seconds = (live_at - submitted) / 1000
    print(f"\nlogin submitted -> live with {TOTAL:,} users: {seconds * 1000:.0f} ms")
    assert 0 < seconds < 1.0, f"live {seconds:.2f} s after submitting the login form"

    # The HTML stays small: every online user and the first page of the others.
    html = page.request.get("/").text()
    size = len(html.encode())
    print(f"server-rendered HTML with {TOTAL:,} users: {size:,} bytes")
    listed = re.findall(r'<li class="user[^"]*" data-username="([^"]+)"', html)
    order = expected_order(big.online_now())
    assert listed == order[: len(big.online_now()) + PAGE]
    assert size < 100_000, f"{size:,} bytes of HTML"
    assert "4 online · 5,000 users" in html


def test_summary_title_order_and_a_small_dom(
    big: BigList, new_context: Any, artifacts: Any
) -> None:
    page = open_viewer(big, new_context)
    online = big.online_now()
    expect(page.locator(".online-summary")).to_have_text("4 online · 5,000 users")
    expect(page).to_have_title("4 online · 5,000 users · Who's online · Presence")
    order = expected_order(online)
    assert rendered_names(page) == order[:PAGE]
    assert order[:4] == sorted(online)  # online users first, by name
    first_offline = page.locator(f'#user-list > [data-username="{order[4]}"]')
    expect(first_offline.locator(".status")).to_have_text("Offline")
    expect(first_offline).to_contain_text("last seen")

    status = page.locator("#list-status")
    expect(status).to_have_text("Showing 100 of 5,000 users.")
    more = page.get_by_role("button", name="Show 100 more")
    more.click()
    expect(page.locator("#user-list > [data-username]")).to_have_count(2 * PAGE)
    assert rendered_names(page) == order[: 2 * PAGE]
    expect(status).to_have_text("Showing 200 of 5,000 users.")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=artifacts("top"))
    more.scroll_into_view_if_needed()
    page.screenshot(path=artifacts("show-more"))
    nodes = page.evaluate("document.getElementsByTagName('*').length")
    assert nodes < 3000, f"{nodes} elements in the page"


def test_search_narrows_the_list_within_100_ms(
    big: BigList, new_context: Any, artifacts: Any
) -> None:
    page = open_viewer(big, new_context)
    search = page.get_by_role("searchbox", name="Search users")
    search.press_sequentially("MEMBER-0004", delay=50)  # a fast typist: 20 keys a second
    matches = [f"member-{i:05d}" for i in range(40, 50)]
    expect(page.locator("#list-status")).to_have_text("10 users match “member-0004”.")
    assert rendered_names(page) == matches
    page.screenshot(path=artifacts("search"))
    latencies = page.evaluate("""() => {
        const p = window.__probe;
        return p.inputs.map((input) => {
            const changed = p.mutationTimes.find((t) => t >= input.t);
            return changed === undefined ? null : changed - input.t;
        });
    }""")
    print(
        f"\nsearch, ms from each keystroke to the updated list: "
        f"{[round(x, 1) if x is not None else None for x in latencies]}"
    )
    assert len(latencies) == len("MEMBER-0004")
    assert all(x is not None for x in latencies), latencies
    assert max(latencies) < 100, latencies

    search.fill("member-00042")
    expect(page.locator("#user-list > [data-username]")).to_have_count(1)
    search.fill("nobody-like-this")
    expect(page.locator("#list-status")).to_have_text("No users match “nobody-like-this”.")
    expect(page.locator("#user-list > [data-username]")).to_have_count(0)
    search.press("Escape")  # clears a search box
    expect(page.locator("#user-list > [data-username]")).to_have_count(PAGE)
    assert rendered_names(page) == expected_order(big.online_now())[:PAGE]


def test_no_stall_while_1000_people_come_and_go(big: BigList, tmp_path: Path) -> None:
    """Measured in a Chromium that no automation watches the network of (rawchrome.py):
    with Playwright's per-frame WebSocket instrumentation the renderer does about twice
    the work per frame, and the probe would measure Playwright.

    Other processes on this 2-core machine can only add to a gap, never hide one, so a
    burst whose longest gap is over the target is measured once more (at most twice in
    all); a page that did real work per event (the old one stalled 240 ms at 600 events)
    fails both."""
    chrome = RawChromium(tmp_path / "chromium").start()
    try:
        chrome.open(big.url + "/", big.cookies[VIEWER], PROBE)
        chrome.wait_for("document.getElementById('conn-status')?.dataset.state === 'live'")
        results = []
        for _ in range(2):
            result = burst(big, chrome)
            results.append(result)
            print(f"\n1,000 online + 1,000 offline events, main thread: {result}")
            assert result["wsFrames"] >= 2 * len(BURST), result
            assert result["batches"] <= result["frames"], f"more DOM updates than frames: {result}"
            if result["stall"] < 100:
                break
        assert min(r["stall"] for r in results) < 100, f"main thread stalled: {results}"

        # The end state is the truth, on the page and on the server.
        assert chrome.evaluate("document.querySelector('.online-summary').textContent") == (
            "4 online · 5,000 users"
        )
        chrome.wait_for(
            'document.title === "4 online · 5,000 users · Who\'s online · Presence"', timeout=3
        )  # the title follows within a second
        names = chrome.evaluate(
            "[...document.querySelectorAll('#user-list > li')].map(li => li.dataset.username)"
        )
        assert names == expected_order(big.online_now())[:PAGE]
        assert chrome.evaluate(ROW_STATUS % BURST[0]) == "Offline"
        api = api_users(big.url, big.cookies[VIEWER])
        assert {u["username"] for u in api if u["online"]} == big.online_now()
    finally:
        chrome.stop()


def burst(big: BigList, chrome: RawChromium) -> dict[str, Any]:
    """1,000 people online at once, then gone at once; what the page's probe saw."""
    count = "document.getElementById('online-count').textContent"
    assert chrome.evaluate(count) == "4"
    chrome.evaluate("window.__probe.start()")
    big.crowd.connect({name: big.cookies[name] for name in BURST})
    chrome.wait_for(f"{count} === '1,004'")
    assert chrome.evaluate(ROW_STATUS % BURST[0]) == "Online"
    big.crowd.close(BURST)
    chrome.wait_for(f"{count} === '4'")
    time.sleep(0.2)  # a last frame or two, in the measurement
    result: dict[str, Any] = chrome.evaluate("window.__probe.stop()")
    result["stall"] = max(result["maxTickGap"], result["maxFrameGap"])
    return result


ROW_STATUS = "document.querySelector('#user-list > [data-username=\"%s\"] .status')?.textContent"


def api_users(url: str, cookie: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(url + "/api/users", headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["users"]


def test_search_works_without_javascript_too(big: BigList, new_context: Any) -> None:
    page = new_context(big.url, java_script_enabled=False).new_page()
    fill_login(page, VIEWER)
    page.wait_for_url(re.compile(r"/$"))
    # No script, no socket: the three early users are the only ones online.
    expect(page.locator("#list-status")).to_have_text("Showing 103 of 5,000 users.")
    search = page.get_by_role("searchbox", name="Search users")
    search.fill("Member-0004")
    search.press("Enter")
    page.wait_for_url(re.compile(r"/\?q=Member-0004$"))
    assert rendered_names(page) == [f"member-{i:05d}" for i in range(40, 50)]
    expect(page.locator("#list-status")).to_have_text("10 users match “member-0004”.")
    expect(search).to_have_value("Member-0004")
