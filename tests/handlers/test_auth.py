"""Sign-up, login, logout, sessions and XSRF, as a browser or a scripted client sees them."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from urllib.parse import urlencode

import pytest
import tornado.web
from sqlalchemy import select, update

from handlers.base import SESSION_COOKIE
from presence_app.accounts.errors import LOGIN_FAILED, InvalidUsername, PasswordHasNul
from presence_app.client import ClientError
from presence_app.db.database import Session, User
from tests.conftest import PASSWORD


def session_set_cookie(response) -> str:
    """The raw Set-Cookie header that sets the session cookie."""
    headers = [
        h for h in response.headers.get_list("Set-Cookie") if h.startswith(SESSION_COOKIE + "=")
    ]
    assert len(headers) == 1, response.headers.get_list("Set-Cookie")
    return headers[0]


def copy_of(make_client, client):
    """A second client presenting exactly the same cookies (a stolen or copied cookie)."""
    other = make_client()
    other.cookies = dict(client.cookies)
    return other


async def api_status(client) -> int:
    return (await client.request("GET", "/api/users")).code


# -- sign-up -----------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_signup_sets_httponly_lax_session_cookie_and_logs_in(make_client):
    client = make_client()
    response = await client.signup("alice", PASSWORD)
    assert response.code == 302
    assert response.headers["Location"] in ("/", "/login")
    raw = session_set_cookie(response).lower()
    assert "httponly" in raw
    assert "samesite=lax" in raw
    page = await client.request("GET", "/")
    assert page.code == 200
    assert 'data-username="alice"' in page.body.decode()


@pytest.mark.parametrize(
    "username,password,confirm,message",
    [
        ("al", PASSWORD, PASSWORD, "Usernames are 3-32 characters"),
        ("a" * 33, PASSWORD, PASSWORD, "Usernames are 3-32 characters"),
        ("al ice", PASSWORD, PASSWORD, "Usernames are 3-32 characters"),
        ("alice!", PASSWORD, PASSWORD, "Usernames are 3-32 characters"),
        ("<script>", PASSWORD, PASSWORD, "Usernames are 3-32 characters"),
        ("ålice", PASSWORD, PASSWORD, "Usernames are 3-32 characters"),
        ("\u0430lice", PASSWORD, PASSWORD, "Usernames are 3-32 characters"),  # Cyrillic a
        ("", PASSWORD, PASSWORD, "Usernames are 3-32 characters"),
        ("alice", "short", "short", "at least 8 characters"),
        ("alice", "", "", "at least 8 characters"),
        ("alice", "é" * 37, "é" * 37, "at most 72 bytes"),
        ("alice", "x" * 73, "x" * 73, "at most 72 bytes"),
        ("alice", PASSWORD, PASSWORD + "x", "do not match"),
        ("alice", PASSWORD, "", "do not match"),
        ("a" * 5000, PASSWORD, PASSWORD, "far too long"),
        ("alice", "p" * 5000, "p" * 5000, "far too long"),
    ],
    ids=[
        "short-name",
        "long-name",
        "space",
        "bang",
        "markup",
        "unicode",
        "homoglyph",
        "no-name",
        "short-password",
        "no-password",
        "73-utf8-bytes",
        "73-ascii",
        "mismatch",
        "no-confirm",
        "5000-char-name",
        "5000-char-password",
    ],
)
@pytest.mark.gen_test
async def test_signup_validation(make_client, username, password, confirm, message):
    client = make_client()
    response = await client.signup(username, password, confirm, check=False)
    assert response.code == 400
    body = response.body.decode()
    assert message in body
    assert 'role="alert"' in body
    assert not any(h.startswith(SESSION_COOKIE) for h in response.headers.get_list("Set-Cookie"))
    # Nothing was created: the name is still free (for the names that are valid at all).
    assert (await client.signup("alice", PASSWORD, check=False)).code == 302


@pytest.mark.gen_test
async def test_signup_missing_fields(make_client):
    client = make_client()
    response = await client.post_form("/signup", {})
    assert response.code == 400
    assert "Usernames are 3-32 characters" in response.body.decode()
    response = await client.post_form("/signup", {"username": "alice"})
    assert response.code == 400
    assert "at least 8 characters" in response.body.decode()


@pytest.mark.gen_test
async def test_signup_markup_in_name_is_escaped(make_client):
    response = await make_client().signup("<b>x</b>", PASSWORD, check=False)
    assert response.code == 400
    assert "<b>x</b>" not in response.body.decode()


@pytest.mark.parametrize("second", ["alice", "ALICE", "Alice"])
@pytest.mark.gen_test
async def test_signup_taken_name_is_409(make_client, user_factory, second):
    await user_factory("alice")
    response = await make_client().signup(second, PASSWORD, check=False)
    assert response.code == 409
    assert "That username is taken." in response.body.decode()


@pytest.mark.gen_test
async def test_simultaneous_signups_of_one_name(make_client, services):
    names = ["carol", "dave", "Erin"]
    pairs = [(make_client(), make_client()) for _ in names]
    for a, b in pairs:  # the XSRF dance first, so that the sign-ups themselves race
        await a.xsrf()
        await b.xsrf()
    responses = await asyncio.gather(
        *(
            client.signup(name if i == 0 else name.upper(), PASSWORD, check=False)
            for name, pair in zip(names, pairs, strict=True)
            for i, client in enumerate(pair)
        )
    )
    for k, name in enumerate(names):
        codes = sorted(r.code for r in responses[2 * k : 2 * k + 2])
        assert codes == [302, 409], (name, codes)
    async with services.db.read() as session:
        keys = (await session.scalars(select(User.username_key))).all()
    assert sorted(keys) == sorted(n.lower() for n in names)


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "username,password,error",
    [
        ("mallory\n", PASSWORD, InvalidUsername),  # ``$`` in a regex also matches before a final \n
        (
            "mallory",
            PASSWORD + "\x00",
            PasswordHasNul,
        ),  # forms turn NUL into a space; others may not
    ],
)
async def test_signup_service_rejects(services, username, password, error):
    with pytest.raises(error):
        await services.accounts.create_user(username, password, password)
    assert await services.accounts.all_users() == []


# -- login -------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_login_redirects_home_with_new_session(user_factory, make_client):
    await user_factory("alice")
    client = make_client()
    response = await client.login("alice", PASSWORD)
    assert response.code == 302
    assert response.headers["Location"] == "/"
    raw = session_set_cookie(response).lower()
    assert "httponly" in raw and "samesite=lax" in raw
    assert await api_status(client) == 200


@pytest.mark.parametrize("target", ["/api/users", "/?tab=all", "/some/path"])
@pytest.mark.gen_test
async def test_login_follows_safe_next(user_factory, make_client, target):
    await user_factory("alice")
    response = await make_client().login("alice", PASSWORD, next=target)
    assert response.code == 302
    assert response.headers["Location"] == target


UNSAFE_NEXT = [
    "//evil.com",
    "/\\evil",
    "http://evil.com/",
    "/\t/evil",
    "javascript:alert(1)",
    "\r\n",
    "/\r\nSet-Cookie: x=1",
    "https:evil.com",
    "evil.com",
    "///evil.com",
]


@pytest.mark.parametrize("target", UNSAFE_NEXT)
@pytest.mark.gen_test
async def test_login_ignores_unsafe_next(user_factory, make_client, target):
    await user_factory("alice")
    client = make_client()
    response = await client.login("alice", PASSWORD, next=target)
    assert response.code == 302
    assert response.headers["Location"] == "/"
    form = await client.request("GET", "/login?" + urlencode({"next": target}))
    assert form.code == 200
    assert "evil" not in form.body.decode() and "javascript:" not in form.body.decode()


@pytest.mark.parametrize(
    "username,password",
    [
        ("alice", "wrong-password"),
        ("nobody", PASSWORD),
        ("alice", "p" * 100),
        ("alice", PASSWORD + "x" * 100),
        ("alice", "é" * 40),
        ("", ""),
        ("a" * 5000, PASSWORD),
    ],
    ids=[
        "wrong-password",
        "unknown-user",
        "100-bytes",
        "long-with-right-prefix",
        "80-utf8-bytes",
        "empty",
        "5000-char-name",
    ],
)
@pytest.mark.gen_test
async def test_login_failure_is_401_with_one_message(user_factory, make_client, username, password):
    await user_factory("alice")
    client = make_client()
    response = await client.login(username, password, check=False)
    assert response.code == 401
    body = response.body.decode()
    assert LOGIN_FAILED == "Wrong username or password."
    assert LOGIN_FAILED in body
    assert "Traceback" not in body
    assert not any(h.startswith(SESSION_COOKIE) for h in response.headers.get_list("Set-Cookie"))
    assert await api_status(client) == 401


@pytest.mark.gen_test
async def test_login_is_case_insensitive_on_the_name(user_factory, make_client):
    await user_factory("Alice")
    assert (await make_client().login("aLICE", PASSWORD, check=False)).code == 302


# -- XSRF --------------------------------------------------------------------------------------


async def _xsrf_variant(make_client, client, variant: str) -> dict[str, str]:
    """The extra form fields for a POST whose XSRF token is ``variant``."""
    if variant == "missing":
        await client.xsrf()
        return {}
    if variant == "garbage":
        await client.xsrf()
        return {"_xsrf": "not-a-token"}
    if variant == "other-clients-token":
        await client.xsrf()
        return {"_xsrf": await make_client().xsrf()}
    assert variant == "no-cookie"
    token = await make_client().xsrf()
    client.cookies.pop("_xsrf", None)
    return {"_xsrf": token}


XSRF_VARIANTS = ["missing", "garbage", "other-clients-token", "no-cookie"]


@pytest.mark.parametrize("variant", XSRF_VARIANTS)
@pytest.mark.gen_test
async def test_xsrf_required_for_login(user_factory, make_client, variant):
    await user_factory("alice")
    client = make_client()
    fields = await _xsrf_variant(make_client, client, variant)
    response = await client.request(
        "POST", "/login", {"username": "alice", "password": PASSWORD, **fields}
    )
    assert response.code == 403
    assert SESSION_COOKIE not in client.cookies


@pytest.mark.parametrize("variant", XSRF_VARIANTS)
@pytest.mark.gen_test
async def test_xsrf_required_for_signup(make_client, variant):
    client = make_client()
    fields = await _xsrf_variant(make_client, client, variant)
    response = await client.request(
        "POST",
        "/signup",
        {"username": "alice", "password": PASSWORD, "confirm": PASSWORD, **fields},
    )
    assert response.code == 403
    assert (await make_client().signup("alice", PASSWORD, check=False)).code == 302


@pytest.mark.parametrize("variant", XSRF_VARIANTS)
@pytest.mark.gen_test
async def test_xsrf_required_for_logout(user_factory, make_client, variant):
    alice = await user_factory("alice")
    fields = await _xsrf_variant(make_client, alice, variant)
    response = await alice.request("POST", "/logout", fields)
    assert response.code == 403
    assert await api_status(alice) == 200  # still logged in


@pytest.mark.gen_test
async def test_xsrf_header_works(user_factory, make_client):
    await user_factory("alice")
    client = make_client()
    token = await client.xsrf()
    response = await client.request(
        "POST",
        "/login",
        {"username": "alice", "password": PASSWORD},
        headers={"X-XSRFToken": token},
    )
    assert response.code == 302
    assert await api_status(client) == 200
    # The login re-issued the token, bound to the new session
    # (tests/handlers/test_http_hardening.py).
    token = client.cookies["_xsrf"]
    response = await client.request("POST", "/logout", {}, headers={"X-XSRFToken": token})
    assert response.code == 302
    assert response.headers["Location"] == "/login"
    assert await api_status(client) == 401


@pytest.mark.gen_test
async def test_get_logout_is_405(user_factory):
    alice = await user_factory("alice")
    response = await alice.request("GET", "/logout")
    assert response.code == 405
    assert await api_status(alice) == 200


# -- sessions ----------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_login_rotates_the_session(user_factory, make_client):
    alice = await user_factory("alice")
    before = copy_of(make_client, alice)
    assert await api_status(before) == 200
    response = await alice.login("alice", PASSWORD)
    assert response.code == 302
    assert alice.cookies[SESSION_COOKIE] != before.cookies[SESSION_COOKIE]
    assert await api_status(alice) == 200
    assert await api_status(before) == 401


@pytest.mark.gen_test
async def test_logout_ends_the_session_server_side(user_factory, make_client):
    alice = await user_factory("alice")
    stolen = copy_of(make_client, alice)
    assert await api_status(stolen) == 200
    sock = await stolen.connect()  # works before the logout
    response = await alice.logout()
    assert response.code == 302
    assert response.headers["Location"] == "/login"
    assert SESSION_COOKIE not in alice.cookies  # the browser's cookie is cleared too
    assert await sock.wait_closed() == 4001
    assert await api_status(stolen) == 401
    assert (await stolen.request("GET", "/")).code == 302
    with pytest.raises(ClientError) as info:
        await stolen.connect()
    assert info.value.status == 401


def _token_of(services, client) -> str:
    secret = services.settings.cookie_secret
    raw = tornado.web.decode_signed_value(secret, SESSION_COOKIE, client.cookies[SESSION_COOKIE])
    assert raw is not None
    return raw.decode()


def _resigned(services, client, age_days: float) -> str:
    """The client's session token in a cookie signed ``age_days`` ago."""
    signed_at = time.time() - age_days * 86400
    return tornado.web.create_signed_value(
        services.settings.cookie_secret,
        SESSION_COOKIE,
        _token_of(services, client),
        clock=lambda: signed_at,
    ).decode()


