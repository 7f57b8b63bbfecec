"""GET /metrics: Prometheus text, a registry per app, label sets bounded, kept internal."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from handlers.ws import text_frame
from presence_app.config import ConfigError, Settings, validate
from presence_app.live.fanout import Fanout
from presence_app.live.resync import REASONS
from presence_app.metrics import Metrics
from presence_app.runtime.addresses import address_allowed, parse_allow_list
from tests.conftest import PASSWORD


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.request("GET", "/metrics")
    assert response.code == 200, response.code
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(response.body.decode())


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.gen_test
async def test_metrics_count_what_happened(
    make_client: Any, user_factory: Any, services: Any
) -> None:
    alice = await user_factory("alice")
    sock = await alice.connect()
    await sock.wait_for(lambda m: m.get("type") == "presence" and m["username"] == "alice")
    await sock.ping()
    stranger = make_client()
    assert (await stranger.login("alice", "wrong password", check=False)).code == 401
    assert (await stranger.login("alice", PASSWORD, check=False)).code == 302
    found = await scrape(make_client())
    assert value(found, "presence_sockets_open") == 1
    assert value(found, "presence_users_online") == 1
    assert value(found, "presence_users_online_local") == 1
    assert value(found, "presence_signups_total") == 1
    assert value(found, "presence_logins_total", result="ok") == 1
    assert value(found, "presence_logins_total", result="failed") == 1
    assert value(found, "presence_logins_total", result="throttled") == 0
    assert value(found, "presence_events_published_total") >= 1  # alice online
    assert value(found, "presence_events_applied_total") >= 2  # her sign-up, her socket
    assert value(found, "presence_frames_sent_total", kind="snapshot") == 1
    assert value(found, "presence_frames_sent_total", kind="event") >= 1
    assert value(found, "presence_frames_sent_total", kind="reply") == 1  # the pong
    pong = text_frame('{"type":"pong"}')  # header and payload
    assert value(found, "presence_bytes_sent_total", kind="reply") == len(pong)
    assert value(found, "presence_fanout_duration_seconds_count") >= 1
    assert value(found, "presence_bcrypt_queue_wait_seconds_count") >= 3  # sign-up, 2 logins
    assert (
        value(found, "presence_http_requests_total", route="/signup", method="POST", status="302")
        == 1
    )
    assert (
        value(found, "presence_http_requests_total", route="/login", method="POST", status="401")
        == 1
    )
    assert value(found, "presence_http_request_duration_seconds_count", route="/login") >= 2
    assert value(found, "presence_healthy") == 1
    assert value(found, "process_resident_memory_bytes") > 0
    for name in (
        "presence_broker_reconnects_total",
        "presence_processes_reaped_total",
        "presence_events_stale_dropped_total",
    ):
        assert (name, ()) in found
    for reason in REASONS:  # every reason is exposed, at 0 until it happens
        assert ("presence_resyncs_total", (("reason", reason),)) in found


@pytest.mark.gen_test
async def test_websocket_closes_are_counted_by_code(make_client: Any, user_factory: Any) -> None:
    alice = await user_factory("alice")
    sock = await alice.connect()
    await alice.logout()  # the server closes with 4001
    assert await sock.wait_closed() == 4001
    other = await (await user_factory("bob")).connect()
    await other.close()  # the client closes with 1000
    await asyncio.sleep(0.2)
    found = await scrape(make_client())
    assert value(found, "presence_websocket_closes_total", code="4001") == 1
    assert value(found, "presence_websocket_closes_total", code="1000") == 1
    assert value(found, "presence_sockets_open") == 0


@pytest.mark.gen_test
async def test_route_labels_are_patterns_not_paths(make_client: Any) -> None:
    client = make_client()
    for n in range(3):
        assert (await client.request("GET", f"/no-such-page-{n}")).code == 404
    response = await client.request("GET", "/metrics")
    text = response.body.decode()
    assert "no-such-page" not in text
    found = samples(text)
    assert (
        value(found, "presence_http_requests_total", route="unmatched", method="GET", status="404")
        == 3
    )


@pytest.mark.gen_test
async def test_outside_the_allow_list_metrics_are_404_and_health_is_bare(
    make_client: Any, services: Any
) -> None:
    # As --metrics-address 10.0.0.0/8: the test client (127.0.0.1) is "the internet".
    services.metrics.allowed = parse_allow_list("10.0.0.0/8")
    client = make_client()
    response = await client.request("GET", "/metrics")
    assert response.code == 404
    assert b"presence_" not in response.body
    health = await client.request("GET", "/healthz")
    assert health.code == 200
    assert json.loads(health.body) == {"status": "ok"}
    services.sync.problem = "presence store unreachable: 10.1.2.3:6379"
    try:
        health = await client.request("GET", "/healthz")
    finally:
        services.sync.problem = None
    assert health.code == 503
    assert json.loads(health.body) == {"status": "unavailable"}  # no internal address


def test_each_app_has_a_registry_of_its_own() -> None:
    first, second = Metrics(), Metrics()  # a global registry would raise "Duplicated"
    first.signups.inc()
    assert b"presence_signups_total 1.0" in first.exposition()
    assert b"presence_signups_total 0.0" in second.exposition()


@pytest.mark.parametrize(
    "allow, address, allowed",
    [
        ("127.0.0.1,::1", "127.0.0.1", True),
        ("127.0.0.1,::1", "::1", True),
        ("127.0.0.1,::1", "::ffff:127.0.0.1", True),
        ("127.0.0.1,::1", "203.0.113.9", False),
        ("10.0.0.0/8 192.168.1.5", "10.20.30.40", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("", "127.0.0.1", False),
        ("127.0.0.1", "", False),
        ("127.0.0.1", "not-an-ip", False),
    ],
)
def test_allow_list(allow: str, address: str, allowed: bool) -> None:
    assert address_allowed(address, parse_allow_list(allow)) is allowed


@pytest.mark.parametrize("bad", ["localhost", "10.0.0.0/33", "1.2.3.4.5"])
def test_a_bad_metrics_address_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="--metrics-address"):
        validate(Settings(metrics_address=bad))


class Sink:
    """A Connection that keeps what it is sent (fan-out's side of handlers/ws.py)."""

    def __init__(self, username: str, ok: bool = True) -> None:
        self.username, self.user_id, self.session_id, self.deflate = username, 1, username, False
        self.ok, self.received = ok, 0

    def send(self, parts: Any) -> bool:
        self.received += sum(len(p) for p in parts)
        return self.ok

    def close(self, code: int, reason: str) -> None:
        self.ok = False


class OneSnapshot:
    def parts(self, username: str, compressed: bool) -> list[bytes]:
        return [b"snap"]


@pytest.mark.gen_test
async def test_fanout_counts_frames_and_bytes_per_flush() -> None:
    fanout = Fanout(OneSnapshot, lambda conn: None)
    seen: list[float] = []
    fanout.stats.observe = seen.append
    early, late, slow = Sink("a"), Sink("b"), Sink("c")
    fanout.join(early)
    fanout.join(slow)
    fanout.flush()  # two snapshots
    fanout.publish(b"one")
    fanout.join(late)  # its snapshot covers "one"
    fanout._write_snapshots()
    slow.ok = False
    fanout.publish(b"two!")
    fanout.flush()  # early: one+two; late: two; slow: dropped
    stats = fanout.stats
    assert stats.frames == {"event": 3, "snapshot": 3, "reply": 0}
    assert stats.bytes["event"] == len(b"one") + 2 * len(b"two!")
    assert stats.bytes["snapshot"] == 3 * len(b"snap")
    assert early.received == len(b"snap") + 7 and late.received == len(b"snap") + 4
    assert stats.dropped == {"send buffer full": 1}
    assert len(seen) == 1 and seen[0] >= 0


def test_worker_health_ports() -> None:
    settings = validate(Settings(worker_health_port=9100))
    assert settings.health_port == 0  # the only process: its own port is enough
    assert settings.for_worker(0).health_port == 9100
    assert settings.for_worker(3).health_port == 9103
    assert validate(Settings()).for_worker(1).health_port == 0  # off by default
    with pytest.raises(ConfigError, match="--worker-health-port"):
        validate(Settings(worker_health_port=65535))
