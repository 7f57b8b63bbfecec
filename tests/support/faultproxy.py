"""A fault-injecting TCP proxy for tests: latency, partitions and half-open connections.

Debian ships no toxiproxy, so this is the small part of it the cluster tests need. It runs
its own event loop in a thread, so a test may block (``time.sleep``, ``wait_until``) or run
its own loop while the proxy keeps forwarding. Modes, switched at any time:

- ``latency(seconds)``: every chunk is delivered that much later, in order, each way;
- ``refuse()``: a partition seen as errors: open connections are reset (RST), new ones are
  accepted and reset at once, so clients fail fast;
- ``blackhole()``: a partition seen as silence: connections stay open, bytes are dropped both
  ways (new connections too); ``heal()`` resumes forwarding on all of them;
- ``half_open()``: the connections open now, and those opened until ``heal()``, stop
  forwarding for good without being closed (a NAT or firewall that lost their state, a peer
  that vanished): only a client that notices and reconnects recovers after ``heal()``;
- ``heal()``: back to forwarding (keeping the latency).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any

CHUNK = 65536


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.zombie = False  # half-open: never forwards again, never closes by itself

    def reset(self) -> None:
        for writer in self.writers:
            _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), like a peer whose host is gone or a firewall reject."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


class FaultProxy:
    """``FaultProxy(port).start()`` listens on ``self.port`` and forwards to 127.0.0.1:port."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.delay = 0.0
        self.mode = "forward"  # forward | refuse | blackhole | half_open
        self.links: set[_Link] = set()
        self.connections = 0  # accepted so far, for tests that want to see reconnects
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="faultproxy"
        )
        self._server: asyncio.base_events.Server | None = None

    # -- control (from any thread) --------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def latency(self, seconds: float) -> None:
        self._call(self._set(delay=seconds))

    def refuse(self) -> None:
        self._call(self._set(mode="refuse"))

    def blackhole(self) -> None:
        self._call(self._set(mode="blackhole"))

    def half_open(self) -> None:
        self._call(self._set(mode="half_open"))

    def heal(self) -> None:
        self._call(self._set(mode="forward"))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- the proxy's own loop -------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            link.reset()
        self.links.clear()

    async def _set(self, mode: str | None = None, delay: float | None = None) -> None:
        if delay is not None:
            self.delay = delay
        if mode is None:
            return
        self.mode = mode
        if mode == "refuse":
            for link in list(self.links):
                link.reset()
            self.links.clear()
        elif mode == "half_open":
            for link in self.links:
                link.zombie = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "refuse":
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        link = _Link(writer, up_writer)
        link.zombie = self.mode == "half_open"
        self.links.add(link)
        try:
            await asyncio.gather(
                self._pump(link, reader, up_writer), self._pump(link, up_reader, writer)
            )
        finally:
            self.links.discard(link)
            for w in link.writers:
                w.close()

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copy one direction; chunks keep their order, each delayed by the latency."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send(link, queue, writer))
        try:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except OSError:
                    data = b""
                if not data:
                    break
                if link.zombie or self.mode == "blackhole":
                    continue  # dropped on the floor
                queue.put_nowait((self._loop.time() + self.delay, data))
        finally:
            queue.put_nowait((0.0, b""))
            try:
                await sender
            except OSError:
                pass
            if link.zombie and writer is link.writers[0]:
                pass  # half-open: the client never learns that the other side went away
            elif self.mode == "refuse":
                _abort(writer)
            else:
                writer.close()

    async def _send(
        self, link: _Link, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await queue.get()
            if not data:
                return
            wait = due - self._loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if link.zombie or self.mode == "blackhole":
                continue
            writer.write(data)
            await writer.drain()
