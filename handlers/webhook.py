"""POST /livekit/webhook and /webhook: verify LiveKit's signed events, then append them to the event log."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import warnings
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import orjson
import tornado.web
from joserfc.errors import SecurityWarning
from joserfc.jwk import OctKey
from tornado.httputil import HTTPServerRequest

from eventlog import EventLog, StoreUnavailable
from ground import hs256
from ground.config import Config, ConfigError
from ground.errors import ApiError
from handlers.support.base import Handler, Route
from handlers.support.lane import Exchange, Lane
from handlers.support.observe import timed_store

# LiveKit signs each webhook with a 5-minute token; this much clock skew is tolerated.
WEBHOOK_LEEWAY = timedelta(seconds=60)


class WebhookVerifier:
    """What livekit-api's WebhookReceiver checks (tests hold the two to the same answers),
    on the raw bytes of the body and with a constant-time comparison of the hash
    (WebhookReceiver takes a str and compares with `!=`).

    The JWT: HS256, signed with the secret of the API key it names as issuer (`iss`), an
    `exp` required, WEBHOOK_LEEWAY of clock skew (ground/hs256.py). Several keys may sign
    (LIVEKIT_WEBHOOK_KEYS), so a LiveKit server's key can be rotated. Only the holder of a
    secret can sign a token, so the grants, which a webhook does not use, are not read."""

    def __init__(self, api_key: str, api_secret: str, more_keys: Iterable[tuple[str, str]] = ()) -> None:
        self._secrets = dict([(api_key, api_secret), *more_keys])
        with warnings.catch_warnings():
            # Short secrets are the settings' business (LiveKit's dev pair has a 6-byte one).
            warnings.simplefilter("ignore", SecurityWarning)
            for secret in self._secrets.values():
                try:
                    OctKey.import_key(secret)  # joserfc's vetting of an HMAC secret
                except ValueError:  # a public key (PEM, SSH, certificate) given as a secret
                    raise ConfigError(
                        "LIVEKIT_API_SECRET or a LIVEKIT_WEBHOOK_KEYS secret is a public key, "
                        "not the API secret LiveKit signs with"
                    ) from None
        self._leeway = int(WEBHOOK_LEEWAY.total_seconds())

    def verify(self, body: bytes, authorization: str) -> None:
        token = authorization.removeprefix("Bearer ").strip()
        if not token:
            raise ApiError(401, "Missing Authorization header with the webhook's signed token")
        try:
            claims = hs256.verified_claims(token, self._secrets, self._leeway)
            claimed = base64.b64decode(claims.get("sha256") or "", validate=True)
        except (hs256.InvalidToken, ValueError, TypeError):  # ValueError, TypeError: sha256 not base64
            raise ApiError(401, "Webhook signature is not valid for this API key and secret") from None
        if not claimed or not hmac.compare_digest(hashlib.sha256(body).digest(), claimed):
            raise ApiError(401, "Webhook body does not match its signature")


class WebhookEndpoint:
    """What a webhook POST does, on the lane (handlers/support/lane.py): its body is
    checked and read as WebhookHandler would, then verified, stored, acknowledged."""

    def __init__(self, event_log: EventLog, verifier: WebhookVerifier) -> None:
        self.event_log = event_log
        self.verifier = verifier

    async def answer(self, exchange: Exchange) -> tuple[int, dict[str, Any]]:
        request = exchange.request
        WebhookHandler.check_body(request)
        body = request.body
        self.verifier.verify(body, request.headers.get("Authorization", ""))
        event = _webhook_event(body)
        redact_credentials(event)
        try:
            event_json = orjson.dumps(event).decode()
        except TypeError:  # orjson writes at most 254 levels of nesting; LiveKit's events have a few
            raise ApiError(400, "Webhook body is not a webhook event (nested too deeply)") from None
        try:
            cursor = await timed_store(
                exchange, "append", self.event_log.append(event["id"], int(time.time() * 1000), event_json)
            )
        except StoreUnavailable:
            # LiveKit retries a 5xx: nothing was acknowledged, nothing was broadcast.
            raise ApiError(503, "The event store is unavailable; retry later") from None
        exchange.log_fields = {
            "event": event["event"],
            "event_id": event["id"],
            "room": str(event.get("room", {}).get("name", "")),
        }
        if cursor is None:
            exchange.log_fields["result"] = "duplicate"
            return 200, {"status": "duplicate"}
        exchange.log_fields.update(result="stored", cursor=cursor)
        return 200, {"status": "stored", "cursor": cursor}


class WebhookHandler(Handler):
    """Webhooks' other methods (405), and bodies refused as too large; POSTs are answered
    on the lane."""

    metrics_label = "webhook"  # what /metrics counts it as (handlers/support/metrics.py)
    max_body_bytes = 1024 * 1024
    content_types = ("application/webhook+json", "application/json")

    @classmethod
    def lane(
        cls, application: tornado.web.Application, request: HTTPServerRequest, kwargs: dict[str, Any]
    ) -> Lane | None:
        if request.method != "POST":
            return None
        endpoint: WebhookEndpoint = kwargs["endpoint"]
        return Lane(application, request, cls, endpoint.answer)

    def initialize(self, endpoint: WebhookEndpoint) -> None:
        self.endpoint = endpoint


def _webhook_event(body: bytes) -> dict[str, Any]:
    """The event as LiveKit sent it; unknown event names and fields pass through."""
    try:
        # Strict JSON (no NaN or Infinity, which a browser could not parse), 64-bit numbers.
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "Webhook body is not valid JSON") from None
    if not isinstance(event, dict):
        raise ApiError(400, "Webhook body is not a webhook event (not a JSON object)")
    for field in ("event", "id"):
        value = event.get(field)
        if not isinstance(value, str) or not value or len(value) > 256:
            raise ApiError(400, f"Webhook body is not a webhook event (no valid {field!r} field)")
    room = event.get("room", {})
    if not isinstance(room, dict):
        raise ApiError(400, "Webhook body is not a webhook event ('room' is not an object)")
    return event


# Credentials that LiveKit's webhook messages can carry (livekit-protocol's WebhookEvent and
# what it nests: Room, IngressInfo, EgressInfo with its upload and proxy settings): never
# stored, never streamed. Both JSON spellings, protobuf's camelCase and the proto names.
CREDENTIAL_FIELDS = frozenset(
    (
        "turnPassword",  # Room: the room's TURN credential
        "streamKey",  # IngressInfo: whoever has it can publish into the room
        "secret",  # S3Upload, AliOSSUpload
        "accessKey",  # S3Upload, AliOSSUpload
        "sessionToken",  # S3Upload
        "assumeRoleExternalId",  # S3Upload
        "credentials",  # GCPUpload: a service account's JSON key
        "accountKey",  # AzureBlobUpload
        "password",  # ProxyConfig
        "signingKey",  # WebhookConfig of an egress request
    )
)
CREDENTIAL_FIELDS |= frozenset(
    "".join(f"_{char.lower()}" if char.isupper() else char for char in name) for name in CREDENTIAL_FIELDS
)
# Maps of the user's own data (participant attributes, upload metadata): kept as they are.
_USER_MAPS = frozenset(("attributes", "metadata"))


def redact_credentials(event: dict[str, Any]) -> None:
    """Remove every credential field from the event, at any depth, in place. (A loop,
    not recursion: a signed body may nest deeper than Python's recursion limit.)"""
    pending: list[Any] = [event]
    while pending:
        value = pending.pop()
        if isinstance(value, list):
            for item in value:
                if isinstance(item, (dict, list)):
                    pending.append(item)
            continue
        if not CREDENTIAL_FIELDS.isdisjoint(value):
            for name in CREDENTIAL_FIELDS.intersection(value):
                del value[name]
        for name, item in value.items():
            if isinstance(item, (dict, list)) and name not in _USER_MAPS:
                pending.append(item)


def routes(config: Config, event_log: EventLog) -> list[Route]:
    """`/livekit/webhook`, where OpenVidu's deployment and tutorials post, and `/webhook`,
    the seed document's path."""
    verifier = WebhookVerifier(config.livekit_api_key, config.livekit_api_secret, config.livekit_webhook_keys)
    arguments = {"endpoint": WebhookEndpoint(event_log, verifier)}
    return [(r"/livekit/webhook", WebhookHandler, arguments), (r"/webhook", WebhookHandler, arguments)]
