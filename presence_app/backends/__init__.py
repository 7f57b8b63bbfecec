"""One backend per URL scheme: publish, listen and the presence transitions.

``make_backend`` picks the class by the URL's scheme from ``BACKENDS`` (encode/broadcaster's
``_create_backend``); ``open_backend`` also connects it and closes it at the end. Nothing here
imports redis: the Redis backend does, lazily, when one is made.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from presence_app.backends.base import Backend
from presence_app.backends.memory import MemoryBackend
from presence_app.backends.redis import RedisBackend
from presence_app.backends.urls import SENTINEL_SCHEME, mask_url

__all__ = [
    "BACKENDS",
    "Backend",
    "MemoryBackend",
    "RedisBackend",
    "UnknownBackend",
    "make_backend",
    "open_backend",
]

BACKENDS: dict[str, type[Backend]] = {
    "memory": MemoryBackend,
    "redis": RedisBackend,
    "rediss": RedisBackend,
    "unix": RedisBackend,
    SENTINEL_SCHEME: RedisBackend,
}


class UnknownBackend(ValueError):
    """The URL's scheme names no backend; the message says which ones there are."""


def make_backend(
    url: str, prefix: str = "presence", *, grace: float = 0.0, timeout: float = 5.0
) -> Backend:
    """The backend for ``url``: ``memory://`` (one process), ``redis://``, ``rediss://``,
    ``unix://`` or ``redis+sentinel://``. ``prefix`` starts every Redis key and the channel;
    ``grace`` is the offline grace in seconds; ``timeout`` bounds Redis commands and silences.
    Nothing connects yet (see ``Backend.connect``)."""
    scheme = urlsplit(url).scheme
    backend = BACKENDS.get(scheme)
    if backend is None:
        known = ", ".join(f"{name}://" for name in BACKENDS)
        shown = f"{scheme}://" if scheme else "(none)"
        raise UnknownBackend(
            f"unknown backend URL scheme {shown} in {mask_url(url)!r}; expected one of {known}"
        )
    return backend.from_url(url, prefix, grace, timeout)


@asynccontextmanager
async def open_backend(
    url: str, prefix: str = "presence", *, grace: float = 0.0, timeout: float = 5.0
) -> AsyncIterator[Backend]:
    """``make_backend``, connected; closed on the way out."""
    backend = make_backend(url, prefix, grace=grace, timeout=timeout)
    try:
        await backend.connect()
        yield backend
    finally:
        await backend.close()
