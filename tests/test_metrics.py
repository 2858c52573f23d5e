"""GET /metrics: what it counts, read back through Prometheus's own text parser, and who may read it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.websocket import websocket_connect

from dev.livekit_server import free_port
from ground.config import Config, ConfigError
from tests.conftest import webhook_event, webhook_request

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(http_client: Any, base_url: str) -> Samples:
    response = await http_client.fetch(base_url + "/metrics")
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.body.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def post_token(http_client: Any, base_url: str, body: bytes) -> int:
    response = await http_client.fetch(
        base_url + "/token",
        method="POST",
        body=body,
        headers={"Content-Type": "application/json"},
        raise_error=False,
    )
    return int(response.code)


@pytest.mark.settings(token_rate_limit=4)
@pytest.mark.gen_test
async def test_tokens_by_request_shape_and_status(http_client: Any, base_url: str) -> None:
    statuses = [
        await post_token(http_client, base_url, b'{"roomName":"R","participantName":"alice"}'),
        await post_token(http_client, base_url, b'{"room_name":"R"}'),
        await post_token(http_client, base_url, b'{"roomName":"R"}'),
        await post_token(http_client, base_url, b"{not json"),
        await post_token(http_client, base_url, b"{}"),  # the fifth in a burst of 4
    ]
    assert statuses == [200, 201, 400, 400, 429]
    samples = await scrape(http_client, base_url)
    tokens = "livekit_app_token_requests_total"
    assert value(samples, tokens, shape="openvidu", status="200") == 1
    assert value(samples, tokens, shape="standard", status="201") == 1
    assert value(samples, tokens, shape="openvidu", status="400") == 1
    assert value(samples, tokens, shape="unknown", status="400") == 1  # refused before its shape was known
    assert value(samples, tokens, shape="unknown", status="429") == 1
    assert value(samples, "livekit_app_rate_limited_total", handler="TokenHandler") == 1


@pytest.mark.gen_test
async def test_webhooks_by_result_and_events_by_type(http_client: Any, base_url: str) -> None:
    url = base_url + "/livekit/webhook"
    joined = webhook_event("participant_joined")
    answers = [
        await http_client.fetch(url, **webhook_request(joined)),
        await http_client.fetch(url, **webhook_request(joined)),  # LiveKit's retry
        await http_client.fetch(url, **webhook_request(webhook_event("room_started"))),
        await http_client.fetch(url, **webhook_request(webhook_event("something_new"))),
        await http_client.fetch(url, **webhook_request(webhook_event(), secret="not-the-secret")),
        await http_client.fetch(url, **webhook_request(b"[1, 2]")),
    ]
    assert [answer.code for answer in answers] == [200, 200, 200, 200, 401, 400]
    samples = await scrape(http_client, base_url)
    webhooks = "livekit_app_webhooks_total"
    assert value(samples, webhooks, result="stored", reason="") == 3
    assert value(samples, webhooks, result="duplicate", reason="") == 1
    assert value(samples, webhooks, result="refused", reason="signature") == 1
    assert value(samples, webhooks, result="refused", reason="not_an_event") == 1
    stored = "livekit_app_events_stored_total"
    assert value(samples, stored, type="participant_joined") == 1
    assert value(samples, stored, type="room_started") == 1
    assert value(samples, stored, type="other") == 1
    # Every append the handlers waited for, the duplicate's too, in the latency histogram.
    assert value(samples, "livekit_app_event_store_seconds_count", operation="append") == 4
    assert value(samples, "livekit_app_event_store_seconds_bucket", operation="append", le="+Inf") == 4


@pytest.mark.gen_test
async def test_sockets_frames_and_reads(http_client: Any, base_url: str, app: Any) -> None:
    ws_url = base_url.replace("http", "ws") + "/events"
    first, second = await websocket_connect(ws_url), await websocket_connect(ws_url)
    before = await scrape(http_client, base_url)
    assert value(before, "livekit_app_event_sockets") == 2
    # Each socket's replay reads the store once, just after the handshake.
    deadline = asyncio.get_running_loop().time() + 5
    while value(before, "livekit_app_event_store_seconds_count", operation="read") < 2:
        assert asyncio.get_running_loop().time() < deadline, "the replays did not read the store"
        await asyncio.sleep(0.01)
        before = await scrape(http_client, base_url)
    await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(webhook_event()))
    await first.read_message()
    await second.read_message()
    await http_client.fetch(base_url + "/events/history")
    first.close()
    while app.settings["broadcaster"].count > 1:
        await asyncio.sleep(0.01)
    # What server.shutdown does to the sockets that are left.
    app.settings["broadcaster"].close_all(1001, "Server shutting down")
    assert await second.read_message() is None
    second.close()
    while app.settings["broadcaster"].count:
        await asyncio.sleep(0.01)
    samples = await scrape(http_client, base_url)
    assert value(samples, "livekit_app_event_sockets") == 0
    assert value(samples, "livekit_app_event_frames_sent_total") == 2
    assert value(samples, "livekit_app_event_store_seconds_count", operation="read") == 3
    closed = "livekit_app_event_sockets_closed_total"
    assert value(samples, closed, reason="client") == 1
    assert value(samples, closed, reason="shutdown") == 1


@pytest.mark.settings(events_socket_queue=4)
@pytest.mark.gen_test(timeout=60)
async def test_a_socket_closed_as_too_slow_is_counted(
    http_client: Any, base_url: str, http_port: int
) -> None:
    # A peer that completes the handshake and then never reads, with a tiny receive buffer.
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", http_port))
    stuck.sendall(
        b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    deadline = asyncio.get_running_loop().time() + 30
    closed = 0.0
    while not closed and asyncio.get_running_loop().time() < deadline:
        event = webhook_event(pad="x" * 200_000)
        await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(event))
        samples = await scrape(http_client, base_url)
        closed = value(samples, "livekit_app_event_sockets_closed_total", reason="too_slow")
    stuck.close()
    assert closed == 1


@pytest.mark.settings(admin_secret="admin-secret-for-the-metrics-test")
@pytest.mark.gen_test
async def test_admin_actions_by_action_and_status(http_client: Any, base_url: str) -> None:
    admin = {"Authorization": "Bearer admin-secret-for-the-metrics-test"}
    bans = await http_client.fetch(base_url + "/rooms/R/bans", headers=admin)
    anonymous = await http_client.fetch(base_url + "/rooms", raise_error=False)
    lift = await http_client.fetch(
        base_url + "/rooms/R/bans/nobody", method="DELETE", headers=admin, raise_error=False
    )
    assert (bans.code, anonymous.code, lift.code) == (200, 401, 404)
    samples = await scrape(http_client, base_url)
    admin_requests = "livekit_app_admin_requests_total"
    assert value(samples, admin_requests, action="list_bans", status="200") == 1
    assert value(samples, admin_requests, action="list_rooms", status="401") == 1
    assert value(samples, admin_requests, action="lift_ban", status="404") == 1


@pytest.mark.settings(admin_secret="admin-secret-for-the-metrics-test")
@pytest.mark.gen_test
async def test_admin_events_are_timed_like_webhooks(app: Any, http_client: Any, base_url: str) -> None:
    """Every append to the event store is timed the same way: a webhook's, and an admin action's record."""
    await app.settings["rooms"].bans.ban("R", "bob", 60)
    admin = {"Authorization": "Bearer admin-secret-for-the-metrics-test"}
    lift = await http_client.fetch(base_url + "/rooms/R/bans/bob", method="DELETE", headers=admin)
    assert lift.code == 200
    page = await app.settings["event_log"].read(None, 10, 1 << 20)
    assert [json.loads(entry.event_json)["event"] for entry in page.entries] == ["admin.ban_lifted"]
    samples = await scrape(http_client, base_url)
    assert value(samples, "livekit_app_event_store_seconds_count", operation="append") == 1


SUMMARY_FILE = str(Path(tempfile.gettempdir()) / f"metrics-test-summaries-{os.getpid()}.txt")


@pytest.mark.settings(environ={"ROOM_SUMMARY_FILE": SUMMARY_FILE})
@pytest.mark.extensions("examples.room_finished_summary")
@pytest.mark.gen_test(timeout=30)
async def test_event_handlers_handled_and_parked(app: Any, http_client: Any, base_url: str) -> None:
    from tests.conftest import running

    async with running(app):
        finished = webhook_event("room_finished")
        assert (
            await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(finished))
        ).code == 200
        deadline = asyncio.get_running_loop().time() + 15
        samples = await scrape(http_client, base_url)
        while value(samples, "livekit_app_event_handler_events_handled_total") < 1:
            assert asyncio.get_running_loop().time() < deadline, "the event handler never ran"
            await asyncio.sleep(0.05)
            samples = await scrape(http_client, base_url)
        text = (await http_client.fetch(base_url + "/metrics")).body.decode()
    Path(SUMMARY_FILE).unlink(missing_ok=True)
    assert value(samples, "livekit_app_event_handler_events_skipped_total") == 0
    assert "# TYPE livekit_app_event_handler_parked gauge" in text


@pytest.mark.gen_test
async def test_development_metrics_are_public(http_client: Any, base_url: str) -> None:
    response = await http_client.fetch(base_url + "/metrics")
    assert response.code == 200
    assert response.headers["X-Request-Id"]
    assert b"# HELP livekit_app_token_requests_total" in response.body


@pytest.mark.settings(app_env="production")
@pytest.mark.gen_test
async def test_production_metrics_are_not_anonymous_by_default(http_client: Any, base_url: str) -> None:
    response = await http_client.fetch(base_url + "/metrics", raise_error=False)
    assert response.code == 403
    assert "METRICS_AUTH_SECRET" in json.loads(response.body)["errorMessage"]
    assert b"livekit_app" not in response.body


@pytest.mark.settings(app_env="production", metrics_auth_secret="scrape-me-please")
@pytest.mark.gen_test
async def test_a_metrics_secret_lets_only_its_bearer_read(http_client: Any, base_url: str) -> None:
    url = base_url + "/metrics"
    anonymous = await http_client.fetch(url, raise_error=False)
    wrong = await http_client.fetch(url, raise_error=False, headers={"Authorization": "Bearer guess"})
    right = await http_client.fetch(url, headers={"Authorization": "Bearer scrape-me-please"})
    assert (anonymous.code, wrong.code, right.code) == (401, 401, 200)
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert parse(right.body.decode())[("livekit_app_event_sockets", ())] == 0


@pytest.mark.settings(metrics_enabled=False)
@pytest.mark.gen_test
async def test_metrics_can_be_turned_off(http_client: Any, base_url: str) -> None:
    assert await post_token(http_client, base_url, b'{"roomName":"R","participantName":"a"}') == 200
    response = await http_client.fetch(base_url + "/metrics", raise_error=False)
    assert response.code == 404


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


def test_metrics_on_a_port_of_their_own(server_process: Any) -> None:
    metrics_port = free_port()
    server = server_process(
        APP_ENV="production",
        LIVEKIT_API_KEY="prodkey",
        LIVEKIT_API_SECRET="x" * 40,
        METRICS_PORT=str(metrics_port),
    )
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    assert fetch(server.url + "/metrics")[0] == 404  # not on the public port
    status, body = fetch(metrics_url + "/metrics")
    assert status == 200  # anonymous there: the port is the operator's to expose or not
    assert parse(body.decode())[("livekit_app_event_sockets", ())] == 0
    assert fetch(metrics_url + "/token")[0] == 404  # and nothing else is served there
    assert server.stop() == 0


def test_metrics_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="METRICS_PORT must differ"):
        Config.from_env({"SERVER_PORT": "7000", "METRICS_PORT": "7000"}, env_file=None)
    with pytest.raises(ConfigError, match="METRICS_ENABLED"):
        Config.from_env({"METRICS_ENABLED": "maybe"}, env_file=None)
    with pytest.raises(ConfigError, match="METRICS_PORT is set but METRICS_ENABLED=false"):
        Config.from_env({"METRICS_ENABLED": "false", "METRICS_PORT": "9100"}, env_file=None)
    config = Config.from_env({"METRICS_PORT": "9100", "METRICS_AUTH_SECRET": "s"}, env_file=None)
    assert (config.metrics_enabled, config.metrics_port, config.metrics_auth_secret) == (True, 9100, "s")
