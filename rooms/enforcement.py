"""Bans hold for tokens given before them: tokens cannot be revoked, so a banned
identity seen in its room (its `participant_joined`, or a reconcile listing it) is
removed again at once, and `admin.participant_removed` says so in the event log.

A join is one ban lookup; a reconcile is one lookup per room (its ban list), never
one per participant, and at most MAX_LOOKUPS lookups run at once whatever the load."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import orjson
from livekit.api import LiveKitAPI
from livekit.api.twirp_client import ServerError
from livekit.protocol.room import RoomParticipantIdentity

from eventlog import EventLog, StoreUnavailable
from rooms.bans import Ban, BanStore, BansUnavailable
from rooms.livekit import LiveKitCalls, LiveKitUnavailable
from rooms.names import canonical
from rooms.shapes import admin_event

log = logging.getLogger(__name__)

# Ban lookups in flight at once (joins and reconciles together): a burst of thousands of
# joins waits its turn rather than asking the store for thousands of connections.
MAX_LOOKUPS = 8


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
        self._lookups = asyncio.Semaphore(MAX_LOOKUPS)
        self._reconciling: asyncio.Task[None] | None = None

    def seen(self, room: str, identity: str, sid: str) -> None:
        """A participant joined a room: remove them if they are banned (in the background)."""
        if self.livekit_api is None or (room, identity) in self._checking:
            return
        self._checking.add((room, identity))
        self._start(self._enforce(room, identity, sid))

    def listed(self, rooms: dict[str, dict[str, str]]) -> None:
        """A reconcile's listing (room -> identity -> sid): remove whoever is banned, reading
        each room's ban list once. A listing that comes while the last one is still being
        checked is passed over: the next reconcile lists everyone again."""
        if self.livekit_api is None or (self._reconciling is not None and not self._reconciling.done()):
            return
        self._reconciling = self._start(self._enforce_listing(rooms))

    def _start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _enforce(self, room: str, identity: str, sid: str) -> None:
        try:
            try:
                async with self._lookups:
                    ban = await self.bans.find(room, identity)
            except BansUnavailable as error:
                log.warning("rooms: %r is in room %r and the bans cannot be read: %s", identity, room, error)
                return
            if ban is not None:
                await self._remove(ban, room, identity, sid)
        except Exception:  # never let one check stop the next ones
            log.exception("rooms: checking %r in room %r against the bans failed", identity, room)
        finally:
            self._checking.discard((room, identity))

    async def _enforce_listing(self, rooms: dict[str, dict[str, str]]) -> None:
        # Rooms in turn, MAX_LOOKUPS of them at a time (the semaphore bounds the lookups).
        await asyncio.gather(*(self._enforce_room(room, people) for room, people in rooms.items() if people))

    async def _enforce_room(self, room: str, people: dict[str, str]) -> None:
        try:
            try:
                async with self._lookups:
                    bans = await self.bans.list(room)
            except BansUnavailable as error:
                log.warning("rooms: the bans of room %r cannot be read: %s", room, error)
                return
            banned = {ban.identity: ban for ban in bans}
            for identity, sid in people.items():
                ban = banned.get(canonical(identity))
                if ban is not None and (room, identity) not in self._checking:
                    await self._remove(ban, room, identity, sid)
        except Exception:  # never let one room stop the next ones
            log.exception("rooms: checking room %r against the bans failed", room)

    async def _remove(self, ban: Ban, room: str, identity: str, sid: str) -> None:
        assert self.livekit_api is not None
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
