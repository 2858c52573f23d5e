"""No secret reaches a log line: hostile requests carrying each configured secret in
broken headers and query strings, against a real process, then the whole log grepped
for every secret (both LOG_FORMAT values)."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

SECRETS = {
    "ADMIN_SECRET": "admin-secret-0123456789abcdefghijklmnop",
    "TOKEN_AUTH_SECRET": "token-secret-0123456789abcdefghijklmnop",
    "EVENTS_AUTH_SECRET": "events-secret-0123456789abcdefghijklmno",
    "METRICS_AUTH_SECRET": "metrics-secret-0123456789abcdefghijklmn",
    "LIVEKIT_API_SECRET": "livekit-secret-0123456789abcdefghijklmn",
}
WEBHOOK_SECRET = "webhook-secret-0123456789abcdefghijklmn"


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and not answer.startswith(b"HTTP/1.1 1"):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return answer


def hostile_requests(secret: str) -> list[bytes]:
    s = secret.encode()
    return [
        b"GET /rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + s + b"\x7f\r\n\r\n",
        b"GET /rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + s + b"\rX\r\n\r\n",
        b"POST /token HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + s
        + b"\x01\r\nContent-Length: 0\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + s + b"\x00\r\n\r\n",
        b"GET /events/history?token=" + s + b"&secret=" + s + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /rooms?access_token="
        + s
        + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + s
        + b"x\r\n\r\n",
        b"GET /rooms HTTP/1.1\r\nHost: x\r\nX-Api-Key: " + s + b"\x7f\r\n\r\n",
    ]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_configured_secret_reaches_the_log(server_process: Any, log_format: str) -> None:
    server = server_process(
        LOG_FORMAT=log_format,
        LOG_LEVEL="DEBUG",
        LIVEKIT_API_KEY="prodkey",
        LIVEKIT_WEBHOOK_KEYS=f"otherkey:{WEBHOOK_SECRET}",
        **SECRETS,
    )
    answers = []
    for secret in [*SECRETS.values(), WEBHOOK_SECRET]:
        for request in hostile_requests(secret):
            answers.append(raw_request(server.port, request))
    assert all(answer.startswith(b"HTTP/1.1 4") or answer == b"" for answer in answers), answers
    assert server.stop() == 0
    log = server.log_text()
    for name, secret in [*SECRETS.items(), ("LIVEKIT_WEBHOOK_KEYS", WEBHOOK_SECRET)]:
        assert secret not in log, f"{name} is in the log"
        assert secret[:20] not in log, f"part of {name} is in the log"
    assert "Malformed HTTP message" in log  # Tornado's own line was written, redacted
    assert "[redacted]" in log


def test_redacted_json_lines_stay_json(server_process: Any) -> None:
    """A credential followed by a quote: the redaction takes whole escapes (`\\"`), never
    half of one, so the line is still one JSON object with the client's text inside it."""
    server = server_process(LOG_FORMAT="json", LOG_LEVEL="DEBUG", **SECRETS)
    hostile = [
        b'GET /rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x"\x7f\r\n\r\n',
        b'GET /rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x", "level": "CRITICAL\x7f\r\n\r\n',
        b"GET /rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\\\\\x7f\r\n\r\n",
    ]
    for request in hostile:
        assert raw_request(server.port, request).startswith(b"HTTP/1.1 400")
    assert server.stop() == 0
    lines = [line for line in server.log_text().splitlines() if line.startswith("{")]
    malformed = [json.loads(line) for line in lines if "Malformed HTTP message" in line]
    assert len(malformed) == len(hostile)
    assert all(line["level"] == "INFO" and "Bearer [redacted]" in line["message"] for line in malformed)
