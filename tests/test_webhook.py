"""POST /livekit/webhook and /webhook: LiveKit-signed events are stored and sent; nothing else is."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import time
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from livekit.api import TokenVerifier, WebhookReceiver
from tornado.websocket import websocket_connect

from ground.errors import ApiError
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
    "signed, nested 300 deep": (
        lambda: webhook_request(b'{"event": "x", "id": "EV_3", "n": ' + b"[" * 300 + b"]" * 300 + b"}"),
        400,
        "nested too deeply",
    ),
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
    with closing(sqlite3.connect(config.events_db)) as other:
        other.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    response = await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(webhook_event()))
    assert response.code == 503
    assert "unavailable" in json.loads(response.body)["errorMessage"]
    health = await http_client.fetch(base_url + "/healthz", raise_error=False)
    assert health.code == 503
    with closing(sqlite3.connect(config.events_db)) as other:
        other.execute("DROP TRIGGER refuse")
    retried = webhook_event("room_finished")
    assert (await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(retried))).code == 200
    assert json.loads(await socket.read_message())["event"]["id"] == retried["id"]
    assert [frame["event"]["id"] for frame in await history(http_client, base_url)] == [retried["id"]]
    socket.close()


def _claims_token(body: bytes, **changes: Any) -> str:
    """A webhook token as LiveKit signs one, with claims or header fields changed (None: left out)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sha256": base64.b64encode(hashlib.sha256(body).digest()).decode(),
        "iss": API_KEY,
        "nbf": now,
        "exp": now + 300,
    }
    header = {"alg": "HS256", "typ": "JWT"}
    for name, value in changes.items():
        target = header if name in header else claims
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    algorithm = header.pop("alg")
    return jwt.encode(claims, API_SECRET, algorithm=algorithm, headers=header)


def _deeply_nested_token(body: bytes) -> str:
    """Signed claims with an array nested 30,000 deep: past what json's parser takes on any
    Python this server runs on (3.13's takes 5,000), and short enough for one header."""
    claims = jwt.decode(_claims_token(body), options={"verify_signature": False})
    text = json.dumps(claims)[:-1] + ', "deep": ' + "[" * 30_000 + "]" * 30_000 + "}"

    def segment(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = segment(b'{"alg":"HS256","typ":"JWT"}') + "." + segment(text.encode())
    signature = hmac.digest(API_SECRET.encode(), signing_input.encode(), "sha256")
    return signing_input + "." + segment(signature)


TOKENS: dict[str, Any] = {
    "valid": lambda body: sign(body),
    "tampered": lambda body: sign(body + b" "),
    "wrong secret": lambda body: sign(body, secret="not-the-secret-" + "x" * 32),
    "expired": lambda body: sign(body, ttl=timedelta(minutes=-5)),
    "expired within the leeway": lambda body: _claims_token(body, exp=int(time.time()) - 30),
    "not valid yet": lambda body: _claims_token(body, nbf=int(time.time()) + 600),
    "no exp": lambda body: _claims_token(body, exp=None),
    "another issuer": lambda body: _claims_token(body, iss="not-our-key"),
    "no issuer": lambda body: _claims_token(body, iss=None),
    "HS512": lambda body: _claims_token(body, alg="HS512"),
    "alg none": lambda body: jwt.encode(
        {"iss": API_KEY, "exp": int(time.time()) + 300}, None, algorithm="none"
    ),
    "sha256 not a string": lambda body: _claims_token(body, sha256=12),
    "no sha256": lambda body: _claims_token(body, sha256=None),
    "claims nested 30,000 deep": lambda body: _deeply_nested_token(body),
    "two segments": lambda body: sign(body).rsplit(".", 1)[0],
    "junk": lambda body: "not a token at all",
}
ACCEPTED = {"valid", "expired within the leeway"}


@pytest.mark.parametrize("token_kind", TOKENS)
def test_verifier_agrees_with_livekit_webhook_receiver(token_kind: str) -> None:
    body = json.dumps(webhook_event()).encode()
    token = TOKENS[token_kind](body)
    ours = livekit = True
    try:
        WebhookVerifier(API_KEY, API_SECRET).verify(body, token)
    except ApiError as refusal:
        assert refusal.status_code == 401
        ours = False
    try:
        WebhookReceiver(TokenVerifier(API_KEY, API_SECRET)).receive(body.decode(), token)
    except Exception:
        livekit = False
    assert ours == livekit == (token_kind in ACCEPTED)


@pytest.mark.gen_test
async def test_oversized_webhook_is_413(http_client: Any, base_url: str) -> None:
    event = webhook_event(pad="x" * (1024 * 1024))
    response = await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(event))
    assert response.code == 413
    assert await history(http_client, base_url) == []


def test_webhooks_verify_against_every_configured_key(server_process: Any) -> None:
    """Key rotation: the LiveKit server may sign with the old or the new key meanwhile."""
    from tests.conftest import post_webhook

    old, new = ("APIold", "o" * 40), ("APInew", "n" * 40)
    server = server_process(LIVEKIT_WEBHOOK_KEYS=f"{old[0]}: {old[1]}, {new[0]}:{new[1]}")
    stored = []
    for key, secret in [(API_KEY, API_SECRET), old, new]:
        event = webhook_event(room=key)
        assert post_webhook(server.url, event, key=key, secret=secret) == 200
        stored.append(event["id"])
    assert post_webhook(server.url, webhook_event(), key="APIunknown", secret="u" * 40) == 401
    assert post_webhook(server.url, webhook_event(), key=new[0], secret=old[1]) == 401  # another key's secret
    assert post_webhook(server.url, webhook_event(), key=old[0], secret=API_SECRET) == 401
    assert [frame["event"]["id"] for frame in server.history()] == stored
    assert old[1] not in server.log_text() and new[1] not in server.log_text()