def _bad_cookies(services, client) -> dict[str, str]:
    good = client.cookies[SESSION_COOKIE]
    last = "A" if good[-1] != "A" else "B"
    return {
        "tampered-signature": good[:-1] + last,
        "garbage": "garbage",
        "unsigned-token": _token_of(services, client),
        "other-secret": tornado.web.create_signed_value(
            "another-secret-of-enough-length", SESSION_COOKIE, _token_of(services, client)
        ).decode(),
        "signed-40-days-ago": _resigned(services, client, 40),
    }


@pytest.mark.parametrize(
    "kind",
    ["tampered-signature", "garbage", "unsigned-token", "other-secret", "signed-40-days-ago"],
)
@pytest.mark.gen_test
async def test_bad_session_cookie_is_logged_out(services, user_factory, make_client, kind):
    alice = await user_factory("alice")
    # The same re-signing with a fresh timestamp is accepted: the forgery is what fails.
    fresh = make_client()
    fresh.cookies[SESSION_COOKIE] = _resigned(services, alice, 0)
    assert await api_status(fresh) == 200
    forged = make_client()
    forged.cookies[SESSION_COOKIE] = _bad_cookies(services, alice)[kind]
    page = await forged.request("GET", "/")
    assert page.code == 302
    assert page.headers["Location"] == "/login?next=%2F"
    api = await forged.request("GET", "/api/users")
    assert api.code == 401
    assert api.headers["Content-Type"].startswith("application/json")
    assert json.loads(api.body)["error"]
    with pytest.raises(ClientError) as info:
        await forged.connect()
    assert info.value.status == 401


@pytest.mark.gen_test
async def test_session_expired_in_database_is_logged_out(services, user_factory):
    alice = await user_factory("alice")
    bob = await user_factory("bob")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    async with services.db.write() as session:
        alice_id = await session.scalar(select(User.id).where(User.username == "alice"))
        await session.execute(
            update(Session).where(Session.user_id == alice_id).values(expires_at=past)
        )
    assert await api_status(alice) == 401
    assert (await alice.request("GET", "/")).headers["Location"] == "/login?next=%2F"
    assert await api_status(bob) == 200


@pytest.mark.gen_test
async def test_anonymous_requests(make_client):
    client = make_client()
    page = await client.request("GET", "/")
    assert page.code == 302
    assert page.headers["Location"] == "/login?next=%2F"
    api = await client.request("GET", "/api/users")
    assert api.code == 401
    assert api.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("page,link", [("/login", 'href="/signup"'), ("/signup", 'href="/login"')])
@pytest.mark.gen_test
async def test_form_pages_link_to_each_other(make_client, page, link):
    response = await make_client().request("GET", page)
    assert response.code == 200
    body = response.body.decode()
    assert link in body
    assert 'name="_xsrf"' in body
    assert "&lt;input" not in body  # the XSRF field is markup, not escaped text
