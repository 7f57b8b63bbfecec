"""bcrypt hashing and checking on a bounded thread pool, never on the event loop.

Jobs do not go straight into the pool's FIFO queue: they wait in one queue per client
address and are started round-robin across addresses whenever a thread is free. One address
that sends a thousand logins therefore delays another address's login by at most about one
job, instead of queueing minutes of hashing in front of everyone; a cap on the jobs one
address may have waiting answers the excess at once (``HashingBusy``: a 429).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import bcrypt

from presence_app.accounts.fields import MAX_PASSWORD_BYTES
from presence_app.runtime.inflight import RequestScope, current_scope


class HashingBusy(Exception):
    """Too many bcrypt jobs of one address are waiting; ``retry_after`` is in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many password checks waiting; retry after {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The process is stopping and this request has changed nothing yet: it is refused."""

    def __init__(self) -> None:
        super().__init__("shutting down")


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    scope: RequestScope | None
    started: float = field(default=0.0)
    queued: float = field(default_factory=time.monotonic)


class PasswordHasher:
    """Hashes with a configurable cost; checks unknown users against a dummy hash.

    Checking a dummy hash for unknown names (and for over-long passwords) keeps a failed login
    about as slow as a wrong password, so timing does not reveal which names exist.
    ``queue_per_address``: bcrypt jobs one address may have waiting (0: no cap).
    """

    def __init__(self, rounds: int, threads: int = 0, queue_per_address: int = 0) -> None:
        self.rounds = rounds
        self.threads = threads or os.cpu_count() or 2
        self.queue_per_address = queue_per_address
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="bcrypt")
        self._dummy: bytes | None = None
        self._running = 0
        self._waiting: OrderedDict[str, deque[_Job]] = OrderedDict()  # round-robin order
        # Jobs of requests that have already written: they go first, so that a request is
        # never left half done (and a stop can let them finish quickly).
        self._urgent: deque[_Job] = deque()
        self._job_seconds = 0.0  # moving average, for Retry-After
        self._stopping = False
        self._closed = False
        #: Called with each job's wait for a thread, in seconds (a histogram's ``observe``).
        self.observe_wait: Callable[[float], None] | None = None

    async def hash(self, password: str) -> str:
        secret = password.encode("utf-8")
        if len(secret) > MAX_PASSWORD_BYTES:
            raise ValueError("password longer than 72 bytes")
        salt = bcrypt.gensalt(self.rounds)
        hashed = await self._run(bcrypt.hashpw, secret, salt)
        return hashed.decode("ascii")

    async def check(self, password: str, hashed: str | None) -> bool:
        """True only if ``password`` matches ``hashed``; None checks a dummy and fails."""
        secret = password.encode("utf-8")
        if hashed is None or len(secret) > MAX_PASSWORD_BYTES:
            await self._check(b"not the password", await self._dummy_hash())
            return False
        return await self._check(secret, hashed.encode("ascii"))

    async def _check(self, secret: bytes, hashed: bytes) -> bool:
        try:
            return bool(await self._run(bcrypt.checkpw, secret, hashed))
        except ValueError:  # a malformed stored hash
            return False

    async def _dummy_hash(self) -> bytes:
        if self._dummy is None:
            self._dummy = (await self.hash("dummy password for timing")).encode("ascii")
        return self._dummy

    # -- scheduling ---------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        return len(self._urgent) + sum(len(queue) for queue in self._waiting.values())

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        scope = current_scope()
        if self._closed or (self._stopping and not (scope is not None and scope.wrote)):
            raise ShuttingDown()
        job = _Job(fn, args, asyncio.get_running_loop().create_future(), scope)
        if self._running < self.threads and not self.waiting:
            self._start(job)
        elif scope is not None and scope.wrote:
            self._urgent.append(job)
        else:
            address = scope.address if scope is not None else ""
            queue = self._waiting.setdefault(address, deque())
            if self.queue_per_address and len(queue) >= self.queue_per_address:
                raise HashingBusy(self._retry_after(len(queue)))
            queue.append(job)
        return await job.future

    def _retry_after(self, queued: int) -> int:
        """Seconds until about that many jobs of one address have had their turn."""
        turns = queued * max(len(self._waiting), 1) / self.threads
        return max(1, math.ceil(turns * self._job_seconds))

    def _start(self, job: _Job) -> None:
        self._running += 1
        job.started = time.monotonic()
        if self.observe_wait is not None:
            self.observe_wait(job.started - job.queued)
        done = asyncio.get_running_loop().run_in_executor(self._pool, job.fn, *job.args)
        done.add_done_callback(lambda result: self._finished(job, result))

    def _finished(self, job: _Job, result: asyncio.Future[Any]) -> None:
        self._running -= 1
        elapsed = time.monotonic() - job.started
        self._job_seconds = (
            elapsed if not self._job_seconds else 0.9 * self._job_seconds + 0.1 * elapsed
        )
        error = result.exception()  # always retrieved, whatever the waiter does
        if not job.future.done():  # the waiter may have been cancelled
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result.result())
        self._start_next()

    def _start_next(self) -> None:
        while not self._closed and self._running < self.threads:
            job = self._next_job()
            if job is None:
                return
            if not job.future.done():
                self._start(job)

    def _next_job(self) -> _Job | None:
        if self._urgent:
            return self._urgent.popleft()
        if not self._waiting:
            return None
        address, queue = next(iter(self._waiting.items()))
        job = queue.popleft()
        if queue:
            self._waiting.move_to_end(address)  # next turn goes to the next address
        else:
            del self._waiting[address]
        return job

    # -- stopping -----------------------------------------------------------------------
    def stop_waiting(self) -> int:
        """A stop's drain time is up: refuse every waiting job of a request that has changed
        nothing (ShuttingDown, answered 503), and any such job from now on. Jobs already
        running, and those of requests that have written, still run. Returns how many."""
        self._stopping = True
        refused = 0
        for queue in self._waiting.values():
            for job in queue:
                if job.scope is not None and job.scope.wrote:
                    self._urgent.append(job)
                elif not job.future.done():
                    job.future.set_exception(ShuttingDown())
                    refused += 1
        self._waiting.clear()
        self._start_next()
        return refused

    def close(self) -> None:
        self._closed = True
        for job in [*self._urgent, *(j for queue in self._waiting.values() for j in queue)]:
            if not job.future.done():
                job.future.set_exception(ShuttingDown())
        self._urgent.clear()
        self._waiting.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
