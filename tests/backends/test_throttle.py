"""Failed-login throttling (an *extension* in docs/PROTOCOL.md; a lockout refuses the right
password too, other logins are never refused), its bounded memory under a spray of names,
and the per-address budget of bcrypt work."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import bcrypt
import pytest
import tornado.httpserver
import tornado.testing
from tornado.httpclient import AsyncHTTPClient

from presence_app.accounts.fields import MAX_INPUT_CHARS
from presence_app.backends.throttle import LoginThrottle
from presence_app.client import PresenceClient
from presence_app.config import Settings
from tests.conftest import PASSWORD

LONG = "x" * (MAX_INPUT_CHARS + 1)  # over the limit of any login field: skips bcrypt entirely


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Per-test settings: ``@pytest.mark.parametrize("overrides", [{...}])`` replaces it."""
    return {}


@pytest.fixture
def settings(settings: Settings, overrides: dict[str, Any]) -> Settings:
    return replace(settings, **{"login_max_failures": 3, "login_failure_window": 60.0, **overrides})


@pytest.fixture
def http(io_loop: Any) -> Any:
    """An HTTP client of its own that really sends 300 requests at once (the shared one
    keeps all but 10 in its own queue)."""
    client = AsyncHTTPClient(force_instance=True, max_clients=300)
    yield client
    client.close()


@pytest.fixture
def proxied_url(app: Any) -> Any:
    """A server of the same app that trusts ``X-Real-IP`` (as behind nginx), so one test can
    speak from several addresses."""
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(app, xheaders=True)
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}"
    server.stop()


def client_at(url: str, address: str, http: AsyncHTTPClient) -> PresenceClient:
    """A client whose requests come from ``address`` (through ``proxied_url``)."""
    client = PresenceClient(url)
    client.http = http
    real_request = client.request

    async def request(
        method: str, path: str, body: Any = None, headers: Any = None, **kwargs: Any
    ) -> Any:
        return await real_request(
            method, path, body, {**(headers or {}), "X-Real-IP": address}, **kwargs
        )

    client.request = request  # type: ignore[method-assign]
    return client


@pytest.mark.gen_test
async def test_too_many_failures_wait_then_429(make_client: Any, user_factory: Any) -> None:
    await user_factory("alice")
    await user_factory("bob")
    client = make_client()
    for _ in range(3):
        assert (await client.login("alice", "wrong password", check=False)).code == 401
    blocked = await client.login("alice", PASSWORD, check=False)
    assert blocked.code == 429
    assert int(blocked.headers["Retry-After"]) > 0
    assert b"Too many failed attempts" in blocked.body
    # Another name is not affected, and its successful logins are never refused.
    for _ in range(10):
        assert (await make_client().login("bob", PASSWORD, check=False)).code == 302


def test_failures_expire_after_the_window() -> None:
    throttle = LoginThrottle(max_failures=2, window=0.2)
    throttle.failed("Alice", "1.2.3.4")
    throttle.failed("alice", "1.2.3.4")
    assert throttle.retry_after("ALICE", "1.2.3.4") > 0
    assert throttle.retry_after("alice", "5.6.7.8") == 0
    time.sleep(0.25)
    assert throttle.retry_after("alice", "1.2.3.4") == 0


def test_success_clears_and_zero_disables() -> None:
    throttle = LoginThrottle(max_failures=1, window=60)
    throttle.failed("bob", "ip")
    assert throttle.retry_after("bob", "ip") > 0
    throttle.succeeded("bob", "ip")
    assert throttle.retry_after("bob", "ip") == 0
    off = LoginThrottle(max_failures=0, window=60)
    for _ in range(100):
        off.failed("bob", "ip")
    assert off.retry_after("bob", "ip") == 0


# -- bounded memory: a spray of names never reopens a locked name ------------------------------
def test_spray_past_the_old_wipe_keeps_a_lock() -> None:
    """50,010 distinct names used to wipe the whole table (10 fresh guesses per lock)."""
    throttle = LoginThrottle(max_failures=3, window=60)
    for _ in range(3):
        throttle.failed("victim", "6.6.6.6")
    for i in range(50_010):
        throttle.failed(f"spray{i}", "6.6.6.6")
    assert throttle.retry_after("victim", "6.6.6.6") > 0


