"""Extension routes: plain Tornado rules, checked here. server.py puts handlers/support/base.py's
Tracked under each handler class (a graceful shutdown waits for it, errors are JSON, its
body is bounded), whatever base class the adopter chose."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import tornado.routing
import tornado.web

if TYPE_CHECKING:
    from extensions.app import AppContext

Route = (
    tuple[str, type[tornado.web.RequestHandler]]
    | tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]
    | tornado.routing.Rule
)
RoutesFactory = Callable[["AppContext"], list[Route]]


class RouteError(ValueError):
    pass


def checked_rule(route: Any) -> tornado.routing.Rule:
    """A Tornado rule from `(pattern, Handler[, kwargs[, name]])` or a Rule."""
    if isinstance(route, tornado.routing.Rule):
        rule = route
    elif isinstance(route, (tuple, list)) and 2 <= len(route) <= 4 and isinstance(route[0], str):
        if not (isinstance(route[1], type) and issubclass(route[1], tornado.web.RequestHandler)):
            raise RouteError(f"the handler of {route[0]!r} must be a RequestHandler class")
        try:
            rule = tornado.web.url(*route)
        except Exception as error:
            raise RouteError(f"{route[0]!r} is not a valid route: {error}") from None
    else:
        raise RouteError(f"each route is (pattern, HandlerClass[, kwargs]), not {route!r}")
    return rule
