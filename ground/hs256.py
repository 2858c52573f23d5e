"""HS256 JSON Web Tokens (RFC 7519 in RFC 7515's compact form): signed for /token,
verified for webhooks.

Both are on the hot path and both are the same few steps: two base64url segments, one
HMAC-SHA256, one JSON object. PyJWT and joserfc take each through generic machinery
(algorithm registries, header registries, key objects): signing with PyJWT cost 38 us,
verifying a webhook with joserfc 42 us of a 250 us request (docs/decisions.md). The
tests hold both halves to the libraries' answers (tests/test_hs256.py)."""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any, TypeGuard

import orjson

_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")  # base64url without padding, as RFC 7515 writes it


class InvalidToken(ValueError):
    """Not a token these secrets signed, or not valid now."""


@functools.cache
def _keyed_hmac(secret: str) -> hmac.HMAC:
    return hmac.new(secret.encode(), digestmod="sha256")


def _signature(signing_input: bytes, secret: str) -> bytes:
    mac = _keyed_hmac(secret).copy()  # a copy of one keyed once: half of hmac.digest's work
    mac.update(signing_input)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=")


def sign(claims: dict[str, Any], secret: str) -> str:
    """A compact HS256 JWT: what PyJWT's encode produces for these claims."""
    signing_input = _HEADER + b"." + base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=")
    return (signing_input + b"." + _signature(signing_input, secret)).decode()


def _json_object(segment: bytes) -> dict[str, Any]:
    if not _SEGMENT.fullmatch(segment):
        raise InvalidToken("a segment is not base64url")
    try:
        text = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except binascii.Error:
        raise InvalidToken("a segment is not base64url") from None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        # The libraries read with Python's json, which also takes NaN and Infinity.
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise InvalidToken("a segment is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken("a segment is not a JSON object")
    return value


def _is_time(value: Any) -> TypeGuard[int | float]:
    """A NumericDate: a finite JSON number, not a boolean (NaN compares false with any time)."""
    return not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    )


def verified_claims(token: str, secrets: Mapping[str, str], leeway: int) -> dict[str, Any]:
    """The claims of `token` when the secret of the API key its `iss` names signed it with
    HS256, it has an `exp` not past and no `nbf` or `iat` in the future, each give or take
    `leeway` seconds; otherwise InvalidToken. What joserfc and livekit-api's TokenVerifier
    (PyJWT) both refuse is refused; where they differ, this does as one of them does."""
    try:
        segments = token.encode("ascii").split(b".")
    except UnicodeEncodeError:
        raise InvalidToken("not ASCII") from None
    if len(segments) != 3:
        raise InvalidToken("not three segments")
    header_segment, claims_segment, signature = segments
    claims = _json_object(claims_segment)  # its issuer names the secret
    issuer = claims.get("iss")
    secret = secrets.get(issuer) if isinstance(issuer, str) else None
    if secret is None:
        raise InvalidToken("not issued by one of these API keys")
    expected = _signature(header_segment + b"." + claims_segment, secret)
    if not hmac.compare_digest(expected, signature):
        raise InvalidToken("signature")
    header = _json_object(header_segment)
    if header.get("alg") != "HS256" or "crit" in header or not isinstance(header.get("kid", ""), str):
        raise InvalidToken("not HS256, or an extension this reader does not know")
    if "aud" in claims:  # for some other audience: livekit-api's TokenVerifier refuses it too
        raise InvalidToken("aud")
    if not isinstance(claims.get("sub", ""), str) or not isinstance(claims.get("jti", ""), str):
        raise InvalidToken("sub or jti is not a string")
    now = int(time.time())
    expires = claims.get("exp")
    if not _is_time(expires) or expires <= now - leeway:
        raise InvalidToken("expired, or no exp")
    for name in ("nbf", "iat"):
        if name in claims and (not _is_time(claims[name]) or claims[name] > now + leeway):
            raise InvalidToken(f"{name} is in the future")
    return claims
