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
from rooms.shared import DirectoryShare

__all__ = ["Rooms"]


class Rooms:
    """What the rooms features share, built by make_app: the server's own LiveKitAPI
    client (`livekit_api`, None when make_app was given none), bans, admission, the room
    directory and ban enforcement."""

    def __init__(
        self,
        config: Config,
        event_log: EventLog,
        livekit_api: LiveKitAPI | None,
        shared_dir: str | None = None,
        leader: bool = True,
    ) -> None:
        """WORKERS: `shared_dir`, the directory the processes share (they share the store
        too); `leader`, whether this one (worker 0) reconciles the room directory for all."""
        self.livekit_api = livekit_api
        self.calls = LiveKitCalls(config)
        self.bans: BanStore = open_ban_store(config, shared_dir)
        self.admission = Admission(config, self.bans, livekit_api, self.calls)
        share = DirectoryShare(shared_dir, leader) if shared_dir else None
        self.directory = RoomDirectory(config, event_log, livekit_api, self.calls, share)
        self.enforcer = BanEnforcer(self.bans, self.calls, livekit_api, event_log)
        if leader:  # one process removes a banned identity again, not every worker
            self.directory.on_participant = self.enforcer.seen
            self.directory.on_listing = self.enforcer.listed

    async def start(self) -> None:
        await self.directory.start()

    async def stop(self) -> None:
        """Close the live sockets and stop background work (first thing at shutdown)."""
        await self.directory.close()
        await self.enforcer.close()

    async def close(self) -> None:
        """Close the ban store (once requests in flight are answered)."""
        await self.bans.close()
