#!/usr/bin/env python3
"""Composition root: options/env -> Settings -> open_services -> make_app -> listen."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

import tornado.httpserver
import tornado.netutil

from handlers import make_app
from handlers.ops import listen_worker_health
from presence_app.config import ConfigError, Settings, ensure_cookie_secret, load_settings
from presence_app.runtime import logs
from presence_app.runtime.launcher import fork_workers
from presence_app.services import StartupError, open_services

log = logging.getLogger("presence")

#: Connections the kernel queues before accept (capped by net.core.somaxconn). Tornado's 128
#: drops the SYNs of a restart's reconnect storm, and the clients' TCP retries them after 1, 3,
#: 7, 15 s: 10,000 clients took 27-40 s to come back.
LISTEN_BACKLOG = 4096

#: First arguments that start a one-shot admin command instead of the server.
ADMIN_COMMANDS = ("db", "users")
#: First arguments that run the scripted client (presence_app.client.cli) against a server.
CLIENT_COMMANDS = ("watch", "who")

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


def setup_logging(settings: Settings) -> None:
    logs.setup_logging(
        settings.node_id, settings.log_level, settings.log_format, access_log=settings.debug
    )


async def serve(settings: Settings, sockets: list[socket.socket], announce: bool) -> None:
    """Run one server process until SIGTERM/SIGINT, then shut down cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with open_services(settings) as services:
        app = make_app(services)
        server = tornado.httpserver.HTTPServer(
            app,
            xheaders=settings.xheaders,
            max_body_size=64 * 1024,
            idle_connection_timeout=60,
            body_timeout=settings.body_timeout,
        )  # a body trickled byte by byte is cut off
        server.add_sockets(sockets)
        listen_worker_health(app, settings)
        gc.freeze()  # everything allocated so far lives forever: keep it out of GC passes
        host, port = sockets[0].getsockname()[:2]
        if announce:
            print(
                f"Presence is running at http://{host}:{port}/ (pid {os.getpid()}, "
                f"node {settings.node_id}); Ctrl+C to stop",
                flush=True,
            )
        await stop.wait()
        start_shutdown_watchdog()
        log.info(
            "Shutting down: no new connections; running requests get %.1f s", settings.drain_timeout
        )
        server.stop()  # the worker's health port stays open: it answers 503 while stopping
        # Requests finish (or are refused, having done nothing) before anything closes.
        await services.drain(settings.drain_timeout)
        log.info("Closing sockets with 1001")
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=1.0)
    except TimeoutError:
        pass
    log.info("Stopped")


def program_name(argv0: str) -> str:
    """How the operator started us, for usage and error lines: the ``presence`` console
    script or ``python run.py`` (anything else, pytest say, reads as run.py)."""
    return "presence" if Path(argv0).name == "presence" else "run.py"


def fail(message: str, prog: str = "run.py") -> int:
    print(f"{prog}: error: {logs.mask_secrets(message)}", file=sys.stderr)
    return 2


def run_server(
    settings: Settings, sockets: list[socket.socket], announce: bool, prog: str = "run.py"
) -> int:
    try:
        asyncio.run(serve(settings, sockets, announce))
    except StartupError as exc:
        return fail(str(exc), prog)
    return 0


def run_admin(args: list[str], prog: str) -> int:
    """``db ...`` and ``users ...``: one-shot commands in presence_app.admin.cli, imported only
    when asked for, since the server never needs them."""
    try:
        admin = importlib.import_module("presence_app.admin.cli")
    except ModuleNotFoundError as exc:
        if exc.name != "presence_app.admin.cli":
            raise  # a dependency of admin is missing: let its own name show
        return fail(f"{args[0]!r} commands are not available in this version", prog)
    return int(admin.main(args))


def run_client(args: list[str], prog: str) -> int:
    """``watch URL`` and ``who URL``: the client CLI, imported only when asked for; it needs
    websockets (the ``client`` extra), which the server never imports."""
    try:
        cli = importlib.import_module("presence_app.client.cli")
    except ModuleNotFoundError as exc:
        if exc.name != "websockets":
            raise
        return fail(
            f"{args[0]!r} needs the websockets package: pip install 'presence[client]'", prog
        )
    return int(cli.main(args, prog=prog))


def main(argv: list[str] | None = None) -> int:
    """``python run.py [options]`` and the ``presence`` console script; ``db``/``users``
    as the first argument run an admin command instead of the server, ``watch``/``who``
    the client."""
    args = sys.argv[1:] if argv is None else list(argv)
    prog = program_name(sys.argv[0])
    if args and args[0] in ADMIN_COMMANDS:
        return run_admin(args, prog)
    if args and args[0] in CLIENT_COMMANDS:
        return run_client(args, prog)
    try:
        settings = load_settings(args, prog=prog)
    except ConfigError as exc:
        return fail(str(exc), prog)
    setup_logging(settings)  # before the cookie secret, so that generating it is logged
    try:  # bind first: a port in use is reported before anything is created
        sockets = tornado.netutil.bind_sockets(
            settings.port, settings.address, backlog=LISTEN_BACKLOG
        )
    except OSError as exc:
        return fail(f"cannot listen on {settings.address}:{settings.port}: {exc.strerror}", prog)
    try:
        settings = ensure_cookie_secret(settings)
        if settings.database_url.startswith("sqlite") and ":memory:" not in settings.database_url:
            db_path = settings.database_url.split(":///", 1)[1]
            os.makedirs(os.path.dirname(os.path.abspath(db_path)), mode=0o700, exist_ok=True)
    except ConfigError as exc:
        return fail(str(exc), prog)
    except OSError as exc:
        return fail(f"cannot create the database directory: {exc.strerror}", prog)
    if settings.processes == 1:
        return run_server(settings, sockets, announce=True, prog=prog)
    count = settings.processes or os.cpu_count() or 1
    host, port = sockets[0].getsockname()[:2]
    print(
        f"Presence is running at http://{host}:{port}/ with {count} worker processes "
        f"(supervisor pid {os.getpid()}); Ctrl+C to stop",
        flush=True,
    )

    def run_worker(worker: int) -> int:
        worker_settings = settings.for_worker(worker)
        setup_logging(worker_settings)
        return run_server(worker_settings, sockets, announce=False, prog=prog)

    return fork_workers(count, run_worker)


if __name__ == "__main__":
    sys.exit(main())
