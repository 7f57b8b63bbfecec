"""Redis URLs: the schemes the app accepts, Sentinel URLs parsed, passwords kept out of logs.

No redis import here: config validation uses it before anything connects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel"
SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME)
_SENTINEL_FORM = f"{SENTINEL_SCHEME}://[[user]:password@]host:port[,host:port...]/service_name[/db]"


@dataclass(frozen=True)
class SentinelTarget:
    """Where the sentinels are, which service they watch, and how to talk to its primary."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``redis+sentinel://[[user]:password@]h1:p1[,h2:p2]/service[/db][?sentinel_password=]``.

    The password (and user) are the Redis servers'; sentinels that require a password of
    their own get it as ``sentinel_password``. ValueError says what is wrong.
    """
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = [_host_port(item) for item in hosts.split(",")]
    path = [p for p in parts.path.split("/") if p]
    if not 1 <= len(path) <= 2:
        raise ValueError(f"expected {_SENTINEL_FORM}")
    service = unquote(path[0])
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise ValueError(f"the database must be a number, got {path[1]!r}") from None
    if db < 0:
        raise ValueError("the database must not be negative")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None  # as redis-py reads redis:// URLs
    query = parse_qs(parts.query)
    unknown = set(query) - {"sentinel_password"}
    if unknown:
        raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    sentinel_password = query.get("sentinel_password", [None])[-1]
    return SentinelTarget(sentinels, service, db, username, password, sentinel_password)


def _host_port(item: str) -> tuple[str, int]:
    host, colon, port = item.strip().rpartition(":")
    if not colon or not host:
        raise ValueError(f"each sentinel is host:port, got {item!r}; expected {_SENTINEL_FORM}")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"bad port in {item!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"bad port in {item!r}")
    return host.strip("[]"), number


def check_redis_url(url: str) -> None:
    """Raise ValueError unless ``url`` is a Redis URL the app can use."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError("must start with redis://, rediss:// or redis+sentinel://")
    if scheme == SENTINEL_SCHEME:
        parse_sentinel_url(url)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``: fit for a log line."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and userinfo:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:***" if colon else "***"
        parts = parts._replace(netloc=f"{userinfo}@{hosts}")
    if "sentinel_password=" in parts.query:
        query = "&".join(
            "sentinel_password=***" if q.startswith("sentinel_password=") else q
            for q in parts.query.split("&")
        )
        parts = parts._replace(query=query)
    return parts.geturl()
