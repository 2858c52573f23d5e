"""The application server: make_app(config) builds it, run() and main() serve it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import warnings
from typing import Any

import jwt
import tornado.httpserver
import tornado.web
from jinja2 import Environment, FileSystemLoader, select_autoescape
from livekit.api import LiveKitAPI

from config import PROJECT_DIR, Config, ConfigError
from eventlog import EventLog, open_event_log
from handlers import rooms as rooms_handlers
from handlers.base import NotFoundHandler, log_request
from handlers.events import CLOSE_GOING_AWAY, EventHistoryHandler, EventsSocketHandler
from handlers.pages import HealthHandler, IndexHandler, VendorFileHandler
from handlers.ratelimit import RateLimiter
from handlers.token import TokenHandler
from handlers.webhook import WebhookHandler, WebhookVerifier
from rooms import Rooms, open_livekit_api

log = logging.getLogger("server")

# Anything larger is cut at the connection; endpoints set their own, smaller limits.
MAX_BODY_BYTES = 2 * 1024 * 1024
SHUTDOWN_SECONDS = 4.0


def make_app(
    config: Config, event_log: EventLog | None = None, livekit_api: LiveKitAPI | None = None
) -> tornado.web.Application:
    """`livekit_api`: the shared RoomService client (main() opens it); without one the
    admin API answers 503."""
    # PyJWT warns on every signature with a short key; main() warns once instead.
    warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)
    event_log = event_log or open_event_log(config)
    verifier = WebhookVerifier(config.livekit_api_key, config.livekit_api_secret, config.livekit_webhook_keys)
    webhook = (WebhookHandler, {"event_log": event_log, "verifier": verifier})
    # Tried in order: the busiest endpoint first.
    routes: list[Any] = [
        # `//token`: the iOS client's URL when its base ends in /
        (
            r"/+token",
            TokenHandler,
            {"rate_limiter": RateLimiter(config.token_rate_limit) if config.token_rate_limit else None},
        ),
        (r"/", IndexHandler),
        (r"/livekit/webhook", *webhook),
        (r"/webhook", *webhook),
        (r"/events", EventsSocketHandler, {"event_log": event_log}),
        (r"/events/history", EventHistoryHandler, {"event_log": event_log}),
        (r"/healthz", HealthHandler, {"event_log": event_log}),
        (
            r"/vendor/livekit-client/(.*)",
            VendorFileHandler,
            {"path": str(PROJECT_DIR / "node_modules" / "livekit-client" / "dist")},
        ),
        (  # the demo page's invite QR code
            r"/vendor/qrcode-generator/(.*)",
            VendorFileHandler,
            {"path": str(PROJECT_DIR / "node_modules" / "qrcode-generator" / "dist")},
        ),
        *rooms_handlers.routes,
    ]
    jinja = Environment(loader=FileSystemLoader(PROJECT_DIR / "templates"), autoescape=select_autoescape())
    return tornado.web.Application(
        routes,
        config=config,
        event_log=event_log,
        livekit_api=livekit_api,
        rooms=Rooms(config, event_log, livekit_api),
        jinja=jinja,
        static_path=str(PROJECT_DIR / "static"),
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        requests_in_flight=set(),
        websocket_ping_interval=20,
        websocket_ping_timeout=20,
        websocket_max_message_size=4096,
    )


def run() -> None:
    """Read the config, then serve on the chosen event loop until SIGTERM or SIGINT."""
    try:
        config = Config.from_env()
    except ConfigError as error:
        raise SystemExit(f"Configuration error: {error}") from None
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.event_loop == "uvloop":
        import uvloop

        uvloop.run(main(config))
    else:
        asyncio.run(main(config))


async def main(config: Config) -> None:
    if config.uses_dev_credentials:
        log.warning(
            "Using the development API key and secret (devkey/secret): fine for a local "
            "LiveKit server in dev mode, never for a reachable one"
        )
    elif len(config.livekit_api_secret) < 32:
        log.warning("LIVEKIT_API_SECRET is shorter than 32 characters; use a longer one")
    app = make_app(config, livekit_api=open_livekit_api(config))
    event_log: EventLog = app.settings["event_log"]
    await event_log.start()
    await app.settings["rooms"].start()
    # xheaders: X-Real-Ip / X-Forwarded-For become the client address, only behind a trusted proxy.
    server = tornado.httpserver.HTTPServer(
        app, max_body_size=MAX_BODY_BYTES, xheaders=config.trust_proxy_headers
    )
    server.listen(config.server_port, address=config.server_host)
    log.info(
        "Listening on http://localhost:%d (LiveKit at %s, events in %s)",
        config.server_port,
        config.livekit_url,
        event_log.health()["store"],
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("Shutting down")
    await shutdown(server, app)
    log.info("Stopped")


async def shutdown(server: tornado.httpserver.HTTPServer, app: tornado.web.Application) -> None:
    """Stop accepting, answer what is in flight, say goodbye to sockets, close the store."""
    server.stop()
    event_log: EventLog = app.settings["event_log"]
    event_log.close_sockets(CLOSE_GOING_AWAY, "Server shutting down")
    rooms: Rooms = app.settings["rooms"]
    await rooms.stop()
    in_flight: set[Any] = app.settings["requests_in_flight"]
    deadline = asyncio.get_running_loop().time() + SHUTDOWN_SECONDS
    while in_flight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    if in_flight:
        log.warning("%d requests still unanswered after %.0f s", len(in_flight), SHUTDOWN_SECONDS)
    # Idle keep-alive connections and closing sockets are owed nothing more.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.close_all_connections(), 0.5)
    await event_log.close()
    await rooms.close()
    if app.settings["livekit_api"] is not None:
        await app.settings["livekit_api"].aclose()


if __name__ == "__main__":
    run()
