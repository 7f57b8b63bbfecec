"""Settings: one frozen dataclass built from CLI flags, ``PRESENCE_*`` env vars and defaults."""

from __future__ import annotations

import argparse
import logging
import os
import re
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from presence_app.backends.urls import check_redis_url, mask_url
from presence_app.runtime.addresses import parse_allow_list
from presence_app.runtime.version import version

log = logging.getLogger(__name__)

SECRET_FILE = "cookie_secret"


class ConfigError(Exception):
    """A setting is invalid; the message is one line meant for the operator."""


@dataclass(frozen=True)
class Settings:
    address: str = "127.0.0.1"
    port: int = 8888
    data_dir: Path = Path("data")
    database_url: str = ""
    redis_url: str = ""
    redis_prefix: str = "presence"
    cookie_secret: str = ""
    bcrypt_rounds: int = 12
    bcrypt_threads: int = 0
    debug: bool = False
    processes: int = 1
    node_id: str = ""
    heartbeat_timeout: float = 10.0
    offline_grace: float = 0.0
    ping_interval: float = 20.0
    max_message_size: int = 64 * 1024
    send_buffer_limit: int = 1024 * 1024
    socket_send_buffer: int = 256 * 1024
    client_message_rate: float = 20.0
    client_message_burst: int = 100
    max_sockets_per_user: int = 0
    max_sockets_per_address: int = 0
    session_days: float = 30.0
    xheaders: bool = False
    flush_interval: float = 0.5
    body_timeout: float = 10.0
    write_probe_interval: float = 5.0
    login_max_failures: int = 10
    login_failure_window: float = 300.0
    login_throttle_entries: int = 100_000
    bcrypt_queue_per_address: int = 1000
    drain_timeout: float = 2.0
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_address: str = "127.0.0.1,::1"
    worker_health_port: int = 0
    #: This process's worker number under --processes (None: the only process).
    worker: int | None = None
    signup: str = "open"

    @property
    def broker_url(self) -> str:
        return self.redis_url or "memory://"

    @property
    def heartbeat_interval(self) -> float:
        """How often a node refreshes its liveness key and looks for dead nodes."""
        return max(self.heartbeat_timeout / 4.0, 0.1)

    @property
    def redis_timeout(self) -> float:
        """Seconds a Redis command, or silence on the subscription, may last before the
        connection is given up: about half the heartbeat timeout (1..5 s), so a process whose
        Redis connections hang says so on /healthz about when others would reap it."""
        return min(max(self.heartbeat_timeout / 2.0, 1.0), 5.0)

    def for_worker(self, worker: int | None) -> Settings:
        """The settings of one forked worker: node id ``<node id>:<worker>`` keeps ids unique."""
        if worker is None:
            return self
        return replace(self, node_id=f"{self.node_id}:{worker}", worker=worker)

    @property
    def health_port(self) -> int:
        """The 127.0.0.1 port on which this worker answers /healthz and /metrics alone
        (0: none; only forked workers have one)."""
        if not self.worker_health_port or self.worker is None:
            return 0
        return self.worker_health_port + self.worker


# A SIGTERM'd process exits within 5 s: the drain, the sockets' 1001 and the cleanup share them.
MAX_DRAIN_TIMEOUT = 2.5

