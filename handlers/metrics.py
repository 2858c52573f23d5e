"""GET /metrics in the Prometheus text format (what it counts: handlers/support/metrics.py),
on the main port or on METRICS_PORT's app of its own."""

from __future__ import annotations

import socket
from typing import Any

import tornado.httpserver
import tornado.web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from ground.config import Config
from ground.credentials import bearer_credential, secret_matches
from ground.errors import ApiError
from handlers.support.application import make_application
from handlers.support.base import Handler
from handlers.support.metrics import Metrics


class MetricsHandler(Handler):
    """GET /metrics. Who may read it: anyone, on METRICS_PORT or outside production;
    with METRICS_AUTH_SECRET set, only `Authorization: Bearer <secret>`; in production
    on the main port without that secret, nobody."""

    def initialize(self, metrics: Metrics, anonymous: bool) -> None:
        self.metrics = metrics
        self.anonymous = anonymous

    def get(self) -> None:
        secret = self.config.metrics_auth_secret
        if secret:
            given = bearer_credential(self.request.headers.get("Authorization", ""))
            if not secret_matches(given, secret):
                raise ApiError(
                    401,
                    "/metrics needs Authorization: Bearer <METRICS_AUTH_SECRET>",
                    {"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        elif not self.anonymous:
            raise ApiError(
                403,
                "/metrics is not public in production: set METRICS_AUTH_SECRET, or METRICS_PORT "
                "to serve it on a port of its own",
            )
        self.set_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
        self.finish(generate_latest(self.metrics.exposed))


def metrics_routes(config: Config, metrics: Metrics | None, separate_port: bool = False) -> list[Any]:
    """The /metrics route of the main app (none when METRICS_PORT serves it) or of the
    metrics port's app."""
    if metrics is None or bool(config.metrics_port) != separate_port:
        return []
    anonymous = separate_port or config.app_env != "production"
    return [(r"/metrics", MetricsHandler, {"metrics": metrics, "anonymous": anonymous})]


def make_metrics_app(config: Config, metrics: Metrics) -> tornado.web.Application:
    """The app on METRICS_PORT: /metrics and nothing else."""
    return make_application(config, metrics_routes(config, metrics, separate_port=True))


def listen_metrics(
    config: Config, metrics: Metrics | None, sockets: list[socket.socket]
) -> tornado.httpserver.HTTPServer | None:
    """Serves /metrics on `sockets`, METRICS_PORT's (server.py binds them first thing, so
    that a taken port stops the start before anything is opened); returns the HTTP
    server to stop on shutdown, or None."""
    if metrics is None or not sockets:
        for sock in sockets:
            sock.close()
        return None
    server = tornado.httpserver.HTTPServer(make_metrics_app(config, metrics))
    server.add_sockets(sockets)
    return server
