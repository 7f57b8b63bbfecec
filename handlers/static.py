"""Static files: versioned URLs are cached for good, unversioned ones are revalidated."""

from __future__ import annotations

import tornado.web

from handlers.base import set_security_headers


class StaticHandler(tornado.web.StaticFileHandler):
    """``static_url()`` adds ``?v=<hash>`` and Tornado caches those for ten years. The ES
    modules that static/js/main.js imports are fetched by their plain URL, which Tornado
    sends without Cache-Control, so a browser may reuse an old copy heuristically next to a
    new main.js after a deploy; ``no-cache`` makes it ask (a cheap 304 when unchanged)."""

    def set_default_headers(self) -> None:
        set_security_headers(self)

    def parse_url_path(self, url_path: str) -> str:
        """No file name has a NUL in it: without this check ``os.stat`` raises ValueError
        ("embedded null byte") deep in Tornado, a 500 with a traceback in the log."""
        if "\x00" in url_path:
            raise tornado.web.HTTPError(404)
        return super().parse_url_path(url_path)

    def set_extra_headers(self, path: str) -> None:
        if "v" not in self.request.arguments:
            self.set_header("Cache-Control", "no-cache")
