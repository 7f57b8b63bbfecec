"""The load generator's controller, ``LoadGen``: it lives in the benchmark runner's event
loop, starts the worker processes (``multiprocessing``, spawn) and sends them commands over
pipes (see ``bench.generator.worker``)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from bench.generator.worker import raise_nofile_limit, worker_main


class LoadGen:
    """The controller: ``workers`` observer processes plus one process for movers."""

    def __init__(
        self, workers: int = 0, progress: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.n_observers = workers or os.cpu_count() or 2
        self.progress = progress
        self.procs: list[Any] = []
        self.pipes: list[Any] = []
        self.futures: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def mover(self) -> int:
        """Index of the process that runs movers and stalled clients."""
        return self.n_observers

    @property
    def observers(self) -> range:
        return range(self.n_observers)

    async def start(self) -> LoadGen:
        raise_nofile_limit()
        self.loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("spawn")
        for index in range(self.n_observers + 1):
            parent, child = ctx.Pipe(duplex=True)
            proc = ctx.Process(
                target=worker_main, args=(child, index), daemon=True, name=f"loadgen-{index}"
            )
            proc.start()
            child.close()
            self.procs.append(proc)
            self.pipes.append(parent)
            self.loop.add_reader(parent.fileno(), self._on_pipe, index)
        await asyncio.gather(*(self.call(i, "ping") for i in range(len(self.pipes))))
        return self

    def _on_pipe(self, index: int) -> None:
        pipe = self.pipes[index]
        try:
            req_id, ok, result = pipe.recv()
        except (EOFError, OSError):
            self.loop.remove_reader(pipe.fileno())  # type: ignore[union-attr]
            for waiting in self.futures.values():
                if not waiting.done():
                    waiting.set_exception(RuntimeError(f"load generator {index} died"))
            return
        if req_id is None:
            if self.progress is not None:
                self.progress(result)
            return
        fut = self.futures.pop(req_id, None)
        if fut is None or fut.done():
            return
        if ok:
            fut.set_result(result)
        else:
            fut.set_exception(RuntimeError(f"load generator {index}: {result}"))

    async def call(self, index: int, cmd: str, **kwargs: Any) -> Any:
        assert self.loop is not None
        self.next_id += 1
        fut = self.loop.create_future()
        self.futures[self.next_id] = fut
        self.pipes[index].send((self.next_id, cmd, kwargs))
        return await fut

    async def call_observers(self, cmd: str, **kwargs: Any) -> list[Any]:
        return list(await asyncio.gather(*(self.call(i, cmd, **kwargs) for i in self.observers)))

    async def open_observers(
        self,
        group: str,
        targets: list[tuple[str, int]],
        count: int,
        headers: dict[str, str],
        concurrency: int = 400,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Open ``count`` observers spread over the observer processes and the targets."""
        n = self.n_observers
        shares = [count // n + (1 if i < count % n else 0) for i in range(n)]
        offsets = [sum(shares[:i]) for i in range(n)]
        per = max(concurrency // n, 1)
        results = await asyncio.gather(
            *(
                self.call(
                    i,
                    "open",
                    group=group,
                    targets=targets,
                    count=shares[i],
                    headers=[headers],
                    concurrency=per,
                    timeout=timeout,
                    offset=offsets[i],
                    progress=True,
                )
                for i in range(n)
                if shares[i]
            )
        )
        errors: Counter[str] = Counter()
        for r in results:
            errors.update(r["errors"])
        return {
            "requested": count,
            "open": sum(r["open"] for r in results),
            "errors": dict(errors),
            "t_first_send": min(r["t_first_send"] for r in results),
            "t_last_open": max(r["t_last_open"] for r in results),
            "handshake_ms_by_worker": [r["handshake_ms"] for r in results],
        }

    async def cpu(self) -> list[float]:
        results = await asyncio.gather(*(self.call(i, "rusage") for i in range(len(self.pipes))))
        return [r["cpu_s"] for r in results]

    async def stop(self) -> None:
        for pipe in self.pipes:
            try:
                self.loop.remove_reader(pipe.fileno())  # type: ignore[union-attr]
                pipe.send((0, "exit", {}))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 5.0
        for proc in self.procs:
            proc.join(max(deadline - time.monotonic(), 0.1))
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
        for pipe in self.pipes:
            pipe.close()
        self.procs, self.pipes = [], []
