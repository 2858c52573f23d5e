"""POST /livekit/webhook and /webhook: LiveKit-signed events are stored and sent; nothing else is."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from typing import Any

import pytest
from livekit.api import TokenVerifier, WebhookReceiver
from tornado.websocket import websocket_connect

from handlers.webhook import WebhookVerifier
from tests.conftest import API_KEY, API_SECRET, sign, webhook_event, webhook_request


async def history(http_client: Any, base_url: str) -> list[dict[str, Any]]:
    response = await http_client.fetch(base_url + "/events/history?limit=1000")
    return [frame for frame in json.loads(response.body) if "cursor" in frame]


@pytest.mark.parametrize("path", ["/livekit/webhook", "/webhook"])
@pytest.mark.gen_test
async def test_signed_webhook_is_stored_and_sent_to_sockets(
    http_client: Any, base_url: str, path: str
) -> None:
    socket = await websocket_connect(base_url.replace("http", "ws") + "/events")
    event = webhook_event("participant_joined", room="R", participant={"identity": "alice", "sid": "PA_1"})
    response = await http_client.fetch(base_url + path, **webhook_request(event))
    assert response.code == 200
    assert json.loads(response.body)["status"] == "stored"
    frame = json.loads(await socket.read_message())
    assert frame["event"] == event  # LiveKit's own JSON, field for field
    assert frame["cursor"] == json.loads(response.body)["cursor"]
    assert isinstance(frame["receivedAt"], int)
    socket.close()


@pytest.mark.gen_test
async def test_plain_json_content_type_and_unknown_event_names_pass(http_client: Any, base_url: str) -> None:
    event = webhook_event("some_future_event", futureField={"x": 1})
    request = webhook_request(event)
    request["headers"]["Content-Type"] = "application/json; charset=utf-8"
    assert (await http_client.fetch(base_url + "/livekit/webhook", **request)).code == 200
    assert (await history(http_client, base_url))[-1]["event"]["futureField"] == {"x": 1}


def tampered() -> dict[str, Any]:
    body = json.dumps(webhook_event()).encode()
    request = webhook_request(body)
    request["body"] = body.replace(b'"R"', b'"X"')
    return request


def unsigned_header(header: str) -> dict[str, Any]:
    request = webhook_request(webhook_event())
    request["headers"]["Authorization"] = header
    return request


def no_sha256_claim() -> dict[str, Any]:
    from livekit.api import AccessToken

    request = webhook_request(webhook_event())
    request["headers"]["Authorization"] = AccessToken(API_KEY, API_SECRET).to_jwt()
    return request


REFUSED = {
    "tampered body": (tampered, 401, "does not match"),
    "wrong secret": (lambda: webhook_request(webhook_event(), secret="not-the-secret"), 401, "not valid"),
    "wrong key": (lambda: webhook_request(webhook_event(), key="otherkey"), 401, "not valid"),
    "expired": (lambda: webhook_request(webhook_event(), ttl=timedelta(minutes=-5)), 401, "not valid"),
    "missing header": (lambda: unsigned_header(""), 401, "Missing Authorization"),
    "garbage token": (lambda: unsigned_header("abc.def.ghi"), 401, "not valid"),
    "token without sha256": (no_sha256_claim, 401, "does not match"),
    "signed non-json": (lambda: webhook_request(b"hello"), 400, "not valid JSON"),
    "signed array": (lambda: webhook_request(b"[1]"), 400, "not a JSON object"),
    "signed object without event": (lambda: webhook_request(b'{"id": "EV_1"}'), 400, "'event'"),
    "signed event without id": (lambda: webhook_request(b'{"event": "room_started"}'), 400, "'id'"),
    "signed NaN": (lambda: webhook_request(b'{"event": "x", "id": "EV_2", "n": NaN}'), 400, "not valid JSON"),
}


@pytest.mark.parametrize("case", REFUSED)
@pytest.mark.gen_test
async def test_refused_webhooks_change_nothing(http_client: Any, base_url: str, case: str) -> None:
    make_request, status, message = REFUSED[case]
    socket = await websocket_connect(base_url.replace("http", "ws") + "/events")
    response = await http_client.fetch(base_url + "/livekit/webhook", **make_request())
    assert response.code == status
    assert message in json.loads(response.body)["errorMessage"]
    assert await history(http_client, base_url) == []
    # A stored event after the refused one is the first thing the socket receives.
    good = webhook_event("room_finished")
    assert (await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(good))).code == 200
    assert json.loads(await socket.read_message())["event"]["id"] == good["id"]
    socket.close()


@pytest.mark.gen_test
async def test_duplicate_id_is_acknowledged_but_not_stored_or_sent_twice(
    http_client: Any, base_url: str
) -> None:
    socket = await websocket_connect(base_url.replace("http", "ws") + "/events")
    event = webhook_event("track_published")
    first = await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(event))
    again = await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(event))
    assert (first.code, again.code) == (200, 200)
    assert json.loads(again.body)["status"] == "duplicate"
    marker = webhook_event("room_finished")
    await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(marker))
    received = [json.loads(await socket.read_message())["event"]["id"] for _ in range(2)]
    assert received == [event["id"], marker["id"]]
    assert [frame["event"]["id"] for frame in await history(http_client, base_url)] == received
    socket.close()


@pytest.mark.gen_test
async def test_store_failure_is_503_and_nothing_is_broadcast(
    http_client: Any, base_url: str, config: Any
) -> None:
    socket = await websocket_connect(base_url.replace("http", "ws") + "/events")
    # A real SQLite failure: another connection makes every insert abort.
    with sqlite3.connect(config.events_db) as other:
        other.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    response = await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(webhook_event()))
    assert response.code == 503
    assert "unavailable" in json.loads(response.body)["errorMessage"]
    health = await http_client.fetch(base_url + "/healthz", raise_error=False)
    assert health.code == 503
    with sqlite3.connect(config.events_db) as other:
        other.execute("DROP TRIGGER refuse")
    retried = webhook_event("room_finished")
    assert (await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(retried))).code == 200
    assert json.loads(await socket.read_message())["event"]["id"] == retried["id"]
    assert [frame["event"]["id"] for frame in await history(http_client, base_url)] == [retried["id"]]
    socket.close()


@pytest.mark.parametrize("body_kind", ["valid", "tampered", "wrong secret", "expired"])
def test_verifier_agrees_with_livekit_webhook_receiver(body_kind: str) -> None:
    body = json.dumps(webhook_event()).encode()
    secret = "not-the-secret" if body_kind == "wrong secret" else API_SECRET
    ttl = timedelta(minutes=-5) if body_kind == "expired" else timedelta(minutes=5)
    token = sign(body, secret=secret, ttl=ttl)
    sent = body + b" " if body_kind == "tampered" else body
    ours = livekit = True
    try:
        WebhookVerifier(API_KEY, API_SECRET).verify(sent, token)
    except Exception:
        ours = False
    try:
        WebhookReceiver(TokenVerifier(API_KEY, API_SECRET)).receive(sent.decode(), token)
    except Exception:
        livekit = False
    assert ours == livekit == (body_kind == "valid")


@pytest.mark.gen_test
async def test_oversized_webhook_is_413(http_client: Any, base_url: str) -> None:
    event = webhook_event(pad="x" * (1024 * 1024))
    response = await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(event))
    assert response.code == 413
    assert await history(http_client, base_url) == []
