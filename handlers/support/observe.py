"""The hooks that make the server observable: each request's id (X-Request-Id), the
fields of its access line, the log format (LOG_FORMAT: text or json), and the calls
that feed /metrics (handlers/support/metrics.py), which do nothing when metrics are off."""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TextIO, TypeVar
from urllib.parse import urlsplit

import tornado.httputil
import tornado.web
from pythonjsonlogger.json import JsonFormatter

from ground.config import Config
from ground.logsafe import Redactor

if TYPE_CHECKING:
    from handlers.support.metrics import Metrics

T = TypeVar("T")


class Answering(Protocol):
    """What the access log and /metrics read of a request: its RequestHandler, or its
    Exchange on the lane (handlers/support/lane.py)."""

    @property
    def request(self) -> tornado.httputil.HTTPServerRequest: ...

    @property
    def settings(self) -> dict[str, Any]: ...

    def get_status(self) -> int: ...


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# An incoming id is kept only if it is short and printable: it goes into every log line.
_VALID_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}", re.ASCII)


def setup_logging(config: Config) -> None:
    """Text lines (the default) or one JSON object a line: time, level, logger, message,
    and for each request's access line the fields of `request_fields`."""
    handler = _RedactingHandler(Redactor(configured_secrets(config)))
    if config.log_format == "json":
        handler.setFormatter(
            _JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=config.log_level, handlers=[handler], force=True)


def configured_secrets(config: Config) -> list[str]:
    """Every secret the settings hold, to be kept out of the log."""
    held = [
        "" if config.uses_dev_credentials else config.livekit_api_secret,  # "secret" is public
        config.admin_secret,
        config.token_auth_secret,
        config.events_auth_secret,
        config.metrics_auth_secret,
        *(secret for _, secret in config.livekit_webhook_keys),
    ]
    password = urlsplit(config.events_redis_url).password if config.events_redis_url else None
    return [secret for secret in [*held, password or ""] if secret]


class _RedactingHandler(logging.StreamHandler[TextIO]):
    """Standard error; every line redacted once formatted, whatever the format."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class _JsonFormatter(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # ISO 8601 in UTC, to the microsecond, for log pipelines (logging's own is local, no zone).
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds")


class _RequestIds:
    """32 hex digits: a random prefix per process, then a counter. Unique and cheap (an id
    from the OS's random source for every request cost more than the rest of the id
    work); the prefix is drawn again in a forked worker."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count(secrets.randbits(32))

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_request_ids = _RequestIds()


class RequestIdTransform(tornado.web.OutputTransform):
    """Gives every request a new id, sent back in X-Request-Id on every answer (errors,
    pages, static files and WebSocket upgrades too: Tornado runs each answer's first
    chunk through the application's transforms)."""

    def __init__(self, request: tornado.httputil.HTTPServerRequest) -> None:
        self.request_id = self.choose_id(request)
        request.request_id = self.request_id  # type: ignore[attr-defined]

    def choose_id(self, request: tornado.httputil.HTTPServerRequest) -> str:
        return _request_ids.next()

    def transform_first_chunk(
        self, status_code: int, headers: tornado.httputil.HTTPHeaders, chunk: bytes, finishing: bool
    ) -> tuple[int, tornado.httputil.HTTPHeaders, bytes]:
        headers["X-Request-Id"] = self.request_id
        return status_code, headers, chunk


class TrustedRequestIdTransform(RequestIdTransform):
    """Behind a trusted proxy (TRUST_PROXY_HEADERS): the proxy's X-Request-Id is kept, so
    one id follows the request through the proxy's logs and ours."""

    def choose_id(self, request: tornado.httputil.HTTPServerRequest) -> str:
        given = request.headers.get("X-Request-Id", "")
        return given if _VALID_REQUEST_ID.fullmatch(given) else super().choose_id(request)


def worker_id_transform(worker: int) -> type[tornado.web.OutputTransform]:
    """WORKERS > 1: every answer says which worker gave it (X-Worker-Id), so a client (or a
    test) can tell two connections on different workers apart."""
    value = str(worker)

    class WorkerIdTransform(tornado.web.OutputTransform):
        def transform_first_chunk(
            self, status_code: int, headers: tornado.httputil.HTTPHeaders, chunk: bytes, finishing: bool
        ) -> tuple[int, tornado.httputil.HTTPHeaders, bytes]:
            headers["X-Worker-Id"] = value
            return status_code, headers, chunk

    return WorkerIdTransform


def request_id_transform(config: Config) -> type[RequestIdTransform]:
    return TrustedRequestIdTransform if config.trust_proxy_headers else RequestIdTransform


def request_id(handler: Answering) -> str:
    return getattr(handler.request, "request_id", "")


def request_fields(handler: Answering) -> dict[str, Any]:
    """The access line's fields: the request, then what the handler says it was about
    (`log_fields`: room, identity, event_id...), never a token or a secret. (Handlers'
    keys must not be LogRecord attributes such as `name` or `message`: logging refuses those.)"""
    request = handler.request
    return {
        "method": request.method,
        "path": request.path,
        "status": handler.get_status(),
        "duration_ms": round(1000 * request.request_time(), 2),
        "client": request.remote_ip,
        "request_id": request_id(handler),
        **getattr(handler, "log_fields", {}),
    }


def _metrics_of(handler: Answering) -> Metrics | None:
    return handler.settings.get("metrics")


def observe_request(handler: Answering) -> None:
    """Counts the answered request (from the access log, which sees every one)."""
    metrics = _metrics_of(handler)
    if metrics is not None:
        metrics.observe(handler)


def frame_sent(handler: tornado.web.RequestHandler, count: int = 1) -> None:
    metrics = _metrics_of(handler)
    if metrics is not None:
        metrics.frames_sent += count


def socket_closed(handler: tornado.web.RequestHandler) -> None:
    metrics = _metrics_of(handler)
    if metrics is not None:
        metrics.socket_closed(handler)


async def timed_store(handler: Answering, operation: str, call: Awaitable[T]) -> T:
    """Awaits one event-store call, timed into the store latency histogram."""
    metrics = _metrics_of(handler)
    if metrics is None:
        return await call
    started = time.perf_counter()
    try:
        return await call
    finally:
        metrics.child(metrics.store_seconds, operation).observe(time.perf_counter() - started)
