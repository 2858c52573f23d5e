"""The livekit-api clients, the deadline and the bounded pools every call to LiveKit
goes through, and what its failures mean to our clients.

livekit-api passes `timeout=None` on each request, which aiohttp takes as "no
timeout at all": the session's own timeout never applies. So the deadline
(LIVEKIT_TIMEOUT) is applied around each request by a client middleware, body read
included, whoever makes the call (the admin API, /token's identity conflicts, the room
directory, extensions). Our own calls also wait for a slot of their purpose's pool,
within the same deadline, so hung calls of one kind never starve the others.
(handlers/support/livekit_answers.py turns LiveKit's failures into HTTP answers.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import aiohttp
from livekit.api import LiveKitAPI
from livekit.api.twirp_client import ServerError

from ground.config import Config

T = TypeVar("T")
log = logging.getLogger(__name__)

# How many calls of each purpose may be waiting on LiveKit at once; more wait for a
# slot, within the deadline. Their sum is the connection pool of the server's client.
PURPOSE_SLOTS = {"admin": 32, "admission": 32, "directory": 8}
EXTENSIONS_POOL = 64  # the extensions' client has a pool of its own


def _deadline(seconds: float) -> Any:
    """A client middleware: the whole request, body included, within `seconds`."""

    async def middleware(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        async with asyncio.timeout(seconds):
            response: aiohttp.ClientResponse = await handler(request)
            try:
                await response.read()  # within the deadline; livekit-api reads it again from memory
            except BaseException:
                response.close()
                raise
            return response

    return middleware


class ServerLiveKitAPI(LiveKitAPI):
    """livekit-api's client on a session of ours (deadline, pool size), closed with it."""

    def __init__(self, config: Config, pool: int) -> None:
        seconds = config.livekit_timeout
        self._own_session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=seconds, sock_connect=min(3.0, seconds)),
            connector=aiohttp.TCPConnector(limit=pool),
            middlewares=(_deadline(seconds),),
        )
        super().__init__(
            config.livekit_http_url,
            config.livekit_api_key,
            config.livekit_api_secret,
            session=self._own_session,
        )

    async def aclose(self) -> None:
        await super().aclose()
        await self._own_session.close()


# Each is created on the running event loop (aiohttp needs it) and closed at shutdown
# (`await client.aclose()`).


def open_rooms_livekit_api(config: Config) -> LiveKitAPI:
    """The server's own client (admin API, identity conflicts, room directory)."""
    return ServerLiveKitAPI(config, sum(PURPOSE_SLOTS.values()))


def open_extensions_livekit_api(config: Config) -> LiveKitAPI:
    """The extensions' client (AppContext.livekit_api), its pool apart from the server's."""
    return ServerLiveKitAPI(config, EXTENSIONS_POOL)


class LiveKitUnavailable(Exception):
    """LiveKit could not be asked: unreachable, timed out, busy, refused our key, or
    answered something that is not its API."""


class LiveKitCalls:
    """Our calls to LiveKit, each within LIVEKIT_TIMEOUT and a slot of its purpose."""

    def __init__(self, config: Config) -> None:
        self.url = config.livekit_http_url
        self.seconds = config.livekit_timeout
        self._slots = {purpose: asyncio.Semaphore(n) for purpose, n in PURPOSE_SLOTS.items()}

    async def ask(self, call: Awaitable[T], purpose: str) -> T:
        """Await a RoomService call; a failure to reach LiveKit becomes LiveKitUnavailable,
        its own refusals stay ServerError (404 `not_found` and the like)."""
        try:
            async with asyncio.timeout(self.seconds):
                async with self._slots[purpose]:
                    return await _answer_of(call, self.url)
        except TimeoutError:
            raise LiveKitUnavailable(
                f"The LiveKit server at {self.url} did not answer within {self.seconds:g} s (LIVEKIT_TIMEOUT)"
            ) from None
        finally:
            if isinstance(call, Coroutine):
                call.close()  # never started (no slot in time): no "never awaited" warning


async def _answer_of(call: Awaitable[T], url: str) -> T:
    try:
        return await call
    except ServerError as error:
        if error.status == 401:
            raise LiveKitUnavailable(
                f"The LiveKit server at {url} refused this server's API key and secret"
            ) from None
        if error.status >= 500 or not isinstance(error.message, str) or not isinstance(error.code, str):
            raise LiveKitUnavailable(f"The LiveKit server at {url} failed: {short(error)}") from None
        raise
    except TimeoutError:
        raise
    except (aiohttp.ClientError, OSError):
        raise LiveKitUnavailable(f"The LiveKit server at {url} is unreachable") from None
    except Exception as error:  # an answer that is not LiveKit's API: HTML, bad protobuf, odd JSON
        log.warning("LiveKit at %s answered something unreadable: %r", url, error)
        raise LiveKitUnavailable(
            f"The LiveKit server at {url} answered something that is not LiveKit's API "
            f"({type(error).__name__}); is LIVEKIT_API_URL right?"
        ) from None


def short(error: ServerError) -> str:
    return str(error.message or error.code)[:200]
