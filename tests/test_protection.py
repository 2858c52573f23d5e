"""Token endpoint protection, page headers, secrets kept out of logs, production settings,
and graceful shutdown under load."""

from __future__ import annotations

import asyncio
import http.client
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

from ground.config import PROJECT_DIR
from tests.conftest import OPENVIDU_BODY, post_token, post_webhook, request_token, webhook_event
from tests.processes import ServerProcess


@pytest.mark.settings(token_rate_limit=5)
@pytest.mark.gen_test
async def test_rate_limit_stops_the_abuser_only(http_client: Any, base_url: str) -> None:
    answers = [(await post_token(http_client, base_url)).code for _ in range(7)]
    assert answers == [200] * 5 + [429] * 2
    limited = await post_token(http_client, base_url)
    assert int(limited.headers["Retry-After"]) >= 1
    assert "Too many token requests" in json.loads(limited.body)["errorMessage"]
    # Another client address (127.0.0.2 is loopback too) is not affected.
    other = await post_token(http_client, base_url, network_interface="127.0.0.2")
    assert other.code == 200


@pytest.mark.settings(token_auth_secret="s3cret-for-tokens")
@pytest.mark.gen_test
async def test_shared_secret_auth(http_client: Any, base_url: str) -> None:
    assert (await post_token(http_client, base_url)).code == 401
    wrong = await post_token(http_client, base_url, headers={"Authorization": "Bearer guess"})
    assert wrong.code == 401 and "TOKEN_AUTH_SECRET" in json.loads(wrong.body)["errorMessage"]
    right = await post_token(http_client, base_url, headers={"Authorization": "Bearer s3cret-for-tokens"})
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
    forbidden = await post_token(http_client, base_url, json.dumps({"room_config": {"agents": []}}))
    assert forbidden.code == 403
    assert json.loads(forbidden.body)["errorMessage"].startswith("room_config may not be set")
    metadata = await post_token(http_client, base_url, json.dumps({"participant_metadata": "admin"}))
    assert metadata.code == 403 and "participant_metadata" in json.loads(metadata.body)["errorMessage"]
    allowed = await post_token(
        http_client, base_url, json.dumps({"room_name": "team-bl", "participant_attributes": {"a": "b"}})
    )
    assert allowed.code == 201
    off_pattern = await post_token(
        http_client, base_url, json.dumps({"roomName": "other", "participantName": "a"})
    )
    assert off_pattern.code == 422 and "ROOM_NAME_PATTERN" in json.loads(off_pattern.body)["errorMessage"]
    too_long = await post_token(
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
        server.url + "/token",
        data=json.dumps(OPENVIDU_BODY).encode(),
        headers={"Content-Type": "application/json"},
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


def test_sigterm_while_clients_keep_sending_on_their_connections(server_process: Any) -> None:
    """Keep-alive clients that send again as soon as they are answered: each connection
    gets one more answer, with `Connection: close`, and no request sent is left unanswered."""
    server = server_process(TOKEN_RATE_LIMIT="0")
    body = json.dumps(OPENVIDU_BODY).encode()
    stop = threading.Event()
    answered, closing, cut, refused = [0], [0], [], []

    def keep_sending() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        while not stop.is_set():
            try:
                connection.request("POST", "/token", body, {"Content-Type": "application/json"})
                answer = connection.getresponse()
                answer.read()
            except ConnectionRefusedError:
                return  # a new connection after the server stopped listening: never sent
            except OSError as error:  # sent on an open connection and never answered
                cut.append(repr(error))
                return
            if answer.status != 200:
                refused.append(answer.status)
            answered[0] += 1
            if answer.getheader("Connection") == "close":
                closing[0] += 1

    threads = [threading.Thread(target=keep_sending) for _ in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while answered[0] < 200:
        assert time.monotonic() < deadline and not cut and not refused, (cut, refused)
        time.sleep(0.005)
    started = time.monotonic()
    exit_code = server.stop()
    stopped_in = time.monotonic() - started
    stop.set()
    for thread in threads:
        thread.join(10)
    assert exit_code == 0
    assert cut == [] and refused == []
    assert closing[0] >= 1  # the answers after SIGTERM said so
    assert stopped_in < 3  # not the whole drain time (SHUTDOWN_SECONDS) waiting on them
    assert "still unanswered" not in server.log_text()


def test_sigint_stops_cleanly(server_process: Any) -> None:
    import signal

    server = server_process()
    assert server.stop(signal.SIGINT) == 0
    assert "Stopped" in server.log_text()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


class IPv6ServerProcess(ServerProcess):
    @property
    def url(self) -> str:
        return f"http://[::1]:{self.port}"


def token_status(url: str, client_address: str | None = None) -> int:
    # Both headers a proxy may set (nginx's examples set X-Real-IP, others X-Forwarded-For).
    proxied = {"X-Real-Ip": client_address, "X-Forwarded-For": client_address} if client_address else {}
    return request_token(url, headers=proxied)[0]


def test_an_ipv6_client_cannot_rotate_addresses_within_its_64(tmp_path: Any) -> None:
    """A real server on ::1 (127.0.0.1 on machines without IPv6 loopback), behind a
    trusted proxy that passes the client address as the LiveKit docs' nginx example does."""
    env = {"TOKEN_RATE_LIMIT": "3", "TRUST_PROXY_HEADERS": "true"}
    server = (
        IPv6ServerProcess(tmp_path, SERVER_HOST="::1", **env)
        if ipv6_loopback()
        else ServerProcess(tmp_path, **env)
    )
    server.start()
    try:
        rotating = [token_status(server.url, f"2001:db8:aa:bb::{n:x}") for n in range(1, 6)]
        assert rotating == [200, 200, 200, 429, 429]
        assert token_status(server.url, "2001:db8:aa:bb:ffff:ffff:ffff:ffff") == 429  # still that /64
        assert token_status(server.url, "2001:db8:aa:bc::1") == 200  # the next /64 is another client
        # An IPv4 client seen through an IPv6 socket is that IPv4 client.
        assert [token_status(server.url, "::ffff:198.51.100.7") for _ in range(3)] == [200] * 3
        assert token_status(server.url, "198.51.100.7") == 429
        # Without the proxy's header, the connection's own address (::1) is the client.
        assert [token_status(server.url) for _ in range(4)] == [200, 200, 200, 429]
    finally:
        server.stop()


def test_rate_limiter_buckets_by_address_family() -> None:
    from handlers.support.ratelimit import RateLimiter, client_of

    assert client_of("203.0.113.9") == "203.0.113.9"
    assert client_of("2001:db8:1:2:a:b:c:d") == client_of("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_of("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert client_of("::ffff:203.0.113.9") == "203.0.113.9"
    assert client_of("fe80::1%eth0") == "fe80::/64"
    limiter = RateLimiter(2)
    assert [limiter.retry_after(f"2001:db8::{n}") for n in range(1, 4)][:2] == [0, 0]
    assert limiter.retry_after("2001:db8::ffff") > 0
    assert limiter.retry_after("2001:db8:0:1::1") == 0


def test_shared_rate_limiters_keep_one_bucket_per_client(tmp_path: Any) -> None:
    """WORKERS: each worker maps the same table; a client's takes add up across them,
    and a table whose slots are all taken reuses the least recent client's."""
    from handlers.support import ratelimit

    first, second = (ratelimit.SharedRateLimiter(3, str(tmp_path)) for _ in range(2))
    assert [limiter.retry_after("203.0.113.9") for limiter in (first, second, first)] == [0, 0, 0]
    assert second.retry_after("203.0.113.9") == first.retry_after("203.0.113.9") == 20  # 1 token: 20 s
    assert second.retry_after("2001:db8:1:2::1") == 0 and first.retry_after("2001:db8:1:2::ff") == 0


def test_a_full_shared_table_forgets_the_least_recent_client(tmp_path: Any, monkeypatch: Any) -> None:
    from handlers.support import ratelimit

    monkeypatch.setattr(ratelimit, "SLOTS", 8)  # as many slots as a client's probes: one crowd
    limiter = ratelimit.SharedRateLimiter(3, str(tmp_path))
    drained = [limiter.retry_after("10.0.0.1") for _ in range(4)]  # the least recent, once the rest come
    for n in range(2, 8):
        limiter.retry_after(f"10.0.0.{n}")
    assert drained[-1] > 0 and [limiter.retry_after("10.0.0.8") for _ in range(4)][-1] > 0
    assert limiter.retry_after("10.0.0.9") == 0  # a ninth client: 10.0.0.1's slot is taken
    assert limiter.retry_after("10.0.0.8") > 0  # still refused: it was not the least recent
    assert limiter.retry_after("10.0.0.1") == 0  # forgotten, so a full bucket again


def test_client_input_cannot_split_or_forge_log_lines(server_process: Any) -> None:
    import re
    import urllib.error
    import urllib.request

    server = server_process()

    def token(marker: int, body: dict[str, Any]) -> int:
        request = urllib.request.Request(
            f"{server.url}/token?m={marker}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    def raw(marker: int, target: bytes) -> int:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
            connection.sendall(
                b"GET /x?m=%d&%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (marker, target)
            )
            return int(connection.recv(64).split(b" ")[1])

    forged = "2030-01-01 00:00:00,000 INFO server: FORGED"
    statuses = {
        1: token(1, {"roomName": f"R\u2028{forged}", "participantName": "a"}),
        2: token(2, {"room_name": f"x\u2029{forged}"}),
        3: token(3, {"participant_identity": f"x\x85{forged}"}),
        4: token(4, {"room_name": "a identity=admin", "participant_identity": "b\u202eFORGED"}),
        5: token(5, {"room_name": "a identity=admin", "participant_identity": "b"}),
        6: post_webhook(
            server.url,
            {**webhook_event(room=f"evil\n{forged}"), "id": f"EV_x\u2028{forged}"},
            path="/livekit/webhook?m=6",
        ),
        7: post_webhook(
            server.url, webhook_event(f"room_started\r\x1b[2K{forged}"), path="/livekit/webhook?m=7"
        ),
        8: raw(8, b"\x85" + forged.replace(" ", "_").encode()),
    }
    server.stop()
    log = server.log_text()
    lines = log.splitlines()  # also splits at \r, \x85, \u2028, \u2029 and the other line boundaries
    prefix = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")
    assert [line for line in lines if not prefix.match(line)] == []
    for marker, status in statuses.items():
        mentions = [line for line in lines if f"?m={marker}" in line]
        assert len(mentions) == 1, mentions  # one request, one line
        assert f" tornado.access: {status} " in mentions[0]
    assert [line for line in lines if "FORGED" in line and "?m=" not in line] == []
    assert not set(log) & {"\r", "\x1b", "\x85", "\u2028", "\u2029", "\u202e"}
    # Values are quoted where they would read as more than one field.
    assert 'room="a identity=admin" identity=b' in log
    assert r'room="evil\n2030-01-01' in log
    # Names that would hide a line break or reverse the text are refused, not logged.
    assert statuses == {1: 400, 2: 400, 3: 400, 4: 400, 5: 201, 6: 200, 7: 200, 8: 404}
