"""One load generator process: it executes the controller's commands, sent over a pipe, on
its own event loop. Commands are ``(request id, name, keyword arguments)``; the reply is
``(request id, ok, result or traceback)``, and ``(None, True, note)`` is a progress note.

A command name resolves to: ``module:name`` -> ``bench.<module>.cmd_<name>(worker, ...)``
(``viewcmds:open``); a process command -> a ``Worker.cmd_<name>`` method (ping, reset,
rusage, forget, stop_churn); anything else -> ``bench.generator.conncmds.cmd_<name>(worker,
...)``, the commands over ``Conn`` groups (open, close, churn...)."""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib
import os
import resource
import signal
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from bench.generator import conncmds
from bench.generator.group import POLLER, Group
from bench.generator.wire import CLOSED


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Worker:
    """One generator process: executes the controller's commands on its own event loop."""

    def __init__(self, pipe: Any, index: int) -> None:
        self.pipe = pipe
        self.index = index
        self.groups: dict[str, Any] = {}  # a Group, or a bench.views ViewGroup
        self.done: asyncio.Future[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.churn_stopped = False

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()
        POLLER.attach(self.loop)
        self.loop.add_reader(self.pipe.fileno(), self.on_pipe)
        await self.done

    def on_pipe(self) -> None:
        try:
            req_id, cmd, kwargs = self.pipe.recv()
        except (EOFError, OSError):
            self.stop()
            return
        if cmd == "exit":
            self.reply(req_id, True, None)
            self.stop()
            return
        self.loop.create_task(self.handle(req_id, cmd, kwargs))  # type: ignore[union-attr]

    def stop(self) -> None:
        self.abort_all()
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def abort_all(self) -> int:
        """Reset every socket of every group; returns how many were not closed yet."""
        aborted = 0
        for group in self.groups.values():
            stop = getattr(group, "stop", None)
            if stop is not None:  # bench.views: also cancels pending reconnects
                aborted += sum(1 for conn in group.conns if conn.state != CLOSED)
                stop()
                continue
            for conn in group.conns:
                if conn.state != CLOSED:  # (aborting a closed one would change nothing)
                    conn.abort()
                    aborted += 1
        return aborted

    def reply(self, req_id: int | None, ok: bool, result: Any) -> None:
        try:
            self.pipe.send((req_id, ok, result))
        except (OSError, EOFError):
            self.stop()

    def handler(self, cmd: str) -> Callable[..., Awaitable[Any]]:
        """The coroutine function that runs command ``cmd`` (see the module docstring)."""
        if ":" in cmd:  # "viewcmds:open" -> bench.viewcmds.cmd_open(worker, ...)
            module, _, name = cmd.partition(":")
            function = getattr(importlib.import_module(f"bench.{module}"), "cmd_" + name)
            return functools.partial(function, self)
        method = getattr(self, "cmd_" + cmd, None)
        if method is not None:
            return method  # type: ignore[no-any-return]
        return functools.partial(getattr(conncmds, "cmd_" + cmd), self)

    async def handle(self, req_id: int, cmd: str, kwargs: dict[str, Any]) -> None:
        try:
            result = await self.handler(cmd)(**kwargs)
        except Exception:
            self.reply(req_id, False, traceback.format_exc())
        else:
            self.reply(req_id, True, result)

    async def wait_reporting(
        self, tasks: list[asyncio.Task[None]], note: Callable[[], dict[str, Any]] | None
    ) -> None:
        """Wait for every task; meanwhile send ``note()`` as a progress note once a second."""
        last = time.monotonic()
        pending = set(tasks)
        while pending:
            _done, pending = await asyncio.wait(pending, timeout=1.0)
            if note is not None and time.monotonic() - last >= 1.0:
                last = time.monotonic()
                self.reply(None, True, note())

    def group(self, name: str, record: bool = True) -> Group:
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = Group(name, record)
        return group  # type: ignore[no-any-return]

    # -- process commands -----------------------------------------------------------------
    async def cmd_ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "nofile": raise_nofile_limit()}

    async def cmd_stop_churn(self) -> None:
        self.churn_stopped = True

    async def cmd_reset(self) -> dict[str, int]:
        """Abort every socket of every group (RST) and forget all state."""
        aborted = self.abort_all()
        self.groups = {}
        gc.unfreeze()
        gc.collect()
        return {"aborted": aborted}

    async def cmd_rusage(self) -> dict[str, float]:
        return {"cpu_s": cpu_seconds()}

    async def cmd_forget(self, group: str) -> None:
        self.groups.pop(group, None)
        gc.collect()


def worker_main(pipe: Any, index: int) -> None:
    """Entry point of a generator process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller stops us
    raise_nofile_limit()
    try:
        asyncio.run(Worker(pipe, index).run())
    except KeyboardInterrupt:
        pass
