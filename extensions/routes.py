"""Extension routes: plain Tornado rules, whose handlers the server tracks for a graceful
shutdown and answers errors for in JSON, whatever base class the adopter chose."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson
import tornado.routing
import tornado.web
import tornado.websocket

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


class ServerTracked(tornado.web.RequestHandler):
    """Under an adopter's handler: in flight from its creation until it answered or its
    client left (shutdown waits for it), and `{"errorMessage"}` JSON for errors unless the
    adopter's class writes its own. `ApiError(status, message)` sends that message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings["requests_in_flight"].add(self)

    def finish(self, chunk: Any = None) -> Any:
        try:
            return super().finish(chunk)
        finally:
            self.settings["requests_in_flight"].discard(self)

    def on_connection_close(self) -> None:
        self.settings["requests_in_flight"].discard(self)
        super().on_connection_close()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(error, "message", None)
        if not isinstance(message, str):
            message = "Internal server error" if status_code >= 500 else HTTPStatus(status_code).phrase
        for name, value in getattr(error, "headers", {}).items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(orjson.dumps({"errorMessage": message}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, tornado.web.HTTPError) and value.status_code < 500:
            return  # expected traffic: the access line says enough
        super().log_exception(typ, value, tb)


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
    if issubclass(handler_class, (ServerTracked, tornado.websocket.WebSocketHandler)):
        return handler_class
    if handler_class is tornado.web.RequestHandler:
        return ServerTracked
    return type(
        handler_class.__name__,
        (handler_class, ServerTracked),
        {"__module__": handler_class.__module__, "__qualname__": handler_class.__qualname__},
    )
