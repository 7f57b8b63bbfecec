"""HTTP hardening: security headers everywhere, no server version, NUL paths, the
``_xsrf`` token bound to the session, bytes that are not UTF-8, a body timeout, file modes."""

from __future__ import annotations

import logging
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from handlers.base import SECURITY_HEADERS, SESSION_COOKIE
from handlers.xsrf import XSRF_COOKIE, make_token
from presence_app.accounts.errors import LOGIN_FAILED
from tests.conftest import PASSWORD


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The HTTP layer does not depend on the backends: SQLite and the in-process broker only."""
    return f"sqlite+aiosqlite:///{tmp_path / 'presence.db'}"


@pytest.fixture
def redis_url() -> str:
    return ""


def assert_hardened_headers(response: Any, what: str) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (what, name, dict(response.headers))
    assert response.headers.get("Server") == "presence", what
    assert "tornado" not in str(dict(response.headers)).lower(), what


def no_traceback(caplog: Any) -> None:
    for record in caplog.records:
        assert not record.exc_info, record.getMessage()
        assert "Traceback" not in record.getMessage()
        assert record.levelno < logging.ERROR, record.getMessage()


# -- headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,status",
    [
        ("/login", 200),
        ("/static/style.css", 200),
        ("/static/js/main.js", 200),
        ("/favicon.ico", 200),
        ("/static/nope.css", 404),
        ("/no/such/page", 404),
        ("/ws", 401),  # no session
        ("/api/users", 401),
        ("/healthz", 200),
    ],
)
@pytest.mark.gen_test
async def test_every_answer_has_the_security_headers_and_no_server_version(
    make_client, path, status
):
    response = await make_client().request("GET", path)
    assert response.code == status
    assert_hardened_headers(response, path)


@pytest.mark.gen_test
async def test_websocket_refusals_and_the_upgrade_have_the_headers(user_factory, base_url):
    alice = await user_factory("alice")
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    foreign = await alice.request(
        "GET", "/ws", headers={**upgrade, "Origin": "http://evil.example"}
    )
    assert foreign.code == 403
    assert_hardened_headers(foreign, "foreign origin")
    plain = await alice.request("GET", "/ws")  # a GET that is no upgrade
    assert plain.code == 400
    assert_hardened_headers(plain, "no upgrade")
    sock = await alice.connect(origin=base_url)
    assert sock.ws.response is not None
    assert sock.ws.response.headers["Server"] == "presence"
    assert "Tornado" not in str(sock.ws.response.headers)
    await sock.close()


# -- NUL in a static path --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/static/style.css%00.js", "/static/%00", "/static/js/%00x"])
@pytest.mark.gen_test
async def test_nul_in_a_static_path_is_404_without_a_traceback(make_client, caplog, path):
    caplog.set_level(logging.DEBUG)
    response = await make_client().request("GET", path)
    assert response.code == 404
    assert_hardened_headers(response, path)
    assert b"Traceback" not in response.body
    no_traceback(caplog)


# -- _xsrf bound to the session ----------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_hand_made_equal_cookie_and_field_pair_is_403(user_factory, make_client):
    await user_factory("alice")
    client = make_client()
    client.cookies[XSRF_COOKIE] = "0" * 32 + "." + "0" * 64  # equal, but no valid HMAC
    response = await client.request(
        "POST",
        "/login",
        {"username": "alice", "password": PASSWORD, "_xsrf": client.cookies[XSRF_COOKIE]},
    )
    assert response.code == 403
    assert SESSION_COOKIE not in client.cookies


@pytest.mark.gen_test
async def test_a_token_made_with_another_secret_is_403(make_client):
    client = make_client()
    client.cookies[XSRF_COOKIE] = token = make_token("some-other-secret-0123456789", "")
    response = await client.request(
        "POST",
        "/signup",
        {"username": "alice", "password": PASSWORD, "confirm": PASSWORD, "_xsrf": token},
    )
    assert response.code == 403


@pytest.mark.gen_test
async def test_an_anonymous_token_does_not_log_out_and_the_reissued_one_does(make_client):
    client = make_client()
    anonymous = await client.xsrf()
    response = await client.signup("alice", PASSWORD)
    fresh = client.cookies[XSRF_COOKIE]
    assert fresh != anonymous  # the 302 of the sign-up re-issued it, bound to the session
    assert any(h.startswith(XSRF_COOKIE + "=") for h in response.headers.get_list("Set-Cookie"))
    # The old anonymous token, equal in cookie and field, no longer passes.
    stale = dict(client.cookies, **{XSRF_COOKIE: anonymous})
    old_client = make_client()
    old_client.cookies = stale
    refused = await old_client.request("POST", "/logout", {"_xsrf": anonymous})
    assert refused.code == 403
    assert "reload the page" in refused.body.decode()
    assert (await client.request("GET", "/api/users")).code == 200  # still logged in
    # A page GET with the stale token hands out a valid one; it works.
    page = await old_client.request("GET", "/")
    assert page.code == 200
    assert old_client.cookies[XSRF_COOKIE] != anonymous
    assert (await old_client.logout()).code == 302
    assert (await client.request("GET", "/api/users")).code == 401


@pytest.mark.gen_test
async def test_login_and_logout_reissue_the_token_so_a_scripted_client_keeps_going(
    user_factory, make_client
):
    await user_factory("alice")
    client = make_client()
    await client.login("alice", PASSWORD)
    assert (await client.logout()).code == 302  # the token set by the login's 302
    assert (await client.login("alice", PASSWORD, check=False)).code == 302  # and by logout's
    raw = [
        h
        for h in (await client.logout()).headers.get_list("Set-Cookie")
        if h.startswith(XSRF_COOKIE + "=")
    ]
    assert raw and "httponly" in raw[0].lower() and "samesite=lax" in raw[0].lower()


@pytest.mark.gen_test
async def test_xsrf_in_the_query_string_is_403(user_factory, make_client):
    alice = await user_factory("alice")
    token = alice.cookies[XSRF_COOKIE]
    response = await alice.request("POST", f"/logout?_xsrf={token}", {})
    assert response.code == 403
    assert (await alice.request("GET", "/api/users")).code == 200


# -- bytes that are not UTF-8 ------------------------------------------------------------------


async def post_raw(client: Any, path: str, body: str) -> Any:
    token = await client.xsrf()
    return await client.http.fetch(
        client.base_url + path,
        method="POST",
        body=f"{body}&_xsrf={token}",
        headers={
            "Cookie": client.cookie_header(),
            "Content-Type": "application/x-www-form-urlencoded",
        },
        follow_redirects=False,
        raise_error=False,
    )


SECRET_BYTES = "%FF%FEsecretXYZ%C3%28"


@pytest.mark.gen_test
async def test_signup_with_a_password_that_is_not_utf8_is_400_echoing_nothing(make_client, caplog):
    caplog.set_level(logging.DEBUG)
    body = f"username=alice&password={SECRET_BYTES}&confirm={SECRET_BYTES}"
    response = await post_raw(make_client(), "/signup", body)
    assert response.code == 400
    page = response.body.decode("utf-8", "replace")
    assert "not valid UTF-8" in page
    for text in (page, caplog.text):
        assert "secretXYZ" not in text and "\\xff" not in text and "Invalid unicode" not in text
    no_traceback(caplog)


@pytest.mark.gen_test
async def test_login_with_a_password_that_is_not_utf8_is_a_wrong_password(
    user_factory, make_client, caplog
):
    await user_factory("alice")
    caplog.set_level(logging.DEBUG)
    response = await post_raw(make_client(), "/login", f"username=alice&password={SECRET_BYTES}")
    assert response.code == 401
    page = response.body.decode("utf-8", "replace")
    assert LOGIN_FAILED in page
    for text in (page, caplog.text):
        assert "secretXYZ" not in text and "\\xff" not in text
    no_traceback(caplog)


# -- real processes: body timeout, file modes --------------------------------------------------


@pytest.fixture
def run_server(app_process: Any) -> Any:
    """``run_server(*flags)``: a running ``python run.py`` (tests/conftest.py app_process)."""
    return app_process


def test_a_trickled_body_is_cut_off_at_the_body_timeout(run_server):
    server = run_server("--body-timeout", "1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(
            b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\nu"
        )
        started = time.monotonic()
        closed_after = None
        conn.settimeout(0.3)
        while time.monotonic() - started < 10:
            try:
                if conn.recv(4096) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                try:
                    conn.sendall(b"x")  # one more byte every 0.3 s
                except OSError:
                    closed_after = time.monotonic() - started
                    break
            except OSError:
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None, "the connection was still open after 10 s"
    assert 0.8 <= closed_after <= 4.0, closed_after


def test_data_dir_is_0700_and_the_sqlite_files_0600(run_server, tmp_path):
    import asyncio

    from presence_app.client import PresenceClient

    server = run_server()
    asyncio.run(PresenceClient(f"http://127.0.0.1:{server.port}").signup("alice", PASSWORD))
    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [data / name for name in ("presence.db", "presence.db-wal", "presence.db-shm")]
    assert all(f.exists() for f in files), list(data.iterdir())
    for path in files + [data / "cookie_secret"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_an_existing_sqlite_file_and_its_wal_are_tightened_to_0600(tmp_path):
    from presence_app.db.database import Database

    for name in ("old.db", "old.db-wal", "old.db-shm"):
        (tmp_path / name).write_bytes(b"")
        (tmp_path / name).chmod(0o644)
    Database(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")  # before any connection
    for name in ("old.db", "old.db-wal", "old.db-shm"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
