"""The HTTP surface as an outsider tries it: aborted and oversized uploads, connection
floods under a low open-file limit, idle and slow senders, HEAD checks, odd static paths."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import resource
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tornado.websocket import websocket_connect

from handlers.support import base as base_module
from tests.conftest import events_url, post_webhook, run_async, webhook_event

TOKEN_BODY = b'{"roomName":"R","participantName":"alice"}'


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes this connection within `within` seconds (reading what it sends)."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if sock.recv(65536) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def healthz_status(port: int, timeout: float = 2.0) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as response:
        return int(response.status)


# 1. Aborted uploads


def aborted_webhook_upload(port: int, sent: int = 990_000) -> None:
    """Declares 1,000,000 bytes, sends `sent`, then gives up; returns once the server let go."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /livekit/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/webhook+json\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b"x" * sent
        )
        sock.shutdown(socket.SHUT_WR)
        assert closed_by_server(sock, 10)


def test_aborted_uploads_free_their_memory_at_once(start_server: Any) -> None:
    server = start_server()
    assert server.process is not None
    for _ in range(10):  # the allocator's high-water mark for one upload at a time
        aborted_webhook_upload(server.port)
    before = rss_mib(server.process.pid)
    for _ in range(80):
        aborted_webhook_upload(server.port)
    grown = rss_mib(server.process.pid) - before
    # Each upload kept would hold its ~1 MiB for good: 80 MiB here.
    assert grown < 25, f"RSS grew by {grown:.0f} MiB over 80 aborted uploads"
    assert post_webhook(server.url, webhook_event()) == 200


# 3. File descriptors: a cap, timeouts, and no spin on EMFILE

FILE_LIMIT = 256


def low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))


@pytest.mark.parametrize(
    ("settings", "logged"),
    [
        ({}, "MAX_CONNECTIONS"),  # the cap derived from the limit holds
        ({"MAX_CONNECTIONS": "1000"}, "Too many open files"),  # a cap set too high: EMFILE
    ],
    ids=["derived cap", "cap above the limit"],
)
def test_a_flood_of_half_open_connections_under_a_low_file_limit(
    start_server: Any, settings: dict[str, str], logged: str
) -> None:
    server = start_server(low_file_limit, **settings)
    assert server.process is not None
    pid = server.process.pid
    log_lines = len(server.log_text().splitlines())
    flood: list[socket.socket] = []
    try:
        for _ in range(2 * FILE_LIMIT):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", server.port))  # the backlog's rest stays half-open
            flood.append(sock)
        time.sleep(1)
        cpu_before = cpu_seconds(pid)
        time.sleep(2)
        busy = cpu_seconds(pid) - cpu_before
        # Before: a traceback per accept() attempt (55,000 lines, 4.8 MB in these 3 s) and
        # 0.6-0.8 s of CPU in the 2 s; a server that waits uses next to none.
        flood_log = server.log_text().splitlines()[log_lines:]
        assert len(flood_log) <= 3, flood_log[:5]
        assert sum(logged in line for line in flood_log) == 1, flood_log
        assert "Traceback" not in server.log_text()
        assert busy < 0.25, f"the server used {busy:.2f} s of CPU in 2 s of an idle flood"
    finally:
        for sock in flood:
            sock.close()
    deadline = time.monotonic() + 15
    while True:  # recovers by itself once the flood ends
        try:
            assert healthz_status(server.port) == 200
            break
        except OSError:
            assert time.monotonic() < deadline, "no /healthz answer after the flood ended"
            time.sleep(0.2)
    assert post_webhook(server.url, webhook_event()) == 200


