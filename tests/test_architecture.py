"""Imports flow one way: run.py -> handlers -> presence_app; handlers stay thin adapters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# presence_app reaches sockets through callbacks; it never imports the web layer, nor the
# composition root (run.py, installed as the top-level module ``run``).
DOMAIN_FORBIDDEN = ("handlers", "tornado.web", "tornado.websocket", "run")
# handlers call services; SQL, hashing and Redis live in presence_app.
WEB_FORBIDDEN = (
    "sqlalchemy",
    "bcrypt",
    "redis",
    "asyncpg",
    "aiosqlite",
    "sqlite3",
    "psycopg",
    "psycopg2",
    "hiredis",
)


def imported_modules(source: str) -> set[str]:
    """Every module a source imports, anywhere in it (functions included).

    ``from tornado import web`` counts as ``tornado.web``; relative imports count with
    their dots, so that they cannot slip past the checks unnoticed.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.add(base)
            found.update(
                f"{base}.{alias.name}" if node.module else base + alias.name for alias in node.names
            )
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and (
                getattr(node.func, "id", "") == "__import__"
                or getattr(node.func, "attr", "") == "import_module"
            )
        ):
            found.add(str(node.args[0].value))
    return found


def violations(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


def sources(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    return files


@pytest.mark.parametrize("path", sources("presence_app"), ids=lambda p: p.name)
def test_presence_app_does_not_import_the_web_layer(path):
    modules = imported_modules(path.read_text())
    assert violations(modules, DOMAIN_FORBIDDEN) == []
    assert not any(m.startswith("..") for m in modules), "relative import out of the package"


@pytest.mark.parametrize("path", sources("handlers"), ids=lambda p: p.name)
def test_handlers_do_no_sql_hashing_or_redis(path):
    assert violations(imported_modules(path.read_text()), WEB_FORBIDDEN) == []


@pytest.mark.parametrize("path", sources("handlers"), ids=lambda p: p.name)
def test_handlers_do_not_import_the_composition_root(path):
    assert violations(imported_modules(path.read_text()), ("run",)) == []


def test_the_composition_root_reaches_admin_commands_through_presence_app():
    """run.py dispatches ``db``/``users`` to presence_app.admin.cli (lazily, by name): the
    checker sees that import, and admin, being in presence_app, is held to its rules."""
    assert "presence_app.admin.cli" in imported_modules((ROOT / "run.py").read_text())


def test_presence_app_modules_are_importable_without_the_web_layer():
    """The checks above see real imports: handlers imports presence_app, not the reverse."""
    handler_imports = set().union(*(imported_modules(p.read_text()) for p in sources("handlers")))
    assert any(m.startswith("presence_app") for m in handler_imports)
    assert "tornado.websocket" in handler_imports


@pytest.mark.parametrize(
    "snippet,forbidden",
    [
        ("import handlers", DOMAIN_FORBIDDEN),
        ("from handlers.base import BaseHandler", DOMAIN_FORBIDDEN),
        ("import tornado.web", DOMAIN_FORBIDDEN),
        ("from tornado import websocket", DOMAIN_FORBIDDEN),
        ("from tornado.websocket import WebSocketHandler", DOMAIN_FORBIDDEN),
        ("def f():\n    import tornado.web as w\n", DOMAIN_FORBIDDEN),
        ("m = __import__('handlers')", DOMAIN_FORBIDDEN),
        ("import importlib\nimportlib.import_module('tornado.web')", DOMAIN_FORBIDDEN),
        ("import run", DOMAIN_FORBIDDEN),
        ("from run import main", DOMAIN_FORBIDDEN),
        ("from sqlalchemy import select", WEB_FORBIDDEN),
        ("import bcrypt", WEB_FORBIDDEN),
        ("import redis.asyncio as aioredis", WEB_FORBIDDEN),
        ("from redis import asyncio", WEB_FORBIDDEN),
    ],
)
def test_the_checker_catches_forbidden_imports(snippet, forbidden):
    assert violations(imported_modules(snippet), forbidden)


@pytest.mark.parametrize(
    "snippet,forbidden",
    [
        ("import tornado.httpclient", DOMAIN_FORBIDDEN),
        ("from tornado.ioloop import IOLoop", DOMAIN_FORBIDDEN),
        ("import handlers_extra", DOMAIN_FORBIDDEN),
        ("import runpy", DOMAIN_FORBIDDEN),
        ("from presence_app.accounts.service import AccountService", WEB_FORBIDDEN),
        ("import redisish", WEB_FORBIDDEN),
    ],
)
def test_the_checker_allows_the_rest(snippet, forbidden):
    assert violations(imported_modules(snippet), forbidden) == []


# --- Layers inside presence_app --------------------------------------------------------------
# A unit is a subpackage of presence_app (``presence_app.live``) or a top-level module
# (``presence_app.services``). Each may import only the units listed here (and itself); a new
# unit must be added to this table, or the tests below fail. Lowest first:
LAYERS: dict[str, set[str]] = {
    "runtime": set(),  # versions, logs, in-flight requests, GC, addresses
    "db": {"runtime"},  # engine, models, write outcomes, migrations
    "backends": {"runtime"},  # one per URL scheme: publish, listen, transitions
    "accounts": {"runtime", "db", "backends"},  # sign-up, login, sessions, hashing
    "live": {"runtime", "db", "backends", "accounts"},  # view, fan-out, frames, sync, ledger
    "config": {"runtime", "backends"},  # the option table -> Settings
    "metrics": {"runtime"},  # Prometheus; reads Services only for type hints
    "services": {"runtime", "db", "backends", "accounts", "live", "config", "metrics"},
    "admin": {"runtime", "db", "backends", "accounts", "live", "config", "services"},
    "client": set(),  # the scripted client: usable outside the repo
}
# Imports under ``if TYPE_CHECKING:`` that go up a layer (annotations only, no runtime edge).
TYPE_ONLY = {("metrics", "services")}
# Third-party libraries each confined to the units that own that concern.
CONFINED = {
    "redis": {"backends"},
    "hiredis": {"backends"},
    "bcrypt": {"accounts"},
    "alembic": {"db"},
    "prometheus_client": {"metrics"},
    "websockets": {"client"},
    "sqlalchemy": {"db", "accounts", "live", "admin"},
}


def unit_of(module: str) -> str | None:
    """``presence_app.live.fanout`` -> ``live``; ``presence_app.services`` -> ``services``."""
    parts = module.split(".")
    return parts[1] if parts[0] == "presence_app" and len(parts) > 1 else None


def runtime_imports(source: str) -> set[str]:
    """The imports of a source outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = [ast.Pass()]
    return imported_modules(ast.unparse(tree))


def layer_violations(unit: str, source: str) -> list[str]:
    """Imports of ``source`` (in ``unit``) that the layer table does not allow."""
    allowed = LAYERS[unit] | {unit}
    found = []
    everything, at_runtime = imported_modules(source), runtime_imports(source)
    for module in sorted(everything):
        target = unit_of(module)
        if target is None:
            owners = CONFINED.get(module.split(".")[0])
            if owners is not None and unit not in owners:
                found.append(module)
        elif target not in allowed and not (
            (unit, target) in TYPE_ONLY and module not in at_runtime
        ):
            found.append(module)
    return found


def units_on_disk() -> dict[Path, str]:
    pkg = ROOT / "presence_app"
    return {
        path: (path.relative_to(pkg).parts[0] if path.parent != pkg else path.stem)
        for path in sources("presence_app")
        if path.name != "__init__.py" or path.parent != pkg
    }


@pytest.mark.parametrize("path", sorted(units_on_disk()), ids=lambda p: str(p.relative_to(ROOT)))
def test_presence_app_imports_follow_the_layers(path):
    unit = units_on_disk()[path]
    assert unit in LAYERS, f"{unit}: a new unit of presence_app needs a row in LAYERS"
    assert layer_violations(unit, path.read_text()) == []


def test_every_layer_in_the_table_exists():
    assert set(LAYERS) == set(units_on_disk().values())


def test_the_layers_have_no_cycle() -> None:
    seen: list[str] = []
    pending = dict(LAYERS)
    while pending:
        ready = [u for u, deps in pending.items() if deps <= set(seen)]
        assert ready, f"cycle among {sorted(pending)}"
        seen.extend(sorted(ready))
        for u in ready:
            del pending[u]


@pytest.mark.parametrize(
    "unit,snippet",
    [
        ("db", "from presence_app.live.presence import PresenceService"),
        ("backends", "from presence_app.accounts.service import AccountService"),
        ("live", "from presence_app.services import Services"),
        ("accounts", "def f():\n    from presence_app.live import fanout\n"),
        ("live", "import redis.asyncio"),
        ("accounts", "from redis.exceptions import RedisError"),
        ("handlers_like", "x = 1"),
        ("client", "from presence_app.config import Settings"),
        ("metrics", "from presence_app.services import Services"),
        ("backends", "import bcrypt"),
    ],
)
def test_the_layer_checker_catches_upward_imports(unit, snippet):
    if unit not in LAYERS:
        with pytest.raises(KeyError):
            layer_violations(unit, snippet)
    else:
        assert layer_violations(unit, snippet)


@pytest.mark.parametrize(
    "unit,snippet",
    [
        ("live", "from presence_app.backends.base import UserState"),
        (
            "metrics",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from presence_app.services import Services\n",
        ),
        ("backends", "import redis.asyncio as aioredis"),
        ("services", "from presence_app.live.sync import PresenceSync"),
        ("runtime", "import logging"),
    ],
)
def test_the_layer_checker_allows_downward_imports(unit, snippet):
    assert layer_violations(unit, snippet) == []


# --- No HTTP in the domain --------------------------------------------------------------------
# The domain says what went wrong (typed errors); only the web layer picks an HTTP status, in
# one table (handlers/base.py SERVICE_ERRORS). The scripted client, an HTTP client, is exempt.
SPEAKS_HTTP = {"client"}
STATUS_NAMES = {"status", "status_code", "http_status"}


def http_leaks(source: str) -> list[str]:
    """Imports of ``http`` (``HTTPStatus``, ``http.client.responses``), and status attributes
    or fields of classes (``self.status = 409``, ``status_code: int``, ``Error(status=...)``)."""
    found = [f"import {m}" for m in violations(imported_modules(source), ("http",))]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for inner in ast.walk(node):
                if (
                    isinstance(inner, ast.Attribute)
                    and isinstance(inner.ctx, ast.Store)
                    and inner.attr in STATUS_NAMES
                ):
                    found.append(f"{node.name}: attribute {inner.attr}")
            for statement in node.body:
                targets = (
                    statement.targets
                    if isinstance(statement, ast.Assign)
                    else [statement.target]
                    if isinstance(statement, ast.AnnAssign)
                    else []
                )
                found += [
                    f"{node.name}: field {t.id}"
                    for t in targets
                    if isinstance(t, ast.Name) and t.id in STATUS_NAMES
                ]
        elif isinstance(node, ast.Call):
            found += [f"argument {k.arg}=" for k in node.keywords if k.arg in STATUS_NAMES]
    return found


@pytest.mark.parametrize(
    "path",
    [p for p, unit in sorted(units_on_disk().items()) if unit not in SPEAKS_HTTP],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_domain_names_no_http_status(path):
    assert http_leaks(path.read_text()) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import http",
        "from http import HTTPStatus",
        "import http.client",
        "class E(Exception):\n    def __init__(self, status):\n        self.status = status\n",
        "class E(Exception):\n    status_code: int = 400\n",
        "class E(Exception):\n    http_status = 409\n",
        "raise AccountError('taken', status=409)",
    ],
)
def test_the_http_checker_catches_statuses(snippet):
    assert http_leaks(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        "class E(Exception):\n    def __init__(self, wait):\n        self.retry_after = wait\n",
        "body = {'status': 'ok'}",
        "def status(user):\n    return 'active'\n",
        "import httpx_like",
        "CLOSE_SESSION_ENDED = 4001",
    ],
)
def test_the_http_checker_allows_the_rest(snippet):
    assert http_leaks(snippet) == []
