"""LOG_FORMAT=json (one JSON object a line, never a token or secret) and X-Request-Id."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest
from tornado.websocket import websocket_connect

from tests.conftest import post_webhook, webhook_event

OPENVIDU_BODY = b'{"roomName":"R","participantName":"alice"}'
REQUEST_ID = re.compile(r"[0-9a-f]{32}")


def post_token(
    base_url: str, body: bytes = OPENVIDU_BODY, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        base_url + "/token", data=body, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), dict(error.headers), error.read()


def test_json_logs_are_one_object_a_line_with_the_request_fields(server_process: Any) -> None:
    server = server_process(LOG_FORMAT="json", TOKEN_AUTH_SECRET="token-door-secret")
    status, headers, body = post_token(server.url, Authorization="Bearer token-door-secret")
    assert status == 200
    token = json.loads(body)["token"]
    refused = post_token(server.url, b'{"roomName":"R"}', Authorization="Bearer token-door-secret")
    event = webhook_event("participant_joined", room="standup")
    assert post_webhook(server.url, event) == 200
    assert server.stop() == 0

    lines = server.log_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    assert any(record["message"].startswith("Listening on") for record in records)
    access = {record.get("request_id"): record for record in records if record["logger"] == "tornado.access"}

    minted = access[headers["X-Request-Id"]]
    assert minted["level"] == "DEBUG"
    assert (minted["method"], minted["path"], minted["status"], minted["client"]) == (
        "POST",
        "/token",
        200,
        "127.0.0.1",
    )
    assert (minted["room"], minted["identity"], minted["shape"]) == ("R", "alice", "openvidu")
    assert isinstance(minted["duration_ms"], float)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00", minted["time"])

    assert access[refused[1]["X-Request-Id"]]["status"] == 400
    assert access[refused[1]["X-Request-Id"]]["level"] == "WARNING"
    stored = next(record for record in access.values() if record.get("event_id") == event["id"])
    assert (stored["room"], stored["event"], stored["result"]) == ("standup", "participant_joined", "stored")

    text = "\n".join(lines)
    assert token not in text and token.split(".")[2] not in text
    assert "token-door-secret" not in text


def test_text_logs_stay_the_default(server_process: Any) -> None:
    server = server_process()
    post_token(server.url)
    server.stop()
    line = next(line for line in server.log_text().splitlines() if "POST /token" in line)
    assert re.fullmatch(
        r"\S+ \S+ DEBUG tornado\.access: 200 POST /token \(127\.0\.0\.1\) .*room=R identity=alice", line
    )


@pytest.mark.gen_test
async def test_every_answer_has_a_request_id(http_client: Any, base_url: str) -> None:
    answers = [
        await http_client.fetch(base_url + path, raise_error=False)
        for path in ("/", "/healthz", "/nope", "/static/room.js", "/events/history?limit=0")
    ]
    assert [answer.code for answer in answers] == [200, 200, 404, 200, 400]
    ids = [answer.headers["X-Request-Id"] for answer in answers]
    assert all(REQUEST_ID.fullmatch(request_id) for request_id in ids)
    assert len(set(ids)) == len(ids)
    socket = await websocket_connect(base_url.replace("http", "ws") + "/events")
    assert REQUEST_ID.fullmatch(socket.headers["X-Request-Id"])
    socket.close()


@pytest.mark.gen_test
async def test_an_incoming_id_is_replaced_when_the_proxy_is_not_trusted(
    http_client: Any, base_url: str
) -> None:
    answer = await http_client.fetch(base_url + "/healthz", headers={"X-Request-Id": "from-anyone"})
    assert REQUEST_ID.fullmatch(answer.headers["X-Request-Id"])


@pytest.mark.settings(trust_proxy_headers=True)
@pytest.mark.gen_test
async def test_a_trusted_proxy_keeps_its_request_id(http_client: Any, base_url: str) -> None:
    kept = await http_client.fetch(base_url + "/healthz", headers={"X-Request-Id": "nginx-7f3a9c"})
    assert kept.headers["X-Request-Id"] == "nginx-7f3a9c"
    for unusable in ("has space", "x" * 129):  # would corrupt or flood every log line it is in
        replaced = await http_client.fetch(base_url + "/healthz", headers={"X-Request-Id": unusable})
        assert REQUEST_ID.fullmatch(replaced.headers["X-Request-Id"])


@pytest.mark.gen_test
async def test_browsers_on_other_origins_may_read_the_request_id(http_client: Any, base_url: str) -> None:
    answer = await http_client.fetch(
        base_url + "/token",
        method="POST",
        body=OPENVIDU_BODY,
        headers={"Content-Type": "application/json", "Origin": "http://localhost:5080"},
    )
    assert "X-Request-Id" in answer.headers["Access-Control-Expose-Headers"]
