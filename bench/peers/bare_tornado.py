"""Baseline: the least a Tornado server can do for each benchmark (Tornado's ceiling).

POST /token answers a constant JSON body; WS /events keeps a set of sockets and
POST /publish writes the body to each, as tornado's chat demo does.
"""

from __future__ import annotations

import asyncio
import os

import tornado.web
import tornado.websocket

TOKEN_ANSWER = b'{"token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"}'
sockets: set[EventsSocket] = set()


class TokenHandler(tornado.web.RequestHandler):
    def post(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(TOKEN_ANSWER)


class EventsSocket(tornado.websocket.WebSocketHandler):
    def open(self) -> None:
        sockets.add(self)

    def on_close(self) -> None:
        sockets.discard(self)


class PublishHandler(tornado.web.RequestHandler):
    def post(self) -> None:
        for socket in tuple(sockets):
            try:
                socket.write_message(self.request.body)
            except tornado.websocket.WebSocketClosedError:
                sockets.discard(socket)
        self.finish(b"{}")


class HealthHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish(b'{"status":"ok"}')


async def main() -> None:
    app = tornado.web.Application(
        [
            (r"/token", TokenHandler),
            (r"/events", EventsSocket),
            (r"/publish", PublishHandler),
            (r"/livekit/webhook", PublishHandler),
            (r"/healthz", HealthHandler),
        ]
    )
    app.listen(int(os.environ["SERVER_PORT"]), address="127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    # The same event loop as the server under test (EVENT_LOOP, uvloop by default), so the
    # ratio shows what our handlers cost, not which loop runs them.
    if os.environ.get("EVENT_LOOP", "uvloop") == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
