"""LiveKit's answers and failures as HTTP answers, for the admin API's handlers."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from livekit.api.twirp_client import ServerError

from ground.errors import ApiError
from rooms.livekit import LiveKitCalls, LiveKitUnavailable, short

T = TypeVar("T")


async def room_service(calls: LiveKitCalls, call: Awaitable[T], not_found: str = "") -> T:
    """An admin API call to LiveKit (within LIVEKIT_TIMEOUT, in the admin slots): 503 when
    LiveKit cannot be asked, 404 with `not_found` when it says there is no such thing,
    400 with its words otherwise."""
    try:
        return await calls.ask(call, "admin")
    except LiveKitUnavailable as error:
        raise ApiError(503, str(error)) from None
    except ServerError as error:
        if error.status == 404:
            raise ApiError(404, not_found or "Not found on the LiveKit server") from None
        raise ApiError(400, f"The LiveKit server refused: {short(error)}") from None