def test_verifier_picks_the_secret_by_issuer() -> None:
    body = json.dumps(webhook_event()).encode()
    verifier = WebhookVerifier(API_KEY, API_SECRET, [("second", "second-secret")])
    verifier.verify(body, sign(body, key="second", secret="second-secret"))
    verifier.verify(body, sign(body))
    for key, secret in [("second", API_SECRET), ("third", "second-secret")]:
        with pytest.raises(ApiError) as refused:
            verifier.verify(body, sign(body, key=key, secret=secret))
        assert refused.value.status_code == 401 and "not valid" in refused.value.message


SECRETS = {
    "turnPassword": "TURN-PASSWORD-1f9c",
    "streamKey": "STREAM-KEY-7a0e",
    "s3secret": "S3-SECRET-b6d2",
    "s3accessKey": "S3-ACCESS-KEY-0c3a",
    "sessionToken": "S3-SESSION-TOKEN-e8d1",
    "gcp": "GCP-CREDENTIALS-51aa",
    "azure": "AZURE-ACCOUNT-KEY-9e07",
    "proxy": "PROXY-PASSWORD-44f0",
    "signingKey": "EGRESS-WEBHOOK-SIGNING-KEY-2b7c",
}


def event_with_credentials() -> dict[str, Any]:
    """A webhook carrying every credential field livekit-protocol's messages can hold."""
    s3 = {
        "accessKey": SECRETS["s3accessKey"],
        "secret": SECRETS["s3secret"],
        "sessionToken": SECRETS["sessionToken"],
        "bucket": "recordings",
        "proxy": {"url": "http://proxy:3128", "username": "rec", "password": SECRETS["proxy"]},
    }
    return webhook_event(
        "egress_started",
        room="R",
        egressInfo={
            "egressId": "EG_1",
            "roomName": "R",
            "roomComposite": {
                "roomName": "R",
                "fileOutputs": [{"filepath": "r.mp4", "s3": s3}],
                "segmentOutputs": [{"gcp": {"credentials": SECRETS["gcp"], "bucket": "b"}}],
                "imageOutputs": [{"azure": {"accountName": "acct", "accountKey": SECRETS["azure"]}}],
            },
            "webhooks": [{"url": "https://hooks.example/egress", "signingKey": SECRETS["signingKey"]}],
        },
        ingressInfo={"ingressId": "IN_1", "streamKey": SECRETS["streamKey"], "url": "rtmp://ingress/x"},
        participant={"identity": "alice", "attributes": {"password": "user data, kept"}},
    ) | {"room": {"sid": "RM_1", "name": "R", "turnPassword": SECRETS["turnPassword"], "maxParticipants": 9}}


@pytest.mark.gen_test
async def test_credentials_never_reach_the_store_the_history_or_a_socket(
    http_client: Any, base_url: str, config: Any
) -> None:
    socket = await websocket_connect(base_url.replace("http", "ws") + "/events")
    event = event_with_credentials()
    response = await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(event))
    assert response.code == 200 and json.loads(response.body)["status"] == "stored"
    sent = await socket.read_message()
    socket.close()
    history_body = (await http_client.fetch(base_url + "/events/history")).body.decode()
    with closing(sqlite3.connect(config.events_db)) as db:
        stored = "\n".join(str(row) for row in db.execute("SELECT * FROM events"))
    # The files themselves too (the database and its write-ahead log).
    files = b"".join(path.read_bytes() for path in Path(config.events_db).parent.glob("events.sqlite3*"))
    files_text = files.decode("latin-1")
    for where, text in [
        ("socket", sent),
        ("history", history_body),
        ("store", stored),
        ("files", files_text),
    ]:
        assert event["id"] in text, where
        leaked = [name for name, secret in SECRETS.items() if secret in text]
        assert leaked == [], f"{where} holds {leaked}"
    frame = json.loads(sent)["event"]
    # Everything else arrives as LiveKit sent it.
    assert frame["room"] == {"sid": "RM_1", "name": "R", "maxParticipants": 9}
    assert frame["ingressInfo"] == {"ingressId": "IN_1", "url": "rtmp://ingress/x"}
    assert frame["egressInfo"]["roomComposite"]["fileOutputs"][0]["s3"] == {
        "bucket": "recordings",
        "proxy": {"url": "http://proxy:3128", "username": "rec"},
    }
    assert frame["participant"]["attributes"] == {"password": "user data, kept"}


def test_credential_fields_cover_every_livekit_message_a_webhook_holds() -> None:
    """A newer livekit-protocol with another credential field fails here until it is listed."""
    from livekit.protocol.webhook import WebhookEvent

    from handlers.webhook import CREDENTIAL_FIELDS

    not_credentials = {"keyFrameInterval", "key", "assumeRoleArn", "accountName", "bypassTranscoding"}
    looks_secret = ("pass", "secret", "key", "token", "credential", "externalid")
    seen: set[str] = set()
    found: set[str] = set()

    def walk(descriptor: Any) -> None:
        if descriptor.full_name in seen:
            return
        seen.add(descriptor.full_name)
        for field in descriptor.fields:
            if any(word in field.json_name.lower() for word in looks_secret):
                found.add(field.json_name)
            if field.message_type is not None:
                walk(field.message_type)

    walk(WebhookEvent.DESCRIPTOR)
    assert {"turnPassword", "streamKey", "secret", "credentials"} <= found
    assert found - not_credentials <= CREDENTIAL_FIELDS
