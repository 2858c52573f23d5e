"""Request bodies bounded in size and in time as they arrive, before any handler holds them.

Tornado reads a body whole, up to the server's limit and for as long as the client takes,
before a handler that is not streamed runs. Here every body must arrive within
BODY_TIMEOUT, a BodyHandler's only up to its own max_body_bytes (the handler then answers
413 and the connection closes instead of reading on), and an endpoint that takes no body
gets at most NO_BODY_BYTES of one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import tornado.web
from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.ioloop import IOLoop

from handlers.base import BodyHandler, StreamedBodyHandler, is_number

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
        delegate = super().get_handler_delegate(request, target_class, target_kwargs, path_args, path_kwargs)
        headers, connection = request.headers, request.connection
        declared = headers.get("Content-Length")
        if (declared in (None, "0") and "Transfer-Encoding" not in headers) or not isinstance(
            connection, HTTP1Connection
        ):
            return delegate  # no body
        limit: int | None = None  # streamed handlers bound their bodies themselves
        if not issubclass(target_class, BodyHandler):
            connection.set_max_body_size(NO_BODY_BYTES)
        elif not issubclass(target_class, StreamedBodyHandler):
            limit = target_class.max_body_bytes
        declared_over = (
            limit is not None and declared is not None and is_number(declared) and int(declared) > limit
        )
        timeout = self.settings["config"].body_timeout.total_seconds()
        return BoundedBody(delegate, connection, limit, declared_over, timeout)


class BoundedBody(httputil.HTTPMessageDelegate):
    """Stands before Tornado's delegate of a request with a body. Past `limit` (declared or
    received) the handler runs at once on what came, refuses it, and the connection closes
    after its answer; past the deadline the connection is closed."""

    def __init__(
        self,
        delegate: httputil.HTTPMessageDelegate,
        connection: HTTP1Connection,
        limit: int | None,
        declared_over: bool,
        timeout: float,
    ) -> None:
        self.delegate = delegate
        self.connection = connection
        self.limit = limit
        self.declared_over = declared_over
        self.received = 0
        self.handed_over = False
        # A timer, not Tornado's body_timeout: that wraps every body read in a task of its
        # own, which cost /token far more (measured) than this.
        self.io_loop = IOLoop.current()
        self.deadline = self.io_loop.call_later(timeout, self.too_slow)

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Any:
        result = self.delegate.headers_received(start_line, headers)
        if self.declared_over:
            self.hand_over()  # BodyHandler.prepare refuses it from its Content-Length
            # Tornado reads on once this returns: one turn of the loop lets the handler,
            # scheduled first, answer before (no `100 Continue`, no byte of the body read).
            return asyncio.sleep(0)
        return result

    def data_received(self, chunk: bytes) -> Any:
        if self.handed_over:
            return None
        self.received += len(chunk)
        result = self.delegate.data_received(chunk)
        if self.limit is not None and self.received > self.limit:
            self.hand_over()  # BodyHandler.raw_body refuses it from its length
        return result

    def finish(self) -> None:
        self.io_loop.remove_timeout(self.deadline)
        if not self.handed_over:
            self.delegate.finish()

    def on_connection_close(self) -> None:
        self.io_loop.remove_timeout(self.deadline)
        self.delegate.on_connection_close()

    def hand_over(self) -> None:
        self.io_loop.remove_timeout(self.deadline)
        self.handed_over = True
        self.delegate.finish()

    def too_slow(self) -> None:
        log.debug("closing a connection whose request body did not arrive within BODY_TIMEOUT")
        self.connection.close()
