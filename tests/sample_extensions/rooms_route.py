"""An extension route on a plain RequestHandler: the shared context, JSON errors, a slow answer."""

from __future__ import annotations

import asyncio

import tornado.web

from extensions import ApiError, AppContext, Route


class InfoHandler(tornado.web.RequestHandler):
    def initialize(self, app: AppContext) -> None:
        self.app = app

    def get(self) -> None:
        self.write(
            {
                "apiUrl": self.app.config.livekit_http_url,
                "client": id(self.app.livekit_api),
                "store": self.app.event_log.health()["store"],
                "greeting": self.app.config.setting("GREETING", "hello"),
            }
        )


class SlowHandler(tornado.web.RequestHandler):
    async def get(self) -> None:
        await asyncio.sleep(float(self.get_query_argument("seconds", "2")))
        self.write({"slow": "done"})


class FailingHandler(tornado.web.RequestHandler):
    def get(self, how: str) -> None:
        if how == "refused":
            raise ApiError(409, "that room is busy")
        raise RuntimeError("a bug with a secret inside")


class EchoHandler(tornado.web.RequestHandler):
    def post(self) -> None:
        self.write({"received": len(self.request.body)})


def routes(app: AppContext) -> list[Route]:
    return [
        (r"/ext/echo", EchoHandler),
        (r"/ext/info", InfoHandler, {"app": app}),
        (r"/ext/slow", SlowHandler),
        (r"/ext/fail/(\w+)", FailingHandler),
    ]
