"""Request bodies bounded in size and in time as they arrive, before any handler holds them.

Tornado reads a body whole, up to the server's limit and for as long as the client takes,
before a handler that is not streamed runs. Here every body must arrive within
BODY_TIMEOUT; a body is read only up to the handler's max_body_bytes (handlers/support/base.py),
past which the endpoint answers 413 (its own headers, CORS included) and the connection
closes instead of reading on; an endpoint that takes no body gets at most NO_BODY_BYTES
of one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import tornado.web
from tornado import httputil
from tornado.http1connection import HTTP1Connection

from ground.connections import TIMER_SLACK_SECONDS
from handlers.support.base import Handler, Tracked, is_number

log = logging.getLogger(__name__)

# What an endpoint without a body of its own may be sent (Tornado answers a bare 400 beyond).
NO_BODY_BYTES = 64 * 1024


class Application(tornado.web.Application):
    """Tornado's Application, with every request body bounded (settings["config"].body_timeout)."""

    def get_handler_delegate(  # type: ignore[override]
        self,
        request: httputil.HTTPServerRequest,
        target_class: type[tornado.web.RequestHandler],
        target_kwargs: dict[str, Any] | None = None,
        path_args: list[bytes] | None = None,
        path_kwargs: dict[str, bytes] | None = None,
    ) -> httputil.HTTPMessageDelegate:
        lane = issubclass(target_class, Handler) and target_class.lane(self, request, target_kwargs or {})
        delegate = lane or super().get_handler_delegate(
            request, target_class, target_kwargs, path_args, path_kwargs
        )
        headers, connection = request.headers, request.connection
        declared = headers.get("Content-Length")
        if (declared in (None, "0") and "Transfer-Encoding" not in headers) or not isinstance(
            connection, HTTP1Connection
        ):
            return delegate  # no body
        deadlines = self.settings.get("body_deadlines")
        if deadlines is None or deadlines.loop is not asyncio.get_running_loop():
            timeout = self.settings["config"].body_timeout.total_seconds()
            deadlines = self.settings["body_deadlines"] = BodyDeadlines(timeout)
        if not issubclass(target_class, Tracked) or not target_class.max_body_bytes:
            connection.set_max_body_size(NO_BODY_BYTES)
            return BoundedBody(delegate, connection, deadlines)
        endpoint, limit = target_class, target_class.max_body_bytes

        def refusal() -> httputil.HTTPMessageDelegate:
            refusing = too_large(endpoint)
            return super(Application, self).get_handler_delegate(
                request, refusing, target_kwargs, path_args, path_kwargs
            )

        declared_over = declared is not None and is_number(declared) and int(declared) > limit
        return BoundedBody(delegate, connection, deadlines, limit, refusal, declared_over)


_too_large: dict[type[Tracked], type[Tracked]] = {}


def too_large(handler_class: type[Tracked]) -> type[Tracked]:
    """The endpoint's own handler (its headers, CORS included), refusing before anything else."""
    refusing = _too_large.get(handler_class)
    if refusing is None:

        def prepare(self: Tracked) -> None:
            raise self.too_large()

        refusing = type(f"{handler_class.__name__}BodyTooLarge", (handler_class,), {"prepare": prepare})
        _too_large[handler_class] = refusing
    return refusing


class BodyDeadlines:
    """Every body being read, with its deadline, under one shared timer. A timer per
    request (call_later, then remove_timeout) cost /token about 6 us of its own; this costs
    a dict insert and delete. One timeout for all, so the dict is in deadline order: the
    timer wakes at the first deadline, closes what is overdue and sleeps until the next."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.pending: dict[BoundedBody, float] = {}
        self.timer: object | None = None

    def add(self, body: BoundedBody) -> None:
        self.pending[body] = time.monotonic() + self.timeout  # the loop's time() may jump
        if self.timer is None:
            self.timer = self.loop.call_later(self.timeout, self.expire)

    def discard(self, body: BoundedBody) -> None:
        self.pending.pop(body, None)  # the timer stays: it finds nothing and stops

    def expire(self) -> None:
        self.timer = None
        now = time.monotonic()
        while self.pending:
            body, deadline = next(iter(self.pending.items()))
            if deadline - now > TIMER_SLACK_SECONDS:
                self.timer = self.loop.call_later(deadline - now, self.expire)
                return
            del self.pending[body]
            body.too_slow()


class BoundedBody(httputil.HTTPMessageDelegate):
    """Stands before Tornado's delegate of a request with a body: closes the connection
    when the body is not all there by the deadline and, with a `limit`, hands the request
    to `refusal` (a 413; the connection closes after it) once the body is declared or
    found larger, dropping what was received."""

    def __init__(
        self,
        delegate: httputil.HTTPMessageDelegate,
        connection: HTTP1Connection,
        deadlines: BodyDeadlines,
        limit: int | None = None,
        refusal: Callable[[], httputil.HTTPMessageDelegate] | None = None,
        declared_over: bool = False,
    ) -> None:
        self.delegate = delegate
        self.connection = connection
        self.limit = limit
        self.refusal = refusal
        self.declared_over = declared_over
        self.received = 0
        self.refused = False
        # A shared timer, not Tornado's body_timeout: that wraps every body read in a task
        # of its own, which cost /token far more (measured) than this.
        self.deadlines = deadlines
        deadlines.add(self)

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Any:
        self.start_line, self.headers = start_line, headers
        if self.declared_over:
            self.refuse()
            # Tornado reads on once this returns: one turn of the loop lets the refusal,
            # scheduled first, answer before (no `100 Continue`, no byte of the body read).
            return asyncio.sleep(0)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        if self.refused:
            return None
        self.received += len(chunk)
        if self.limit is not None and self.received > self.limit:
            self.refuse()
            return None
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.deadlines.discard(self)
        if not self.refused:
            self.delegate.finish()

    def on_connection_close(self) -> None:
        self.deadlines.discard(self)
        self.delegate.on_connection_close()

    def refuse(self) -> None:
        assert self.refusal is not None
        self.deadlines.discard(self)
        self.refused = True
        self.delegate.on_connection_close()  # drops what the endpoint's delegate holds
        self.delegate = self.refusal()
        self.delegate.headers_received(self.start_line, self.headers)
        self.delegate.finish()  # runs the refusing handler; no body

    def too_slow(self) -> None:
        log.debug("closing a connection whose request body did not arrive within BODY_TIMEOUT")
        self.connection.close()
