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
import time
from collections.abc import Mapping
from typing import Any, TypeGuard

import orjson

_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")


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
    """A compact HS256 JWT: what PyJWT's encode produces for these claims (but for text
    beyond ASCII, written as UTF-8 rather than \\u escapes: the same claims once read)."""
    signing_input = _HEADER + b"." + base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=")
    return (signing_input + b"." + _signature(signing_input, secret)).decode()


def _json_object(segment: bytes) -> dict[str, Any]:
    try:
        text = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except binascii.Error:
        raise InvalidToken("a segment is not base64url") from None
    # Written back the same, or refused: other characters (which the decoder skips),
    # padding, spare bits set in the last character.
    if base64.urlsafe_b64encode(text).rstrip(b"=") != segment:
        raise InvalidToken("a segment is not canonical base64url")
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        # The libraries read with Python's json, which takes more: NaN and Infinity,
        # integers beyond 64 bits, nesting beyond 1,024 levels, UTF-16. (Signed text only.)
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


def _plain_hs256(header: dict[str, Any]) -> bool:
    """HS256 over base64url segments: no other algorithm, no extension but RFC 7797's `b64`
    left at its default (an unencoded payload is not read), a `kid` if any a string."""
    if header.get("alg") != "HS256" or header.get("b64", True) is not True:
        return False
    crit = header.get("crit")
    if "crit" in header and (
        not isinstance(crit, list) or not crit or any(name != "b64" for name in crit) or "b64" not in header
    ):
        return False
    return isinstance(header.get("kid", ""), str)


def verified_claims(token: str, secrets: Mapping[str, str], leeway: int) -> dict[str, Any]:
    """The claims of `token` when the secret of the API key its `iss` names signed it with
    HS256, it has an `exp` not past and no `nbf` or `iat` in the future, each give or take
    `leeway` seconds; otherwise InvalidToken. What joserfc and livekit-api's TokenVerifier
    (PyJWT) both refuse is refused and what both accept is accepted (tests/test_hs256.py
    names where they differ and which side this takes)."""
    try:
        segments = token.encode("ascii").split(b".")
    except UnicodeEncodeError:
        raise InvalidToken("not ASCII") from None
    if len(segments) != 3:
        raise InvalidToken("not three segments")
    header_segment, claims_segment, signature = segments
    # The signature first, under each API key's secret (a few at most): nothing an
    # outsider sends is parsed before it is known to be signed.
    signing_input = header_segment + b"." + claims_segment
    signers = [
        key
        for key, secret in secrets.items()
        if hmac.compare_digest(_signature(signing_input, secret), signature)
    ]
    if not signers:
        raise InvalidToken("signature")
    claims = _json_object(claims_segment)
    if claims.get("iss") not in signers:  # signed with the secret of another key than it names
        raise InvalidToken("not issued by the key whose secret signed it")
    if not _plain_hs256(_json_object(header_segment)):
        raise InvalidToken("not plain HS256")
    if claims.get("aud") not in (None, "", []):  # for some audience: PyJWT refuses it when none is expected
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
