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
WEB_FORBIDDEN = ("sqlalchemy", "bcrypt", "redis", "asyncpg", "aiosqlite", "sqlite3",
                 "psycopg", "psycopg2", "hiredis")


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
            found.update(f"{base}.{alias.name}" if node.module else base + alias.name
                         for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__" \
                and node.args and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value))
    return found


def violations(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules
                  if any(m == f or m.startswith(f + ".") for f in forbidden))


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
    """run.py dispatches ``db``/``users`` to presence_app.admin (lazily, by name): the
    checker sees that import, and admin, being in presence_app, is held to its rules."""
    assert "presence_app.admin" in imported_modules((ROOT / "run.py").read_text())


def test_presence_app_modules_are_importable_without_the_web_layer():
    """The checks above see real imports: handlers imports presence_app, not the reverse."""
    handler_imports = set().union(*(imported_modules(p.read_text())
                                    for p in sources("handlers")))
    assert any(m.startswith("presence_app") for m in handler_imports)
    assert "tornado.websocket" in handler_imports


@pytest.mark.parametrize("snippet,forbidden", [
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
])
def test_the_checker_catches_forbidden_imports(snippet, forbidden):
    assert violations(imported_modules(snippet), forbidden)


@pytest.mark.parametrize("snippet,forbidden", [
    ("import tornado.httpclient", DOMAIN_FORBIDDEN),
    ("from tornado.ioloop import IOLoop", DOMAIN_FORBIDDEN),
    ("import handlers_extra", DOMAIN_FORBIDDEN),
    ("import runpy", DOMAIN_FORBIDDEN),
    ("from presence_app.accounts import AccountService", WEB_FORBIDDEN),
    ("import redisish", WEB_FORBIDDEN),
])
def test_the_checker_allows_the_rest(snippet, forbidden):
    assert violations(imported_modules(snippet), forbidden) == []
