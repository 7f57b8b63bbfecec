"""bcrypt off the event loop, the 72-byte limit, and the dummy hash for unknown users."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from itertools import pairwise
from typing import Any

import pytest

from presence_app.accounts.passwords import (
    MAX_PASSWORD_BYTES,
    HashingBusy,
    PasswordHasher,
    ShuttingDown,
)
from presence_app.runtime.inflight import RequestTracker

COST = 10
LOOP_COST = 12  # ~0.2 s a hash: a stalled loop cannot hide in scheduler noise


async def timed(awaitable) -> tuple[object, float]:
    start = time.perf_counter()
    result = await awaitable
    return result, time.perf_counter() - start


@pytest.mark.gen_test
async def test_hashing_runs_off_the_event_loop() -> None:
    hasher = PasswordHasher(LOOP_COST, threads=4)
    try:
        ticks: list[float] = []

        async def heartbeat() -> None:
            while True:
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.005)

        beat = asyncio.ensure_future(heartbeat())
        await asyncio.sleep(0.02)
        start = time.perf_counter()
        hashes = await asyncio.gather(*(hasher.hash(f"password-{i}") for i in range(4)))
        end = time.perf_counter()
        beat.cancel()
        assert len(set(hashes)) == 4
        assert all(h.startswith(f"$2b${LOOP_COST:02d}$") for h in hashes)
        during = [t for t in ticks if start <= t <= end]
        gaps = sorted(b - a for a, b in pairwise(during))
        # Hashing on the loop would leave room for a tick between hashes at most (<= 5);
        # off the loop the heartbeat keeps its 5 ms rhythm (give or take a busy machine).
        assert end - start > 0.1
        assert len(during) >= 20, (len(during), end - start)
        assert gaps[len(gaps) // 2] < 0.05, gaps
    finally:
        hasher.close()


@pytest.mark.gen_test
async def test_hash_and_check_round_trip():
    hasher = PasswordHasher(4)
    try:
        hashed = await hasher.hash("correct horse")
        assert await hasher.check("correct horse", hashed) is True
        assert await hasher.check("correct horsE", hashed) is False
        assert await hasher.check("", hashed) is False
        assert await hasher.hash("correct horse") != hashed  # salted
    finally:
        hasher.close()


@pytest.mark.parametrize(
    "password",
    [
        "a" * (MAX_PASSWORD_BYTES + 1),
        "p" * 100,
        "é" * 37,  # 37 characters, 74 bytes
        "a" * 10_000,
    ],
    ids=["73-bytes", "100-bytes", "74-utf8-bytes", "10000-bytes"],
)
@pytest.mark.gen_test
async def test_long_password_check_is_false_not_an_error(password):
    hasher = PasswordHasher(4)
    try:
        hashed = await hasher.hash("a" * MAX_PASSWORD_BYTES)
        assert await hasher.check(password, hashed) is False
        with pytest.raises(ValueError):
            await hasher.hash(password)
    finally:
        hasher.close()


@pytest.mark.gen_test
async def test_a_long_password_never_matches_its_first_72_bytes():
    # bcrypt itself used to ignore everything past byte 72: the prefix must not log anyone in.
    hasher = PasswordHasher(4)
    try:
        prefix = "k" * MAX_PASSWORD_BYTES
        hashed = await hasher.hash(prefix)
        assert await hasher.check(prefix, hashed) is True
        assert await hasher.check(prefix + "anything", hashed) is False
    finally:
        hasher.close()


@pytest.mark.parametrize("stored", ["", "not a hash", "$2b$04$short"])
@pytest.mark.gen_test
async def test_malformed_stored_hash_is_false(stored):
    hasher = PasswordHasher(4)
    try:
        assert await hasher.check("whatever-password", stored) is False
    finally:
        hasher.close()


@pytest.mark.gen_test
async def test_unknown_user_costs_a_real_bcrypt_check():
    hasher = PasswordHasher(COST)
    try:
        hashed = await hasher.hash("the real password")
        await hasher.check("warm up the dummy", None)
        known, unknown, too_long = [], [], []
        for _ in range(3):
            ok, took = await timed(hasher.check("wrong password", hashed))
            assert ok is False
            known.append(took)
            ok, took = await timed(hasher.check("wrong password", None))
            assert ok is False
            unknown.append(took)
            ok, took = await timed(hasher.check("x" * 100, hashed))
            assert ok is False
            too_long.append(took)
        # Same cost factor, same work: about as slow (a factor of 3 allows a busy machine).
        for other in (unknown, too_long):
            assert min(known) / 3 < min(other) < min(known) * 3, (known, other)
    finally:
        hasher.close()


@pytest.mark.gen_test
async def test_dummy_hash_never_matches():
    hasher = PasswordHasher(4)
    try:
        for password in ("", "not the password", "dummy password for timing"):
            assert await hasher.check(password, None) is False
    finally:
        hasher.close()


# -- the queue: fair across addresses, and a stop that refuses what has changed nothing -------
def in_request(
    tracker: RequestTracker, address: str, wrote: bool, work: Callable[[], Awaitable[Any]]
) -> asyncio.Future[Any]:
    """Run ``work`` as a request of ``address`` would (its own task, its own scope)."""

    async def request() -> Any:
        scope = tracker.begin(address)
        assert scope is not None
        scope.wrote = wrote
        try:
            return await work()
        finally:
            tracker.end(scope)

    return asyncio.ensure_future(request())


@pytest.mark.gen_test
async def test_jobs_take_turns_across_addresses() -> None:
    hasher = PasswordHasher(4, threads=1)
    tracker = RequestTracker()
    order: list[str] = []
    try:

        def job(address: str, i: int) -> asyncio.Future[Any]:
            async def work() -> None:
                await hasher.hash("password")
                order.append(f"{address}{i}")

            return in_request(tracker, address, False, work)

        jobs = [job("a", i) for i in range(4)] + [job("b", i) for i in range(2)]
        await asyncio.gather(*jobs)
        # a0 started at once; then the queue alternates a, b while both have jobs waiting.
        assert order == ["a0", "a1", "b0", "a2", "b1", "a3"]
    finally:
        hasher.close()


@pytest.mark.gen_test
async def test_stop_waiting_refuses_only_requests_that_have_not_written():
    hasher = PasswordHasher(COST, threads=1)
    tracker = RequestTracker()
    try:
        hashed = await hasher.hash("password")
        check = lambda: hasher.check("password", hashed)
        running = in_request(tracker, "a", False, check)
        waiting = [in_request(tracker, "a", False, check) for _ in range(3)]
        written = in_request(tracker, "b", True, check)
        await asyncio.sleep(0.01)  # every job is queued, the first one runs
        assert hasher.waiting == 4
        assert hasher.stop_waiting() == 3
        results = await asyncio.gather(running, written, *waiting, return_exceptions=True)
        assert results[:2] == [True, True]  # the running job and the one that wrote finish
        assert all(isinstance(r, ShuttingDown) for r in results[2:]), results
        late = await asyncio.gather(
            in_request(tracker, "c", False, check),
            in_request(tracker, "c", True, check),
            return_exceptions=True,
        )
        assert isinstance(late[0], ShuttingDown) and late[1] is True
        assert tracker.count == 0
    finally:
        hasher.close()
    with pytest.raises(ShuttingDown):  # not "cannot schedule new futures after shutdown"
        await hasher.check("password", None)


@pytest.mark.gen_test
async def test_a_full_queue_of_one_address_is_busy_with_a_retry_after():
    hasher = PasswordHasher(COST, threads=1, queue_per_address=2)
    tracker = RequestTracker()
    try:
        jobs = [in_request(tracker, "a", False, lambda: hasher.hash("password")) for _ in range(5)]
        other = in_request(tracker, "b", False, lambda: hasher.hash("password"))
        results = await asyncio.gather(*jobs, other, return_exceptions=True)
        busy = [r for r in results if isinstance(r, HashingBusy)]
        assert len(busy) == 2 and all(r.retry_after >= 1 for r in busy)  # 1 runs, 2 wait
        assert isinstance(results[-1], str)  # the other address was not refused
    finally:
        hasher.close()
