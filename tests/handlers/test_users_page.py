"""Which rows the server renders into the users page (handlers/users.py): all of them up to
1,000 users (docs/PROTOCOL.md), then every online user and the first page of the others."""

from __future__ import annotations

import json
from typing import Any

import pytest

from handlers.users import FULL_LIST_UP_TO, OFFLINE_PAGE, first_page, summary


def users(online: int, offline: int) -> list[dict]:
    """Sorted like presence.users(): online first, then by name."""
    return [{"username": f"on{i:05d}", "online": True} for i in range(online)] + [
        {"username": f"off{i:05d}", "online": False} for i in range(offline)
    ]


@pytest.mark.parametrize("online,offline", [(0, 0), (1, 0), (0, 1000), (3, 997), (1000, 0)])
def test_up_to_1000_users_every_one_is_rendered(online: int, offline: int) -> None:
    everyone = users(online, offline)
    assert first_page(everyone) == everyone


@pytest.mark.parametrize("online,offline", [(0, 1001), (4, 4996), (1001, 0), (3000, 7000)])
def test_beyond_1000_every_online_user_and_a_first_page_of_the_others(
    online: int, offline: int
) -> None:
    everyone = users(online, offline)
    page = first_page(everyone)
    assert [u for u in page if u["online"]] == everyone[:online]
    assert [u for u in page if not u["online"]] == everyone[online : online + OFFLINE_PAGE]
    assert len(page) == online + min(offline, OFFLINE_PAGE)
    assert FULL_LIST_UP_TO == 1000


def test_the_order_given_is_kept_even_if_online_users_are_not_first() -> None:
    everyone = users(0, 1200)
    everyone[500]["online"] = True
    page = first_page(everyone)
    assert page[0] is everyone[500]
    assert page[1:] == everyone[:OFFLINE_PAGE]


@pytest.mark.parametrize(
    "online,total,text",
    [
        (0, 0, "0 online · 0 users"),
        (1, 1, "1 online · 1 user"),
        (301, 1001, "301 online · 1,001 users"),
        (10000, 10000, "10,000 online · 10,000 users"),
    ],
)
def test_summary_words_match_the_page_script(online: int, total: int, text: str) -> None:
    assert summary(online, total) == text


def test_search_without_javascript_matches_like_the_script() -> None:
    from handlers.users import list_status, matching

    everyone = [{"username": n, "online": False} for n in ("Member-0042", "bob", "member-1042")]
    assert [u["username"] for u in matching(everyone, " 042 ")] == ["Member-0042", "member-1042"]
    assert matching(everyone, "") == everyone
    assert list_status("BOB", 1, 1, 3) == "1 user matches “bob”."
    assert list_status("m", 100, 1234, 5000) == "Showing 100 of 1,234 users match “m”."
    assert list_status("zz", 0, 0, 5000) == "No users match “zz”."
    assert list_status("", 104, 5000, 5000) == "Showing 104 of 5,000 users."
    assert list_status("", 6, 6, 6) == ""


@pytest.mark.gen_test
async def test_session_api_is_the_cheap_reconnect_check(
    user_factory: Any, make_client: Any, services: Any
) -> None:
    for n in range(50):
        await services.presence.user_signed_up(f"crowd{n:02d}")
    alice = await user_factory("alice")
    response = await alice.request("GET", "/api/session")
    assert response.code == 200 and json.loads(response.body) == {"username": "alice"}
    assert response.headers["Cache-Control"] == "no-store"
    assert len(response.body) < 64, "the probe must not grow with the number of users"
    await alice.logout()
    gone = await alice.request("GET", "/api/session")
    assert gone.code == 401 and json.loads(gone.body) == {"error": "login required"}
    stranger = await make_client().request("GET", "/api/session")
    assert stranger.code == 401
