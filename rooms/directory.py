"""The room directory: every live room and its participants, for the rooms panel.

Fed by the event log (LiveKit's webhooks and this server's own admin events, read in
order from the log, so every instance sharing a Redis log sees the same), and
reconciled with RoomService, which is the truth: webhooks get lost and arrive out of
order (livekit/livekit#2399, #1130), and changes made through the API send none in
some cases (#1501). Reconciled on start, every ROOMS_RECONCILE_SECONDS, and soon
after a gap: the event log could not be read or skipped events, or an event names a
room or participant the directory does not know. With WORKERS, worker 0 reconciles
and the others take its answers (rooms/shared.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from livekit.api import LiveKitAPI
from livekit.api.twirp_client import ServerError
from livekit.protocol.models import ParticipantInfo
from livekit.protocol.room import ListParticipantsRequest, ListRoomsRequest

from eventlog import EventLog, StoreUnavailable
from ground.config import Config
from ground.supervisor import Supervisor
from rooms.livekit import LiveKitCalls, LiveKitUnavailable
from rooms.shapes import JsonObject, parse_participant, parse_room, parse_track, participant_json, room_json
from rooms.shared import LOOK_SECONDS, DirectoryShare

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # how often the event log is read for new events
READ_BATCH = 500
READ_BYTES = 1024 * 1024
RETRY_SECONDS = 5.0  # after a failed reconcile, sooner than the period
MIN_RECONCILE_GAP = 1.0  # a burst of surprises makes one reconcile, not many
REMEMBERED_DEPARTURES = 10_000


class DirectoryListener(Protocol):
    def directory_changed(self, message: bytes) -> None: ...
    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


@dataclass(slots=True)
class Participant:
    """One participant of a room. From a webhook it keeps the event's object and is
    shaped only when someone reads it: protobuf's JSON parse takes 15-60 us, and every
    worker applies every event, mostly while no panel is open."""

    identity: str
    sid: str
    data: Any = None  # the event's participant object, until shaped
    shape: JsonObject | None = None

    @classmethod
    def shaped(cls, shape: JsonObject) -> Participant:
        return cls(shape["identity"], shape["sid"], shape=shape)

    def json(self) -> JsonObject:
        if self.shape is None:
            try:
                parsed = parse_participant(self.data)
            except Exception:  # read on every snapshot: a failure would come back each time
                log.exception("rooms: could not shape participant %r", self.identity)
                parsed = None
            if parsed is None:  # signed by LiveKit but not its shape: who it is, no more
                parsed = ParticipantInfo(identity=self.identity, sid=self.sid)
            self.shape, self.data = participant_json(parsed), None
        return self.shape


def _who(data: Any) -> tuple[str, str] | None:
    """(identity, sid) of an event's participant object, None when it is not one."""
    if not isinstance(data, dict):
        return None
    identity, sid = data.get("identity", ""), data.get("sid", "")
    if not isinstance(identity, str) or not isinstance(sid, str):
        return None
    return identity, sid


@dataclass
class DirectoryRoom:
    info: JsonObject
    participants: dict[str, Participant] = field(default_factory=dict)

    @classmethod
    def listed(cls, info: JsonObject, shapes: dict[str, JsonObject]) -> DirectoryRoom:
        return cls(info, {identity: Participant.shaped(shape) for identity, shape in shapes.items()})

    def json(self) -> JsonObject:
        shapes = [participant.json() for participant in self.participants.values()]
        shapes.sort(key=lambda p: (p["joinedAt"] or 0, p["identity"]))
        return {**self.info, "numParticipants": len(shapes), "participants": shapes}

    def shapes(self) -> dict[str, JsonObject]:
        return {identity: participant.json() for identity, participant in self.participants.items()}


