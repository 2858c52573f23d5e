"""Rooms and moderation, without HTTP: bans, identity conflicts and the
room directory, over LiveKit's RoomService (livekit-api's shared `LiveKitAPI`)."""

from __future__ import annotations

from livekit.api import LiveKitAPI

from eventlog import EventLog
from ground.config import Config
from rooms.admission import Admission
from rooms.bans import BanStore, open_ban_store
from rooms.directory import RoomDirectory
from rooms.enforcement import BanEnforcer
from rooms.livekit import LiveKitCalls

__all__ = ["Rooms"]


class Rooms:
    """What the rooms features share, built by make_app: the server's own LiveKitAPI
    client (`livekit_api`, None when make_app was given none), bans, admission, the room
    directory and ban enforcement."""

    def __init__(self, config: Config, event_log: EventLog, livekit_api: LiveKitAPI | None) -> None:
        self.livekit_api = livekit_api
        self.calls = LiveKitCalls(config)
        self.bans: BanStore = open_ban_store(config)
        self.admission = Admission(config, self.bans, livekit_api, self.calls)
        self.directory = RoomDirectory(config, event_log, livekit_api, self.calls)
        self.enforcer = BanEnforcer(self.bans, self.calls, livekit_api, event_log)
        self.directory.on_participant = self.enforcer.seen

    async def start(self) -> None:
        await self.directory.start()

    async def stop(self) -> None:
        """Close the live sockets and stop background work (first thing at shutdown)."""
        await self.directory.close()
        await self.enforcer.close()

    async def close(self) -> None:
        """Close the ban store (once requests in flight are answered)."""
        await self.bans.close()
