#!/usr/bin/env python3
"""Composition root: options/env -> Settings -> open_services -> make_app -> listen."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import threading

import tornado.httpserver
import tornado.netutil

from handlers import make_app
from presence_app.config import ConfigError, Settings, ensure_cookie_secret, load_settings
from presence_app.launcher import fork_workers
from presence_app.services import StartupError, open_services

log = logging.getLogger("presence")

#: Connections the kernel queues before accept (capped by net.core.somaxconn). Tornado's 128
#: drops the SYNs of a restart's reconnect storm, and the clients' TCP retries them after 1, 3,
#: 7, 15 s: 10,000 clients took 27-40 s to come back.
LISTEN_BACKLOG = 4096

#: A SIGTERM'd process is gone within 5 s whatever hangs (a database thread stuck in a
#: query, a peer that never answers): past this, the shutdown is cut short.
SHUTDOWN_DEADLINE = 4.5


def start_shutdown_watchdog(deadline: float = SHUTDOWN_DEADLINE) -> threading.Timer:
    """Exit the process ``deadline`` seconds from now unless it has ended by then."""
    def cut_short() -> None:
        log.error("Shutdown did not finish within %.1f s; exiting now", deadline)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(1)

    timer = threading.Timer(deadline, cut_short)
    timer.daemon = True  # also fires while the interpreter waits for non-daemon threads
    timer.start()
    return timer


class NodeFilter(logging.Filter):
    """Puts the node id into every log line."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node_id
        return True


def setup_logging(settings: Settings) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.addFilter(NodeFilter(settings.node_id))
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s [%(node)s] %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.getLogger("tornado.access").setLevel(
        logging.INFO if settings.debug else logging.WARNING)


async def serve(settings: Settings, sockets: list[socket.socket], announce: bool) -> None:
    """Run one server process until SIGTERM/SIGINT, then shut down cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with open_services(settings) as services:
        app = make_app(services)
        server = tornado.httpserver.HTTPServer(
            app, xheaders=settings.xheaders, max_body_size=64 * 1024, idle_connection_timeout=60,
            body_timeout=settings.body_timeout)  # a body trickled byte by byte is cut off
        server.add_sockets(sockets)
        gc.freeze()  # everything allocated so far lives forever: keep it out of GC passes
        host, port = sockets[0].getsockname()[:2]
        if announce:
            print(f"Presence is running at http://{host}:{port}/ (pid {os.getpid()}, "
                  f"node {settings.node_id}); Ctrl+C to stop", flush=True)
        await stop.wait()
        start_shutdown_watchdog()
        log.info("Shutting down: no new connections; running requests get %.1f s",
                 settings.drain_timeout)
        server.stop()
        # Requests finish (or are refused, having done nothing) before anything closes.
        await services.drain(settings.drain_timeout)
        log.info("Closing sockets with 1001")
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=1.0)
    except asyncio.TimeoutError:
        pass
    log.info("Stopped")


def fail(message: str) -> int:
    print(f"run.py: error: {message}", file=sys.stderr)
    return 2


def run_server(settings: Settings, sockets: list[socket.socket], announce: bool) -> int:
    try:
        asyncio.run(serve(settings, sockets, announce))
    except StartupError as exc:
        return fail(str(exc))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("db", "users"):  # operator commands (presence_app/admin.py)
        from presence_app import admin
        return admin.main(args)
    try:
        settings = load_settings(argv)
    except ConfigError as exc:
        return fail(str(exc))
    setup_logging(settings)  # before the cookie secret, so that generating it is logged
    try:  # bind first: a port in use is reported before anything is created
        sockets = tornado.netutil.bind_sockets(settings.port, settings.address,
                                               backlog=LISTEN_BACKLOG)
    except OSError as exc:
        return fail(f"cannot listen on {settings.address}:{settings.port}: {exc.strerror}")
    try:
        settings = ensure_cookie_secret(settings)
        if settings.database_url.startswith("sqlite") and ":memory:" not in settings.database_url:
            db_path = settings.database_url.split(":///", 1)[1]
            os.makedirs(os.path.dirname(os.path.abspath(db_path)), mode=0o700, exist_ok=True)
    except ConfigError as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"cannot create the database directory: {exc.strerror}")
    if settings.processes == 1:
        return run_server(settings, sockets, announce=True)
    count = settings.processes or os.cpu_count() or 1
    host, port = sockets[0].getsockname()[:2]
    print(f"Presence is running at http://{host}:{port}/ with {count} worker processes "
          f"(supervisor pid {os.getpid()}); Ctrl+C to stop", flush=True)

    def run_worker(worker: int) -> int:
        worker_settings = settings.for_worker(worker)
        setup_logging(worker_settings)
        return run_server(worker_settings, sockets, announce=False)

    return fork_workers(count, run_worker)


if __name__ == "__main__":
    sys.exit(main())
