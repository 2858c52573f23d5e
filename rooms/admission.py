"""Who may have a token for a room, beyond the token endpoint's own rules: not a
banned identity, and not an identity already in the room unless IDENTITY_CONFLICT
says how. It is the last step of /token's `authorize` chain (after the built-in rules and the
extensions')."""

from __future__ import annotations

from livekit.api import LiveKitAPI
from livekit.api.twirp_client import ServerError
from livekit.protocol.models import ParticipantInfo
from livekit.protocol.room import ListParticipantsRequest

from extensions.authorize import Grant, TokenRequest
from ground.config import Config
from ground.errors import ApiError
from rooms.bans import BanStore, BansUnavailable
from rooms.livekit import LiveKitCalls, LiveKitUnavailable
from rooms.names import canonical

# alice, alice-2 ... alice-100: beyond that the room has bigger problems.
MAX_SUFFIX = 100


class Admission:
    def __init__(
        self,
        config: Config,
        bans: BanStore,
        livekit_api: LiveKitAPI | None,
        calls: LiveKitCalls,
    ) -> None:
        self.config = config
        self.bans = bans
        self.livekit_api = livekit_api
        self.calls = calls

    @property
    def waits(self) -> bool:
        """False when admitting asks nothing outside this process: bans held in memory,
        and no one to ask who is in the room (IDENTITY_CONFLICT=replace)."""
        return not self.bans.finds_at_once or self.config.identity_conflict != "replace"

    async def admit(self, room: str, identity: str, name: str) -> tuple[str, str]:
        """The identity and display name to put in the token, or ApiError: 403 for a
        banned identity, 409 for one in the room (IDENTITY_CONFLICT=reject), 503 when
        the ban list or LiveKit cannot be asked (a ban is never skipped for that)."""
        await self._refuse_if_banned(room, identity)
        if self.config.identity_conflict == "replace":
            return identity, name  # LiveKit's own behaviour: the newcomer replaces the one in the room
        present = await self._identities_in(room)  # canonical keys: look-alikes are the same
        if canonical(identity) not in present:
            return identity, name
        if self.config.identity_conflict == "reject":
            raise ApiError(
                409,
                f"{identity!r} is in room {room!r} already; choose another name (IDENTITY_CONFLICT=reject)",
            )
        for number in range(2, MAX_SUFFIX + 1):
            candidate = f"{identity}-{number}"
            if canonical(candidate) not in present:
                await self._refuse_if_banned(room, candidate)
                return candidate, name or identity  # the display name stays what they typed
        raise ApiError(409, f"{identity!r} and {MAX_SUFFIX - 1} suffixed names are in room {room!r} already")

    async def authorize(self, request: TokenRequest, grant: Grant) -> Grant:
        """The last step of /token's authorize chain: on the room and identity the built-in
        rules and the extensions settled on."""
        grant.identity, grant.name = await self.admit(grant.room, grant.identity, grant.name)
        return grant

    async def _refuse_if_banned(self, room: str, identity: str) -> None:
        try:
            ban = await self.bans.find(room, identity)
        except BansUnavailable as error:
            raise ApiError(503, f"{error}; no token is given while bans cannot be checked") from None
        if ban is not None:
            raise ApiError(403, ban.refusal(), {"Retry-After": str(ban.json()["secondsLeft"])})

    async def _identities_in(self, room: str) -> set[str]:
        what = f"IDENTITY_CONFLICT={self.config.identity_conflict} needs to know who is in room {room!r}"
        if self.livekit_api is None:
            raise ApiError(503, f"{what}, and this server has no LiveKit API client")
        try:
            answer = await self.calls.ask(
                self.livekit_api.room.list_participants(ListParticipantsRequest(room=room)), "admission"
            )
        except (LiveKitUnavailable, ServerError) as error:
            raise ApiError(503, f"{what}: {error}") from None
        return {
            canonical(participant.identity)
            for participant in answer.participants
            if participant.state != ParticipantInfo.State.DISCONNECTED
        }
