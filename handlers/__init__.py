"""The web layer: thin Tornado adapters over presence_app services, and ``make_app``."""

from handlers.app import make_app

__all__ = ["make_app"]
