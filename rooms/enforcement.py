"""Bans hold for tokens given before them: tokens cannot be revoked, so a banned
identity seen in its room (its `participant_joined`, or a reconcile listing it) is
removed again at once, and `admin.participant_removed` says so in the event log."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from livekit.api import LiveKitAPI
from livekit.api.twirp_client import ServerError
from livekit.protocol.room import RoomParticipantIdentity

from eventlog import EventLog, StoreUnavailable
from rooms.bans import BanStore, BansUnavailable
from rooms.livekit import LiveKitCalls, LiveKitUnavailable
from rooms.shapes import admin_event

log = logging.getLogger(__name__)


class BanEnforcer:
    def __init__(
        self, bans: BanStore, calls: LiveKitCalls, livekit_api: LiveKitAPI | None, event_log: EventLog
    ) -> None:
        self.bans = bans
        self.calls = calls
        self.livekit_api = livekit_api
        self.event_log = event_log
        self._checking: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def seen(self, room: str, identity: str, sid: str) -> None:
        """A participant is in a room: remove them if they are banned (in the background)."""
        if self.livekit_api is None or (room, identity) in self._checking:
            return
        self._checking.add((room, identity))
        task = asyncio.get_running_loop().create_task(self._enforce(room, identity, sid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _enforce(self, room: str, identity: str, sid: str) -> None:
        try:
            await self._remove_if_banned(room, identity, sid)
        except Exception:  # never let one check stop the next ones
            log.exception("rooms: checking %r in room %r against the bans failed", identity, room)
        finally:
            self._checking.discard((room, identity))

    async def _remove_if_banned(self, room: str, identity: str, sid: str) -> None:
        assert self.livekit_api is not None
        try:
            ban = await self.bans.find(room, identity)
        except BansUnavailable as error:
            log.warning("rooms: %r is in room %r and the bans cannot be read: %s", identity, room, error)
            return
        if ban is None:
            return
        request = RoomParticipantIdentity(room=room, identity=identity)
        try:
            await self.calls.ask(self.livekit_api.room.remove_participant(request), "admin")
        except ServerError as error:
            if error.status != 404:  # 404: gone already (or another instance removed them)
                log.warning("rooms: LiveKit refused to remove banned %r from %r: %s", identity, room, error)
            return
        except LiveKitUnavailable as error:
            log.warning("rooms: banned %r is in room %r and cannot be removed now: %s", identity, room, error)
            return  # the next reconcile lists them again
        log.warning(
            "rooms: removed banned %r from room %r again (a token from before the ban)", identity, room
        )
        admin = {"by": "ban", "from": "this server", "ban": ban.json(), "reason": "banned"}
        who = {"identity": identity, "sid": sid}
        event = admin_event("participant_removed", room, admin, participant=who)
        try:
            await self.event_log.append(event["id"], int(time.time() * 1000), orjson.dumps(event).decode())
        except StoreUnavailable as error:
            log.error("admin.participant_removed of banned %r could not be written: %s", identity, error)

    async def close(self) -> None:
        for task in tuple(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