class RoomDirectory:
    def __init__(
        self,
        config: Config,
        event_log: EventLog,
        livekit_api: LiveKitAPI | None,
        calls: LiveKitCalls | None = None,
        share: DirectoryShare | None = None,
    ) -> None:
        self.config = config
        self.calls = calls or LiveKitCalls(config)
        self.share = share  # WORKERS: one reconcile for all of them
        self.event_log = event_log
        self.livekit_api = livekit_api
        self.rooms: dict[str, DirectoryRoom] = {}
        self.status: JsonObject = {"ok": None, "reconciledAt": None, "error": ""}
        self._listeners: set[DirectoryListener] = set()
        self.supervisor = Supervisor()
        self._started = False
        self._cursor: str | None = None
        # Ban enforcement: told of each participant seen joining (room, identity, sid), and
        # of everyone a reconcile listed (room -> identity -> sid).
        self.on_participant: Callable[[str, str, str], None] | None = None
        self.on_listing: Callable[[dict[str, dict[str, str]]], None] | None = None
        self._reader_runs = 0
        self._reconcile_soon = asyncio.Event()
        # Events applied while a reconcile was asking LiveKit: applied again on its answer.
        self._during_reconcile: list[JsonObject] | None = None
        # Participant sessions seen leaving: a late `participant_joined` for one is stale.
        self._departed: OrderedDict[str, None] = OrderedDict()

    # The panel's side: snapshots and changes.

    def subscribe(self, listener: DirectoryListener) -> bytes:
        """Register for changes; returns the snapshot to send first."""
        self._listeners.add(listener)
        return self.snapshot_message()

    def unsubscribe(self, listener: DirectoryListener) -> None:
        self._listeners.discard(listener)

    def snapshot_message(self) -> bytes:
        rooms = [self.rooms[name].json() for name in sorted(self.rooms)]
        return orjson.dumps({"type": "snapshot", "rooms": rooms, "livekit": self.status})

    def _tell(self, message: JsonObject) -> None:
        data = orjson.dumps(message)
        for listener in tuple(self._listeners):
            listener.directory_changed(data)

    def _room_changed(self, name: str) -> None:
        if not self._listeners:
            return  # no panel open: a room's message (its participants sorted) is for no one
        room = self.rooms.get(name)
        if room is None:
            self._tell({"type": "room_closed", "name": name})
        else:
            self._tell({"type": "room", "room": room.json()})

    # Lifecycle.

    async def start(self) -> None:
        """Reconcile and follow the event log in the background, from now on; each task
        supervised: one that fails is logged, shown in /healthz and started again."""
        if self._started:
            return
        self._started = True
        self._cursor = await self._newest_cursor()
        share = self.share
        if share is not None and not share.leader:
            self.supervisor.start("the room directory's listing", lambda: self._follow_leader(share))
        else:
            self.supervisor.start("the room directory's reconcile", self._reconcile_forever)
        self.supervisor.start("the room directory's event reader", self._follow_events)
        if share is not None and share.leader:
            self.supervisor.start("the room directory's requests", lambda: share.watch_requests(self))

    def health(self) -> JsonObject:
        """For /healthz: whether LiveKit answered the last reconcile and which tasks are
        down, never why (the log says; /live/rooms tells admins)."""
        livekit = {"ok": self.status["ok"], "reconciledAt": self.status["reconciledAt"]}
        return {"livekit": livekit, "down": sorted(self.supervisor.health())}

    async def close(self, code: int = 1001, reason: str = "Server shutting down") -> None:
        for listener in tuple(self._listeners):
            listener.close(code, reason)
        await self.supervisor.stop()

    def request_reconcile(self, why: str) -> None:
        if self.share and not self.share.leader:
            if not self._reconcile_soon.is_set():
                log.info("rooms: asking worker 0 to reconcile with RoomService: %s", why)
                self._reconcile_soon.set()  # cleared by the next listing from worker 0
                self.share.ask()
            return
        if not self._reconcile_soon.is_set():
            log.info("rooms: reconciling with RoomService soon: %s", why)
            self._reconcile_soon.set()

    # Events.

    async def _newest_cursor(self) -> str | None:
        try:
            return await self.event_log.newest_start(0)
        except StoreUnavailable:
            return None

    async def _follow_events(self) -> None:
        """From self._cursor on; a restart after a failure goes on from where it was."""
        store_failed = False
        if self._reader_runs:
            self.request_reconcile("the event reader started again")
        self._reader_runs += 1
        while True:
            cursor = self._cursor
            try:
                missed = False
                if cursor is None:  # the newest READ_BATCH; more were kept: some were missed
                    cursor = await self.event_log.newest_start(READ_BATCH)
                    missed = cursor is not None
                page = await self.event_log.read(cursor, READ_BATCH, READ_BYTES)
            except StoreUnavailable:
                store_failed = True
                await asyncio.sleep(1.0)
                continue
            if store_failed or missed or page.unknown_cursor or page.oldest_kept is not None:
                self.request_reconcile("events may have been missed")
                store_failed = False
            if page.unknown_cursor:  # another log (a wiped Redis): follow it from its newest
                self._cursor = None
                continue
            for entry in page.entries:
                try:
                    self.apply(orjson.loads(entry.event_json))
                except Exception:  # one strange event must not stop the directory
                    log.exception("rooms: could not apply the event at cursor %s", entry.cursor)
            self._cursor = page.resume or cursor
            if not page.more:
                await asyncio.sleep(POLL_SECONDS)

    def apply(self, event: Any, replaying: bool = False) -> None:
        """Apply one event (LiveKit's or this server's `admin.*`); unknown ones pass."""
        if not isinstance(event, dict) or not isinstance(event.get("room"), dict):
            return
        name = event["room"].get("name")
        if not isinstance(name, str) or not name:
            return
        if self._during_reconcile is not None and not replaying:
            self._during_reconcile.append(event)
        kind = event.get("event")
        changed = False
        if kind == "room_started":
            changed = self._room_started(name, event["room"])
        elif kind in ("room_finished", "admin.room_deleted"):
            changed = self._room_finished(name, event["room"].get("sid"))
        elif kind == "participant_joined":
            changed = self._participant_joined(name, event, replaying)
        elif kind in ("participant_left", "participant_connection_aborted", "admin.participant_removed"):
            changed = self._participant_left(name, event.get("participant"))
        elif kind in ("track_published", "track_unpublished", "admin.track_muted"):
            changed = self._track_changed(name, event, kind == "track_unpublished", replaying)
        elif kind == "admin.participant_updated":
            changed = self._participant_updated(name, event.get("participant"))
        if changed and not replaying:
            self._room_changed(name)

    def _room(self, name: str, room_data: Any) -> DirectoryRoom:
        room = self.rooms.get(name)
        if room is None:
            parsed = parse_room(room_data)
            info = room_json(parsed) if parsed is not None else {"name": name, "sid": ""}
            room = self.rooms[name] = DirectoryRoom(info)
        return room

    def _room_started(self, name: str, room_data: Any) -> bool:
        parsed = parse_room(room_data)
        if parsed is None:
            return False
        room = self._room(name, room_data)
        room.info = room_json(parsed)
        return True

    def _room_finished(self, name: str, sid: Any) -> bool:
        room = self.rooms.get(name)
        if room is None:
            return False
        if sid and room.info.get("sid") and sid != room.info["sid"]:
            return False  # the end of an earlier room of that name, arriving late
        del self.rooms[name]
        return True

    def _participant_joined(self, name: str, event: JsonObject, replaying: bool) -> bool:
        data = event.get("participant")
        who = _who(data)
        if who is None or not who[0] or who[1] in self._departed:
            return False
        identity, sid = who
        if name not in self.rooms and not replaying:
            self.request_reconcile(f"a participant joined room {name!r}, whose start was not seen")
        self._room(name, event["room"]).participants[identity] = Participant(identity, sid, data)
        if self.on_participant is not None and not replaying:
            self.on_participant(name, identity, sid)
        return True

    def _participant_left(self, name: str, participant_data: Any) -> bool:
        who = _who(participant_data)
        if who is None:
            return False
        identity, sid = who
        if sid:
            self._departed[sid] = None
            while len(self._departed) > REMEMBERED_DEPARTURES:
                self._departed.popitem(last=False)
        room = self.rooms.get(name)
        known = room.participants.get(identity) if room else None
        if room is None or known is None:
            return False
        if sid and known.sid and sid != known.sid:
            return False  # an earlier session of that identity
        del room.participants[identity]
        return True

    def _track_changed(self, name: str, event: JsonObject, unpublished: bool, replaying: bool) -> bool:
        who = _who(event.get("participant"))
        track = parse_track(event.get("track"))
        if who is None or track is None or not track.sid:
            return False
        identity = who[0]
        room = self.rooms.get(name)
        known = room.participants.get(identity) if room else None
        if known is None:
            if not unpublished and not replaying:
                self.request_reconcile(f"a track of {identity!r} in {name!r}, who was not seen joining")
            return False
        shape = known.json()
        tracks = [t for t in shape["tracks"] if t["sid"] != track.sid]
        if not unpublished:
            tracks.append(participant_json(ParticipantInfo(tracks=[track]))["tracks"][0])
        shape["tracks"] = tracks
        return True

    def _participant_updated(self, name: str, participant_data: Any) -> bool:
        participant = parse_participant(participant_data)
        room = self.rooms.get(name)
        if participant is None or room is None or participant.identity not in room.participants:
            return False
        room.participants[participant.identity] = Participant.shaped(participant_json(participant))
        return True

    # Reconciling with RoomService.

    async def _reconcile_forever(self) -> None:
        while True:
            self._reconcile_soon.clear()
            asked_at = self.share.asking() if self.share else 0.0
            reconciled = await self.reconcile()
            if self.share:
                self.share.publish(self.rooms, self.status, asked_at)
            await asyncio.sleep(MIN_RECONCILE_GAP)
            period = self.config.rooms_reconcile_seconds
            wait = period if reconciled else min(period, RETRY_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile_soon.wait(), max(0.0, wait - MIN_RECONCILE_GAP))

    async def reconcile(self) -> bool:
        """Replace the directory with what RoomService says; False when it could not."""
        if self.livekit_api is None:
            self._set_status(False, "This server has no LiveKit API client")
            return False
        self._during_reconcile = []
        try:
            listing = await self._list_everything(self.livekit_api)
        except (LiveKitUnavailable, ServerError) as error:
            log.warning("rooms: could not reconcile with RoomService: %s", error)
            self._set_status(False, str(error))
            return False
        finally:
            during, self._during_reconcile = self._during_reconcile or [], None
        self._adopt(listing, during)
        self._set_status(True, "")
        self._tell_participants()
        return True

    def _adopt(self, listing: dict[str, DirectoryRoom], during: list[JsonObject]) -> None:
        """RoomService's rooms, with the events applied while it was being asked on top."""
        # What changed is for the panels; with none open, no participant is shaped for it.
        before = {name: room.json() for name, room in self.rooms.items()} if self._listeners else {}
        self.rooms = listing
        for event in during:
            self.apply(event, replaying=True)
        if not self._listeners:
            return
        for name in sorted(set(before) | set(self.rooms)):
            room = self.rooms.get(name)
            if room is None or before.get(name) != room.json():
                self._room_changed(name)

    def _tell_participants(self) -> None:
        """The participants a reconcile listed, to ban enforcement (in one call)."""
        if self.on_listing is not None:
            self.on_listing(
                {
                    name: {identity: person.sid for identity, person in room.participants.items()}
                    for name, room in self.rooms.items()
                }
            )

    async def _follow_leader(self, share: DirectoryShare) -> None:
        """Not worker 0: each listing worker 0 writes is this worker's reconcile, with the
        events this worker applied since worker 0 began asking on top. Events are kept
        in one batch per look, as long as a reconcile may still need them."""
        batches: deque[tuple[float, list[JsonObject]]] = deque()  # (closed at, events)
        adopted_asked_at = 0.0
        self._during_reconcile = []
        while True:
            now = time.time()
            batches.append((now, self._during_reconcile))
            self._during_reconcile = []
            found = share.newest()
            if found is not None:
                rooms, status, asked_at = found
                during = [event for closed, events in batches if closed >= asked_at for event in events]
                batches.clear()
                adopted_asked_at = asked_at
                self._adopt(
                    {name: DirectoryRoom.listed(info, people) for name, (info, people) in rooms.items()},
                    during,
                )
                self._set_status(status["ok"], status["error"])
                self.status["reconciledAt"] = status["reconciledAt"]
                self._reconcile_soon.clear()
            else:  # nothing older than a reconcile in progress, or than the last looks
                asking = share.asking_since()
                keep_from = (asking if asking > adopted_asked_at else now) - 2 * LOOK_SECONDS
                while batches and batches[0][0] < keep_from:
                    batches.popleft()
            await asyncio.sleep(LOOK_SECONDS)

    async def _list_everything(self, client: LiveKitAPI) -> dict[str, DirectoryRoom]:
        rooms = (await self.calls.ask(client.room.list_rooms(ListRoomsRequest()), "directory")).rooms

        async def participants_of(name: str) -> list[ParticipantInfo]:
            # Each within the deadline; the purpose's slots bound how many at once.
            answer = await self.calls.ask(
                client.room.list_participants(ListParticipantsRequest(room=name)), "directory"
            )
            return list(answer.participants)

        listed = await asyncio.gather(*(participants_of(room.name) for room in rooms))
        return {
            room.name: DirectoryRoom.listed(
                room_json(room),
                {
                    participant.identity: participant_json(participant)
                    for participant in participants
                    if participant.state != ParticipantInfo.State.DISCONNECTED
                },
            )
            for room, participants in zip(rooms, listed, strict=True)
        }

    def _set_status(self, ok: bool, error: str) -> None:
        status = {
            "ok": ok,
            "reconciledAt": int(time.time() * 1000) if ok else self.status["reconciledAt"],
            "error": error,
        }
        changed = (status["ok"], status["error"]) != (self.status["ok"], self.status["error"])
        self.status = status
        if changed:
            self._tell({"type": "status", "livekit": status})
