"""Settings from flags and PRESENCE_* variables; validation; the generated cookie secret."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from presence_app.config import (
    SECRET_FILE,
    ConfigError,
    Settings,
    ensure_cookie_secret,
    load_settings,
)


def test_defaults_serve_from_the_data_dir():
    s = load_settings([], env={})
    assert (s.address, s.port, s.processes, s.redis_url) == ("127.0.0.1", 8888, 1, "")
    assert s.database_url == f"sqlite+aiosqlite:///{Path('data') / 'presence.db'}"
    assert s.broker_url == "memory://"
    assert s.max_message_size == 64 * 1024
    assert s.node_id.endswith(":8888")


def test_flags(tmp_path):
    s = load_settings(
        [
            "--port",
            "9001",
            "--data-dir",
            str(tmp_path),
            "--bcrypt-rounds",
            "4",
            "--redis-url",
            "redis://127.0.0.1:6379/0",
            "--processes",
            "3",
            "--node-id",
            "web-1",
            "--heartbeat-timeout",
            "2.5",
            "--xheaders",
            "--log-level",
            "debug",
        ],
        env={},
    )
    assert s.port == 9001 and s.bcrypt_rounds == 4 and s.processes == 3
    assert s.data_dir == tmp_path
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path / 'presence.db'}"
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert s.node_id == "web-1" and s.heartbeat_timeout == 2.5 and s.xheaders is True
    assert s.log_level == "DEBUG"
    assert s.for_worker(2).node_id == "web-1:2"


def test_environment_and_flags_win_over_it(tmp_path):
    env = {
        "PRESENCE_PORT": "9100",
        "PRESENCE_BCRYPT_ROUNDS": "5",
        "PRESENCE_DEBUG": "yes",
        "PRESENCE_DATA_DIR": str(tmp_path),
        "PRESENCE_SESSION_DAYS": "1.5",
        "PRESENCE_DATABASE_URL": "postgresql://u:p@db/presence",
    }
    s = load_settings([], env=env)
    assert (s.port, s.bcrypt_rounds, s.debug, s.session_days) == (9100, 5, True, 1.5)
    assert s.database_url == "postgresql+asyncpg://u:p@db/presence"
    assert load_settings(["--port", "9200"], env=env).port == 9200
    assert load_settings([], env={**env, "PRESENCE_DEBUG": "0"}).debug is False


@pytest.mark.parametrize(
    "url,expected",
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgres://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
    ],
)
def test_database_urls_get_the_async_driver(url, expected):
    assert load_settings(["--database-url", url], env={}).database_url == expected


BAD = [
    (["--port", "abc"], {}, "--port"),
    (["--port", "70000"], {}, "--port"),
    (["--port", "-1"], {}, "--port"),
    ([], {"PRESENCE_PORT": "eighty"}, "--port"),
    (["--bcrypt-rounds", "2"], {}, "--bcrypt-rounds"),
    (["--bcrypt-rounds", "32"], {}, "--bcrypt-rounds"),
    (["--bcrypt-rounds", "4.5"], {}, "--bcrypt-rounds"),
    (["--processes", "2"], {}, "--redis-url"),
    (["--processes", "0"], {}, "--redis-url"),
    (["--processes", "-1"], {}, "--processes"),
    (["--processes", "2", "--redis-url", "redis://x", "--debug"], {}, "--debug"),
    (["--bcrypt-threads", "-1"], {}, "--bcrypt-threads"),
    (["--database-url", "mysql://x"], {}, "--database-url"),
    (["--database-url", "presence.db"], {}, "--database-url"),
    (["--redis-url", "http://x"], {}, "--redis-url"),
    (["--redis-url", "redis+sentinel://h/mymaster"], {}, "--redis-url"),
    (["--redis-url", "redis+sentinel://h:26379"], {}, "--redis-url"),
    (["--redis-url", "redis+sentinel://h:26379,h2/mymaster"], {}, "--redis-url"),
    (["--redis-url", "redis+sentinel://h:26379/mymaster/x"], {}, "--redis-url"),
    (["--redis-url", "redis+sentinel://h:26379/a/0/extra"], {}, "--redis-url"),
    (["--redis-url", "redis+sentinel://h:99999/mymaster"], {}, "--redis-url"),
    (["--redis-url", "redis+sentinel://h:26379/mymaster?db=2"], {}, "--redis-url"),
    (["--log-level", "LOUD"], {}, "--log-level"),
    (["--heartbeat-timeout", "0"], {}, "--heartbeat-timeout"),
    (["--heartbeat-timeout", "nan"], {}, "--heartbeat-timeout"),
    (["--ping-interval", "-5"], {}, "--ping-interval"),
    (["--session-days", "inf"], {}, "--session-days"),
    (["--session-days", "1e9"], {}, "--session-days"),
    (["--flush-interval", "0"], {}, "--flush-interval"),
    (["--body-timeout", "0"], {}, "--body-timeout"),
    ([], {"PRESENCE_BODY_TIMEOUT": "nan"}, "--body-timeout"),
    (["--max-message-size", "10"], {}, "--max-message-size"),
    (["--send-buffer-limit", "10"], {}, "--send-buffer-limit"),
    (["--cookie-secret", "short"], {}, "--cookie-secret"),
    (["--node-id", "bad id!"], {}, "--node-id"),
    (["--login-throttle-entries", "0"], {}, "--login-throttle-entries"),
    (["--bcrypt-queue-per-address", "-1"], {}, "--bcrypt-queue-per-address"),
    (["--drain-timeout", "4"], {}, "--drain-timeout"),
    ([], {"PRESENCE_DRAIN_TIMEOUT": "nan"}, "--drain-timeout"),
]


@pytest.mark.parametrize("argv,env,mentions", BAD, ids=[" ".join(a) or str(e) for a, e, _ in BAD])
def test_invalid_settings_raise_one_line_config_error(argv, env, mentions):
    with pytest.raises(ConfigError) as info:
        load_settings(argv, env=env)
    message = str(info.value)
    assert mentions in message
    assert "\n" not in message and len(message) < 200


def test_ensure_cookie_secret_creates_a_0600_file_once(tmp_path):
    data_dir = tmp_path / "new" / "data"
    settings = Settings(data_dir=data_dir)
    first = ensure_cookie_secret(settings)
    path = data_dir / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.cookie_secret) >= 32
    assert path.read_text().strip() == first.cookie_secret
    before = path.stat()
    second = ensure_cookie_secret(settings)
    assert second.cookie_secret == first.cookie_secret
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    other = ensure_cookie_secret(Settings(data_dir=tmp_path / "elsewhere"))
    assert other.cookie_secret != first.cookie_secret


def test_ensure_cookie_secret_keeps_a_given_secret(tmp_path):
    settings = Settings(data_dir=tmp_path, cookie_secret="x" * 32)
    assert ensure_cookie_secret(settings) is settings
    assert not (tmp_path / SECRET_FILE).exists()


def test_ensure_cookie_secret_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        ensure_cookie_secret(Settings(data_dir=tmp_path))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600


@pytest.mark.parametrize("content", ["", "\n", "tooshort\n"])
def test_ensure_cookie_secret_refuses_an_empty_file(tmp_path, content):
    (tmp_path / SECRET_FILE).write_text(content)
    with pytest.raises(ConfigError) as info:
        ensure_cookie_secret(Settings(data_dir=tmp_path))
    assert SECRET_FILE in str(info.value) and "\n" not in str(info.value)


def test_ensure_cookie_secret_unusable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError) as info:
        ensure_cookie_secret(Settings(data_dir=blocker / "data"))
    assert "data directory" in str(info.value) and "\n" not in str(info.value)


def test_throttle_budget_and_drain_settings():
    s = load_settings([], env={})
    assert (s.login_throttle_entries, s.bcrypt_queue_per_address, s.drain_timeout) == (
        100_000,
        1000,
        2.0,
    )
    s = load_settings(
        ["--login-throttle-entries", "50", "--drain-timeout", "0"],
        env={"PRESENCE_BCRYPT_QUEUE_PER_ADDRESS": "0"},
    )
    assert (s.login_throttle_entries, s.bcrypt_queue_per_address, s.drain_timeout) == (50, 0, 0.0)


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:26379/mymaster",
        "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26380,sentinel-3:26381/mymaster/2",
        "redis+sentinel://app:pw@h:26379/mymaster/0?sentinel_password=other",
    ],
)
def test_sentinel_urls_are_accepted(url):
    assert load_settings(["--redis-url", url], env={}).broker_url == url


def test_a_bad_redis_url_is_reported_without_its_password():
    with pytest.raises(ConfigError) as info:
        load_settings(["--redis-url", "redis+sentinel://:hunter2@h/mymaster"], env={})
    assert "hunter2" not in str(info.value) and ":***@" in str(info.value)
