"""ground/hs256.py against the libraries: tokens it signs are what PyJWT signs, and of a
thousand tokens (well-formed, odd, mutated character by character) it refuses what
joserfc and PyJWT (livekit-api's TokenVerifier) both refuse and accepts what both accept."""

from __future__ import annotations

import base64
import hmac
import json
import time
import warnings
from typing import Any

import jwt
import pytest
from joserfc import jwt as joserfc_jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from ground import hs256
from tests.conftest import API_KEY, API_SECRET

LEEWAY = 60


def test_signed_tokens_are_what_pyjwt_signs() -> None:
    claims = {"video": {"roomJoin": True, "room": "R"}, "sub": "a", "iss": API_KEY, "nbf": 1, "exp": 2}
    assert hs256.sign(claims, API_SECRET) == jwt.encode(claims, API_SECRET, algorithm="HS256")
    # Non-ASCII names are sent as UTF-8 rather than \u escapes: the same claims once decoded.
    unicode_claims = {**claims, "sub": "ü", "video": {"roomJoin": True, "room": "Réunion 会议"}}
    token = hs256.sign(unicode_claims, API_SECRET)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    options = {"verify_exp": False, "verify_nbf": False}
    assert jwt.decode(token, API_SECRET, algorithms=["HS256"], options=options) == unicode_claims


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(header: Any = None, claims: Any = None, *, secret: str = API_SECRET, raw: bytes = b"") -> str:
    """Signed by `secret`; `raw` is the claims' JSON text as sent, when given."""
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"} if header is None else header
    claims = {"iss": API_KEY, "nbf": now, "exp": now + 300, "sha256": "x"} if claims is None else claims
    header_text = header if isinstance(header, bytes) else json.dumps(header).encode()
    signing_input = _segment(header_text) + "." + _segment(raw or json.dumps(claims).encode())
    return signing_input + "." + _segment(hmac.digest(secret.encode(), signing_input.encode(), "sha256"))


def _signed(header_segment: str, claims_segment: str) -> str:
    signing_input = f"{header_segment}.{claims_segment}"
    return signing_input + "." + _segment(hmac.digest(API_SECRET.encode(), signing_input.encode(), "sha256"))


_BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _spare_bit_set(segment: str) -> str:
    """The same bytes, written with a bit set that base64url leaves over in its last
    character (which decoders ignore, and joserfc and PyJWT refuse)."""
    return segment[:-1] + _BASE64URL[_BASE64URL.index(segment[-1]) | 1]


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": API_KEY, "nbf": now, "exp": now + 300, "sha256": "x", **changes}
    return {name: value for name, value in claims.items() if value is not ...}