def test_spray_beyond_max_entries_evicts_unlocked_names_only() -> None:
    throttle = LoginThrottle(max_failures=3, window=60, max_entries=100)
    for _ in range(3):
        throttle.failed("victim", "6.6.6.6")
    throttle.failed("counting", "6.6.6.6")
    for i in range(5_000):
        throttle.failed(f"spray{i}", "6.6.6.6")
        assert len(throttle) <= 100
    assert throttle.retry_after("victim", "6.6.6.6") > 0
    # The oldest names still counting were forgotten, the newest kept: eviction, not a wipe.
    throttle.failed("counting", "6.6.6.6")
    throttle.failed("counting", "6.6.6.6")
    assert throttle.retry_after("counting", "6.6.6.6") == 0
    throttle.failed("spray4999", "6.6.6.6")
    throttle.failed("spray4999", "6.6.6.6")
    assert throttle.retry_after("spray4999", "6.6.6.6") > 0


def test_table_of_locks_stays_bounded_and_expired_locks_go_first() -> None:
    throttle = LoginThrottle(max_failures=2, window=0.2, max_entries=10)
    for i in range(10):
        throttle.failed(f"old{i}", "ip")
        throttle.failed(f"old{i}", "ip")
    time.sleep(0.25)  # every lock has expired
    throttle.failed("victim", "ip")
    throttle.failed("victim", "ip")
    for i in range(30):  # only locks left: the quietest lock goes, memory stays bounded
        throttle.failed(f"new{i}", "ip")
        throttle.failed(f"new{i}", "ip")
        assert len(throttle) <= 10
    assert throttle.retry_after("new29", "ip") > 0


@pytest.mark.parametrize("overrides", [{"login_throttle_entries": 20}])
@pytest.mark.gen_test(timeout=60)
async def test_over_long_fields_count_and_a_spray_over_http_keeps_the_lock(
    services: Any, make_client: Any, user_factory: Any
) -> None:
    await user_factory("alice")
    client = make_client()
    for password in (LONG, "wrong password", LONG):  # over-long passwords count as failures
        assert (await client.login("alice", password, check=False)).code == 401
    assert (await client.login("alice", PASSWORD, check=False)).code == 429
    for _ in range(3):  # and so do over-long names (counted by a clipped name)
        assert (await client.login("bob" + LONG, PASSWORD, check=False)).code == 401
    assert (await client.login("bob" + LONG, PASSWORD, check=False)).code == 429
    for i in range(60):  # 3x the table: cheap failures that skip bcrypt
        assert (await client.login(f"spray{i}", LONG, check=False)).code == 401
    assert (await client.login("alice", PASSWORD, check=False)).code == 429
    assert len(services.throttle) <= 20


# -- the per-address budget of bcrypt work -----------------------------------------------------
COST = 9  # ~30 ms a hash here: a queue of them is easy to tell from one job
FLOOD = 60


def job_seconds() -> float:
    salt = bcrypt.gensalt(COST)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        bcrypt.hashpw(b"timing", salt)
        times.append(time.perf_counter() - start)
    return sorted(times)[2]


