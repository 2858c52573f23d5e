"""`make run`: the server, plus a dev livekit-server when LIVEKIT_URL is the default and
nothing listens there yet, so that one command gives a room a browser can join."""

from __future__ import annotations

import logging
import os

import server
from dev.livekit_server import HOW_TO_GET, LiveKitServer, find_binary, is_listening
from ground.config import Config, ConfigError
from handlers.support.observe import setup_logging

DEFAULT_LIVEKIT_URL = "ws://localhost:7880"
log = logging.getLogger("dev.run")


def main() -> None:
    # A developer wants to see each token and webhook go by: one line a request.
    os.environ.setdefault("LOG_LEVEL", "DEBUG")
    try:
        config = Config.from_env()
    except ConfigError as error:
        raise SystemExit(f"Configuration error: {error}") from None
    setup_logging(config)
    livekit = None
    if config.livekit_url.rstrip("/") == DEFAULT_LIVEKIT_URL and not is_listening(7880):
        binary = find_binary()
        if binary is None:
            log.warning("Nothing listens on %s and %s", DEFAULT_LIVEKIT_URL, HOW_TO_GET)
        else:
            webhook_url = f"http://127.0.0.1:{config.server_port}/livekit/webhook"
            livekit = LiveKitServer(
                binary,
                webhook_url,
                port=7880,
                keys={config.livekit_api_key: config.livekit_api_secret},
                webhook_api_key=config.livekit_api_key,
            ).start()
            log.info(
                "Started livekit-server (%s) on %s, webhooks to %s; log in %s",
                binary,
                DEFAULT_LIVEKIT_URL,
                webhook_url,
                livekit.log_path,
            )
    try:
        server.run()
    finally:
        if livekit is not None:
            livekit.stop()
            log.info("Stopped livekit-server")


if __name__ == "__main__":
    main()
