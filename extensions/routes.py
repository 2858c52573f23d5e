"""Extension routes: plain Tornado rules. Under each handler class goes handlers/support/base.py's
Tracked (a graceful shutdown waits for it, errors are JSON, its body is bounded),
whatever base class the adopter chose."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import tornado.routing
import tornado.web
import tornado.websocket

from handlers.support.base import Tracked

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
    """A Tornado rule from `(pattern, Handler[, kwargs[, name]])` or a Rule, its handler tracked."""
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
    if isinstance(rule.target, type) and issubclass(rule.target, tornado.web.RequestHandler):
        rule.target = tracked(rule.target)
    return rule


def tracked(handler_class: type[tornado.web.RequestHandler]) -> type[tornado.web.RequestHandler]:
    """The adopter's class first (their methods win), the server's tracking underneath.
    WebSocket handlers are left as they are: shutdown closes their connections."""
    if issubclass(handler_class, (Tracked, tornado.websocket.WebSocketHandler)):
        return handler_class
    if handler_class is tornado.web.RequestHandler:
        return Tracked
    return type(
        handler_class.__name__,
        (handler_class, Tracked),
        {"__module__": handler_class.__module__, "__qualname__": handler_class.__qualname__},
    )
