"""The one place a Tornado Application of this server is built (the main one in server.py,
the metrics port's in handlers/metrics.py): bounded request bodies, JSON 404s, the access
log, request ids (and with WORKERS, which worker answered) and the in-flight set a
graceful shutdown waits on."""

from __future__ import annotations

from typing import Any

import tornado.web

from ground.config import Config
from handlers.support.base import NotFoundHandler, log_request
from handlers.support.bodies import Application
from handlers.support.observe import request_id_transform, worker_id_transform


def make_application(
    config: Config, routes: list[Any], worker: int | None = None, **settings: Any
) -> tornado.web.Application:
    transforms: list[type[tornado.web.OutputTransform]] = [request_id_transform(config)]
    if worker is not None:  # WORKERS > 1: an X-Worker-Id header on every answer
        transforms.append(worker_id_transform(worker))
    return Application(
        routes,
        config=config,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        transforms=transforms,
        requests_in_flight=set(),
        **settings,
    )
