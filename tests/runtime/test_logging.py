"""Logs: --log-format text|json, request fields, and no password of any URL in the output."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from presence_app.config import ConfigError, Settings, validate
from presence_app.runtime.logs import JsonFormatter, NodeFilter, TextFormatter, mask_secrets
from tests.support.env import ROOT
from tests.support.http import http_json
from tests.support.ports import free_port
from tests.support.processes import stop_process
from tests.support.waiting import wait_until

SECRET = "s3cret"


@pytest.mark.parametrize(
    "text, masked",
    [
        ("redis://:s3cret@10.0.0.5:6379/0", "redis://:***@10.0.0.5:6379/0"),
        ("rediss://user:s3cret@h/0", "rediss://user:***@h/0"),
        ("redis://s3cret@h:6379", "redis://***@h:6379"),
        (
            "redis+sentinel://:s3cret@s1:26379,s2:26379/mymaster/0?sentinel_password=s3cret",
            "redis+sentinel://:***@s1:26379,s2:26379/mymaster/0?sentinel_password=***",
        ),
        (
            "cannot open postgresql+asyncpg://presence:s3cret@127.0.0.1/presence: refused",
            "cannot open postgresql+asyncpg://presence:***@127.0.0.1/presence: refused",
        ),
        ("redis://:p@ss@word@h/0", "redis://:***@h/0"),  # an unencoded @ in the password
        ("host=db password=s3cret dbname=x", "host=db password=*** dbname=x"),
        ("GET /login (127.0.0.1) user@example.org", "GET /login (127.0.0.1) user@example.org"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_mask_secrets(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked


def record(message: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ConnectionError(f"Error connecting to redis://:{SECRET}@10.0.0.5:6379")
        except ConnectionError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("redis.asyncio", logging.WARNING, __file__, 1, message, args, exc_info)
    rec.__dict__.update(extra)
    NodeFilter("node-a").filter(rec)
    return rec


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_a_url_a_library_logs_is_masked_in_message_and_traceback(
    formatter: logging.Formatter,
) -> None:
    """A library's message and exception (not the app's own call sites) carry the URL."""
    out = formatter.format(record("lost %s", f"redis://:{SECRET}@10.0.0.5:6379/0", exc=True))
    assert SECRET not in out
    assert "redis://:***@10.0.0.5:6379" in out
    assert "ConnectionError" in out


def test_json_lines_have_the_fields() -> None:
    fields = {
        "method": "GET",
        "path": "/login",
        "status": 200,
        "duration_ms": 1.25,
        "remote_ip": "127.0.0.1",
    }
    out = JsonFormatter().format(record("%d %s", 200, "GET /login", request=fields))
    assert "\n" not in out
    body = json.loads(out)
    assert body["level"] == "WARNING" and body["node"] == "node-a"
    assert body["logger"] == "redis.asyncio" and body["message"] == "200 GET /login"
    assert body["time"].endswith("Z") and body["time"][:2] == "20"
    assert {k: body[k] for k in fields} == fields
    failed = json.loads(JsonFormatter().format(record("boom", exc=True)))
    assert "Traceback" in failed["exception"] and "\n" not in JsonFormatter().format(
        record("boom", exc=True)
    )


@pytest.mark.gen_test
async def test_access_log_records_carry_request_fields(make_client: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="tornado.access")
    await make_client().request("GET", "/login?next=%2F")
    await make_client().request("GET", "/no-such-page")
    by_status = {r.request["status"]: r for r in caplog.records if r.name == "tornado.access"}
    ok, missing = by_status[200], by_status[404]
    assert ok.levelno == logging.INFO and missing.levelno == logging.WARNING
    assert ok.request["method"] == "GET" and ok.request["path"] == "/login"
    assert ok.request["remote_ip"] == "127.0.0.1" and ok.request["duration_ms"] >= 0
    body = json.loads(JsonFormatter().format(missing))
    assert body["path"] == "/no-such-page" and body["status"] == 404


@pytest.mark.parametrize("bad", ["xml", "JSON ", ""])
def test_log_format_is_validated(bad: str) -> None:
    with pytest.raises(ConfigError, match="--log-format"):
        validate(Settings(log_format=bad))


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_redis_password_never_appears_in_the_output(tmp_path: Path, log_format: str) -> None:
    """The app with Redis down (a closed port): retries, /healthz 503s, a stop. The
    password is in none of it: not in the log, not in /healthz's reason."""
    closed, port = free_port(), free_port()
    args = [
        sys.executable,
        str(ROOT / "run.py"),
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "data"),
        "--bcrypt-rounds",
        "4",
        "--heartbeat-timeout",
        "2",
        "--redis-url",
        f"redis://:{SECRET}@127.0.0.1:{closed}/0",
        "--debug",
        "--log-format",
        log_format,
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        status, body = wait_until(
            lambda: http_json(f"http://127.0.0.1:{port}/healthz", 1), 20, "the app to answer"
        )
        assert status == 503 and "redis" in body["reason"]
        assert SECRET not in json.dumps(body)
        time.sleep(1.0)  # a few more reconnect attempts
    finally:
        stop_process(proc)
    out, err = (stream.decode() for stream in proc.communicate(timeout=10))
    assert "unreachable" in err and "/healthz" in err  # what was logged is the right thing
    assert SECRET not in out + err
    if log_format == "json":
        lines = [json.loads(line) for line in err.splitlines() if line.strip()]
        assert lines and all(
            {"time", "level", "node", "logger", "message"} <= set(line) for line in lines
        )
        assert any(line.get("path") == "/healthz" and line.get("status") == 503 for line in lines)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_database_password_never_appears_in_the_output(tmp_path: Path, log_format: str) -> None:
    """A database that cannot be reached stops the start with a one-line error."""
    url = f"postgresql://presence:{SECRET}@127.0.0.1:{free_port()}/presence"
    args = [
        sys.executable,
        str(ROOT / "run.py"),
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "data"),
        "--database-url",
        url,
        "--log-format",
        log_format,
    ]
    done = subprocess.run(args, capture_output=True, cwd=ROOT, timeout=60)
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 2 and "cannot open the database" in output
    assert SECRET not in output and "presence:***@127.0.0.1" in output
