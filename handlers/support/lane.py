"""POSTs answered without a RequestHandler: the lane, for /token and webhooks.

A RequestHandler costs a request about a third of what Tornado does for it in all: an
instance with its template namespaces, a task to run it in and a turn of the event loop
before it runs, and finish()'s generic steps. Under callgrind a constant answer costs
840k instructions a request from a RequestHandler and 538k from an HTTPMessageDelegate
(Tornado's lower-level interface, which a RequestHandler runs on). An endpoint whose work
never waits has its POSTs answered here instead, in the turn of the loop that read them
(/token); one whose work waits (a webhook, for the event store) in a task of its own,
in flight for a graceful shutdown as a handler is. Either way with what its
RequestHandler would have sent: the same checks in the same order, the same headers
(CORS included), errors, request id, access line and metrics. Every other request to it
(a preflight, another method, a body refused as too large) still goes to its
RequestHandler. An endpoint opts in with `Handler.lane` (handlers/support/base.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from http.client import responses
from typing import Any

import orjson
import tornado.web
from tornado import httputil

from ground.config import Config
from ground.errors import ApiError
from handlers.support.base import (
    JSON_CONTENT_TYPE,
    SECURITY_HEADERS,
    SERVER_HEADER,
    Handler,
    cors_headers,
    http_date,
    log_request,
    plain_error_message,
)

app_log = logging.getLogger("tornado.application")


class Exchange:
    """One POST on the lane: what its work reads, and what the access log and /metrics
    read afterwards, as they read a RequestHandler."""

    def __init__(
        self,
        application: tornado.web.Application,
        request: httputil.HTTPServerRequest,
        endpoint: type[Handler],
    ) -> None:
        self.request = request
        self.settings = application.settings
        self.answers_for = endpoint  # the RequestHandler that would have answered (/metrics names it)
        self.metrics_label = endpoint.metrics_label
        self.log_fields: dict[str, Any] = {}
        self.status = 200
        self.headers: dict[str, str] = {}  # an error's own: Retry-After, WWW-Authenticate

    @property
    def config(self) -> Config:
        return self.settings["config"]

    def get_status(self) -> int:
        return self.status


# What an endpoint does on the lane: the status and JSON answer, or ApiError; at once,
# or (for work that waits) a coroutine that gives them.
Answer = tuple[int, Any]
Work = Callable[[Exchange], Answer | Coroutine[Any, Any, Answer]]


class Lane(httputil.HTTPMessageDelegate):
    """One POST to an endpoint on the lane: its body kept (handlers/support/bodies.py bounds
    it), then its work run and its answer written."""

    def __init__(
        self,
        application: tornado.web.Application,
        request: httputil.HTTPServerRequest,
        endpoint: type[Handler],
        work: Work,
    ) -> None:
        self.application = application
        self.request = request
        self.endpoint = endpoint
        self.work = work
        self.chunks: list[bytes] = []
        # In flight from its headers until answered (or its client gone before its body
        # was all there): a graceful shutdown waits for it, as for a handler.
        self.in_flight: set[Any] = application.settings["requests_in_flight"]
        self.task: asyncio.Future[None] | None = None  # the work that waits, if it does

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        self.in_flight.add(self)

    def data_received(self, chunk: bytes) -> None:
        self.chunks.append(chunk)  # handlers/support/bodies.py bounds them, as for a handler

    def on_connection_close(self) -> None:
        self.chunks = []
        self.in_flight.discard(self)

    def finish(self) -> None:
        request = self.request
        request.body = b"".join(self.chunks)
        self.chunks = []
        exchange = Exchange(self.application, request, self.endpoint)
        try:
            outcome = self.work(exchange)
        except Exception as error:
            outcome = self.failure(exchange, error)
        if isinstance(outcome, tuple):
            try:
                self.answer(exchange, *outcome)
            finally:
                self.in_flight.discard(self)
            return
        # The set of requests in flight holds the task too: the loop keeps only a weak reference.
        self.task = asyncio.ensure_future(self.answer_when_done(exchange, outcome))
        self.task.add_done_callback(lambda _: self.in_flight.discard(self))

    async def answer_when_done(self, exchange: Exchange, outcome: Coroutine[Any, Any, Answer]) -> None:
        try:
            answer = await outcome
        except Exception as error:
            answer = self.failure(exchange, error)
        self.answer(exchange, *answer)

    def failure(self, exchange: Exchange, error: Exception) -> Answer:
        """What JsonErrors (handlers/support/base.py) answers for the same error."""
        if isinstance(error, ApiError):
            exchange.headers = error.headers
            return error.status_code, {"errorMessage": error.message}
        if isinstance(error, tornado.web.HTTPError):
            return error.status_code, {"errorMessage": plain_error_message(error.status_code)}
        request = self.request
        app_log.error("Uncaught exception %s %s", request.method, request.path, exc_info=error)
        return 500, {"errorMessage": "Internal server error"}

    def answer(self, exchange: Exchange, status: int, payload: Any) -> None:
        request, body = self.request, orjson.dumps(payload)
        exchange.status = status
        headers = httputil.HTTPHeaders()
        headers["Server"] = SERVER_HEADER
        headers["Content-Type"] = JSON_CONTENT_TYPE
        headers["Date"] = http_date.now()
        for name, value in SECURITY_HEADERS.items():
            headers[name] = value
        for name, value in (cors_headers(self.endpoint, request, exchange.config) or {}).items():
            headers[name] = value
        for name, value in exchange.headers.items():
            headers[name] = value
        headers["Content-Length"] = str(len(body))
        for transform in self.application.transforms:  # the request id, X-Worker-Id
            status, headers, body = transform(request).transform_first_chunk(status, headers, body, True)
        connection = request.connection
        assert connection is not None
        start_line = httputil.ResponseStartLine("", status, responses.get(status, "Unknown"))  # as Tornado
        connection.write_headers(start_line, headers, body)
        connection.finish()
        log_request(exchange)
