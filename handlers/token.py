"""POST /token: room tokens for OpenVidu tutorial clients and LiveKit's TokenSource.endpoint.

One path for both request shapes: the body is read into one TokenRequest (400 for what
is not a request at all), the authorize chain decides (the built-in rules of
token_rules.py, then each extension's `authorize`, in APP_EXTENSIONS order, then bans
and identity conflicts), and the final grant is minted."""

from __future__ import annotations

import logging
import time
from typing import Any

import tornado.web
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from livekit.protocol.room import RoomConfiguration
from tornado.httputil import HTTPServerRequest

from extensions.app import AppContext
from extensions.authorize import AuthorizeError, Cookies, Grant, Refuse, Step, TokenRequest, run_chain
from ground import hs256
from ground.config import Config
from ground.errors import ApiError
from ground.logsafe import quoted
from handlers.support.base import Handler, Route, header, json_object
from handlers.support.lane import Exchange, Lane
from handlers.support.ratelimit import RateLimiter, SharedRateLimiter
from handlers.support.token_rules import attributes_map, check_grant, identifier, text

log = logging.getLogger(__name__)


class TokenEndpoint:
    """What /token does with a POST, whichever way it came: through TokenHandler, or
    answered at once on the lane (handlers/support/lane.py) when no step of the chain
    waits, the usual case (the built-in rules, bans held in memory, IDENTITY_CONFLICT=replace,
    no extension's step)."""

    def __init__(
        self,
        config: Config,
        rate_limiter: RateLimiter | None,
        steps: tuple[Step, ...],
        app_context: AppContext,
    ) -> None:
        self.config = config
        self.rate_limiter = rate_limiter  # None: TOKEN_RATE_LIMIT=0
        self.steps = steps
        self.app_context = app_context
        self.on_lane = not any(step.waits for step in steps)

    def check_rate(self, request: HTTPServerRequest) -> None:
        # Counted before anything else, so guessing credentials is limited too.
        wait = self.rate_limiter.retry_after(request.remote_ip or "") if self.rate_limiter else 0
        if wait:
            raise ApiError(429, f"Too many token requests; retry in {wait} s", {"Retry-After": str(wait)})

    async def answer(
        self, http_request: HTTPServerRequest, body: dict[str, Any], log_fields: dict[str, Any]
    ) -> tuple[int, dict[str, str]]:
        """The status and JSON answer for a body already read; ApiError for a refusal."""
        request = self.token_request(http_request, body, log_fields)
        try:
            grant = await run_chain(self.steps, request, Grant.asked(request))
            if len(self.steps) > 1:  # the built-in rules alone make valid grants
                check_grant(grant)
        except Refuse as refusal:
            headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else {}
            raise ApiError(refusal.status, refusal.message, headers) from None
        except AuthorizeError as error:
            log.error("no token for %s: %s", quoted(request.identity), error)
            raise ApiError(500, "Internal server error") from None
        # Logged with the request's access line: who and where, never the token.
        log_fields.update(room=grant.room, identity=grant.identity)
        token = mint(grant, self.config)
        if request.shape == "openvidu":
            return 200, {"token": token}  # only that key: the Android client is strict
        return 201, {"server_url": self.config.livekit_url, "participant_token": token}

    def answer_at_once(self, exchange: Exchange) -> tuple[int, dict[str, str]]:
        """The lane's: TokenHandler's checks in its order, then `answer`, which finishes
        without waiting when no step waits."""
        self.check_rate(exchange.request)
        TokenHandler.check_body(exchange.request)
        answering = self.answer(exchange.request, json_object(exchange.request.body), exchange.log_fields)
        try:
            # Run outside any task: a step that said it never waits must not use timers
            # (asyncio.timeout) or the current task either.
            answering.send(None)
        except StopIteration as answered:
            return answered.value
        answering.close()
        raise RuntimeError("a step of the /token chain waited, though every step said it would not")

    def token_request(
        self, request: HTTPServerRequest, body: dict[str, Any], log_fields: dict[str, Any]
    ) -> TokenRequest:
        """Either shape, read: a body with `roomName` or `participantName` is the OpenVidu
        shape (both required), anything else LiveKit's standard endpoint shape (every field
        optional). Types and characters are checked here; what is allowed, by the chain."""
        common: dict[str, Any] = {
            "headers": request.headers,
            "cookies": Cookies(header(request.headers, "Cookie") or ""),
            "remote_ip": request.remote_ip or "",
            "app": self.app_context,
        }
        if "roomName" in body or "participantName" in body:
            log_fields["shape"] = "openvidu"
            room, identity = (
                _name(body, "roomName", required=True),
                _name(body, "participantName", required=True),
            )
            return TokenRequest("openvidu", room, identity, "", None, None, None, **common)
        log_fields["shape"] = "standard"
        metadata = body.get("participant_metadata")
        if metadata is not None and not isinstance(metadata, str):
            raise ApiError(400, "participant_metadata must be a string")
        attributes = body.get("participant_attributes")
        room_config = body.get("room_config")
        return TokenRequest(
            "standard",
            _name(body, "room_name"),
            _name(body, "participant_identity"),
            _name(body, "participant_name"),
            None if metadata is None else text(metadata, "participant_metadata"),
            None if attributes is None else attributes_map(attributes, "participant_attributes"),
            None if room_config is None else _room_config(room_config),
            **common,
        )


