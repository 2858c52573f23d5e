"""POST /token: room tokens for OpenVidu tutorial clients and LiveKit's TokenSource.endpoint."""

from __future__ import annotations

import base64
import hmac
import re
import secrets
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from livekit.protocol.room import RoomConfiguration

from config import CLIENT_SETTABLE, DISPATCH_FIELDS
from handlers.base import ApiError, AwaitingHandler, BodyHandler, CorsMixin
from handlers.logsafe import quoted
from handlers.ratelimit import RateLimiter


@dataclass
class TokenClaims:
    """The claims of a room token, exactly as livekit-api's AccessToken writes them
    (tests pin the two equal, and verify every token with livekit-api's TokenVerifier).
    Why not AccessToken itself: /token is the hot path, and minting one token took
    141 us with AccessToken.to_jwt (mostly dataclasses.asdict), 38 us with PyJWT's
    encode, and 8 us signed here with orjson (measured on the bench machine)."""

    room: str
    identity: str
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # metadata, attributes, roomConfig

    def to_jwt(self, api_key: str, api_secret: str, ttl_seconds: float) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"name": self.name} if self.name else {}
        if self.extra.get("metadata"):
            claims["metadata"] = self.extra["metadata"]
        claims["video"] = {
            "roomJoin": True,
            "room": self.room,
            "canPublish": True,
            "canSubscribe": True,
            "canPublishData": True,
        }
        if "attributes" in self.extra:
            claims["attributes"] = self.extra["attributes"]
        if self.extra.get("roomConfig"):
            claims["roomConfig"] = self.extra["roomConfig"]
        claims.update(sub=self.identity, iss=api_key, nbf=now, exp=now + int(ttl_seconds))
        return sign_hs256(claims, api_secret)


_JWT_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")


def sign_hs256(claims: dict[str, Any], secret: str) -> str:
    """A compact HS256 JWT (RFC 7519): what PyJWT's encode produces for these claims,
    without its per-call header merging and key checks."""
    payload = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=")
    signing_input = _JWT_HEADER + b"." + payload
    signature = hmac.digest(secret.encode(), signing_input, "sha256")
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


