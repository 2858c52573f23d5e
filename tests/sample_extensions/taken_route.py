"""A route on a path the server already serves."""

from __future__ import annotations

import tornado.web

from extensions import AppContext, Route


def routes(app: AppContext) -> list[Route]:
    return [(r"/token", tornado.web.RequestHandler)]
