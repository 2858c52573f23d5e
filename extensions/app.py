"""What extensions get from the server: its config, its event log, one shared LiveKit API client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from livekit.api import LiveKitAPI

from eventlog import EventLog
from ground.config import Config


class SharedLiveKitAPI:
    """The extensions' livekit-api client (one HTTP connection pool of its own, every
    request within LIVEKIT_TIMEOUT): made by `open_client` at start-up inside the event
    loop (aiohttp needs a running loop), or on first use; closed at shutdown. server.py
    passes it in: the domain below it does not open clients of its own."""

    def __init__(self, open_client: Callable[[], LiveKitAPI], client: LiveKitAPI | None = None) -> None:
        self._open_client = open_client
        self._client = client

    def get(self) -> LiveKitAPI:
        if self._client is None:
            asyncio.get_running_loop()  # fail here, clearly, outside the loop
            self._client = self._open_client()
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


@dataclass(frozen=True)
class AppContext:
    """The server's shared parts, for extension routes, authorize steps and event handlers.

    - `config`: the server's settings (`config.setting("MY_SETTING")` reads your own from
      the environment or `.env`);
    - `event_log`: the durable webhook event log (`await event_log.read(since, limit)`);
    - `livekit_api`: livekit-api's `LiveKitAPI`, for LiveKit's RoomService, EgressService...
      at `LIVEKIT_API_URL`. Shared: do not close it; the server does at shutdown.
    """

    config: Config
    event_log: EventLog
    shared_api: SharedLiveKitAPI = field(repr=False)

    @property
    def livekit_api(self) -> LiveKitAPI:
        return self.shared_api.get()