class TokenHandler(CorsMixin, AwaitingHandler, BodyHandler):
    def initialize(self, rate_limiter: RateLimiter | None) -> None:
        self.rate_limiter = rate_limiter  # None: TOKEN_RATE_LIMIT=0

    def prepare(self) -> None:
        if self.request.method == "POST":
            # Counted before anything else, so guessing the auth secret is limited too.
            wait = self.rate_limiter.retry_after(self.request.remote_ip or "") if self.rate_limiter else 0
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

    async def post(self) -> None:
        body = self.json_object()
        if "roomName" in body or "participantName" in body:
            await self.openvidu_token(body)
        else:
            await self.standard_token(body)

    async def openvidu_token(self, body: dict[str, Any]) -> None:
        """`{roomName, participantName}` -> 200 `{"token"}`, and only that key."""
        room = self.room_name(body, "roomName", required=True)
        identity = self.name(body, "participantName", required=True)
        self.write_json({"token": await self.mint(TokenClaims(room, identity))})

    async def standard_token(self, body: dict[str, Any]) -> None:
        """LiveKit's standard endpoint shape -> 201 `{server_url, participant_token}`."""
        for settable in CLIENT_SETTABLE:
            if body.get(settable) is not None and settable not in self.config.token_client_fields:
                raise ApiError(403, f"{settable} may not be set by clients here (TOKEN_CLIENT_FIELDS)")
        claims = TokenClaims(
            room=self.room_name(body, "room_name") or self.generated_room_name(),
            identity=self.name(body, "participant_identity") or f"user-{secrets.token_hex(4)}",
            name=self.name(body, "participant_name"),
        )
        metadata = body.get("participant_metadata")
        if metadata is not None:
            if not isinstance(metadata, str):
                raise ApiError(400, "participant_metadata must be a string")
            claims.extra["metadata"] = _text(metadata, "participant_metadata")
        attributes = body.get("participant_attributes")
        if attributes is not None:
            claims.extra["attributes"] = _attributes(attributes)
        room_config = body.get("room_config")
        if room_config is not None:
            parsed = _room_config(room_config)
            _check_room_config(parsed, self.config.token_room_config_fields)
            claims.extra["roomConfig"] = MessageToDict(parsed)
        token = await self.mint(claims)
        self.write_json({"server_url": self.config.livekit_url, "participant_token": token}, status=201)

    async def mint(self, claims: TokenClaims) -> str:
        # Bans and IDENTITY_CONFLICT (rooms/admission.py): may refuse, or pick another identity.
        claims.identity, claims.name = await self.settings["rooms"].admission.admit(
            claims.room, claims.identity, claims.name
        )
        # Logged with the request's access line: who and where, never the token.
        self.log_detail = f"room={quoted(claims.room)} identity={quoted(claims.identity)}"
        config = self.config
        return claims.to_jwt(
            config.livekit_api_key, config.livekit_api_secret, config.token_ttl.total_seconds()
        )

    def name(self, body: dict[str, Any], field: str, required: bool = False) -> str:
        return _name(body, field, self.config.name_max_length, required)

    def room_name(self, body: dict[str, Any], field: str, required: bool = False) -> str:
        room = self.name(body, field, required)
        pattern = self.config.room_name_pattern
        if room and pattern and not re.fullmatch(pattern, room):
            raise ApiError(422, f"{field} {room!r} is not allowed here (ROOM_NAME_PATTERN)")
        return room

    def generated_room_name(self) -> str:
        """A random room name; with ROOM_NAME_PATTERN, one of a few shapes that matches it."""
        suffix = secrets.token_hex(4)
        pattern = self.config.room_name_pattern
        if not pattern:
            return f"room-{suffix}"
        for room in (f"room-{suffix}", f"room_{suffix}", f"room{suffix}", suffix):
            if re.fullmatch(pattern, room):
                return room
        raise ApiError(
            422,
            "room_name is required here: generated names (such as room-1a2b3c4d) "
            "do not match this server's ROOM_NAME_PATTERN",
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
    return _identifier(value, field)


# Names and keys: no control characters (Cc), no invisible format characters such as the
# bidi overrides (Cf), no line or paragraph separators (Zl, Zp). They forge log lines,
# make one name look like another, or reverse what a reader sees on the page. The two
# joiners stay: emoji sequences and Persian or Indic names need them.
_REFUSED_IN_NAMES = frozenset(("Cc", "Cf", "Zl", "Zp"))
# Free text (metadata, attribute values) may also hold tabs and line breaks.
_REFUSED_IN_TEXT = frozenset(("Cc", "Cf"))
_ALLOWED = frozenset("\u200c\u200d")  # zero-width non-joiner and joiner
_TEXT_ALLOWED = _ALLOWED | frozenset("\t\n\r")


def _refused_character(value: str, categories: frozenset[str], allowed: frozenset[str]) -> str | None:
    if value.isprintable():  # the usual case: every refused category is non-printable
        return None
    for char in value:
        if char not in allowed and unicodedata.category(char) in categories:
            return char
    return None


def _identifier(value: str, field: str) -> str:
    char = _refused_character(value, _REFUSED_IN_NAMES, _ALLOWED)
    if char is not None:
        raise ApiError(
            400,
            f"{field} must not contain control characters or invisible format characters (U+{ord(char):04X})",
        )
    return value


def _text(value: str, field: str) -> str:
    char = _refused_character(value, _REFUSED_IN_TEXT, _TEXT_ALLOWED)
    if char is not None:
        raise ApiError(
            400,
            f"{field} must not contain control characters other than tab and line breaks, "
            f"or invisible format characters (U+{ord(char):04X})",
        )
    return value


def _attributes(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise ApiError(400, "participant_attributes must be an object of string values")
    for key, item in value.items():
        _identifier(key, "participant_attributes keys")
        if not item.isprintable():  # named only when it is needed: this runs for every attribute
            _text(item, f"participant_attributes[{key!r}]")
    return value


def _check_room_config(room_config: RoomConfiguration, allowed: tuple[str, ...]) -> None:
    """Only what TOKEN_ROOM_CONFIG_FIELDS allows reaches the token: by default an agent
    dispatch (its name and metadata). Egress, limits and timeouts are the operator's."""
    for descriptor, value in room_config.ListFields():
        if descriptor.name not in allowed:
            raise _not_settable(descriptor.name)
        if descriptor.name != "agents":
            continue
        for dispatch in value:
            for dispatch_field, _ in dispatch.ListFields():
                name = dispatch_field.name
                if name not in DISPATCH_FIELDS and f"agents.{name}" not in allowed:
                    raise _not_settable(f"agents.{name}")
            _identifier(dispatch.agent_name, "room_config.agents.agent_name")
            _text(dispatch.metadata, "room_config.agents.metadata")


def _not_settable(name: str) -> ApiError:
    return ApiError(403, f"room_config.{name} may not be set by clients here (TOKEN_ROOM_CONFIG_FIELDS)")


def _room_config(value: Any) -> RoomConfiguration:
    if not isinstance(value, dict):
        raise ApiError(400, "room_config must be an object")
    try:
        # Unknown fields pass: newer clients may send fields this version does not know.
        return ParseDict(value, RoomConfiguration(), ignore_unknown_fields=True)
    except (ParseError, ValueError, TypeError, RecursionError) as error:
        raise ApiError(400, f"room_config is not a valid room configuration: {error}") from None