def test_idle_slow_header_and_slow_body_connections_are_closed(start_server: Any) -> None:
    server = start_server(IDLE_TIMEOUT="1", BODY_TIMEOUT="2")
    idle = socket.create_connection(("127.0.0.1", server.port))
    assert closed_by_server(idle, 10)  # Tornado's default waits an hour
    idle.close()

    slow_headers = socket.create_connection(("127.0.0.1", server.port))
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Padding: y\r\n" * 100
    started = time.monotonic()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for byte in request:  # a byte every 50 ms: the headers would take 80 s
            slow_headers.send(bytes([byte]))
            time.sleep(0.05)
    assert time.monotonic() - started < 10
    slow_headers.close()

    slow_body = socket.create_connection(("127.0.0.1", server.port))
    slow_body.sendall(
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    started = time.monotonic()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for _ in range(1000):
            slow_body.send(b" ")
            time.sleep(0.05)
    assert time.monotonic() - started < 10
    slow_body.close()
    assert healthz_status(server.port) == 200


def test_idle_timeout_after_an_answer_closes_the_connection_but_never_a_socket(start_server: Any) -> None:
    """IDLE_TIMEOUT counts again from each answer on a keep-alive connection; an events
    socket, quiet for longer than that, stays open and gets the next event."""
    server = start_server(IDLE_TIMEOUT="1")

    async def quiet_socket_then_event() -> Any:
        socket_ = await websocket_connect(events_url(server.url))
        await asyncio.sleep(2.5)
        assert await asyncio.to_thread(post_webhook, server.url, webhook_event(room="quiet")) == 200
        message = await asyncio.wait_for(socket_.read_message(), 5)
        socket_.close()
        return message

    keep_alive = socket.create_connection(("127.0.0.1", server.port))
    for _ in range(3):  # answered, then idle less than IDLE_TIMEOUT each time: kept open
        keep_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert keep_alive.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(0.6)
    message = run_async(quiet_socket_then_event())
    assert message is not None and json.loads(message)["event"]["room"]["name"] == "quiet"
    assert closed_by_server(keep_alive, 10)  # idle since its last answer
    keep_alive.close()


# 9. Bodies over an endpoint's limit are refused before they are read


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """Status line, headers and the body up to the connection's close (which must come)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines if line)
    body = await asyncio.wait_for(reader.read(), 5)  # b"" would hang if the server kept reading
    return status.encode(), headers, body


@pytest.mark.gen_test
async def test_a_declared_oversized_token_body_is_refused_before_it_is_sent(
    http_port: int, http_server: Any
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Origin: http://localhost:5080\r\nContent-Length: 1900000\r\nExpect: 100-continue\r\n\r\n"
    )
    await writer.drain()  # not a byte of the body
    status, headers, body = await read_answer(reader)
    assert status.startswith(b"HTTP/1.1 413")  # not `100 Continue`: the client need not send it
    assert "larger than 65536 bytes" in json.loads(body)["errorMessage"]
    assert headers["Access-Control-Allow-Origin"] == "*"  # the endpoint's own answer, CORS included
    writer.close()


@pytest.mark.settings(admin_secret="a" * 32)
@pytest.mark.gen_test
async def test_an_oversized_admin_body_is_refused_not_run_without_it(
    http_port: int, http_server: Any, http_client: Any, base_url: str
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(
        b"POST /rooms/R/participants/bob/remove HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + b"a" * 32 + b"\r\nContent-Length: 100000\r\n\r\n"
    )
    await writer.drain()
    status, _, body = await read_answer(reader)
    assert status.startswith(b"HTTP/1.1 413"), body  # not a removal without the ban it asked for
    writer.close()


@pytest.mark.parametrize(("path", "limit"), [("/token", 64 * 1024), ("/livekit/webhook", 1024 * 1024)])
@pytest.mark.gen_test
async def test_a_chunked_body_is_cut_at_the_limit(
    http_port: int, http_server: Any, path: str, limit: int
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    chunk = b"%x\r\n%s\r\n" % (16 * 1024, b"x" * 16 * 1024)
    for _ in range(limit // (16 * 1024) + 2):  # just past the limit, and no last chunk
        writer.write(chunk)
    await writer.drain()
    status, _, body = await read_answer(reader)
    assert status.startswith(b"HTTP/1.1 413")
    assert f"larger than {limit} bytes" in json.loads(body)["errorMessage"]
    writer.close()


@pytest.mark.gen_test
async def test_an_endpoint_that_takes_no_body_does_not_read_one(http_port: int, http_server: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1900000\r\n\r\n")
    await writer.drain()  # not a byte of the body; Tornado would read all 1.9 MB first
    status, _, _ = await read_answer(reader)
    assert status.startswith(b"HTTP/1.1 400")
    writer.close()


@pytest.mark.gen_test
async def test_a_chunked_token_request_within_the_limit_works(http_client: Any, base_url: str) -> None:
    def body_producer(write: Any) -> Any:
        return write(TOKEN_BODY)

    response = await http_client.fetch(
        base_url + "/token",
        method="POST",
        body_producer=body_producer,
        headers={"Content-Type": "application/json"},
    )
    assert response.code == 200 and "token" in json.loads(response.body)


# 16. NUL bytes in static paths; 17. HEAD for load-balancer checks


@pytest.mark.parametrize(
    "path", ["/static/%00", "/static/app.js%00.png", "/vendor/livekit-client/%00/livekit-client.umd.js"]
)
@pytest.mark.gen_test
async def test_a_nul_byte_in_a_static_path_is_a_plain_400(
    http_client: Any, base_url: str, path: str, caplog: Any
) -> None:
    with caplog.at_level(logging.INFO):
        response = await http_client.fetch(base_url + path, raise_error=False)
    assert response.code == 400
    assert b"Traceback" not in response.body
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("path", ["/", "/healthz"])
@pytest.mark.gen_test
async def test_head_answers_like_get_without_a_body(http_client: Any, base_url: str, path: str) -> None:
    got = await http_client.fetch(base_url + path)
    head = await http_client.fetch(base_url + path, method="HEAD")
    assert head.code == got.code == 200
    assert head.body == b""
    assert head.headers["Content-Type"] == got.headers["Content-Type"]
    assert int(head.headers["Content-Length"]) == len(got.body)


# 18. The headers every answer of the server's own handlers carries


@pytest.mark.gen_test
async def test_answers_carry_the_current_date_and_the_server_headers(
    http_client: Any, base_url: str, monkeypatch: Any
) -> None:
    response = await http_client.fetch(
        base_url + "/token", method="POST", body=TOKEN_BODY, headers={"Content-Type": "application/json"}
    )
    sent = email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp()
    assert abs(sent - time.time()) < 5
    assert response.headers["Server"].startswith("TornadoServer/")
    assert response.headers["Cache-Control"] == "no-store"
    assert int(response.headers["Content-Length"]) == len(response.body)
    # The Date text is kept for the second it was made in, and made again for the next.
    now = time.time()
    monkeypatch.setattr(base_module.time, "time", lambda: now + 3600)
    later = await http_client.fetch(base_url + "/healthz")
    assert email.utils.parsedate_to_datetime(later.headers["Date"]).timestamp() == int(now + 3600)
