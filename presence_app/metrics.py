"""Prometheus metrics: one registry per ``Services`` (tests build many apps in one process).

Hot paths never touch a prometheus object per socket: fan-out, the broker and the presence
loops keep plain integer counters that a collector reads when ``/metrics`` is scraped; what
needs an observation (a fan-out flush, an HTTP request, a bcrypt job's wait) is observed
once per event. Label values are bounded: routes are patterns, close codes a fixed set.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from presence_app.runtime.addresses import address_allowed, parse_allow_list

if TYPE_CHECKING:
    from presence_app.services import Services

#: The content type of the text exposition format Prometheus scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Close codes counted under their own label; anything else a client sends is "other".
KNOWN_CLOSE_CODES = frozenset({1000, 1001, 1003, 1005, 1006, 1007, 1008, 1009, 1011, 4001, 4401})
LOGIN_RESULTS = ("ok", "failed", "throttled")
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SLOW_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def close_code_label(code: int | None) -> str:
    """A bounded label: a socket that ended without a close frame is 1006 (abnormal)."""
    if code is None:
        return "1006"
    return str(code) if code in KNOWN_CLOSE_CODES else "other"


class Metrics:
    """Every metric of one process, in a registry of its own."""

    def __init__(self, allow_list: str = "127.0.0.1,::1") -> None:
        self.allowed = parse_allow_list(allow_list)
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        self.fanout_seconds = Histogram(
            "presence_fanout_duration_seconds",
            "Time one event flush to every socket took",
            buckets=FAST_BUCKETS,
            registry=registry,
        )
        self.websocket_closes = Counter(
            "presence_websocket_closes",
            "WebSockets closed, by close code",
            ["code"],
            registry=registry,
        )
        self.signups = Counter("presence_signups", "Accounts created", registry=registry)
        self.logins = Counter(
            "presence_logins", "Login attempts by result", ["result"], registry=registry
        )
        for result in LOGIN_RESULTS:
            self.logins.labels(result)
        self.http_requests = Counter(
            "presence_http_requests",
            "HTTP requests by route pattern, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_seconds = Histogram(
            "presence_http_request_duration_seconds",
            "HTTP request duration by route",
            ["route"],
            buckets=SLOW_BUCKETS,
            registry=registry,
        )
        self.bcrypt_wait = Histogram(
            "presence_bcrypt_queue_wait_seconds",
            "Time a password hash waited for a thread",
            buckets=SLOW_BUCKETS,
            registry=registry,
        )

    def allows(self, address: str | None) -> bool:
        return address_allowed(address, self.allowed)

    def watch(self, services: Services) -> None:
        """Read gauges and the plain counters of ``services`` at every scrape."""
        self.registry.register(ServicesCollector(services))
        services.presence.fanout.stats.observe = self.fanout_seconds.observe
        services.accounts.hasher.observe_wait = self.bcrypt_wait.observe

    def websocket_closed(self, code: int | None) -> None:
        self.websocket_closes.labels(close_code_label(code)).inc()

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_seconds.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ServicesCollector(Collector):
    """Gauges and counters that live as plain attributes of the services, read on scrape."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def describe(self) -> list[Metric]:
        return []  # names are only known by collecting; nothing to check against

    def collect(self) -> Iterator[Metric]:
        s = self.services
        p = s.presence
        yield _gauge(
            "presence_sockets_open", "Open presence WebSockets in this process", p.socket_count
        )
        yield _gauge(
            "presence_users_online_local",
            "Users with a socket in this process",
            len(p.local_users()),
        )
        yield _gauge(
            "presence_users_online",
            "Users online in the whole deployment, as this process sees it",
            p.online_count(),
        )
        yield _counter(
            "presence_events_published",
            "Presence changes this process published",
            s.ledger.published,
        )
        yield _counter(
            "presence_events_applied", "Presence events taken into the view", p.events_applied
        )
        yield _counter(
            "presence_events_stale_dropped",
            "Presence events ignored as stale or repeated (an older version than the view's)",
            p.events_stale,
        )
        stats = p.fanout.stats
        frames = CounterMetricFamily(
            "presence_frames_sent", "WebSocket frames written, by kind", labels=["kind"]
        )
        sent = CounterMetricFamily(
            "presence_bytes_sent",
            "WebSocket bytes written (frame headers included), by kind",
            labels=["kind"],
        )
        for kind in ("event", "snapshot", "reply"):
            frames.add_metric([kind], stats.frames[kind])
            sent.add_metric([kind], stats.bytes[kind])
        yield frames
        yield sent
        yield _by_reason(
            "presence_sockets_dropped", "Sockets dropped by the server, by reason", stats.dropped
        )
        yield _counter(
            "presence_broker_reconnects",
            "Times the broker subscription was re-established after a loss",
            s.backend.reconnects,
        )
        # Every reason of presence_app.live.resync.REASONS, at 0 until it happens.
        yield _by_reason(
            "presence_resyncs",
            "Presence resynchronisations, by the first reason asked for",
            s.sync.resyncs,
        )
        yield _counter(
            "presence_processes_reaped",
            "Dead processes whose users this process took offline",
            s.sync.reaped,
        )
        yield _gauge(
            "presence_bcrypt_queue_length",
            "Password hashes waiting for a thread",
            s.accounts.hasher.waiting,
        )
        yield _gauge(
            "presence_healthy",
            "1 while this process has no known problem (as "
            "/healthz, without its database round trip)",
            0 if s.problems() else 1,
        )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _by_reason(name: str, doc: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["reason"])
    for reason, count in counts.items():
        family.add_metric([reason], count)
    return family
