"""Token endpoint protection, page headers, secrets kept out of logs, production settings,
and graceful shutdown under load."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from config import PROJECT_DIR
from tests.conftest import post_webhook, webhook_event

OPENVIDU_BODY = json.dumps({"roomName": "R", "participantName": "alice"})


async def ask_token(http_client: Any, base_url: str, body: str = OPENVIDU_BODY, **options: Any) -> Any:
    headers = {"Content-Type": "application/json", **options.pop("headers", {})}
    return await http_client.fetch(
        base_url + "/token", method="POST", body=body, headers=headers, raise_error=False, **options
    )


@pytest.mark.settings(token_rate_limit=5)
@pytest.mark.gen_test
async def test_rate_limit_stops_the_abuser_only(http_client: Any, base_url: str) -> None:
    answers = [(await ask_token(http_client, base_url)).code for _ in range(7)]
    assert answers == [200] * 5 + [429] * 2
    limited = await ask_token(http_client, base_url)
    assert int(limited.headers["Retry-After"]) >= 1
    assert "Too many token requests" in json.loads(limited.body)["errorMessage"]
    # Another client address (127.0.0.2 is loopback too) is not affected.
    other = await ask_token(http_client, base_url, network_interface="127.0.0.2")
    assert other.code == 200


@pytest.mark.settings(token_auth_secret="s3cret-for-tokens")
@pytest.mark.gen_test
async def test_shared_secret_auth(http_client: Any, base_url: str) -> None:
    assert (await ask_token(http_client, base_url)).code == 401
    wrong = await ask_token(http_client, base_url, headers={"Authorization": "Bearer guess"})
    assert wrong.code == 401 and "TOKEN_AUTH_SECRET" in json.loads(wrong.body)["errorMessage"]
    right = await ask_token(http_client, base_url, headers={"Authorization": "Bearer s3cret-for-tokens"})
    assert right.code == 200
    preflight = await http_client.fetch(
        base_url + "/token",
        method="OPTIONS",
        headers={
            "Origin": "http://localhost:5080",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


@pytest.mark.settings(
    token_client_fields=("participant_attributes",), room_name_pattern=r"team-[a-z]+", name_max_length=8
)
@pytest.mark.gen_test
async def test_grant_policy(http_client: Any, base_url: str) -> None:
    forbidden = await ask_token(http_client, base_url, json.dumps({"room_config": {"agents": []}}))
    assert forbidden.code == 403
    assert json.loads(forbidden.body)["errorMessage"].startswith("room_config may not be set")
    metadata = await ask_token(http_client, base_url, json.dumps({"participant_metadata": "admin"}))
    assert metadata.code == 403 and "participant_metadata" in json.loads(metadata.body)["errorMessage"]
    allowed = await ask_token(
        http_client, base_url, json.dumps({"room_name": "team-bl", "participant_attributes": {"a": "b"}})
    )
    assert allowed.code == 201
    off_pattern = await ask_token(
        http_client, base_url, json.dumps({"roomName": "other", "participantName": "a"})
    )
    assert off_pattern.code == 422 and "ROOM_NAME_PATTERN" in json.loads(off_pattern.body)["errorMessage"]
    too_long = await ask_token(
        http_client, base_url, json.dumps({"roomName": "team-a", "participantName": "a" * 9})
    )
    assert too_long.code == 400 and "at most 8" in json.loads(too_long.body)["errorMessage"]


@pytest.mark.gen_test
async def test_page_security_headers(http_client: Any, base_url: str) -> None:
    page = await http_client.fetch(base_url + "/")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "connect-src 'self' ws://localhost:7880 http://localhost:7880;" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert b"secret" not in page.body.lower() and b"devkey" not in page.body


@pytest.mark.gen_test
async def test_an_oversized_declared_body_is_refused_before_it_is_sent(
    http_port: int, http_server: Any
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(
        b"POST /livekit/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/webhook+json\r\n"
        b"Content-Length: 1500000\r\n\r\n"
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 5)  # no byte of the body was sent
    assert status_line.startswith(b"HTTP/1.1 413")
    writer.close()


def test_tokens_never_reach_the_log(server_process: Any) -> None:
    import urllib.request

    server = server_process()
    request = urllib.request.Request(
        server.url + "/token", data=OPENVIDU_BODY.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as response:
        token = json.loads(response.read())["token"]
    assert post_webhook(server.url, webhook_event()) == 200
    server.stop()
    log = server.log_text()
    assert "room=R identity=alice" in log
    assert token not in log and token.split(".")[2] not in log
    assert [line for line in log.splitlines() if "secret" in line and "development API key" not in line] == []


@pytest.mark.parametrize("secret", ["secret", "short-but-not-dev"])
def test_production_refuses_weak_secrets(secret: str) -> None:
    result = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "server.py")],
        capture_output=True,
        text=True,
        timeout=20,
        env={
            "APP_ENV": "production",
            "LIVEKIT_API_SECRET": secret,
            "LIVEKIT_API_KEY": "prodkey",
            "PATH": "/usr/bin:/bin",
        },
        cwd="/",
    )
    assert result.returncode != 0
    assert "LIVEKIT_API_SECRET (32 characters or more)" in result.stderr


def test_production_starts_with_a_real_secret(server_process: Any) -> None:
    server = server_process(APP_ENV="production", LIVEKIT_API_KEY="prodkey", LIVEKIT_API_SECRET="x" * 40)
    assert "development API key" not in server.log_text()


def socket_close_code(url: str, ready: threading.Event, result: dict[str, Any]) -> None:
    async def watch() -> None:
        client = await websocket_connect(HTTPRequest(url))
        ready.set()
        while await client.read_message() is not None:
            pass
        result["code"], result["reason"] = client.close_code, client.close_reason
        client.close()

    asyncio.run(watch())


def test_sigterm_during_a_stream_of_webhooks(server_process: Any) -> None:
    server = server_process()
    ready, closed = threading.Event(), {}
    watcher = threading.Thread(
        target=socket_close_code, args=(server.url.replace("http", "ws") + "/events", ready, closed)
    )
    watcher.start()
    assert ready.wait(10)
    acknowledged: list[str] = []

    def send(n: int) -> None:
        event = webhook_event("participant_joined", room="term", participant={"identity": f"p{n}"})
        try:
            if post_webhook(server.url, event) == 200:
                acknowledged.append(event["id"])
        except OSError:
            pass  # refused or cut while shutting down: not acknowledged, LiveKit would retry

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(send, n) for n in range(400)]
        while len(acknowledged) < 100:
            time.sleep(0.005)
        started = time.monotonic()
        exit_code = server.stop()
        stopped_in = time.monotonic() - started
        for future in futures:
            future.result()
    watcher.join(10)
    assert exit_code == 0
    assert stopped_in < 5
    assert closed == {"code": 1001, "reason": "Server shutting down"}
    server.start()
    assert set(acknowledged) <= {frame["event"]["id"] for frame in server.history()}


def test_sigint_stops_cleanly(server_process: Any) -> None:
    import signal

    server = server_process()
    assert server.stop(signal.SIGINT) == 0
    assert "Stopped" in server.log_text()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0