class TokenHandler(Handler):
    """/token's preflights and other methods, refusals of bodies too large, and its POSTs
    when a step of the chain may wait."""

    metrics_label = "token"  # what /metrics counts it as (handlers/support/metrics.py)
    max_body_bytes = 64 * 1024
    cors_methods = "POST, OPTIONS"

    def initialize(self, endpoint: TokenEndpoint) -> None:
        self.endpoint = endpoint

    @classmethod
    def lane(
        cls, application: tornado.web.Application, request: HTTPServerRequest, kwargs: dict[str, Any]
    ) -> Lane | None:
        endpoint: TokenEndpoint = kwargs["endpoint"]
        if request.method != "POST" or not endpoint.on_lane:
            return None
        return Lane(application, request, cls, endpoint.answer_at_once)

    def prepare(self) -> None:
        if self.request.method == "POST":
            self.endpoint.check_rate(self.request)
        super().prepare()

    async def post(self) -> None:
        self.log_fields: dict[str, Any] = {}
        status, payload = await self.endpoint.answer(self.request, self.json_object(), self.log_fields)
        self.write_json(payload, status)


def mint(grant: Grant, config: Config) -> str:
    """The token's claims exactly as livekit-api's AccessToken writes them, in its order
    (tests pin the two equal and verify every token with its TokenVerifier). Not
    AccessToken itself: /token is the hot path, and AccessToken.to_jwt took 141 us a
    token (mostly dataclasses.asdict), PyJWT's encode 38 us, ground/hs256.py 8 us."""
    now = int(time.time())
    claims: dict[str, Any] = {"name": grant.name} if grant.name else {}
    if grant.metadata:
        claims["metadata"] = grant.metadata
    claims["video"] = grant.video_claim()
    if grant.attributes is not None:
        claims["attributes"] = grant.attributes
    if grant.room_config is not None and (room_config := MessageToDict(grant.room_config)):
        claims["roomConfig"] = room_config
    ttl = grant.ttl or config.token_ttl
    claims.update(sub=grant.identity, iss=config.livekit_api_key, nbf=now, exp=now + int(ttl.total_seconds()))
    return hs256.sign(claims, config.livekit_api_secret)


def _name(body: dict[str, Any], field: str, required: bool = False) -> str:
    value = body.get(field)
    if value is None:
        if required:
            raise ApiError(400, f"{field} is required")
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"{field} must be a string")
    value = value.strip()
    if not value and required:
        raise ApiError(400, f"{field} must not be empty")
    return identifier(value, field)


def _room_config(value: Any) -> RoomConfiguration:
    if not isinstance(value, dict):
        raise ApiError(400, "room_config must be an object")
    try:
        # Unknown fields pass: newer clients may send fields this version does not know.
        room_config = ParseDict(value, RoomConfiguration(), ignore_unknown_fields=True)
    except (ParseError, ValueError, TypeError, RecursionError) as error:
        raise ApiError(400, f"room_config is not a valid room configuration: {error}") from None
    for dispatch in room_config.agents:
        identifier(dispatch.agent_name, "room_config.agents.agent_name")
        text(dispatch.metadata, "room_config.agents.metadata")
    return room_config


def routes(
    config: Config, authorize: tuple[Step, ...], app_context: AppContext, shared_dir: str | None = None
) -> list[Route]:
    """`authorize`: the chain, built-in rules first (server.make_app puts it together);
    `app_context`: what the chain's steps get as `request.app`; `shared_dir`: WORKERS'
    directory, where the rate limit's buckets are shared."""
    rate_limiter: RateLimiter | None = None
    if config.token_rate_limit:
        rate_limiter = (
            SharedRateLimiter(config.token_rate_limit, shared_dir)
            if shared_dir
            else RateLimiter(config.token_rate_limit)
        )
    endpoint = TokenEndpoint(config, rate_limiter, authorize, app_context)
    # `//token`: the iOS client's URL when its base ends in /
    return [(r"/+token", TokenHandler, {"endpoint": endpoint})]
