"""POST /token: room tokens for OpenVidu tutorial clients and LiveKit's TokenSource.endpoint."""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import unicodedata
from typing import Any

from google.protobuf.json_format import ParseDict, ParseError
from livekit.api import AccessToken, VideoGrants
from livekit.protocol.room import RoomConfiguration

from config import CLIENT_SETTABLE
from handlers.base import ApiError, BodyHandler, CorsMixin
from handlers.ratelimit import RateLimiter

log = logging.getLogger(__name__)


class TokenHandler(CorsMixin, BodyHandler):
    def initialize(self, rate_limiter: RateLimiter) -> None:
        self.rate_limiter = rate_limiter

    def prepare(self) -> None:
        if self.request.method == "POST":
            # Counted before anything else, so guessing the auth secret is limited too.
            wait = self.rate_limiter.retry_after(self.request.remote_ip or "")
            if wait:
                raise ApiError(429, f"Too many token requests; retry in {wait} s", {"Retry-After": str(wait)})
            self.check_auth()
        super().prepare()

    def check_auth(self) -> None:
        secret = self.config.token_auth_secret
        if not secret:
            return
        given = self.request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {secret}".encode()):
            raise ApiError(401, "This token endpoint needs Authorization: Bearer <TOKEN_AUTH_SECRET>")

    def post(self) -> None:
        body = self.json_object()
        if "roomName" in body or "participantName" in body:
            self.openvidu_token(body)
        else:
            self.standard_token(body)

    def openvidu_token(self, body: dict[str, Any]) -> None:
        """`{roomName, participantName}` -> 200 `{"token"}`, and only that key."""
        room = self.room_name(body, "roomName", required=True)
        identity = self.name(body, "participantName", required=True)
        token = self.new_token(room, identity).to_jwt()
        log.info("token for room=%s identity=%s", room, identity)
        self.write_json({"token": token})

    def standard_token(self, body: dict[str, Any]) -> None:
        """LiveKit's standard endpoint shape -> 201 `{server_url, participant_token}`."""
        for field in CLIENT_SETTABLE:
            if body.get(field) is not None and field not in self.config.token_client_fields:
                raise ApiError(403, f"{field} may not be set by clients here (TOKEN_CLIENT_FIELDS)")
        room = self.room_name(body, "room_name") or f"room-{secrets.token_hex(4)}"
        identity = self.name(body, "participant_identity") or f"user-{secrets.token_hex(4)}"
        token = self.new_token(room, identity)
        name = self.name(body, "participant_name")
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
        jwt = token.to_jwt()
        log.info("token for room=%s identity=%s", room, identity)
        self.write_json({"server_url": self.config.livekit_url, "participant_token": jwt}, status=201)

    def name(self, body: dict[str, Any], field: str, required: bool = False) -> str:
        return _name(body, field, self.config.name_max_length, required)

    def room_name(self, body: dict[str, Any], field: str, required: bool = False) -> str:
        room = self.name(body, field, required)
        pattern = self.config.room_name_pattern
        if room and pattern and not re.fullmatch(pattern, room):
            raise ApiError(422, f"{field} {room!r} is not allowed here (ROOM_NAME_PATTERN)")
        return room

    def new_token(self, room: str, identity: str) -> AccessToken:
        config = self.config
        token = AccessToken(config.livekit_api_key, config.livekit_api_secret)
        return (
            token.with_identity(identity)
            .with_ttl(config.token_ttl)
            .with_grants(VideoGrants(room_join=True, room=room))
        )


def _name(body: dict[str, Any], field: str, max_length: int, required: bool = False) -> str:
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
    if len(value) > max_length:
        raise ApiError(400, f"{field} must be at most {max_length} characters")
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
