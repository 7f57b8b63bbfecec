"""Redis URLs: Sentinel URLs parsed into what redis-py needs; passwords never logged."""

from __future__ import annotations

import logging
import time

import pytest

from presence_app.backends import make_backend
from presence_app.backends.urls import SentinelTarget, mask_url, parse_sentinel_url


def test_a_sentinel_url_names_the_sentinels_service_db_and_passwords():
    target = parse_sentinel_url(
        "redis+sentinel://app:p%40ss@10.0.0.1:26379,[::1]:26380/my%20primary/3?sentinel_password=s3"
    )
    assert target == SentinelTarget(
        [("10.0.0.1", 26379), ("::1", 26380)], "my primary", 3, "app", "p@ss", "s3"
    )
    assert "p@ss" not in repr(target) and "s3" not in repr(target)
    plain = parse_sentinel_url("redis+sentinel://h:1/svc")
    assert (plain.db, plain.username, plain.password, plain.sentinel_password) == (
        0,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    "url,masked",
    [
        ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:secret@h:6379/0", "rediss://user:***@h:6379/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        (
            "redis+sentinel://:secret@a:1,b:2/svc/0?sentinel_password=other",
            "redis+sentinel://:***@a:1,b:2/svc/0?sentinel_password=***",
        ),
    ],
)
def test_mask_url_hides_passwords(url, masked):
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:1/0",
        "redis+sentinel://:hunter2@127.0.0.1:1/svc/0?sentinel_password=hunter2",
    ],
)
@pytest.mark.gen_test
async def test_an_unreachable_redis_is_reported_quickly_without_its_password(url, caplog):
    backend = make_backend(url, "p", timeout=1.0)
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="presence_app.backends.redis_pubsub"):
            await backend.connect()
    finally:
        await backend.close()
    # Quickly: a dead sentinel is not retried with backoff (redis-py's default took 8 s).
    assert time.monotonic() - started < 4
    assert backend.problem
    assert "unreachable" in caplog.text and "hunter2" not in caplog.text
