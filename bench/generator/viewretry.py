"""How a page-like view reconnects: like the page (static/js/connection.js), with a GET of
the page's probe path before each attempt."""

from __future__ import annotations

import asyncio
import random
import socket

from bench.generator.viewbase import ViewBase
from bench.generator.wire import time_ns


class Reconnecting(ViewBase):
    """The next attempt after a connection ends, when the group's policy asks for one."""

    __slots__ = ()

    def _gone(self, code: int | None) -> None:
        """Schedule the next attempt like the page (static/js/connection.js): full jitter,
        random 0..min(cap, base * 2^k) for the k-th consecutive failure, at least 0..first s
        after a 1001 (a restart: everyone got it at once); 4001/4401 end the session (the
        page goes to /login)."""
        policy = self.group.reconnect
        if policy is None or self.dead or self.group.stopped or code in (4001, 4401):
            return
        if self.t_conn_open and time_ns() - self.t_conn_open >= policy["stable_s"] * 1e9:
            self.attempt = 0
        ceiling = min(policy["cap_s"], policy["base_s"] * 2**self.attempt)
        if code == 1001:
            ceiling = max(ceiling, policy["first_s"])
        self.attempt += 1
        self.t_conn_open = 0
        self.retry = self.loop.call_later(random.random() * ceiling, self._reconnect)

    def _reconnect(self) -> None:
        self.retry = None
        task = self.loop.create_task(self._attempt())
        task.add_done_callback(lambda t: t.exception())

    async def _attempt(self) -> None:
        """Like the page: GET the probe path first (a 401: the session is gone; no answer:
        back off again), then open the socket."""
        policy = self.group.reconnect
        assert policy is not None
        if self.probe_request:
            status = await self._probe()
            if self.dead or self.group.stopped:
                return
            if status == 401:
                self.error = "probe: 401"
                return
            if status == 0:
                self.probe_failures += 1
                self._gone(None)
                return
        await self.connect(policy["timeout_s"])

    async def _probe(self) -> int:
        """One HTTP request like the page's fetch (the body is read to the end, as a browser
        receives it); the status, 0 for no answer."""
        self.probes += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        status = 0
        try:
            await asyncio.wait_for(self.loop.sock_connect(sock, self.target), 10)
            await self.loop.sock_sendall(sock, self.probe_request)
            head = b""
            scratch = bytearray(65536)
            while True:
                n = await asyncio.wait_for(self.loop.sock_recv_into(sock, scratch), 30)
                if not n:
                    break
                if not status:
                    head += scratch[:n]
                    if b"\r\n" in head:
                        status = int(head[9:12])
        except (TimeoutError, OSError, ValueError):
            pass
        finally:
            sock.close()
        return status