def _corpus() -> dict[str, str]:
    now = int(time.time())
    valid = _token()
    base = json.dumps(_claims()).encode()[:-1]  # raw claims text without its closing brace
    tokens = {"valid": valid, "wrong secret": _token(secret="not-the-secret")}
    for name, header in {
        "alg only": {"alg": "HS256"},
        "HS512": {"alg": "HS512"},
        "none": {"alg": "none"},
        "lower case": {"alg": "hs256"},
        "alg a list": {"alg": ["HS256"]},
        "no alg": {"typ": "JWT"},
        "crit": {"alg": "HS256", "crit": ["exp"]},
        "unencoded payload": {"alg": "HS256", "b64": False, "crit": ["b64"]},
        "kid": {"alg": "HS256", "kid": "k"},
        "kid a number": {"alg": "HS256", "kid": 1},
        "unknown member": {"alg": "HS256", "x": 1},
        "typ a number": {"alg": "HS256", "typ": 5},
        "array": [],
        "string": "HS256",
        "not JSON": b"{",
        "NaN": b'{"alg":"HS256","x":NaN}',
        "alg twice, none last": b'{"alg":"HS256","alg":"none"}',
        "alg twice, HS256 last": b'{"alg":"none","alg":"HS256"}',
        "b64 false without crit": {"alg": "HS256", "b64": False},
        "b64 true in crit": {"alg": "HS256", "b64": True, "crit": ["b64"]},
        "b64 in crit but absent": {"alg": "HS256", "crit": ["b64"]},
        "b64 twice in crit": {"alg": "HS256", "b64": True, "crit": ["b64", "b64"]},
        "crit empty": {"alg": "HS256", "b64": True, "crit": []},
        "crit null": {"alg": "HS256", "crit": None},
    }.items():
        tokens[f"header {name}"] = _token(header)
    for name, claims in {
        "exp within the leeway": _claims(exp=now - 30),
        "exp at the leeway": _claims(exp=now - LEEWAY),
        "exp past the leeway": _claims(exp=now - LEEWAY - 1),
        "exp a float": _claims(exp=now + 300.5),
        "exp a string": _claims(exp=str(now + 300)),
        "exp a boolean": _claims(exp=True),
        "exp null": _claims(exp=None),
        "exp huge": _claims(exp=10**30),
        "no exp": _claims(exp=...),
        "nbf in the future": _claims(nbf=now + 600),
        "nbf at the leeway": _claims(nbf=now + LEEWAY),
        "nbf past the leeway": _claims(nbf=now + LEEWAY + 30),  # past it even if a second ticks by
        "nbf a string": _claims(nbf="1"),
        "nbf a float": _claims(nbf=now + 0.5),
        "nbf null": _claims(nbf=None),
        "nbf a boolean": _claims(nbf=False),
        "no nbf": _claims(nbf=...),
        "iat in the future": _claims(iat=now + 600),
        "iat in the past": _claims(iat=now - 600),
        "iat a string": _claims(iat="1"),
        "another issuer": _claims(iss="not-our-key"),
        "issuer a list": _claims(iss=[API_KEY]),
        "issuer a number": _claims(iss=5),
        "issuer empty": _claims(iss=""),
        "no issuer": _claims(iss=...),
        "sub a number": _claims(sub=5),
        "sub": _claims(sub="a"),
        "jti a number": _claims(jti=5),
        "aud a number": _claims(aud=5),
        "aud a list": _claims(aud=["a"]),
        "aud empty": _claims(aud=""),
        "aud an empty list": _claims(aud=[]),
        "aud null": _claims(aud=None),
        "an array": [],
    }.items():
        tokens[f"claims {name}"] = _token(claims=claims)
    for name, raw in {
        "not JSON": b"{",
        "NaN elsewhere": base + b',"x":NaN}',
        "exp NaN": base + b',"exp":NaN}',
        "exp Infinity": base + b',"exp":Infinity}',
        "nested 900 deep": base + b',"d":' + b"[" * 900 + b"]" * 900 + b"}",
        "nested 30,000 deep": base + b',"d":' + b"[" * 30_000 + b"]" * 30_000 + b"}",
        "a 100-bit integer": base + b',"n":1234567890123456789012345678901}',
        "issuer twice": base + b',"iss":"not-our-key"}',
        "not UTF-8": base + b',"x":"\xe9"}',
    }.items():
        tokens[f"raw claims {name}"] = _token(raw=raw)
    header, claims, signature = valid.split(".")
    header_text = b'{"alg": "HS256"}'  # 16 bytes: 4 spare bits in the last character
    claims_text = json.dumps(_claims()).encode()
    claims_text += b" " * (1 - len(claims_text) % 3) if len(claims_text) % 3 != 1 else b""
    tokens |= {
        "header with a spare bit set": _signed(_spare_bit_set(_segment(header_text)), claims),
        "claims with a spare bit set": _signed(header, _spare_bit_set(_segment(claims_text))),
        "claims with no spare bit set": _signed(header, _segment(claims_text)),
    }
    tokens |= {
        "signature padded": valid + "=" * (-len(signature) % 4),
        "signature empty": f"{header}.{claims}.",
        "two segments": f"{header}.{claims}",
        "four segments": valid + ".x",
        "a leading space": " " + valid,
        "a latin-1 letter": valid[:20] + "é" + valid[21:],
        "a lone surrogate": valid[:20] + "\udc80" + valid[21:],
        "empty": "",
    }
    for at, char in enumerate(valid):
        for other in sorted({"A", "B", "-", ".", "=", "+"} - {char}):
            tokens[f"character {at} made {other!r}"] = valid[:at] + other + valid[at + 1 :]
    return tokens


def _joserfc_accepts(token: str) -> bool:
    """The rules this server used joserfc for until it verified by itself."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # joserfc's SecurityWarning on a short secret
            claims = joserfc_jwt.decode(token, OctKey.import_key(API_SECRET), algorithms=["HS256"]).claims
        registry = joserfc_jwt.JWTClaimsRegistry(
            leeway=LEEWAY, iss={"essential": True, "value": API_KEY}, exp={"essential": True}
        )
        registry.validate(claims)
        return True
    except (JoseError, ValueError, TypeError, AttributeError, RecursionError):
        return False


def _pyjwt_accepts(token: str) -> bool:
    """What livekit-api's TokenVerifier asks of PyJWT."""
    try:
        jwt.decode(
            token,
            API_SECRET,
            issuer=API_KEY,
            algorithms=["HS256"],
            leeway=LEEWAY,
            options={"require": ["exp"]},
        )
        return True
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        return False