@pytest.mark.parametrize(
    "overrides", [{"bcrypt_rounds": COST, "bcrypt_threads": 1, "login_max_failures": 0}]
)
@pytest.mark.gen_test(timeout=90)
async def test_a_flooding_address_delays_another_by_about_one_job(
    services: Any, proxied_url: str, http: AsyncHTTPClient
) -> None:
    job = job_seconds()
    victim = client_at(proxied_url, "10.0.0.2", http)
    await victim.signup("victim", PASSWORD)
    flooder = client_at(proxied_url, "10.0.0.1", http)
    await flooder.xsrf()
    flood = [
        asyncio.ensure_future(flooder.login("victim", "wrong password", check=False))
        for _ in range(FLOOD)
    ]
    hasher = services.accounts.hasher
    deadline = time.monotonic() + 20
    while hasher.waiting < FLOOD // 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert hasher.waiting >= FLOOD // 2, "the flood never queued up"
    await victim.xsrf()
    start = time.perf_counter()
    response = await victim.login("victim", PASSWORD, check=False)
    took = time.perf_counter() - start
    queued_behind = hasher.waiting
    codes = [r.code for r in await asyncio.gather(*flood)]
    assert response.code == 302
    assert codes == [401] * FLOOD  # the flood itself is only slowed, not refused
    # FIFO would have made the victim wait for the whole queue (~FLOOD // 2 jobs or more).
    assert queued_behind >= FLOOD // 4
    assert took < 6 * job + 0.25, f"{took:.3f} s with one job {job:.3f} s"
    print(f"victim login {took:.3f} s, one job {job:.3f} s, {queued_behind} queued")


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "bcrypt_rounds": COST,
            "bcrypt_threads": 1,
            "login_max_failures": 0,
            "bcrypt_queue_per_address": 5,
        }
    ],
)
@pytest.mark.gen_test(timeout=90)
async def test_over_the_per_address_queue_is_429_with_retry_after(
    proxied_url: str, http: AsyncHTTPClient
) -> None:
    other = client_at(proxied_url, "10.0.0.2", http)
    await other.signup("other", PASSWORD)
    flooder = client_at(proxied_url, "10.0.0.1", http)
    await flooder.xsrf()
    responses = await asyncio.gather(
        *(flooder.login("other", "wrong password", check=False) for _ in range(30))
    )
    codes = sorted(r.code for r in responses)
    assert set(codes) == {401, 429} and codes.count(401) >= 5, codes
    busy = [r for r in responses if r.code == 429]
    assert all(int(r.headers["Retry-After"]) >= 1 for r in busy)
    assert all(b"Traceback" not in r.body for r in busy)
    # Other addresses are not refused; the flooder is, only while its queue is full.
    assert (await other.login("other", PASSWORD, check=False)).code == 302
    assert (await flooder.login("other", PASSWORD, check=False)).code == 302


@pytest.mark.parametrize("overrides", [{"login_max_failures": 10, "bcrypt_threads": 1}])
@pytest.mark.gen_test(timeout=120)
async def test_a_load_of_logins_from_one_address_is_never_refused(
    make_client: Any, user_factory: Any, http: AsyncHTTPClient, services: Any
) -> None:
    """Load tests log thousands of users in from 127.0.0.1: with the default queue cap and
    failed-login limit, 40 simultaneous logins of one name among them, they wait their turn,
    none is refused."""
    for i in range(5):
        await user_factory(f"load{i}")
    clients = [make_client() for _ in range(200)]
    for client in clients:
        client.http = http
    await asyncio.gather(*(c.xsrf() for c in clients))
    hasher = services.accounts.hasher
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, hasher.waiting)
            await asyncio.sleep(0.01)

    watcher = asyncio.ensure_future(watch())
    responses = await asyncio.gather(
        *(c.login(f"load{i % 5}", PASSWORD, check=False) for i, c in enumerate(clients))
    )
    watcher.cancel()
    assert [r.code for r in responses] == [302] * len(clients)
    assert most >= 10  # they did wait together (one thread), yet none was refused


@pytest.mark.gen_test(timeout=60)
async def test_simultaneous_guesses_are_held_to_the_limit(
    make_client: Any, user_factory: Any, http: AsyncHTTPClient
) -> None:
    """30 guesses sent at once used to be checked all 30 (the limit is 3): every one passed
    the throttle before the first failure was counted."""
    await user_factory("alice")
    await user_factory("bob")
    clients = [make_client() for _ in range(30)]
    for client in clients:
        client.http = http
    await asyncio.gather(*(c.xsrf() for c in clients))
    guesses = await asyncio.gather(
        *(c.login("alice", f"guess {i}", check=False) for i, c in enumerate(clients))
    )
    codes = sorted(r.code for r in guesses)
    assert codes == [401] * 3 + [429] * 27, codes
    # Simultaneous successful logins are never refused: they only take turns.
    logins = await asyncio.gather(*(c.login("bob", PASSWORD, check=False) for c in clients))
    assert [r.code for r in logins] == [302] * 30
