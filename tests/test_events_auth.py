"""The event stream's credential: EVENTS_AUTH_SECRET as a bearer (Authorization header, or
for browsers the WebSocket subprotocol), required in production; off in production without
one; open and zero-config in development."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from ground.config import Config, ConfigError
from tests.conftest import events_url, post_webhook, webhook_event, webhook_request

SECRET = "0123456789abcdef0123456789abcdef-events"
PRODUCTION = {"app_env": "production", "livekit_api_secret": "s" * 40, "livekit_api_key": "prodkey"}
SIGNING = {"key": PRODUCTION["livekit_api_key"], "secret": PRODUCTION["livekit_api_secret"]}


async def socket_status(base_url: str, **headers: str) -> int:
    try:
        (await websocket_connect(HTTPRequest(events_url(base_url), headers=headers))).close()
    except HTTPClientError as refused:
        return refused.code
    return 101


async def history_status(http_client: Any, base_url: str, **headers: str) -> tuple[int, Any]:
    response = await http_client.fetch(base_url + "/events/history", headers=headers, raise_error=False)
    return response.code, json.loads(response.body)


@pytest.mark.settings(**PRODUCTION, events_auth_secret=SECRET)
@pytest.mark.gen_test
async def test_production_requires_the_secret(http_client: Any, base_url: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET}):
        code, body = await history_status(http_client, base_url, **headers)
        assert code == 401 and "EVENTS_AUTH_SECRET" in body["errorMessage"]
        assert await socket_status(base_url, **headers) == 401
    bearer = {"Authorization": f"Bearer {SECRET}"}
    assert (await history_status(http_client, base_url, **bearer)) == (200, [])
    assert await socket_status(base_url, **bearer) == 101


@pytest.mark.settings(**PRODUCTION, events_auth_secret=SECRET)
@pytest.mark.gen_test
async def test_browsers_send_the_secret_as_a_subprotocol(http_client: Any, base_url: str) -> None:
    # What `new WebSocket(url, ["livekit-events", "bearer." + secret])` sends.
    client = await websocket_connect(
        events_url(base_url), subprotocols=["livekit-events", f"bearer.{SECRET}"]
    )
    assert client.selected_subprotocol == "livekit-events"  # the secret is never echoed
    event = webhook_event("room_started")
    assert (
        await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(event, **SIGNING))
    ).code == 200
    frame = json.loads(await client.read_message())
    assert frame["event"]["id"] == event["id"]
    client.close()
    wrong = ["livekit-events", "bearer.wrong"]
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(events_url(base_url), subprotocols=wrong)
    assert refused.value.code == 401


@pytest.mark.settings(**PRODUCTION)
@pytest.mark.gen_test
async def test_production_without_a_secret_has_the_stream_off(http_client: Any, base_url: str) -> None:
    code, body = await history_status(http_client, base_url, Authorization="Bearer anything")
    assert code == 403 and "EVENTS_AUTH_SECRET" in body["errorMessage"]
    assert await socket_status(base_url) == 403
    event = webhook_event("room_started")  # webhooks are still stored
    assert (
        await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(event, **SIGNING))
    ).code == 200


@pytest.mark.gen_test
async def test_development_stays_open_without_configuration(http_client: Any, base_url: str) -> None:
    assert (await history_status(http_client, base_url)) == (200, [])
    assert await socket_status(base_url) == 101


@pytest.mark.settings(events_auth_secret=SECRET)
@pytest.mark.gen_test
async def test_a_secret_set_in_development_is_required_too(http_client: Any, base_url: str) -> None:
    assert (await history_status(http_client, base_url))[0] == 401
    assert (await history_status(http_client, base_url, Authorization=f"bearer {SECRET}"))[0] == 200


def test_production_start_up_says_the_stream_is_off(server_process: Any) -> None:
    server = server_process(APP_ENV="production", LIVEKIT_API_KEY="prodkey", LIVEKIT_API_SECRET="s" * 40)
    assert "/events and /events/history are off" in server.log_text()
    assert post_webhook(server.url, webhook_event(), **SIGNING) == 200


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"EVENTS_AUTH_SECRET": "has space"}, "only letters, digits"),
        ({"EVENTS_AUTH_SECRET": "a,b"}, "only letters, digits"),
        (
            {"EVENTS_AUTH_SECRET": "short", "APP_ENV": "production", "LIVEKIT_API_SECRET": "s" * 40},
            "EVENTS_AUTH_SECRET of 32",
        ),
        ({"EVENTS_SEND_TIMEOUT": "0"}, "EVENTS_SEND_TIMEOUT"),
    ],
)
def test_bad_settings_say_what_to_fix(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_env(environ, env_file=None)