def _accepts(token: str) -> bool:
    try:
        hs256.verified_claims(token, {API_KEY: API_SECRET}, LEEWAY)
        return True
    except hs256.InvalidToken:
        return False


# Where joserfc and PyJWT differ; what this server does.
DIFFERENCES = {
    "header unknown member": True,  # PyJWT; joserfc refuses what it has no registry entry for
    "header typ a number": True,  # PyJWT
    "header NaN": True,  # PyJWT
    "header crit empty": False,  # PyJWT: RFC 7515 does not allow an empty crit
    "claims exp a string": False,  # joserfc: a NumericDate is a number
    "claims nbf a string": False,  # joserfc
    "claims nbf a boolean": False,  # joserfc
    "claims iat a string": False,  # joserfc
    "claims aud a list": False,  # PyJWT, as livekit-api's TokenVerifier: no audience is expected
    "claims aud null": True,  # PyJWT; joserfc wants a string or a list
    "signature padded": False,  # joserfc: RFC 7515 writes base64url without padding
}


def test_verification_agrees_with_joserfc_and_pyjwt() -> None:
    corpus = _corpus()
    assert len(corpus) > 1000
    answers = {
        name: (_accepts(token), _joserfc_accepts(token), _pyjwt_accepts(token))
        for name, token in corpus.items()
    }
    differing = {name: ours for name, (ours, joserfc, pyjwt) in answers.items() if joserfc != pyjwt}
    assert differing == DIFFERENCES
    disagreeing = {
        name: answer for name, answer in answers.items() if name not in DIFFERENCES and len(set(answer)) > 1
    }
    assert disagreeing == {}
    accepted = {name for name, (ours, *_) in answers.items() if ours}
    assert accepted == {
        "valid",
        *(f"header {name}" for name in ("alg only", "kid", "unknown member", "typ a number", "NaN")),
        "header alg twice, HS256 last",
        "header b64 true in crit",
        "header b64 twice in crit",
        "claims with no spare bit set",
        *(f"claims aud {name}" for name in ("empty", "an empty list", "null")),
        *(
            f"claims {name}"
            for name in (
                "exp within the leeway",
                "exp a float",
                "exp huge",
                "nbf at the leeway",
                "nbf a float",
                "no nbf",
                "iat in the past",
                "sub",
            )
        ),
        *(f"raw claims {name}" for name in ("NaN elsewhere", "nested 900 deep", "a 100-bit integer")),
    }


def test_the_claims_come_back_and_the_issuer_picks_the_secret() -> None:
    secrets = {API_KEY: API_SECRET, "second": "second-secret"}
    claims = hs256.verified_claims(_token(), secrets, LEEWAY)
    assert claims["iss"] == API_KEY and claims["sha256"] == "x"
    second = _claims(iss="second")
    assert hs256.verified_claims(_token(claims=second, secret="second-secret"), secrets, LEEWAY) == second
    for issuer, secret in [("second", API_SECRET), ("third", "second-secret")]:
        with pytest.raises(hs256.InvalidToken):
            hs256.verified_claims(_token(claims=_claims(iss=issuer), secret=secret), secrets, LEEWAY)


def test_nothing_is_read_before_the_signature_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token signed by no one is refused on its signature alone, however large its claims
    (the header allows 64 KiB): JSON an outsider sends is never parsed."""
    read: list[bytes] = []
    real = hs256._json_object
    monkeypatch.setattr(hs256, "_json_object", lambda segment: read.append(segment) or real(segment))
    claims = _segment(b'{"a":[' + b"1.5e-300," * 5000 + b'1],"iss":"' + API_KEY.encode() + b'","b":NaN}')
    forged = _segment(b'{"alg":"HS256"}') + "." + claims + "." + "A" * 43
    with pytest.raises(hs256.InvalidToken):
        hs256.verified_claims(forged, {API_KEY: API_SECRET, "second": "second-secret"}, LEEWAY)
    assert read == []
    hs256.verified_claims(_token(), {API_KEY: API_SECRET}, LEEWAY)
    assert len(read) == 2  # the claims and the header, once signed