# A table: one option per row reads better than the formatter's layout.
# fmt: off
_OPTIONS: list[tuple[str, type, str]] = [
    ("address", str, "interface to listen on"),
    ("port", int, "TCP port to listen on"),
    ("data-dir", str, "directory for the SQLite file and the generated cookie secret"),
    ("database-url", str, "SQLAlchemy URL (sqlite+aiosqlite:///..., postgresql+asyncpg://...)"),
    ("redis-url", str, "redis://, rediss:// or redis+sentinel://host:port[,host:port]/service[/db] "
     "URL; empty: in-process broker"),
    ("redis-prefix", str, "prefix of every Redis key and channel"),
    ("cookie-secret", str, "secret signing cookies; default: generated into the data dir"),
    ("bcrypt-rounds", int, "bcrypt cost factor (4..31)"),
    ("bcrypt-threads", int, "threads hashing passwords (0: one per CPU)"),
    ("processes", int, "forked worker processes sharing the port (needs --redis-url)"),
    ("node-id", str, "this process's id in logs, /healthz and the online-users table"),
    ("heartbeat-timeout", float, "seconds after which a silent process's users go offline"),
    ("offline-grace", float, "seconds a user whose last socket closed stays listed online, "
     "waiting for a reconnect on any process (0: offline at once)"),
    ("ping-interval", float, "seconds between WebSocket protocol pings"),
    ("max-message-size", int, "largest accepted WebSocket frame in bytes"),
    ("send-buffer-limit", int, "bytes this process may hold for one socket (queued frames, "
     "Python objects included) before the socket is dropped"),
    ("socket-send-buffer", int, "kernel send buffer per WebSocket (SO_SNDBUF; Linux doubles it "
     "and caps it at net.core.wmem_max; 0: the kernel's autotuning)"),
    ("client-message-rate", float, "messages per second a socket may send on average (0: off)"),
    ("client-message-burst", int, "messages a socket may send at once above its rate"),
    ("max-sockets-per-user", int, "open WebSockets per user in this process (0: no cap)"),
    ("max-sockets-per-address", int, "open WebSockets per client address in this process "
     "(0: no cap)"),
    ("session-days", float, "session lifetime in days"),
    ("flush-interval", float, "seconds between batched writes of the online-users table"),
    ("body-timeout", float, "seconds a client may take to send a request body before the "
     "connection is closed (bodies are at most 64 KiB)"),
    ("write-probe-interval", float, "seconds between database write probes when nothing else "
     "wrote (/healthz is 503 while writes fail)"),
    ("login-max-failures", int, "failed logins per name and address before a wait (0: off)"),
    ("login-failure-window", float, "seconds over which failed logins are counted"),
    ("login-throttle-entries", int, "(name, address) pairs the failed-login throttle "
     "remembers; the oldest unlocked ones are forgotten first"),
    ("bcrypt-queue-per-address", int, "bcrypt jobs one address may have waiting; more are "
     "answered 429 (0: no cap)"),
    ("drain-timeout", float, f"seconds a stopping process lets running HTTP requests finish "
     f"(0..{MAX_DRAIN_TIMEOUT:g}); those still waiting for bcrypt then get 503"),
    ("log-level", str, "DEBUG, INFO, WARNING or ERROR"),
    ("log-format", str, "text (one line per record) or json (one object per line)"),
    ("metrics-address", str, "client addresses or CIDRs (comma-separated) allowed to read "
     "/metrics and the detail of /healthz; others get 404 and the bare status"),
    ("worker-health-port", int, "with --processes: worker i also serves /healthz and /metrics "
     "on 127.0.0.1:(this port + i) (0: off)"),
    ("signup", str, "open: anyone may sign up; closed: accounts come from `presence users add`"),
]
# fmt: on
_FLAGS = ("debug", "xheaders")
MAX_SECONDS_OR_DAYS = 36500  # inf or 1e9 days would overflow datetimes at runtime
# Longer than this, "online" would no longer mean anything: a grace bridges reloads and deploys.
MAX_OFFLINE_GRACE = 600.0
_NODE_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


def env_name(option: str) -> str:
    return "PRESENCE_" + option.replace("-", "_").upper()


def make_parser(env: Mapping[str, str], prog: str = "run.py") -> argparse.ArgumentParser:
    """``prog`` is how the operator started it: ``run.py`` or the ``presence`` script."""
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Presence: who is online, live.",
        epilog=f"Every option can also be set as an environment variable PRESENCE_<NAME>. "
        f"Admin commands: {prog} db --help, {prog} users --help.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    for name, _kind, help_text in _OPTIONS:
        attr = name.replace("-", "_")
        default = env.get(env_name(name), getattr(defaults, attr))
        parser.add_argument(
            f"--{name}",
            type=str,
            default=str(default),
            help=f"{help_text} (env {env_name(name)}, default %(default)r)",
        )
    for flag in _FLAGS:
        parser.add_argument(
            f"--{flag}",
            action="store_true",
            default=_truthy(env.get(env_name(flag), "")),
            help=f"env {env_name(flag)}",
        )
    return parser


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _convert(name: str, kind: type, raw: str) -> object:
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"--{name}: expected {kind.__name__}, got {raw!r}") from None


