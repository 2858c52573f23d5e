"""The JSON this server gives for LiveKit's rooms, participants and tracks: one shape,
whether the data came from RoomService (protobuf) or from a webhook (protobuf JSON).
Credentials LiveKit puts in a room (`turnPassword`) never appear."""

from __future__ import annotations

import secrets
import time
from typing import Any

from google.protobuf.json_format import ParseDict, ParseError
from livekit.protocol.models import ParticipantInfo, ParticipantPermission, Room, TrackInfo, TrackSource

JsonObject = dict[str, Any]


def room_json(room: Room) -> JsonObject:
    created_ms = room.creation_time_ms or room.creation_time * 1000
    return {
        "name": room.name,
        "sid": room.sid,
        "numParticipants": room.num_participants,
        "numPublishers": room.num_publishers,
        "createdAt": created_ms or None,
        "metadata": room.metadata,
        "maxParticipants": room.max_participants,
        "emptyTimeout": room.empty_timeout,
        "departureTimeout": room.departure_timeout,
        "activeRecording": room.active_recording,
    }


def participant_json(participant: ParticipantInfo) -> JsonObject:
    joined_ms = participant.joined_at_ms or participant.joined_at * 1000
    return {
        "sid": participant.sid,
        "identity": participant.identity,
        "name": participant.name,
        "state": _enum_name(participant, "state"),
        "kind": _enum_name(participant, "kind"),
        "joinedAt": joined_ms or None,
        "metadata": participant.metadata,
        "attributes": dict(participant.attributes),
        "permission": permission_json(participant.permission),
        "isPublisher": participant.is_publisher,
        "tracks": [track_json(track) for track in participant.tracks],
    }


def admin_event(action: str, room: str, admin: JsonObject, **parts: Any) -> JsonObject:
    """This server's own event `admin.<action>`, shaped like LiveKit's (room, participant,
    track in LiveKit's field names) plus `admin`: who, from where, what."""
    return {
        "event": f"admin.{action}",
        "id": f"AD_{secrets.token_hex(8)}",
        "createdAt": str(int(time.time())),
        "room": {"name": room},
        **parts,
        "admin": admin,
    }


def track_json(track: TrackInfo) -> JsonObject:
    shape: JsonObject = {
        "sid": track.sid,
        "type": _enum_name(track, "type"),
        "source": _enum_name(track, "source"),
        "muted": track.muted,
        "name": track.name,
        "mimeType": track.mime_type,
    }
    if track.width or track.height:
        shape.update(width=track.width, height=track.height, simulcast=track.simulcast)
    return shape


def permission_json(permission: ParticipantPermission) -> JsonObject:
    return {
        "canPublish": permission.can_publish,
        "canSubscribe": permission.can_subscribe,
        "canPublishData": permission.can_publish_data,
        "canPublishSources": [_source_name(source) for source in permission.can_publish_sources],
        "canUpdateMetadata": permission.can_update_metadata,
        "hidden": permission.hidden,
    }


def _enum_name(message: Any, field: str) -> str:
    """The enum value's name; a number this version does not know stays a number."""
    number = getattr(message, field)
    value = message.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number.get(number)
    return value.name if value is not None else str(number)


def _source_name(number: int) -> str:
    value = TrackSource.DESCRIPTOR.values_by_number.get(number)
    return value.name if value is not None else str(number)


def parse_room(data: Any) -> Room | None:
    """A webhook's `room` object, or None when it is not one (foreign or broken events)."""
    return _parse(data, Room())


def parse_participant(data: Any) -> ParticipantInfo | None:
    return _parse(data, ParticipantInfo())


def parse_track(data: Any) -> TrackInfo | None:
    return _parse(data, TrackInfo())


def _parse(data: Any, message: Any) -> Any:
    if not isinstance(data, dict):
        return None
    try:
        # Newer LiveKit servers add fields; they are not ours to refuse.
        return ParseDict(data, message, ignore_unknown_fields=True)
    except (ParseError, ValueError, TypeError, RecursionError):
        return None
