"""The one handler base: JSON errors, in-flight tracking for a graceful shutdown, bounded
request bodies, CORS; and the access log line."""

from __future__ import annotations

import logging
import time
from http.client import responses
from typing import Any, ClassVar

import orjson
import tornado
import tornado.httputil
import tornado.routing
import tornado.web
import tornado.websocket
from tornado.httputil import HTTPHeaders, HTTPServerRequest, format_timestamp

from ground.config import Config
from ground.errors import ApiError
from ground.logsafe import printable, quoted
from handlers.support.observe import Answering, observe_request, request_fields

access_log = logging.getLogger("tornado.access")
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
# On every answer of this server's handlers and of the lane (handlers/support/lane.py).
SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def plain_error_message(status_code: int) -> str:
    """The errorMessage of an error that brings none of its own (a plain HTTPError)."""
    if status_code >= 500:
        return "Internal server error"
    return responses.get(status_code, "Client error")  # a code Python has no name for: 499


def log_request(handler: Answering) -> None:
    """One line a request; handlers add what it was about (`log_fields`), never a secret.
    Answered requests are DEBUG: at thousands a second, writing a line each costs a
    fifth of the server's time (measured); refused ones are WARNING, failures ERROR."""
    observe_request(handler)
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if not access_log.isEnabledFor(level):
        return
    request = handler.request
    fields = getattr(handler, "log_fields", {})
    detail = " ".join(f"{name}={quoted(str(value))}" for name, value in fields.items())
    access_log.log(
        level,
        "%d %s %s (%s) %.2fms%s",
        status,
        printable(request.method or ""),  # client-controlled: escaped, one line a request
        printable(request.uri or ""),
        request.remote_ip,
        1000 * request.request_time(),
        f" {detail}" if detail else "",
        extra=request_fields(handler),
    )


# What each handler module's routes() gives: (pattern, handler class[, initialize kwargs]).
Route = (
    tuple[str, type[tornado.web.RequestHandler]]
    | tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]
)


