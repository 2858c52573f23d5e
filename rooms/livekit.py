"""The one shared livekit-api client, and LiveKitUnavailable when it cannot be asked
(handlers/support/livekit_answers.py turns that into HTTP answers)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import aiohttp
from livekit.api import LiveKitAPI
from livekit.api.twirp_client import ServerError

from ground.config import Config

T = TypeVar("T")

# LiveKit confirms a mute or an update by polling for up to 3 s (its API execution
# timeout); beyond 8 s it is not coming back in a time a person waits for.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=8, sock_connect=3)


def open_livekit_api(config: Config) -> LiveKitAPI:
    """Created once at start-up, on the running event loop (aiohttp needs it), and
    closed at shutdown (`await client.aclose()`)."""
    return LiveKitAPI(
        config.livekit_http_url, config.livekit_api_key, config.livekit_api_secret, timeout=REQUEST_TIMEOUT
    )


class LiveKitUnavailable(Exception):
    """LiveKit could not be asked: unreachable, timed out, or it refused our key."""


async def ask_livekit(call: Awaitable[T], url: str) -> T:
    """Await a RoomService call; a failure to reach LiveKit becomes LiveKitUnavailable,
    its own refusals stay ServerError (404 `not_found` and the like)."""
    try:
        return await call
    except ServerError as error:
        if error.status == 401:
            raise LiveKitUnavailable(
                f"The LiveKit server at {url} refused this server's API key and secret"
            ) from None
        if error.status >= 500:
            raise LiveKitUnavailable(
                f"The LiveKit server at {url} failed: {error.message or error.code}"
            ) from None
        raise
    except (TimeoutError, aiohttp.ClientError, OSError) as error:
        reason = "timed out" if isinstance(error, asyncio.TimeoutError) else "unreachable"
        raise LiveKitUnavailable(f"The LiveKit server at {url} is {reason}") from None
