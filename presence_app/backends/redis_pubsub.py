"""The messaging half of the Redis backend: connections (Sentinel included) and a receive loop
that never dies silently. ``redis.RedisBackend`` adds the presence transitions.

redis-py's PubSub would otherwise reconnect and re-subscribe on its own without telling
anyone; its client is built with retries off so that every lost connection surfaces here, and
the loop backs off, resubscribes and asks presence to resynchronise.

``timeout`` bounds every command and the silence of the subscription: a connection that stops
answering without being closed (half-open: a NAT or firewall that lost its state, a peer that
vanished) is given up after it, whereas the kernel would wait for many minutes. With
``redis+sentinel://`` URLs the clients ask the sentinels for the current primary on every new
connection, so a failover looks like any other lost connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable
from typing import Any

from presence_app.backends.base import Backend, MessageHandler, ReconnectHandler
from presence_app.backends.urls import SENTINEL_SCHEME, mask_url, parse_sentinel_url

log = logging.getLogger(__name__)

MAX_BACKOFF = 2.0  # seconds between attempts to resubscribe, at most (a failover is over soon)


class RedisPubSub(Backend):
    """Publish and listen through one Redis channel, via ``redis.asyncio``."""

    name = "redis"

    def __init__(self, url: str, channel: str, grace: float = 0.0, timeout: float = 5.0) -> None:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        super().__init__(grace)
        self.url = url
        self.safe_url = mask_url(url)
        self.channel = channel
        self.timeout = timeout
        self._sentinel: Any = None
        common: dict[str, Any] = dict(
            decode_responses=True,
            health_check_interval=0,
            socket_connect_timeout=min(2.0, timeout),
            socket_timeout=timeout,
        )
        # Commands (scripts, heartbeats) fail fast: one retry on a fresh connection when a
        # pooled one turns out closed, none after a timeout (it would double the wait).
        self._client = self._make_client(
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)), **common
        )
        self._sub_client = self._make_client(retry=Retry(NoBackoff(), 0), **common)
        self.problem = "not connected yet"
        self._retry = asyncio.Event()

    def _make_client(self, **kwargs: Any) -> Any:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        if not self.url.startswith(SENTINEL_SCHEME + "://"):
            return aioredis.from_url(self.url, **kwargs)
        from redis.asyncio.sentinel import Sentinel

        target = parse_sentinel_url(self.url)
        if self._sentinel is None:
            # One attempt per sentinel: discovery moves on to the next one by itself, and
            # redis-py's default retries would take seconds per dead sentinel.
            options = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
            options.update(password=target.sentinel_password, retry=Retry(NoBackoff(), 0))
            self._sentinel = Sentinel(
                target.sentinels, decode_responses=True, sentinel_kwargs=options
            )
        return self._sentinel.master_for(
            target.service,
            db=target.db,
            username=target.username,
            password=target.password,
            **kwargs,
        )

    async def connect(self) -> None:
        try:
            await self._client.ping()
            self.problem = None
        except Exception as exc:  # keep serving; listen() retries with backoff
            self.problem = f"redis unreachable: {exc}"
            log.warning("Redis at %s is unreachable (%s); will keep retrying", self.safe_url, exc)

    async def close(self) -> None:
        await self._sub_client.aclose()
        await self._client.aclose()
        if self._sentinel is not None:
            await _quietly(self._sentinel.aclose())

    async def publish(self, message: str) -> None:
        await self._client.publish(self.channel, message)

    def retry_now(self) -> None:
        self._retry.set()

    async def listen(self, on_message: MessageHandler, on_resubscribed: ReconnectHandler) -> None:
        delay, first = 0.1, True
        while True:
            pubsub = self._sub_client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                await self._confirmed(pubsub)
                self._subscribed_event().set()
                if not first:
                    self.reconnects += 1
                    log.info("Resubscribed to Redis; resynchronising presence")
                    await on_resubscribed()
                first, delay = False, 0.1
                self.problem = None
                await self._receive(pubsub, on_message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.problem = f"redis unreachable: {exc}"
                first = False
                log.warning("Redis subscription lost (%s); retrying in %.1f s", exc, delay)
                await self._backoff(delay)
                delay = min(delay * 2, MAX_BACKOFF)
            finally:
                await _quietly(pubsub.aclose())

    async def _backoff(self, delay: float) -> None:
        """Wait about ``delay`` seconds (jittered), cut short by ``retry_now()``."""
        self._retry.clear()
        try:
            await asyncio.wait_for(self._retry.wait(), delay * (0.5 + random.random() / 2))
        except TimeoutError:
            pass

    async def _confirmed(self, pubsub: Any) -> None:
        """Wait for Redis to confirm the subscription: from then on nothing is missed."""
        while True:
            message = await pubsub.get_message(timeout=self.timeout)
            if message is None:
                raise ConnectionError("no subscription confirmation from Redis")
            if message.get("type") == "subscribe":
                return

    async def _receive(self, pubsub: Any, on_message: MessageHandler) -> None:
        """Deliver messages; after ``timeout`` of silence PING, and give the connection up if
        the PONG does not come within another ``timeout``: a half-open subscription would
        otherwise wait for messages forever, and this process would miss every event."""
        loop = asyncio.get_running_loop()
        heard, pinged = loop.time(), False
        while True:
            message = await pubsub.get_message(timeout=min(1.0, self.timeout))
            now = loop.time()
            if message is None:
                if now - heard < self.timeout:
                    continue
                if pinged:
                    raise ConnectionError(f"no answer from Redis for {now - heard:.1f} s")
                await pubsub.ping()
                pinged = True
                continue
            heard, pinged = now, False
            if message.get("type") != "message":
                continue
            try:
                on_message(message["data"])
            except Exception:
                log.exception("Message handler failed; message dropped")


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:  # closing a broken connection may fail; nothing to do about it
        pass
