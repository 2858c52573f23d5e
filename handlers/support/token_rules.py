"""The operator's rules for tokens: the built-in authorize step, first in the chain
(TOKEN_AUTH_SECRET, TOKEN_CLIENT_FIELDS, TOKEN_ROOM_CONFIG_FIELDS, ROOM_NAME_PATTERN,
NAME_MAX_LENGTH, generated names), the characters names and texts may hold, and what
every grant must be, whatever the steps did, before it is minted."""

from __future__ import annotations

import re
import secrets
import unicodedata
from datetime import timedelta
from typing import Any

from livekit.protocol.room import RoomConfiguration

from extensions.authorize import AuthorizeError, Grant, Refuse, Step, TokenRequest
from ground.config import CLIENT_SETTABLE, DISPATCH_FIELDS, MAX_TOKEN_TTL
from ground.credentials import secret_matches
from ground.errors import ApiError
from rooms.names import canonical, nfc


def built_in_authorize(request: TokenRequest, grant: Grant) -> Grant:
    """Today's settings, each off or permissive until set; refusals name the setting."""
    config = request.app.config
    if config.token_auth_secret and not secret_matches(request.bearer_token, config.token_auth_secret):
        raise Refuse(401, "This token endpoint needs Authorization: Bearer <TOKEN_AUTH_SECRET>")
    if request.shape == "standard":
        sent = {
            "participant_metadata": request.metadata,
            "participant_attributes": request.attributes,
            "room_config": request.room_config,
        }
        for settable in CLIENT_SETTABLE:
            if sent[settable] is not None and settable not in config.token_client_fields:
                raise Refuse(403, f"{settable} may not be set by clients here (TOKEN_CLIENT_FIELDS)")
    limit = config.name_max_length
    for item in ("room", "identity", "name"):
        if len(getattr(request, item)) > limit:
            raise Refuse(400, f"{request.field_name(item)} must be at most {limit} characters")
    pattern = config.room_name_pattern
    if request.room and pattern and not re.fullmatch(pattern, request.room):
        raise Refuse(
            422, f"{request.field_name('room')} {request.room!r} is not allowed here (ROOM_NAME_PATTERN)"
        )
    if request.room_config is not None:
        _check_room_config(request.room_config, config.token_room_config_fields)
    grant.room = grant.room or _generated_room_name(pattern)
    grant.identity = grant.identity or f"user-{secrets.token_hex(4)}"
    return grant


BUILT_IN = Step("the built-in rules", built_in_authorize, waits=False)


def _generated_room_name(pattern: str) -> str:
    """A random room name (as LiveKit's sandbox does); with ROOM_NAME_PATTERN, one of a few
    shapes that matches it."""
    suffix = secrets.token_hex(4)
    if not pattern:
        return f"room-{suffix}"
    for room in (f"room-{suffix}", f"room_{suffix}", f"room{suffix}", suffix):
        if re.fullmatch(pattern, room):
            return room
    raise Refuse(
        422,
        "room_name is required here: generated names (such as room-1a2b3c4d) "
        "do not match this server's ROOM_NAME_PATTERN",
    )


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


def _not_settable(name: str) -> Refuse:
    return Refuse(403, f"room_config.{name} may not be set by clients here (TOKEN_ROOM_CONFIG_FIELDS)")


# Names and keys: no control characters (Cc), no invisible format characters such as the
# bidi overrides (Cf), no line or paragraph separators (Zl, Zp). They forge log lines,
# make one name look like another, or reverse what a reader sees on the page. The two
# joiners stay: emoji sequences and Persian or Indic names need them.
_REFUSED_IN_NAMES = frozenset(("Cc", "Cf", "Zl", "Zp"))
# Free text (metadata, attribute values) may also hold tabs and line breaks.
_REFUSED_IN_TEXT = frozenset(("Cc", "Cf"))
_ALLOWED = frozenset("\u200c\u200d")  # zero-width non-joiner and joiner
_TEXT_ALLOWED = _ALLOWED | frozenset("\t\n\r")


def refused_character(value: str, categories: frozenset[str], allowed: frozenset[str]) -> str | None:
    if value.isprintable():  # the usual case: every refused category is non-printable
        return None
    for char in value:
        if char not in allowed and unicodedata.category(char) in categories:
            return char
    return None


def identifier(value: str, field: str) -> str:
    char = refused_character(value, _REFUSED_IN_NAMES, _ALLOWED)
    if char is not None:
        raise ApiError(
            400,
            f"{field} must not contain control characters or invisible format characters (U+{ord(char):04X})",
        )
    if value and not canonical(value):
        # Only fillers and joiners (U+3164, U+200D...): shown as nothing, and one empty key
        # for bans and IDENTITY_CONFLICT whatever the characters.
        raise ApiError(400, f"{field} must contain a visible character")
    return nfc(value)  # one spelling of each name (rooms/names.py)


def attributes_map(value: Any, field: str) -> dict[str, str]:
    """Participant attributes, as /token and the admin API take them: an object of string
    values, its keys names and its values text."""
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise ApiError(400, f"{field} must be an object of string values")
    for key, item in value.items():
        identifier(key, f"{field} keys")
        if not item.isprintable():  # named only when it is needed: this runs for every attribute
            text(item, f"{field}[{key!r}]")
    return value


def text(value: str, field: str) -> str:
    char = refused_character(value, _REFUSED_IN_TEXT, _TEXT_ALLOWED)
    if char is not None:
        raise ApiError(
            400,
            f"{field} must not contain control characters other than tab and line breaks, "
            f"or invisible format characters (U+{ord(char):04X})",
        )
    return value


# NAME_MAX_LENGTH bounds what clients ask for; a grant's names (generated ones, an
# extension's) only need to be sane.
GRANT_NAME_MAX_LENGTH = 4096


def check_grant(grant: Grant) -> None:
    """What LiveKit and this server's logs need of a token, whatever the steps did: an
    AuthorizeError is an extension's bug, answered 500."""
    max_length = GRANT_NAME_MAX_LENGTH
    if (
        not isinstance(grant.room, str)
        or not isinstance(grant.identity, str)
        or not isinstance(grant.name, str)
    ):
        raise AuthorizeError("the grant's room, identity and name must be strings")
    for label, value in (("room", grant.room), ("identity", grant.identity), ("name", grant.name)):
        if (label != "name" and not value) or len(value) > max_length:
            raise AuthorizeError(f"the grant's {label} must be 1 to {max_length} characters, not {value!r}")
        if refused_character(value, _REFUSED_IN_NAMES, _ALLOWED) is not None:
            raise AuthorizeError(f"the grant's {label} {value!r} holds control or format characters")
    if not isinstance(grant.metadata, str):
        raise AuthorizeError("the grant's metadata must be a string")
    if grant.attributes is not None and not all(
        isinstance(key, str) and isinstance(value, str) for key, value in grant.attributes.items()
    ):
        raise AuthorizeError("the grant's attributes must map strings to strings")
    if grant.ttl is not None and not timedelta(0) < grant.ttl <= MAX_TOKEN_TTL:
        raise AuthorizeError(f"the grant's ttl must be more than 0 and at most 24h, not {grant.ttl}")
