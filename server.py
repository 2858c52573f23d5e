"""The application server: make_app(config) builds it, main() runs it."""

from __future__ import annotations

import asyncio
import logging
import signal
import warnings
from typing import Any

import jwt
import tornado.httpserver
import tornado.web
from jinja2 import Environment, FileSystemLoader, select_autoescape

from config import PROJECT_DIR, Config, ConfigError
from eventlog import EventLog, open_event_log
from handlers.base import NotFoundHandler
from handlers.events import EventHistoryHandler, EventsSocketHandler
from handlers.pages import HealthHandler, IndexHandler, VendorFileHandler
from handlers.token import TokenHandler
from handlers.webhook import WebhookHandler, WebhookVerifier

log = logging.getLogger("server")

# Anything larger is cut at the connection; endpoints set their own, smaller limits.
MAX_BODY_BYTES = 2 * 1024 * 1024
SHUTDOWN_SECONDS = 4.0


def make_app(config: Config, event_log: EventLog | None = None) -> tornado.web.Application:
    # PyJWT warns on every signature with a short key; main() warns once instead.
    warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)
    event_log = event_log or open_event_log(config)
    verifier = WebhookVerifier(config.livekit_api_key, config.livekit_api_secret)
    webhook = (WebhookHandler, {"event_log": event_log, "verifier": verifier})
    routes: list[Any] = [
        (r"/", IndexHandler),
        (r"/+token", TokenHandler),  # `//token`: the iOS client's URL when its base ends in /
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
    ]
    jinja = Environment(loader=FileSystemLoader(PROJECT_DIR / "templates"), autoescape=select_autoescape())
    return tornado.web.Application(
        routes,
        config=config,
        event_log=event_log,
        jinja=jinja,
        static_path=str(PROJECT_DIR / "static"),
        default_handler_class=NotFoundHandler,
        websocket_ping_interval=20,
        websocket_ping_timeout=20,
        websocket_max_message_size=4096,
    )


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = Config.from_env()
    except ConfigError as error:
        raise SystemExit(f"Configuration error: {error}") from None
    if config.uses_dev_credentials:
        log.warning(
            "Using the development API key and secret (devkey/secret): fine for a local "
            "LiveKit server in dev mode, never for a reachable one"
        )
    elif len(config.livekit_api_secret) < 32:
        log.warning("LIVEKIT_API_SECRET is shorter than 32 characters; use a longer one")
    app = make_app(config)
    event_log: EventLog = app.settings["event_log"]
    await event_log.start()
    server = tornado.httpserver.HTTPServer(app, max_body_size=MAX_BODY_BYTES, xheaders=False)
    server.listen(config.server_port)
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
    server.stop()
    await shutdown(server, event_log)


async def shutdown(server: tornado.httpserver.HTTPServer, event_log: EventLog) -> None:
    """Finish in-flight requests and writes, say goodbye to sockets, close the store."""
    event_log.close_sockets(1001, "Server shutting down")
    try:
        await asyncio.wait_for(server.close_all_connections(), SHUTDOWN_SECONDS)
    except TimeoutError:
        log.warning("Some connections did not finish within %.0f s", SHUTDOWN_SECONDS)
    await event_log.close()


if __name__ == "__main__":
    asyncio.run(main())
