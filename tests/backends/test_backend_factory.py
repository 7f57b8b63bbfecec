"""The factory: ``make_backend`` picks the backend by the URL's scheme (``BACKENDS``) and names
the schemes it knows when it meets another one; ``open_backend`` connects and closes it; the
backend makes the login throttle that counts where it keeps its state.
"""

from __future__ import annotations

import pytest

from presence_app.backends import (
    BACKENDS,
    MemoryBackend,
    RedisBackend,
    UnknownBackend,
    make_backend,
    open_backend,
)
from presence_app.backends.urls import SCHEMES
from tests.support.redis import drop_keys


@pytest.mark.gen_test
async def test_open_backend_connects_and_closes(backend_url: str, redis_prefix: str) -> None:
    try:
        async with open_backend(backend_url, redis_prefix) as backend:
            assert backend.problem is None and backend.name == backend_url.split(":")[0]
            assert await backend.announce("ann") is not None
            assert set(await backend.states()) == {"ann"}
    finally:
        if backend_url != "memory://":
            await drop_keys(backend_url, redis_prefix)


def test_every_url_the_settings_accept_has_a_backend() -> None:
    assert set(BACKENDS) == {"memory", *SCHEMES}


@pytest.mark.parametrize(
    "given,kind",
    [
        ("memory://", MemoryBackend),
        ("redis://127.0.0.1:6379/0", RedisBackend),
        ("rediss://:secret@redis.example:6380/1", RedisBackend),
        ("unix:///run/redis.sock", RedisBackend),
        ("redis+sentinel://a:26379,b:26379/primary/0", RedisBackend),
    ],
)
@pytest.mark.gen_test
async def test_the_scheme_picks_the_backend_without_connecting(given: str, kind: type) -> None:
    backend = make_backend(given, "p", grace=1.5)
    try:
        assert type(backend) is kind and backend.grace == 1.5
    finally:
        await backend.close()


@pytest.mark.parametrize(
    "bad_url,scheme",
    [
        ("kafka://:hunter2@broker:9092", "kafka://"),
        ("memory", "(none)"),
        ("", "(none)"),
        ("http://127.0.0.1:6379", "http://"),
    ],
)
def test_an_unknown_scheme_is_refused_with_the_known_ones(bad_url: str, scheme: str) -> None:
    with pytest.raises(UnknownBackend) as caught:
        make_backend(bad_url)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert f"unknown backend URL scheme {scheme}" in message
    assert "memory://, redis://, rediss://" in message and "redis+sentinel://" in message
    assert "hunter2" not in message


@pytest.mark.gen_test
async def test_the_login_throttle_locks_a_pair_after_its_failures(
    backend_url: str, redis_prefix: str
) -> None:
    """Counted in this process (memory) or in Redis for the deployment: the rule is one."""
    try:
        async with open_backend(backend_url, redis_prefix) as backend:
            throttle = backend.login_throttle(max_failures=2, window=60.0)
            for _ in range(2):
                assert await throttle.reserve("Ivy", "10.0.0.1") == 0
                await throttle.release("ivy", "10.0.0.1", False)
            assert 0 < await throttle.reserve("IVY", "10.0.0.1") <= 60.0
            assert await throttle.reserve("ivy", "10.0.0.2") == 0  # another address: its own
            await throttle.release("ivy", "10.0.0.2", True)
    finally:
        if backend_url != "memory://":
            await drop_keys(backend_url, redis_prefix)
