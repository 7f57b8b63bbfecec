"""Logging: text or JSON lines, the node id on every record, secrets masked in every URL.

The mask is applied to the formatted output (message and exception text), not at each call
site: a password inside a URL quoted by a library's exception (redis-py, SQLAlchemy,
asyncpg) is masked as surely as one the app logs itself.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from typing import Any

#: ``scheme://user:password@`` or ``scheme://password@``: the userinfo of any URL.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s'\"]+)@")
#: Query parameters that carry a secret (Sentinel's own password, a libpq-style password).
_SECRET_PARAM = re.compile(r"(?P<name>\b(?:sentinel_password|password)=)[^&\s'\"]+")
#: The fields a request's access-log record carries (``extra={"request": {...}}``).
REQUEST_FIELDS = ("method", "path", "status", "duration_ms", "remote_ip")


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match.group("userinfo").partition(":")
    return f"{match.group('scheme')}{user + ':***' if colon else '***'}@"


def mask_secrets(text: str) -> str:
    """``text`` with the password of every URL (and ``password=`` parameters) replaced."""
    if "@" in text:
        text = _USERINFO.sub(_mask_userinfo, text)
    if "password=" in text:
        text = _SECRET_PARAM.sub(r"\g<name>***", text)
    return text


class NodeFilter(logging.Filter):
    """Puts the node id into every log record."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node_id
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL [node] logger: message``, secrets masked."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(node)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, node, logger, message, the
    exception text if any and, for a request, its method, path, status, duration and client
    address as fields of their own (what a log pipeline filters on)."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "node": getattr(record, "node", ""),
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
        }
        if record.exc_info:
            body["exception"] = mask_secrets(self.formatException(record.exc_info))
        elif record.exc_text:
            body["exception"] = mask_secrets(record.exc_text)
        if record.stack_info:
            body["stack"] = mask_secrets(self.formatStack(record.stack_info))
        request = getattr(record, "request", None)
        if isinstance(request, dict):
            for name in REQUEST_FIELDS:
                if name in request:
                    body[name] = request[name]
        return json.dumps(body, ensure_ascii=False, default=str)


def setup_logging(
    node_id: str, level: str, log_format: str = "text", access_log: bool = False
) -> None:
    """One stderr handler on the root logger (replacing any earlier one: a forked worker
    calls this again with its own node id). ``access_log``: every request at INFO, otherwise
    only 4xx and 5xx (Tornado's levels)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.addFilter(NodeFilter(node_id))
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("tornado.access").setLevel(logging.INFO if access_log else logging.WARNING)
