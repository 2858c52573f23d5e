"""POST /token: room tokens for OpenVidu tutorial clients and LiveKit's TokenSource.endpoint.

One path for both request shapes: the body is read into one TokenRequest (400 for what
is not a request at all), the authorize chain decides (the built-in rules of
token_rules.py, then each extension's `authorize`, in APP_EXTENSIONS order), and the
final grant is minted."""

from __future__ import annotations

import base64
import hmac
import logging
import time
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from livekit.protocol.room import RoomConfiguration

from extensions.app import AppContext
from extensions.authorize import AuthorizeError, Cookies, Grant, Refuse, Step, TokenRequest, run_chain
from ground.config import Config
from ground.errors import ApiError
from ground.logsafe import quoted
from handlers.support.base import Handler, Route, header
from handlers.support.ratelimit import RateLimiter, SharedRateLimiter
from handlers.support.token_rules import attributes_map, check_grant, identifier, text

log = logging.getLogger(__name__)


class TokenHandler(Handler):
    metrics_label = "token"  # what /metrics counts it as (handlers/support/metrics.py)
    max_body_bytes = 64 * 1024
    cors_methods = "POST, OPTIONS"

    def initialize(
        self, rate_limiter: RateLimiter | None, steps: tuple[Step, ...], app_context: AppContext
    ) -> None:
        self.rate_limiter = rate_limiter  # None: TOKEN_RATE_LIMIT=0
        self.steps = steps
        self.app_context = app_context

    def prepare(self) -> None:
        if self.request.method == "POST":
            # Counted before anything else, so guessing credentials is limited too.
            wait = self.rate_limiter.retry_after(self.request.remote_ip or "") if self.rate_limiter else 0
            if wait:
                raise ApiError(429, f"Too many token requests; retry in {wait} s", {"Retry-After": str(wait)})
        super().prepare()

    async def post(self) -> None:
        request = self.token_request(self.json_object())
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
        self.log_fields.update(room=grant.room, identity=grant.identity)
        token = mint(grant, self.config)
        if request.shape == "openvidu":
            self.write_json({"token": token})  # only that key: the Android client is strict
        else:
            self.write_json({"server_url": self.config.livekit_url, "participant_token": token}, status=201)

    def token_request(self, body: dict[str, Any]) -> TokenRequest:
        """Either shape, read: a body with `roomName` or `participantName` is the OpenVidu
        shape (both required), anything else LiveKit's standard endpoint shape (every field
        optional). Types and characters are checked here; what is allowed, by the chain."""
        request = self.request
        common: dict[str, Any] = {
            "headers": request.headers,
            "cookies": Cookies(header(request.headers, "Cookie") or ""),
            "remote_ip": request.remote_ip or "",
            "app": self.app_context,
        }
        if "roomName" in body or "participantName" in body:
            self.log_fields = {"shape": "openvidu"}
            room, identity = (
                _name(body, "roomName", required=True),
                _name(body, "participantName", required=True),
            )
            return TokenRequest("openvidu", room, identity, "", None, None, None, **common)
        self.log_fields = {"shape": "standard"}
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


def mint(grant: Grant, config: Config) -> str:
    """The token's claims exactly as livekit-api's AccessToken writes them, in its order
    (tests pin the two equal and verify every token with its TokenVerifier). Not
    AccessToken itself: /token is the hot path, and AccessToken.to_jwt took 141 us a
    token (mostly dataclasses.asdict), PyJWT's encode 38 us, signing here 8 us."""
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
    return sign_hs256(claims, config.livekit_api_secret)


_JWT_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")


def sign_hs256(claims: dict[str, Any], secret: str) -> str:
    """A compact HS256 JWT (RFC 7519): what PyJWT's encode produces for these claims,
    without its per-call header merging and key checks."""
    payload = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=")
    signing_input = _JWT_HEADER + b"." + payload
    signature = hmac.digest(secret.encode(), signing_input, "sha256")
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


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
    # `//token`: the iOS client's URL when its base ends in /
    kwargs = {"rate_limiter": rate_limiter, "steps": authorize, "app_context": app_context}
    return [(r"/+token", TokenHandler, kwargs)]
