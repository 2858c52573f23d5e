"""The admin API: live rooms, their participants, kicks with bans, mutes, permission
changes and ending rooms, through LiveKit's RoomService; WS /live/rooms for the panel.

Every action that succeeds is written to the event log as an event of this server's
own (`admin.participant_removed`...), so the event panel and event handlers see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
import tornado.websocket
from google.protobuf.json_format import MessageToDict
from livekit.api import LiveKitAPI
from livekit.protocol.models import ParticipantInfo, ParticipantPermission, TrackSource
from livekit.protocol.room import (
    DeleteRoomRequest,
    ListParticipantsRequest,
    ListRoomsRequest,
    MuteRoomTrackRequest,
    RoomParticipantIdentity,
    UpdateParticipantRequest,
)
from tornado.iostream import StreamClosedError

from eventlog import EventLog, StoreUnavailable
from ground.credentials import bearer_credential, secret_matches
from ground.errors import ApiError
from handlers.support.admin_access import admin_api_off, admin_caller, is_own_page_request
from handlers.support.base import Handler, JsonErrors, Route
from handlers.support.livekit_answers import room_service
from handlers.support.observe import timed_store
from handlers.support.origins import EveryOriginChecked, same_origin
from handlers.support.token_rules import attributes_map, identifier, text
from rooms import Rooms
from rooms.bans import MAX_BAN_SECONDS, BansUnavailable
from rooms.names import nfc
from rooms.shapes import JsonObject, admin_event, participant_json, room_json, track_json

log = logging.getLogger(__name__)

CLOSE_NOT_ALLOWED = 4403  # application close codes (4000-4999): the HTTP status they stand for
CLOSE_NO_CREDENTIAL = 4401
CLOSE_TOO_SLOW = 1008
AUTH_MESSAGE_SECONDS = 10
SOCKET_QUEUE = 200
PERMISSION_FIELDS = {
    "canPublish": "can_publish",
    "canSubscribe": "can_subscribe",
    "canPublishData": "can_publish_data",
    "canUpdateMetadata": "can_update_metadata",
    "hidden": "hidden",
}
SOURCES = ("camera", "microphone", "screen_share", "screen_share_audio")
SOURCE_VALUES: dict[str, Any] = {source: TrackSource.Value(source.upper()) for source in SOURCES}


class AdminHandler(Handler):
    """Base of the admin endpoints: access first, then an optional JSON body."""

    metrics_label = "admin"  # what /metrics counts it as (handlers/support/metrics.py)
    body_optional = True  # an action without options may come without a body
    max_body_bytes = 64 * 1024

    def prepare(self) -> None:
        self.caller = admin_caller(self.config, self.request)
        self.log_fields = {"by": self.caller}
        super().prepare()

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        return nfc(super().decode_argument(value, name))  # rooms and identities, as /token spells them

    def body(self) -> dict[str, Any]:
        return self.json_object() if self.request.body else {}

    def initialize(self, rooms: Rooms, event_log: EventLog) -> None:
        self.rooms = rooms
        self.event_log = event_log

    @property
    def livekit(self) -> LiveKitAPI:
        client = self.rooms.livekit_api
        if client is None:
            raise ApiError(503, "This server has no LiveKit API client (make_app was given none)")
        return client

    async def ask(self, call: Any, not_found: str = "") -> Any:
        return await room_service(self.rooms.calls, call, not_found)

    async def participant(self, room: str, identity: str) -> ParticipantInfo:
        request = RoomParticipantIdentity(room=room, identity=identity)
        return await self.ask(
            self.livekit.room.get_participant(request), f"No participant {identity!r} in room {room!r}"
        )

    async def record(self, action: str, room: str, details: JsonObject, **parts: Any) -> None:
        """Append `admin.<action>` (rooms/shapes.py's admin_event) to the event log."""
        admin = {"by": self.caller, "from": self.request.remote_ip, **details}
        event = admin_event(action, room, admin, **parts)
        try:
            record = self.event_log.append(event["id"], int(time.time() * 1000), orjson.dumps(event).decode())
            await timed_store(self, "append", record)  # timed like a webhook's append
        except StoreUnavailable as error:
            # The action happened and is answered as done; the record of it is what failed.
            log.error(
                "admin.%s in room %r was done but could not be written to the event log: %s",
                action,
                room,
                error,
            )


class RoomsHandler(AdminHandler):
    async def get(self) -> None:
        answer = await self.ask(self.livekit.room.list_rooms(ListRoomsRequest()))
        self.write_json([room_json(room) for room in sorted(answer.rooms, key=lambda room: room.name)])


class RoomHandler(AdminHandler):
    async def get(self, room: str) -> None:
        listed = await self.ask(self.livekit.room.list_rooms(ListRoomsRequest(names=[room])))
        if not listed.rooms:
            raise ApiError(404, f"No room {room!r} on the LiveKit server")
        answer = await self.ask(self.livekit.room.list_participants(ListParticipantsRequest(room=room)))
        participants = sorted(answer.participants, key=lambda p: (p.joined_at_ms or p.joined_at, p.identity))
        self.write_json(
            {"room": room_json(listed.rooms[0]), "participants": [participant_json(p) for p in participants]}
        )

    async def delete(self, room: str) -> None:
        await self.ask(
            self.livekit.room.delete_room(DeleteRoomRequest(room=room)),
            f"No room {room!r} on the LiveKit server",
        )
        await self.record("room_deleted", room, {})
        self.write_json({"deleted": room})


class RemoveHandler(AdminHandler):
    """POST .../remove `{"ban_seconds"?: N}`: out of the room, and with a ban kept out."""

    async def post(self, room: str, identity: str) -> None:
        ban_seconds = self.body().get("ban_seconds")
        if ban_seconds is not None and (
            not isinstance(ban_seconds, int)
            or isinstance(ban_seconds, bool)
            or not 1 <= ban_seconds <= MAX_BAN_SECONDS
        ):
            raise ApiError(400, f"ban_seconds must be a whole number from 1 to {MAX_BAN_SECONDS}")
        participant = await self.participant(room, identity)
        ban = None
        if ban_seconds:
            # The ban first: removed before it, they could get a token and come straight back.
            try:
                ban = await self.rooms.bans.ban(room, identity, ban_seconds)
            except BansUnavailable as error:
                raise ApiError(503, f"{error}; {identity!r} was not removed") from None
        try:
            await self.ask(
                self.livekit.room.remove_participant(RoomParticipantIdentity(room=room, identity=identity))
            )
        except ApiError as error:
            if error.status_code != 404:  # a 404 here: they left meanwhile, which is what was asked
                if ban is not None:
                    error.message += f" ({identity!r} is banned all the same)"
                raise
        details = {"ban": ban.json()} if ban else {}
        who = {"identity": identity, "sid": participant.sid, "name": participant.name}
        await self.record("participant_removed", room, details, participant=who)
        self.write_json({"removed": identity, "room": room, "ban": ban.json() if ban else None})


class MuteHandler(AdminHandler):
    """POST .../mute `{"track_sid": "TR_..." | "source": "microphone", "muted"?: true}`."""

    async def post(self, room: str, identity: str) -> None:
        body = self.body()
        track_sid, source, muted = body.get("track_sid"), body.get("source"), body.get("muted", True)
        if (track_sid is None) == (source is None):
            raise ApiError(400, "Give track_sid (a track's sid) or source (" + ", ".join(SOURCES) + ")")
        if track_sid is not None and (not isinstance(track_sid, str) or not track_sid):
            raise ApiError(400, "track_sid must be a track's sid, such as TR_AMkfxX8mHbGX")
        if source is not None and source not in SOURCES:
            raise ApiError(400, "source must be one of " + ", ".join(SOURCES))
        if not isinstance(muted, bool):
            raise ApiError(400, "muted must be true or false")
        participant = await self.participant(room, identity)
        if track_sid is not None:
            tracks = [track for track in participant.tracks if track.sid == track_sid]
            missing = f"No track {track_sid!r} of {identity!r} in room {room!r}"
        else:
            tracks = [track for track in participant.tracks if track.source == SOURCE_VALUES[str(source)]]
            missing = f"{identity!r} publishes no {source} track in room {room!r}"
        if not tracks:
            raise ApiError(404, missing)
        changed = []
        for track in tracks:
            request = MuteRoomTrackRequest(room=room, identity=identity, track_sid=track.sid, muted=muted)
            try:
                answer = await self.ask(self.livekit.room.mute_published_track(request), missing)
            except ApiError as error:
                if not muted and error.status_code == 503:
                    error.message += (
                        "; unmuting someone else's track needs `room: enable_remote_unmute: true` "
                        "in the LiveKit server's configuration"
                    )
                raise
            changed.append(answer.track)
            who = {"identity": identity, "sid": participant.sid}
            await self.record(
                "track_muted" if muted else "track_unmuted",
                room,
                {"muted": muted},
                participant=who,
                track=MessageToDict(answer.track),
            )
        self.write_json(
            {"room": room, "identity": identity, "tracks": [track_json(track) for track in changed]}
        )


class ParticipantHandler(AdminHandler):
    """PATCH `{"metadata"?, "attributes"?, "name"?, "permission"?: {canPublish...}}`: the
    permission fields given are changed, the others kept (LiveKit replaces them all)."""

    async def get(self, room: str, identity: str) -> None:
        self.write_json(participant_json(await self.participant(room, identity)))

    async def patch(self, room: str, identity: str) -> None:
        body = self.body()
        unknown = set(body) - {"metadata", "attributes", "name", "permission"}
        if unknown or not body:
            raise ApiError(
                400,
                "Give one or more of metadata, attributes, name, permission"
                + (f"; not {', '.join(sorted(unknown))}" if unknown else ""),
            )
        # Checked as /token checks them, all before LiveKit is asked.
        for field in ("metadata", "name"):
            if field in body and not isinstance(body[field], str):
                raise ApiError(400, f"{field} must be a string")
        name = identifier(body.get("name", ""), "name")
        metadata = text(body.get("metadata", ""), "metadata")
        attributes = attributes_map(body.get("attributes", {}), "attributes")
        if "permission" in body:
            _merged_permission(ParticipantPermission(), body["permission"])
        current = await self.participant(room, identity)
        request = UpdateParticipantRequest(
            room=room,
            identity=identity,
            metadata=metadata,
            name=name,
            attributes=attributes,
        )
        if "permission" in body:
            request.permission.CopyFrom(_merged_permission(current.permission, body["permission"]))
        updated = await self.ask(
            self.livekit.room.update_participant(request), f"No participant {identity!r} in room {room!r}"
        )
        await self.record(
            "participant_updated", room, {"changed": sorted(body)}, participant=MessageToDict(updated)
        )
        self.write_json({"participant": participant_json(updated)})


def _merged_permission(current: ParticipantPermission, given: Any) -> ParticipantPermission:
    if not isinstance(given, dict) or not given:
        raise ApiError(400, 'permission must be an object such as {"canPublish": false}')
    merged = ParticipantPermission()
    merged.CopyFrom(current)
    for key, value in given.items():
        if key == "canPublishSources":
            if not isinstance(value, list) or any(source not in SOURCES for source in value):
                raise ApiError(400, "permission.canPublishSources must be a list of " + ", ".join(SOURCES))
            del merged.can_publish_sources[:]
            merged.can_publish_sources.extend(SOURCE_VALUES[source] for source in value)
        elif key in PERMISSION_FIELDS:
            if not isinstance(value, bool):
                raise ApiError(400, f"permission.{key} must be true or false")
            setattr(merged, PERMISSION_FIELDS[key], value)
        else:
            raise ApiError(
                400, f"permission.{key} is not one of {', '.join([*PERMISSION_FIELDS, 'canPublishSources'])}"
            )
    return merged


class BansHandler(AdminHandler):
    async def get(self, room: str) -> None:
        try:
            bans = await self.rooms.bans.list(room)
        except BansUnavailable as error:
            raise ApiError(503, str(error)) from None
        self.write_json([ban.json() for ban in bans])


class BanHandler(AdminHandler):
    async def delete(self, room: str, identity: str) -> None:
        try:
            lifted = await self.rooms.bans.lift(room, identity)
        except BansUnavailable as error:
            raise ApiError(503, str(error)) from None
        if not lifted:
            raise ApiError(404, f"No ban on {identity!r} in room {room!r}")
        await self.record("ban_lifted", room, {}, participant={"identity": identity})
        self.write_json({"lifted": identity, "room": room})


class RoomsSocketHandler(EveryOriginChecked, JsonErrors, tornado.websocket.WebSocketHandler):
    """WS /live/rooms: the room directory, a snapshot first, then each change. With
    ADMIN_SECRET set, the first message must be `{"authorization": "Bearer <secret>"}`
    (browsers cannot set headers on a WebSocket), unless the upgrade carried it."""

    def initialize(self, rooms: Rooms) -> None:
        self.directory = rooms.directory

    def prepare(self) -> None:
        self.subscribed = False
        self.waiting = 0
        config = self.settings["config"]
        if config.admin_secret:
            self.authorized = False
            if "Authorization" in self.request.headers:
                try:
                    admin_caller(config, self.request)
                except ApiError as error:
                    raise ApiError(error.status_code, error.message) from None  # without WWW-Authenticate
                self.authorized = True
        elif config.app_env == "development" and is_own_page_request(self.request, config, websocket=True):
            self.authorized = True
        else:
            raise ApiError(404, admin_api_off(config))

    def check_origin(self, origin: str) -> bool:
        return same_origin(origin, self.request, self.settings["config"])

    def open(self) -> None:
        if self.authorized:
            self._subscribe()
        else:
            asyncio.get_running_loop().call_later(AUTH_MESSAGE_SECONDS, self._auth_timeout)

    def _subscribe(self) -> None:
        self.subscribed = True
        self.write_message(self.directory.subscribe(self))

    def _auth_timeout(self) -> None:
        if not self.subscribed:
            self.close(CLOSE_NO_CREDENTIAL, 'Send {"authorization": "Bearer <ADMIN_SECRET>"} first')

    def on_message(self, message: str | bytes) -> None:
        if self.subscribed:
            return  # nothing more to say after the credential
        try:
            given = orjson.loads(message).get("authorization", "")
        except (orjson.JSONDecodeError, AttributeError):
            given = ""
        secret = bearer_credential(given) if isinstance(given, str) else ""
        if not secret:
            self.close(CLOSE_NO_CREDENTIAL, 'Send {"authorization": "Bearer <ADMIN_SECRET>"} first')
        elif not secret_matches(secret, self.settings["config"].admin_secret):
            self.close(CLOSE_NOT_ALLOWED, "Wrong admin secret")
        else:
            self._subscribe()

    def directory_changed(self, message: bytes) -> None:
        connection = self.ws_connection
        if connection is None or connection.is_closing() or connection.stream is None:
            return
        self.waiting = self.waiting + 1 if connection.stream.writing() else 0
        if self.waiting > SOCKET_QUEUE:
            self.directory.unsubscribe(self)
            self.close(CLOSE_TOO_SLOW, "Too slow: reconnect for a new snapshot")
            return
        with contextlib.suppress(tornado.websocket.WebSocketClosedError, StreamClosedError):
            self.write_message(message)  # when closed, on_close follows

    def on_close(self) -> None:
        self.directory.unsubscribe(self)


def routes(rooms: Rooms, event_log: EventLog) -> list[Route]:
    """The admin API and WS /live/rooms. Without a LiveKit API client (make_app was given
    none) the admin API answers 503."""
    parts = {"rooms": rooms, "event_log": event_log}
    return [
        (r"/rooms/?", RoomsHandler, parts),
        (r"/live/rooms", RoomsSocketHandler, {"rooms": rooms}),
        (r"/rooms/([^/]+)/?", RoomHandler, parts),
        (r"/rooms/([^/]+)/participants/([^/]+)/?", ParticipantHandler, parts),
        (r"/rooms/([^/]+)/participants/([^/]+)/remove", RemoveHandler, parts),
        (r"/rooms/([^/]+)/participants/([^/]+)/mute", MuteHandler, parts),
        (r"/rooms/([^/]+)/bans/?", BansHandler, parts),
        (r"/rooms/([^/]+)/bans/([^/]+)", BanHandler, parts),
    ]
