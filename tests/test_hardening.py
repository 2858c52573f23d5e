"""Hostile and broken input on every endpoint: the exact 4xx, and nothing stored or sent."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

import jwt
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.conftest import API_KEY, API_SECRET, sign, webhook_event

GOOD_EVENT = json.dumps(webhook_event()).encode()
JSON = {"Content-Type": "application/json"}
HOOK = {"Content-Type": "application/webhook+json"}


def signed(body: bytes) -> dict[str, str]:
    return {**HOOK, "Authorization": sign(body)}


def forged(claims: dict[str, Any], key: str = API_SECRET, algorithm: str = "HS256") -> dict[str, str]:
    digest = base64.b64encode(hashlib.sha256(GOOD_EVENT).digest()).decode()
    now = int(time.time())
    payload = {"iss": API_KEY, "sha256": digest, "nbf": now, "exp": now + 300, **claims}
    return {**HOOK, "Authorization": jwt.encode(payload, key, algorithm=algorithm)}


def token_body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


# (name, method, path, headers, body, status, part of errorMessage)
CASES: list[tuple[str, str, str, dict[str, str], bytes | None, int, str]] = [
    ("token: malformed json", "POST", "/token", JSON, b"{", 400, "not valid JSON"),
    (
        "token: trailing garbage",
        "POST",
        "/token",
        JSON,
        b'{"roomName":"a","participantName":"b"} x',
        400,
        "JSON",
    ),
    ("token: array", "POST", "/token", JSON, b"[]", 400, "JSON object"),
    ("token: number", "POST", "/token", JSON, b"42", 400, "JSON object"),
    ("token: null", "POST", "/token", JSON, b"null", 400, "JSON object"),
    ("token: string", "POST", "/token", JSON, b'"roomName"', 400, "JSON object"),
    ("token: empty body", "POST", "/token", JSON, b"", 400, "not valid JSON"),
    ("token: deep nesting", "POST", "/token", JSON, b"[" * 30000 + b"]" * 30000, 400, "not valid JSON"),
    ("token: invalid utf-8", "POST", "/token", JSON, b'{"roomName":"\xc3\x28"}', 400, "not valid JSON"),
    ("token: 5000-digit number", "POST", "/token", JSON, b'{"roomName":' + b"9" * 5000 + b"}", 400, "JSON"),
    (
        "token: NaN room",
        "POST",
        "/token",
        JSON,
        b'{"roomName":NaN,"participantName":"a"}',
        400,
        "not valid JSON",
    ),
    (
        "token: infinite room",
        "POST",
        "/token",
        JSON,
        b'{"roomName":1e999,"participantName":"a"}',
        400,
        "not valid JSON",
    ),
    (
        "token: object room",
        "POST",
        "/token",
        JSON,
        token_body(roomName={"$gt": ""}, participantName="a"),
        400,
        "roomName must be a string",
    ),
    (
        "token: list name",
        "POST",
        "/token",
        JSON,
        token_body(roomName="r", participantName=["a"]),
        400,
        "participantName must be a string",
    ),
    (
        "token: bool name",
        "POST",
        "/token",
        JSON,
        token_body(roomName="r", participantName=True),
        400,
        "string",
    ),
    (
        "token: null name",
        "POST",
        "/token",
        JSON,
        token_body(roomName="r", participantName=None),
        400,
        "required",
    ),
    (
        "token: blank room",
        "POST",
        "/token",
        JSON,
        token_body(roomName=" \t ", participantName="a"),
        400,
        "empty",
    ),
    (
        "token: long name",
        "POST",
        "/token",
        JSON,
        token_body(roomName="r", participantName="é" * 257),
        400,
        "at most 256",
    ),
    ("token: NUL", "POST", "/token", JSON, token_body(roomName="r\x00", participantName="a"), 400, "control"),
    (
        "token: CRLF injection",
        "POST",
        "/token",
        JSON,
        token_body(roomName="r", participantName="a\r\nSet-Cookie: x"),
        400,
        "control",
    ),
    (
        "token: lone surrogate",
        "POST",
        "/token",
        JSON,
        b'{"roomName":"\\ud800","participantName":"a"}',
        400,
        "not valid JSON",
    ),
    (
        "token: escape char",
        "POST",
        "/token",
        JSON,
        token_body(roomName="\x1b[31mred", participantName="a"),
        400,
        "control",
    ),
    (
        "token: attributes list",
        "POST",
        "/token",
        JSON,
        token_body(participant_attributes=["a"]),
        400,
        "participant_attributes",
    ),
    (
        "token: attribute number",
        "POST",
        "/token",
        JSON,
        token_body(participant_attributes={"a": 1}),
        400,
        "participant_attributes",
    ),
    (
        "token: metadata object",
        "POST",
        "/token",
        JSON,
        token_body(participant_metadata={"a": 1}),
        400,
        "participant_metadata",
    ),
    (
        "token: room_config string",
        "POST",
        "/token",
        JSON,
        token_body(room_config="agents"),
        400,
        "room_config",
    ),
    (
        "token: agents not list",
        "POST",
        "/token",
        JSON,
        token_body(room_config={"agents": {"a": 1}}),
        400,
        "room_config",
    ),
    (
        "token: room_config bad type",
        "POST",
        "/token",
        JSON,
        token_body(room_config={"max_participants": "many"}),
        400,
        "room_config",
    ),
    ("token: identity number", "POST", "/token", JSON, token_body(participant_identity=7), 400, "string"),
    ("token: text/plain", "POST", "/token", {"Content-Type": "text/plain"}, b"{}", 415, "Content-Type"),
    ("token: no content type", "POST", "/token", {}, b"{}", 415, "Content-Type"),
    (
        "token: form post",
        "POST",
        "/token",
        {"Content-Type": "application/x-www-form-urlencoded"},
        b"a=b",
        415,
        "Content-Type",
    ),
    (
        "token: 70 KB body",
        "POST",
        "/token",
        JSON,
        token_body(roomName="r", participantName="a", x="y" * 70_000),
        413,
        "larger than",
    ),
    ("token: GET", "GET", "/token", {}, None, 405, "Method Not Allowed"),
    ("token: PUT", "PUT", "/token", JSON, b"{}", 405, "Method Not Allowed"),
    ("token: DELETE", "DELETE", "/token", {}, None, 405, "Method Not Allowed"),
    ("token: PATCH", "PATCH", "/token", JSON, b"{}", 405, "Method Not Allowed"),
    ("webhook: no signature", "POST", "/livekit/webhook", HOOK, GOOD_EVENT, 401, "Missing Authorization"),
    (
        "webhook: garbage signature",
        "POST",
        "/livekit/webhook",
        {**HOOK, "Authorization": "Bearer x.y.z"},
        GOOD_EVENT,
        401,
        "not valid",
    ),
    (
        "webhook: alg none",
        "POST",
        "/livekit/webhook",
        {
            **HOOK,
            "Authorization": jwt.encode(
                {"iss": API_KEY, "exp": int(time.time()) + 60}, None, algorithm="none"
            ),
        },
        GOOD_EVENT,
        401,
        "not valid",
    ),
    (
        "webhook: HS512",
        "POST",
        "/livekit/webhook",
        forged({}, algorithm="HS512"),
        GOOD_EVENT,
        401,
        "not valid",
    ),
    (
        "webhook: wrong secret",
        "POST",
        "/livekit/webhook",
        forged({}, key="guessed-secret"),
        GOOD_EVENT,
        401,
        "not valid",
    ),
    (
        "webhook: other issuer",
        "POST",
        "/livekit/webhook",
        forged({"iss": "otherkey"}),
        GOOD_EVENT,
        401,
        "not valid",
    ),
    (
        "webhook: expired",
        "POST",
        "/livekit/webhook",
        forged({"exp": int(time.time()) - 120}),
        GOOD_EVENT,
        401,
        "not valid",
    ),
    (
        "webhook: not yet valid",
        "POST",
        "/livekit/webhook",
        forged({"nbf": int(time.time()) + 600}),
        GOOD_EVENT,
        401,
        "not valid",
    ),
    ("webhook: no exp", "POST", "/livekit/webhook", forged({"exp": None}), GOOD_EVENT, 401, "not valid"),
    (
        "webhook: sha256 not base64",
        "POST",
        "/livekit/webhook",
        forged({"sha256": "%%%"}),
        GOOD_EVENT,
        401,
        "not valid",
    ),
    (
        "webhook: no sha256",
        "POST",
        "/livekit/webhook",
        forged({"sha256": None}),
        GOOD_EVENT,
        401,
        "not match",
    ),
    (
        "webhook: tampered body",
        "POST",
        "/livekit/webhook",
        signed(GOOD_EVENT),
        GOOD_EVENT.replace(b"R", b"Q"),
        401,
        "does not match",
    ),
    (
        "webhook: replayed signature, new body",
        "POST",
        "/livekit/webhook",
        signed(GOOD_EVENT),
        json.dumps(webhook_event("room_finished")).encode(),
        401,
        "does not match",
    ),
    (
        "webhook: re-serialised body",
        "POST",
        "/livekit/webhook",
        signed(GOOD_EVENT),
        json.dumps(json.loads(GOOD_EVENT), indent=1).encode(),
        401,
        "does not match",
    ),
    (
        "webhook: signed non-json",
        "POST",
        "/livekit/webhook",
        signed(b"<xml/>"),
        b"<xml/>",
        400,
        "not valid JSON",
    ),
    ("webhook: signed array", "POST", "/livekit/webhook", signed(b"[]"), b"[]", 400, "not a JSON object"),
    (
        "webhook: signed no id",
        "POST",
        "/livekit/webhook",
        signed(b'{"event":"room_started"}'),
        b'{"event":"room_started"}',
        400,
        "'id'",
    ),
    (
        "webhook: signed numeric event",
        "POST",
        "/livekit/webhook",
        signed(b'{"event":1,"id":"EV_1"}'),
        b'{"event":1,"id":"EV_1"}',
        400,
        "'event'",
    ),
    (
        "webhook: signed room string",
        "POST",
        "/livekit/webhook",
        signed(b'{"event":"x","id":"EV_2","room":"R"}'),
        b'{"event":"x","id":"EV_2","room":"R"}',
        400,
        "'room'",
    ),
    (
        "webhook: text/plain",
        "POST",
        "/livekit/webhook",
        {**signed(GOOD_EVENT), "Content-Type": "text/plain"},
        GOOD_EVENT,
        415,
        "Content-Type",
    ),
    (
        "webhook: 1.1 MB",
        "POST",
        "/livekit/webhook",
        signed(b"x" * 1_100_000),
        b"x" * 1_100_000,
        413,
        "larger",
    ),
    ("webhook: GET", "GET", "/livekit/webhook", {}, None, 405, "Method Not Allowed"),
    ("webhook: seed path unsigned", "POST", "/webhook", HOOK, GOOD_EVENT, 401, "Missing Authorization"),
    ("history: limit 0", "GET", "/events/history?limit=0", {}, None, 400, "limit"),
    ("history: limit text", "GET", "/events/history?limit=all", {}, None, 400, "limit"),
    ("history: limit huge", "GET", "/events/history?limit=99999999999999999999", {}, None, 400, "limit"),
    ("history: POST", "POST", "/events/history", JSON, b"{}", 405, "Method Not Allowed"),
    ("healthz: DELETE", "DELETE", "/healthz", {}, None, 405, "Method Not Allowed"),
    ("unknown path", "GET", "/admin", {}, None, 404, "No such endpoint"),
    ("path traversal", "GET", "/vendor/livekit-client/..%2F..%2F..%2Fconfig.py", {}, None, 403, ""),
]


def test_the_battery_is_large() -> None:
    assert len(CASES) >= 50
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
@pytest.mark.gen_test
async def test_bad_input(http_client: Any, base_url: str, case: tuple[Any, ...]) -> None:
    _, method, path, headers, body, status, message = case
    watcher = await websocket_connect(base_url.replace("http", "ws") + "/events")
    response = await http_client.fetch(
        base_url + path,
        method=method,
        headers=headers,
        body=body,
        raise_error=False,
        allow_nonstandard_methods=True,
    )
    assert response.code == status, response.body
    if message:
        assert response.headers["Content-Type"].startswith("application/json")
        assert message in json.loads(response.body)["errorMessage"]
    assert b"Traceback" not in response.body
    history = await http_client.fetch(base_url + "/events/history")
    assert json.loads(history.body) == []  # nothing stored
    marker = json.dumps(webhook_event("room_finished")).encode()
    await http_client.fetch(base_url + "/livekit/webhook", method="POST", body=marker, headers=signed(marker))
    assert json.loads(await watcher.read_message())["event"] == json.loads(marker)  # nothing sent before it
    watcher.close()


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1.evil.example"])
@pytest.mark.gen_test
async def test_foreign_origins_cannot_open_the_event_socket(
    base_url: str, http_server: Any, origin: str
) -> None:
    request = HTTPRequest(base_url.replace("http", "ws") + "/events", headers={"Origin": origin})
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(request)
    assert refused.value.code == 403
