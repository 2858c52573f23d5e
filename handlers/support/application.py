"""The one place a Tornado Application of this server is built (the main one in server.py,
the metrics port's in handlers/metrics.py): bounded request bodies, JSON 404s, the access
log, request ids and the in-flight set a graceful shutdown waits on."""

from __future__ import annotations

from typing import Any

import tornado.web

from ground.config import Config
from handlers.support.base import NotFoundHandler, log_request
from handlers.support.bodies import Application
from handlers.support.observe import request_id_transform


def make_application(config: Config, routes: list[Any], **settings: Any) -> tornado.web.Application:
    return Application(
        routes,
        config=config,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        transforms=[request_id_transform(config)],
        requests_in_flight=set(),
        **settings,
    )
