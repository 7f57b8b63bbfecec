"""The GC policy freezes long-lived objects and still reclaims cycles of closed sockets."""

from __future__ import annotations

import gc
import weakref

from presence_app.runtime.gcpolicy import GcPolicy


class Cycle:
    """Stands in for a handler <-> connection reference cycle."""

    def __init__(self) -> None:
        self.me = self


def test_freezes_then_reclaims_after_enough_closes() -> None:
    gc.collect()
    gc.unfreeze()
    try:
        policy = GcPolicy(freeze_every=10, collect_after=5, defer=0)
        refs = []
        for _ in range(10):
            cycle = Cycle()
            refs.append(weakref.ref(cycle))
            del cycle
            policy.opened()
        assert gc.get_freeze_count() > 0
        gc.collect()
        assert all(ref() is not None for ref in refs), "frozen objects were scanned"
        for _ in range(4):
            policy.closed(open_sockets=0)
        assert all(ref() is not None for ref in refs)
        policy.closed(open_sockets=0)  # the fifth close: one full pass over everything
        assert all(ref() is None for ref in refs)
    finally:
        gc.unfreeze()


def test_collects_less_often_with_many_open_sockets() -> None:
    gc.unfreeze()
    try:
        policy = GcPolicy(freeze_every=10, collect_after=5, defer=0)
        refs = []
        for _ in range(3):
            cycle = Cycle()
            refs.append(weakref.ref(cycle))
            del cycle
        gc.freeze()
        for _ in range(5):
            policy.closed(open_sockets=100)  # needs 100 // 10 = 10 closes
        assert all(ref() is not None for ref in refs)
        for _ in range(5):
            policy.closed(open_sockets=100)
        assert all(ref() is None for ref in refs)
    finally:
        gc.unfreeze()


def test_mass_disconnect_costs_one_deferred_collection() -> None:
    import asyncio

    async def scenario() -> int:
        policy = GcPolicy(freeze_every=10, collect_after=5, defer=0.05)
        runs = 0
        original = policy.collect

        def counting() -> None:
            nonlocal runs
            runs += 1
            original()

        policy.collect = counting  # type: ignore[method-assign]
        for _ in range(50):  # ten thresholds' worth of closes at once
            policy.closed(open_sockets=0)
        await asyncio.sleep(0.2)
        return runs

    try:
        assert asyncio.run(scenario()) == 1
    finally:
        gc.unfreeze()
