"""Rooms and moderation, without HTTP: bans, identity conflicts and the
room directory, over LiveKit's RoomService (livekit-api's shared `LiveKitAPI`)."""

from __future__ import annotations

from livekit.api import LiveKitAPI

from eventlog import EventLog
from ground.config import Config
from rooms.admission import Admission
from rooms.bans import BanStore, open_ban_store
from rooms.directory import RoomDirectory

__all__ = ["Rooms"]


class Rooms:
    """What the rooms features share, built by make_app and kept in its settings
    (`rooms`); the LiveKitAPI client itself is `livekit_api` there, for every handler."""

    def __init__(
        self, config: Config, event_log: EventLog, livekit_api: LiveKitAPI | None, shared: bool = False
    ) -> None:
        """`shared`: other processes (WORKERS) use the same store."""
        self.livekit_api = livekit_api
        self.bans: BanStore = open_ban_store(config, shared)
        self.admission = Admission(config, self.bans, livekit_api)
        self.directory = RoomDirectory(config, event_log, livekit_api)

    async def start(self) -> None:
        await self.directory.start()

    async def stop(self) -> None:
        """Close the live sockets and stop background work (first thing at shutdown)."""
        await self.directory.close()

    async def close(self) -> None:
        """Close the ban store (once requests in flight are answered)."""
        await self.bans.close()
