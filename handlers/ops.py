"""What operators read: /metrics, /healthz, the access log, and a worker's own health port."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from handlers.base import BaseHandler
from presence_app.config import Settings
from presence_app.metrics import CONTENT_TYPE

access_log = logging.getLogger("tornado.access")
log = logging.getLogger(__name__)

#: The route label of requests no route matched (bounded: never the raw path).
UNMATCHED = "unmatched"


class MetricsHandler(BaseHandler):
    """Prometheus text format, for the addresses of ``--metrics-address`` only: to anyone
    else the page does not exist (404), so it does not even tell that it is there."""

    async def prepare(self) -> None:
        """No session lookup and no request counting: scrapes must answer while stopping."""
        if not self.services.metrics.allows(self.request.remote_ip):
            raise tornado.web.HTTPError(404, "Page not found")

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.finish(self.services.metrics.exposition())


class HealthHandler(BaseHandler):
    """Readiness. The detail (node id, reason with internal addresses, counts) only for the
    addresses of ``--metrics-address``; everyone else gets the bare status, same code."""

    async def prepare(self) -> None:
        """No session lookup: the health check must answer even when the database does not."""

    async def get(self) -> None:
        ok, body = await self.services.health()
        if not self.services.metrics.allows(self.request.remote_ip):
            body = {"status": body["status"]}
        self.set_status(200 if ok else 503)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))


def request_logger(routes: dict[type, str]) -> Any:
    """Tornado's ``log_function``: one access-log record per request (Tornado's levels and
    message; the fields of its own for JSON logs) and the request metrics, labelled by
    route pattern so that scanners' random paths cannot blow up the label set."""

    def log_request(handler: tornado.web.RequestHandler) -> None:
        request, status = handler.request, handler.get_status()
        seconds = request.request_time()
        services = handler.settings.get("services")
        route = routes.get(type(handler), UNMATCHED)
        if services is not None:
            services.metrics.request_done(route, request.method or "", status, seconds)
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
        if not access_log.isEnabledFor(level):
            return
        fields = {
            "method": request.method,
            "path": request.path,
            "status": status,
            "duration_ms": round(seconds * 1000.0, 2),
            "remote_ip": request.remote_ip,
        }
        access_log.log(
            level,
            "%d %s %s (%s) %.2fms",
            status,
            request.method,
            request.path,
            request.remote_ip,
            seconds * 1000.0,
            extra={"request": fields},
        )

    return log_request


def make_health_app(app: tornado.web.Application) -> tornado.web.Application:
    """/healthz and /metrics of this process only, sharing ``app``'s services."""
    routes = [(r"/healthz", HealthHandler), (r"/metrics", MetricsHandler)]
    return tornado.web.Application(
        routes,
        services=app.settings["services"],
        jinja_env=app.settings["jinja_env"],
        static_path=app.settings["static_path"],
        log_function=app.settings.get("log_function"),
    )


def listen_worker_health(
    app: tornado.web.Application, settings: Settings
) -> tornado.httpserver.HTTPServer | None:
    """A forked worker's own health port (``--worker-health-port`` + worker number, on
    127.0.0.1), bound after the fork, so that a supervisor can tell which worker is ill:
    through the shared port, the kernel picks the worker that answers."""
    port = settings.health_port
    if not port:
        return None
    try:
        sockets = tornado.netutil.bind_sockets(port, "127.0.0.1", family=socket.AF_INET)
    except OSError as exc:
        log.error("Cannot listen on 127.0.0.1:%d for this worker's health: %s", port, exc.strerror)
        return None
    server = tornado.httpserver.HTTPServer(make_health_app(app))
    server.add_sockets(sockets)
    log.info("Worker health on http://127.0.0.1:%d/healthz and /metrics", port)
    return server
