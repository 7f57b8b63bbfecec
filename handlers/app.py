"""``make_app``: a fresh Application with the one route table."""

from __future__ import annotations

from pathlib import Path

import jinja2
import tornado.web

from handlers.auth import LoginHandler, LogoutHandler, SignupHandler
from handlers.base import NotFoundHandler
from handlers.ops import HealthHandler, MetricsHandler, request_logger
from handlers.static import StaticHandler
from handlers.tornado_internals import TornadoInternals, checked
from handlers.users import SessionApiHandler, UsersApiHandler, UsersPageHandler
from handlers.ws import PresenceSocketHandler
from presence_app.services import Services

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT = PACKAGE_DIR.parent


def asset_dir(name: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """``templates`` or ``static``. Installed, they ship inside this package
    (pyproject.toml maps them to ``handlers/templates`` and ``handlers/static``); in a
    checkout they are the top-level directories beside ``handlers/``. The checkout is
    recognised by its pyproject.toml, so that an installed copy missing its files fails here,
    by name, instead of serving another package's ``site-packages/templates``."""
    shipped = package_dir / name
    if shipped.is_dir():
        return shipped
    checkout = package_dir.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / name).is_dir():
        return checkout / name
    raise RuntimeError(
        f"the web layer's {name}/ directory is missing: looked in {shipped} and {checkout / name}"
    )


def make_app(
    services: Services, internals: TornadoInternals | None = None
) -> tornado.web.Application:
    """``internals``: how to write below Tornado's API; by default what ``checked()`` found
    (once per process). Tests pass ``TornadoInternals(("forced",))`` for the fallback."""
    settings = services.settings
    jinja_env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(asset_dir("templates"))),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=settings.debug,
    )
    routes = [
        (r"/", UsersPageHandler),
        (r"/signup", SignupHandler),
        (r"/login", LoginHandler),
        (r"/logout", LogoutHandler),
        (r"/ws", PresenceSocketHandler),
        (r"/api/users", UsersApiHandler),
        (r"/api/session", SessionApiHandler),
        (r"/healthz", HealthHandler),
        (r"/metrics", MetricsHandler),
    ]
    # Route labels of the request metrics: the pattern, never the raw path.
    route_names: dict[type, str] = {handler: pattern for pattern, handler in routes}
    route_names[StaticHandler] = "/static/"
    return tornado.web.Application(
        routes,
        services=services,
        tornado_internals=internals if internals is not None else checked(),  # SETTING
        jinja_env=jinja_env,
        cookie_secret=settings.cookie_secret,
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Lax"},
        login_url="/login",
        static_path=str(asset_dir("static")),
        static_handler_class=StaticHandler,
        default_handler_class=NotFoundHandler,
        log_function=request_logger(route_names),
        debug=settings.debug,
        serve_traceback=False,
        websocket_ping_interval=settings.ping_interval,
        websocket_ping_timeout=settings.ping_interval,
        # Hard cap only: PresenceSocketHandler.on_message enforces the limit with a clean 1009.
        websocket_max_message_size=4 * settings.max_message_size,
    )
