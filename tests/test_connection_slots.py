"""Connection slots cannot be starved by one client: at the cap, a newcomer is let in by
closing the connection idle the longest (a real process under a 256 open-file limit)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

from tests.test_http import FILE_LIMIT, low_file_limit

HALF_A_HEADER = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "


def healthz_answer(port: int) -> bytes:
    """The first bytes of the answer to /healthz on a new connection ("" if none in 10 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            return sock.recv(100)
        except TimeoutError:
            return b""


def test_a_flood_of_half_sent_headers_cannot_keep_out_a_new_client(start_server: Any) -> None:
    server = start_server(low_file_limit, IDLE_TIMEOUT="60")
    flood: list[socket.socket] = []
    stop = threading.Event()

    def attack() -> None:  # 300 at once, then a new one for each the server closes
        while not stop.is_set():
            while len(flood) < 300 and not stop.is_set():
                try:
                    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                    sock.sendall(HALF_A_HEADER)
                except OSError:
                    break
                flood.append(sock)
            for sock in list(flood):
                sock.setblocking(False)
                try:
                    if sock.recv(1) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                flood.remove(sock)
                sock.close()
            time.sleep(0.05)

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    try:
        time.sleep(2)  # every slot held, the backlog full
        answers, seconds = [], []
        for _ in range(5):
            started = time.monotonic()
            answers.append(healthz_answer(server.port))
            seconds.append(time.monotonic() - started)
            time.sleep(0.5)
        print(f"/healthz during the flood: slowest answer {max(seconds) * 1000:.0f} ms")
        assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers), answers
        assert len(flood) > FILE_LIMIT // 2  # the flood went on meanwhile
    finally:
        stop.set()
        attacker.join(10)
        for sock in flood:
            sock.close()
    log = server.log_text()
    assert sum("closing the one idle the longest" in line for line in log.splitlines()) == 1
    assert "Traceback" not in log


def test_connections_in_use_are_never_closed_for_a_newcomer(start_server: Any) -> None:
    server = start_server(MAX_CONNECTIONS="5")
    upgrade = (
        b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sockets = []
    try:
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(upgrade)
            assert sock.recv(100).startswith(b"HTTP/1.1 101")
            sockets.append(sock)
        waiting = socket.create_connection(("127.0.0.1", server.port))  # queued by the kernel
        waiting.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        waiting.settimeout(1)
        try:
            early = waiting.recv(100)
        except TimeoutError:
            early = b""
        assert early == b""  # five event sockets in use: it waits
        for sock in sockets:
            sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                assert sock.recv(100) != b""  # not closed for the newcomer
        sockets.pop().close()
        waiting.settimeout(10)
        assert waiting.recv(100).startswith(b"HTTP/1.1 200")
        waiting.close()
    finally:
        for sock in sockets:
            sock.close()