class JsonErrors(tornado.web.RequestHandler):
    """The one error writer, for HTTP endpoints (Tracked) and WebSocket upgrades alike:
    `{"errorMessage": ...}` JSON (an ApiError's own message and headers), never a
    traceback; a client error is one access line, not a traceback in the log."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ApiError):
            message = error.message
            for name, value in error.headers.items():
                self.set_header(name, value)
        else:
            message = plain_error_message(status_code)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(orjson.dumps({"errorMessage": message}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Client errors are expected traffic: log one line, not a traceback.
        if isinstance(value, tornado.web.HTTPError) and value.status_code < 500:
            return
        super().log_exception(typ, value, tb)


class Tracked(JsonErrors):
    """What every request handler of this server has, and what extensions/routes.py puts
    under an extension's handler whatever its base class:

    - in flight from its creation until it answered or its client left: shutdown waits
      for it (server.shutdown);
    - errors answered as `{"errorMessage": ...}` JSON (JsonErrors);
    - a request body of at most `max_body_bytes`, cut as it arrives (handlers/support/bodies.py).
    """

    max_body_bytes: ClassVar[int] = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings["requests_in_flight"].add(self)

    def finish(self, chunk: Any = None) -> Any:
        # finish, not on_finish: a subclass that overrides on_finish without super() is
        # still answered for.
        try:
            return super().finish(chunk)
        finally:
            self.settings["requests_in_flight"].discard(self)

    @classmethod
    def too_large(cls) -> ApiError:
        """The one 413 of this server."""
        return ApiError(413, f"Request body is larger than {cls.max_body_bytes} bytes")

    def on_connection_close(self) -> None:
        self.settings["requests_in_flight"].discard(self)
        # Tornado's own: a streamed body still being read ends with the connection, and so
        # does the handler (else it would wait for the rest of the body for good).
        super().on_connection_close()


class Handler(Tracked):
    """The one base of this server's endpoints: Tracked, and what a class sets says the rest.

    - `max_body_bytes`: 0 (the default) takes no body; otherwise a POST, PUT or PATCH body
      of a `content_types` media type, refused from its declared length (413) before it is
      read; `json_object()` reads it;
    - `body_optional = True`: a request without a body is let through as well;
    - `cors_methods`: CORS for browser pages on other origins, with a preflight; credentials
      (cookies) only for origins listed by name, never with `*` or the opaque `null`.
    """

    max_body_bytes: ClassVar[int] = 0
    # What /metrics counts this endpoint's answers as ("token", "webhook", "admin"), if anything.
    metrics_label: ClassVar[str] = ""
    content_types: ClassVar[tuple[str, ...]] = ("application/json",)
    body_optional: ClassVar[bool] = False
    cors_methods: ClassVar[str] = ""

    @property
    def config(self) -> Config:
        return self.settings["config"]

    def clear(self) -> None:
        """Tornado's, with the Date header's text made once a second: formatting it for
        every answer cost more than /token's JSON and its signature together (measured)."""
        headers = self._headers = HTTPHeaders()
        headers["Server"] = SERVER_HEADER
        headers["Content-Type"] = "text/html; charset=UTF-8"
        headers["Date"] = http_date.now()
        self.set_default_headers()
        self._write_buffer = []
        self._status_code = 200
        self._reason = "OK"

    def set_default_headers(self) -> None:
        # Constants: straight into the headers, without set_header's checks of each value.
        headers = self._headers
        for name, value in SECURITY_HEADERS.items():
            headers[name] = value
        cors = cors_headers(type(self), self.request, self.config)
        self.cors_allowed = cors is not None
        for name, value in (cors or {}).items():
            self.set_header(name, value)

    @classmethod
    def lane(
        cls, application: tornado.web.Application, request: HTTPServerRequest, kwargs: dict[str, Any]
    ) -> tornado.httputil.HTTPMessageDelegate | None:
        """A delegate that answers this request without a handler (handlers/support/lane.py),
        or None: this class handles it."""
        return None

    def options(self, *args: Any) -> None:
        if not self.cors_methods:
            raise tornado.web.HTTPError(405)
        if not self.cors_allowed:
            raise ApiError(403, "Origin not allowed by CORS_ALLOWED_ORIGINS")
        self.set_header("Access-Control-Allow-Methods", self.cors_methods)
        self.set_header("Access-Control-Allow-Headers", "Content-Type, Authorization")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    def prepare(self) -> None:
        method = (self.request.method or "").lower()
        if not self.max_body_bytes or method not in ("post", "put", "patch") or not self.implements(method):
            return  # 405 for a method this endpoint has not, whatever the body
        self.check_body(self.request)

    @classmethod
    def check_body(cls, request: HTTPServerRequest) -> None:
        """A declared length over the limit (413), a media type this endpoint does not take (415)."""
        declared = request.headers.get("Content-Length")
        if declared is not None and (not is_number(declared) or int(declared) > cls.max_body_bytes):
            raise cls.too_large()
        if cls.body_optional and not request.body:
            return
        content_type = request.headers.get("Content-Type", "")
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type not in cls.content_types:
            raise ApiError(415, f"Content-Type must be {' or '.join(cls.content_types)}")

    def implements(self, method: str) -> bool:
        return getattr(type(self), method) is not getattr(tornado.web.RequestHandler, method)

    @property
    def raw_body(self) -> bytes:
        if len(self.request.body) > self.max_body_bytes:  # a chunked body declares no length
            raise self.too_large()
        return self.request.body

    def json_object(self) -> dict[str, Any]:
        return json_object(self.raw_body)

    def write_json(self, payload: Any, status: int = 200) -> None:
        if status != 200:
            self.set_status(status)
        body = orjson.dumps(payload)
        headers = self._headers
        headers["Content-Type"] = JSON_CONTENT_TYPE
        headers["Content-Length"] = str(len(body))  # else finish() counts and checks it again
        self.finish(body)


SERVER_HEADER = f"TornadoServer/{tornado.version}"


def json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)  # strict JSON: no NaN, no lone surrogates
    except orjson.JSONDecodeError:
        raise ApiError(400, "Request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return payload


def cors_headers(
    endpoint: type[Handler], request: HTTPServerRequest, config: Config
) -> dict[str, str] | None:
    """The CORS headers of an answer to a page on another origin, or None: not such a
    request, an endpoint without CORS, or an origin CORS_ALLOWED_ORIGINS does not list."""
    origin = header(request.headers, "Origin")
    if not endpoint.cors_methods or origin is None:
        return None
    allowed = config.cors_allowed_origins
    if "*" in allowed:
        headers = {"Access-Control-Allow-Origin": "*"}
    elif origin.rstrip("/") in allowed:
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if origin != "null":
            headers["Access-Control-Allow-Credentials"] = "true"
    else:
        return None
    headers["Access-Control-Expose-Headers"] = "Retry-After, X-Request-Id"
    return headers


class _HttpDate:
    """The text of the Date header, made again when the second changes."""

    second = -1
    text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.text, self.second = format_timestamp(second), second
        return self.text


http_date = _HttpDate()


class NotFoundHandler(Handler):
    def prepare(self) -> None:
        raise ApiError(404, f"No such endpoint: {self.request.path}")


def header(headers: HTTPHeaders, name: str) -> str | None:
    """A request header, or None. `in` first: HTTPHeaders.get raises and catches a
    KeyError for a header that is not there, the usual case for Origin and Cookie."""
    return headers[name] if name in headers else None  # noqa: SIM401 (the point of this function)


def is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()  # int() also takes other scripts' digits


def tracked_rule(rule: tornado.routing.Rule) -> tornado.routing.Rule:
    """An extension's rule (extensions/routes.py), its handler class tracked."""
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
