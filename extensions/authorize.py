"""Who gets which token: one typed request for both shapes, a grant that steps may change,
and the chain of `authorize` steps (the built-in rules first, then each extension's)."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from livekit.api import VideoGrants
from livekit.protocol.room import RoomConfiguration
from tornado.httputil import HTTPHeaders, parse_cookie

from ground.credentials import bearer_credential

if TYPE_CHECKING:
    from extensions.app import AppContext

log = logging.getLogger("extensions")

# The claim names of VideoGrants, as livekit-api's AccessToken writes them (camelCase).
_VIDEO_CLAIMS = tuple(
    (name, re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name))
    for name in VideoGrants.__dataclass_fields__
)


TokenShape = Literal["openvidu", "standard"]


class Cookies(Mapping[str, str]):
    """The request's cookies, parsed on first use (most token requests carry none)."""

    def __init__(self, header: str) -> None:
        self._header = header
        self._parsed: dict[str, str] | None = None

    @property
    def _cookies(self) -> dict[str, str]:
        if self._parsed is None:
            self._parsed = parse_cookie(self._header) if self._header else {}
        return self._parsed

    def __getitem__(self, name: str) -> str:
        return self._cookies[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._cookies)

    def __len__(self) -> int:
        return len(self._cookies)


@dataclass(frozen=True)
class TokenRequest:
    """One `POST /token` request, whichever of the two shapes it came in.

    `room`, `identity` and `name` are what the client asked for, trimmed ("" when it
    asked for none: the standard shape lets a client leave them out). `metadata`,
    `attributes` and `room_config` are None when the client did not send them.
    `headers` and `cookies` are the HTTP request's, for your own authentication.
    """

    shape: TokenShape
    room: str
    identity: str
    name: str
    metadata: str | None
    attributes: Mapping[str, str] | None
    room_config: RoomConfiguration | None
    headers: HTTPHeaders
    cookies: Mapping[str, str]
    remote_ip: str
    app: AppContext

    @property
    def bearer_token(self) -> str:
        """The credential of `Authorization: Bearer <credential>`, or "" when there is none."""
        return bearer_credential(self.headers.get("Authorization", ""))

    def field_name(self, item: str) -> str:
        """The request field that holds `item` in this shape, for error messages."""
        if self.shape == "openvidu":
            return {"room": "roomName", "identity": "participantName", "name": "participantName"}[item]
        return {"room": "room_name", "identity": "participant_identity", "name": "participant_name"}[item]


@dataclass
class Grant:
    """What the token will carry. Each authorize step gets the grant so far and returns it
    (changed or not) or a new one.

    - `identity`, `name`, `metadata`, `attributes`: the participant as others see it;
    - `room`: the only room the token joins;
    - `video`: livekit-api's `VideoGrants`, the permissions within the room, e.g.
      `can_publish=False` (a viewer), `can_publish_sources=["camera", "microphone"]`,
      `hidden=True`, `can_update_own_metadata=True`. Its `room` and `room_join` are set
      from this grant when the token is minted;
    - `room_config`: LiveKit's `RoomConfiguration` (agent dispatch...) for a room the
      token creates;
    - `ttl`: the token's lifetime, None for `TOKEN_TTL`; at most 24 h.
    """

    room: str
    identity: str
    name: str = ""
    metadata: str = ""
    attributes: dict[str, str] | None = None
    room_config: RoomConfiguration | None = None
    video: VideoGrants = field(default_factory=VideoGrants)
    ttl: timedelta | None = None

    @classmethod
    def asked(cls, request: TokenRequest) -> Grant:
        """What the client asked for, before any step decided anything."""
        return cls(
            room=request.room,
            identity=request.identity,
            name=request.name,
            metadata=request.metadata or "",
            attributes=dict(request.attributes) if request.attributes is not None else None,
            room_config=request.room_config,
        )

    def video_claim(self) -> dict[str, object]:
        """The `video` claim, exactly as AccessToken writes VideoGrants: no None or "", in
        the order of its fields (a dataclass keeps them in that order)."""
        self.video.room_join = True
        self.video.room = self.room
        fields = vars(self.video)
        return {
            claim: value
            for name, claim in _VIDEO_CLAIMS
            if (value := fields.get(name)) is not None and value != ""
        }


class Refuse(Exception):  # read as a verb: `raise Refuse(403, "...")`
    """Raised by an authorize step: no token, and the client gets `status` (401: who are
    you?, 403: not you, not here; any 4xx) with `{"errorMessage": message}`."""

    def __init__(self, status: int, message: str) -> None:
        if not 400 <= status <= 499:
            raise ValueError(f"Refuse takes a 4xx status, not {status}")
        super().__init__(message)
        self.status = status
        self.message = message


Authorize = Callable[[TokenRequest, Grant], "Grant | Awaitable[Grant]"]


@dataclass(frozen=True)
class Step:
    """One authorize step of the chain and where it comes from (for logs and errors)."""

    source: str
    function: Authorize
    # False for a step that never waits (no I/O, no timers): with only such steps, /token
    # answers without a RequestHandler (handlers/support/lane.py). Extensions' steps wait.
    waits: bool = True


class AuthorizeError(RuntimeError):
    """An authorize step broke its contract (returned no grant, or an invalid one): the
    adopter's bug, answered 500 and logged with the step's name."""


async def run_chain(steps: tuple[Step, ...], request: TokenRequest, grant: Grant) -> Grant:
    """Each step in order, each given the previous one's grant. Refuse passes through."""
    for step in steps:
        result = step.function(request, grant)
        if not isinstance(result, Grant) and inspect.isawaitable(result):
            result = await result
        if not isinstance(result, Grant):
            raise AuthorizeError(
                f"authorize of {step.source} returned {type(result).__name__}, not a Grant "
                "(return the grant, or raise Refuse to refuse)"
            )
        grant = result
    return grant
