"""POST /token: room tokens for OpenVidu tutorial clients and LiveKit's TokenSource.endpoint."""

from __future__ import annotations

import secrets
import unicodedata
from typing import Any

from google.protobuf.json_format import ParseDict, ParseError
from livekit.api import AccessToken, VideoGrants
from livekit.protocol.room import RoomConfiguration

from handlers.base import ApiError, BodyHandler, CorsMixin

MAX_NAME_LENGTH = 256
# Fields of LiveKit's standard endpoint request (livekit-client's TokenSource.endpoint).
STANDARD_FIELDS = (
    "room_name",
    "participant_identity",
    "participant_name",
    "participant_metadata",
    "participant_attributes",
    "room_config",
)


class TokenHandler(CorsMixin, BodyHandler):
    def post(self) -> None:
        body = self.json_object()
        if "roomName" in body or "participantName" in body:
            self.openvidu_token(body)
        else:
            self.standard_token(body)

    def openvidu_token(self, body: dict[str, Any]) -> None:
        """`{roomName, participantName}` -> 200 `{"token"}`, and only that key."""
        room = _name(body, "roomName", required=True)
        identity = _name(body, "participantName", required=True)
        token = self.new_token(room, identity).to_jwt()
        self.write_json({"token": token})

    def standard_token(self, body: dict[str, Any]) -> None:
        """LiveKit's standard endpoint shape -> 201 `{server_url, participant_token}`."""
        room = _name(body, "room_name") or f"room-{secrets.token_hex(4)}"
        identity = _name(body, "participant_identity") or f"user-{secrets.token_hex(4)}"
        token = self.new_token(room, identity)
        name = _name(body, "participant_name")
        if name:
            token.with_name(name)
        metadata = body.get("participant_metadata")
        if metadata is not None:
            if not isinstance(metadata, str):
                raise ApiError(400, "participant_metadata must be a string")
            token.with_metadata(metadata)
        attributes = body.get("participant_attributes")
        if attributes is not None:
            token.with_attributes(_attributes(attributes))
        room_config = body.get("room_config")
        if room_config is not None:
            token.with_room_config(_room_config(room_config))
        self.write_json(
            {"server_url": self.config.livekit_url, "participant_token": token.to_jwt()}, status=201
        )

    def new_token(self, room: str, identity: str) -> AccessToken:
        config = self.config
        token = AccessToken(config.livekit_api_key, config.livekit_api_secret)
        return (
            token.with_identity(identity)
            .with_ttl(config.token_ttl)
            .with_grants(VideoGrants(room_join=True, room=room))
        )


def _name(body: dict[str, Any], field: str, required: bool = False) -> str:
    value = body.get(field)
    if value is None:
        if required:
            raise ApiError(400, f"{field} is required")
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"{field} must be a string")
    value = value.strip()
    if not value:
        if required:
            raise ApiError(400, f"{field} must not be empty")
        return ""
    if len(value) > MAX_NAME_LENGTH:
        raise ApiError(400, f"{field} must be at most {MAX_NAME_LENGTH} characters")
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in value):
        raise ApiError(400, f"{field} must not contain control characters")
    return value


def _attributes(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise ApiError(400, "participant_attributes must be an object of string values")
    return value


def _room_config(value: Any) -> RoomConfiguration:
    if not isinstance(value, dict):
        raise ApiError(400, "room_config must be an object")
    try:
        # Unknown fields pass: newer clients may send fields this version does not know.
        return ParseDict(value, RoomConfiguration(), ignore_unknown_fields=True)
    except (ParseError, ValueError, TypeError, RecursionError) as error:
        raise ApiError(400, f"room_config is not a valid room configuration: {error}") from None
