"""The page never lets an older event overwrite a newer state (per-user versions).

Playwright routes the page's WebSocket through the test: real server traffic passes both
ways, and the test injects extra presence events as if they had arrived late or twice.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from .helpers import expect, expect_status, open_list, row, signup

pytestmark = pytest.mark.e2e


def test_stale_and_repeated_events_are_ignored(server: Any, new_context: Any) -> None:
    bob_context = new_context(server.url)
    signup(bob_context.new_page(), "bob")  # bob stays online in this tab

    alice_context = new_context(server.url)
    signup(alice_context.new_page(), "alice").close()
    routes: list[Any] = []

    def forward(ws: Any) -> None:
        upstream = ws.connect_to_server()
        ws.on_message(upstream.send)
        upstream.on_message(ws.send)
        routes.append(ws)

    page = alice_context.new_page()
    page.route_web_socket("**/ws", forward)
    open_list(page)
    expect_status(page, "bob", "Online")
    version = int(row(page, "bob").get_attribute("data-version") or "0")
    assert version > 0 and routes, "the socket was not routed through the test"

    def inject(online: bool, version: int) -> None:
        routes[-1].send(
            json.dumps(
                {
                    "type": "presence",
                    "username": "bob",
                    "online": online,
                    "last_seen": "2026-01-01T00:00:00.000Z",
                    "version": version,
                }
            )
        )

    inject(False, version - 1)  # a stale offline that arrived late
    inject(False, version)  # the same version again
    page.wait_for_timeout(300)
    expect_status(page, "bob", "Online")
    expect(row(page, "bob")).to_have_attribute("data-version", str(version))

    inject(False, version + 1)  # a newer one is applied
    expect_status(page, "bob", "Offline")
    expect(row(page, "bob")).to_have_attribute("data-version", str(version + 1))