def load_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, prog: str = "run.py"
) -> Settings:
    """Parse flags and environment into validated Settings (ConfigError on bad values)."""
    env = os.environ if env is None else env
    return settings_from_args(make_parser(env, prog).parse_args(argv))


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Validated Settings from a namespace parsed by ``make_parser`` (or a parser built on
    it: the admin commands add their own arguments)."""
    values: dict[str, object] = {}
    for name, kind, _ in _OPTIONS:
        attr = name.replace("-", "_")
        values[attr] = _convert(name, kind, getattr(args, attr))
    for flag in _FLAGS:
        values[flag] = bool(getattr(args, flag))
    values["data_dir"] = Path(str(values["data_dir"]))
    return validate(Settings(**values))  # type: ignore[arg-type]


def validate(s: Settings) -> Settings:
    """Check ranges and combinations; fill derived defaults (database URL, node id)."""
    if not 0 <= s.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {s.port}")
    if not 4 <= s.bcrypt_rounds <= 31:
        raise ConfigError(f"--bcrypt-rounds must be 4..31, got {s.bcrypt_rounds}")
    if s.processes < 0 or s.bcrypt_threads < 0:
        raise ConfigError("--processes and --bcrypt-threads must not be negative")
    for name in ("socket_send_buffer", "max_sockets_per_user", "max_sockets_per_address"):
        if getattr(s, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
    if not 0 <= s.client_message_rate <= 1e6:  # also rejects nan
        raise ConfigError(f"--client-message-rate must be 0..1000000, got {s.client_message_rate}")
    if s.client_message_burst < 1:
        raise ConfigError(
            f"--client-message-burst must be at least 1, got {s.client_message_burst}"
        )
    if s.login_max_failures < 0 or s.bcrypt_queue_per_address < 0:
        raise ConfigError(
            "--login-max-failures and --bcrypt-queue-per-address must not be negative"
        )
    if s.login_throttle_entries < 1:
        raise ConfigError(
            f"--login-throttle-entries must be at least 1, got {s.login_throttle_entries}"
        )
    if not 0 <= s.drain_timeout <= MAX_DRAIN_TIMEOUT:  # also rejects nan
        raise ConfigError(
            f"--drain-timeout must be 0..{MAX_DRAIN_TIMEOUT:g} seconds, got {s.drain_timeout}"
        )
    for name in (
        "heartbeat_timeout",
        "ping_interval",
        "session_days",
        "flush_interval",
        "login_failure_window",
        "body_timeout",
        "write_probe_interval",
    ):
        if not 0 < getattr(s, name) <= MAX_SECONDS_OR_DAYS:  # also rejects nan
            raise ConfigError(
                f"--{name.replace('_', '-')} must be positive and at most {MAX_SECONDS_OR_DAYS}"
            )
    if not 0 <= s.offline_grace <= MAX_OFFLINE_GRACE:  # also rejects nan
        raise ConfigError(
            f"--offline-grace must be 0..{MAX_OFFLINE_GRACE:.0f} seconds, got {s.offline_grace}"
        )
    if s.max_message_size < 128 or s.send_buffer_limit < 1024:
        raise ConfigError("--max-message-size must be >= 128 and --send-buffer-limit >= 1024")
    if s.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {s.log_level}")
    if s.log_format not in {"text", "json"}:
        raise ConfigError(f"--log-format must be text or json, got {s.log_format!r}")
    try:
        parse_allow_list(s.metrics_address)
    except ValueError as exc:
        raise ConfigError(f"--metrics-address: {exc}") from None
    if not 0 <= s.worker_health_port <= 65535 - max(s.processes, os.cpu_count() or 1):
        raise ConfigError(
            f"--worker-health-port must leave room for one port per worker, "
            f"got {s.worker_health_port}"
        )
    if s.signup not in {"open", "closed"}:
        raise ConfigError(f"--signup must be open or closed, got {s.signup!r}")
    if s.redis_url:
        try:
            check_redis_url(s.redis_url)
        except ValueError as exc:
            raise ConfigError(f"--redis-url {exc}, got {mask_url(s.redis_url)!r}") from None
    if s.processes != 1 and not s.redis_url:
        raise ConfigError("--processes needs --redis-url: processes share presence through Redis")
    if s.processes != 1 and s.debug:
        raise ConfigError("--debug (autoreload) cannot be combined with --processes")
    if s.node_id and not _NODE_ID.match(s.node_id):
        raise ConfigError("--node-id may only contain letters, digits and _ . : @ -")
    if s.cookie_secret and len(s.cookie_secret) < 16:
        raise ConfigError("--cookie-secret must be at least 16 characters")
    database_url = normalise_database_url(s.database_url or _default_db_url(s.data_dir))
    node_id = s.node_id or f"{socket.gethostname()}:{s.port}"
    return replace(s, database_url=database_url, node_id=node_id, log_level=s.log_level.upper())


def _default_db_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'presence.db'}"


def normalise_database_url(url: str) -> str:
    """Accept plain ``sqlite:`` / ``postgresql:`` URLs and pick the async driver for them."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"--database-url is not a URL: {url!r}")
    driver = {
        "sqlite": "sqlite+aiosqlite",
        "postgresql": "postgresql+asyncpg",
        "postgres": "postgresql+asyncpg",
    }.get(scheme, scheme)
    if driver not in {"sqlite+aiosqlite", "postgresql+asyncpg"}:
        raise ConfigError(f"--database-url must be sqlite or postgresql, got {scheme!r}")
    return f"{driver}://{rest}"


def ensure_cookie_secret(s: Settings) -> Settings:
    """Without --cookie-secret, read (or create once) a 0600 secret file in the data dir."""
    if s.cookie_secret:
        return s
    path = s.data_dir / SECRET_FILE
    try:
        s.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds secrets and hashes
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            secret = path.read_text().strip()
            if len(secret) < 16:
                raise ConfigError(
                    f"{path} is empty or too short; delete it to regenerate"
                ) from None
            return replace(s, cookie_secret=secret)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48) + "\n")
        log.info("Generated a new cookie secret in %s (mode 0600)", path)
        return replace(s, cookie_secret=path.read_text().strip())
    except OSError as exc:
        raise ConfigError(f"cannot use data directory {s.data_dir}: {exc.strerror}") from None
