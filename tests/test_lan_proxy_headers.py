"""`make run-lan`'s generated Caddyfile cannot be told who the client is: through the real
Caddy, on free ports (not the fixed 5443/6443/7443 of tests/test_lan.py), a client's own
X-Real-IP / X-Forwarded-For are overwritten with its real address, so it gets one
rate-limit bucket however it varies them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dev.lan import CLIENT_HTTPS_PORT, LIVEKIT_HTTPS_PORT, SERVER_HTTPS_PORT, LanSettings, caddyfile
from dev.livekit_server import free_port
from tests.conftest import require


@pytest.fixture
def caddy_in_front(tmp_path: Path, server_process: Any) -> Iterator[tuple[str, ssl.SSLContext, Any]]:
    binary = shutil.which("caddy")
    require("Caddy", binary is not None, "install it with `apt-get install caddy`")
    assert binary is not None
    server = server_process(TRUST_PROXY_HEADERS="true", TOKEN_RATE_LIMIT="3")
    lan = LanSettings("127.0.0.1", "127.0.0.1", tmp_path / "lan", free_port(), free_port(), 0, 0)
    lan.download_dir.mkdir(parents=True)
    ports = (free_port(), free_port(), free_port())
    text = caddyfile(lan, f"127.0.0.1:{server.port}", None)
    for fixed, free in zip((CLIENT_HTTPS_PORT, SERVER_HTTPS_PORT, LIVEKIT_HTTPS_PORT), ports, strict=True):
        text = text.replace(
            f"https://127.0.0.1:{fixed} ", f"https://127.0.0.1:{free} "
        )  # not test_lan's ports
    assert str(SERVER_HTTPS_PORT) not in text
    config = lan.ca_dir / "Caddyfile"
    config.write_text(text)
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg-c"), "XDG_DATA_HOME": str(tmp_path / "xdg-d")}
    with open(tmp_path / "caddy.log", "wb") as log:
        caddy = subprocess.Popen(
            [binary, "run", "--config", str(config), "--adapter", "caddyfile"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                context = ssl.create_default_context(cafile=str(lan.root_certificate))
                with (
                    socket.create_connection(("127.0.0.1", ports[1]), timeout=1) as raw,
                    context.wrap_socket(raw, server_hostname="127.0.0.1"),
                ):
                    break
            except (OSError, ssl.SSLError):
                assert caddy.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "caddy.log"
                ).read_text()
                time.sleep(0.1)
        yield f"https://127.0.0.1:{ports[1]}", context, server
    finally:
        caddy.terminate()
        caddy.wait(10)


def test_a_client_cannot_choose_its_address_through_the_lan_proxy(caddy_in_front: Any) -> None:
    url, context, server = caddy_in_front
    statuses = []
    for n in range(8):
        request = urllib.request.Request(
            url + "/token",
            data=json.dumps({"roomName": "R", "participantName": f"p{n}"}).encode(),
            headers={
                "Content-Type": "application/json",
                "X-Real-IP": f"10.0.0.{n + 1}",
                "X-Forwarded-For": f"10.1.0.{n + 1}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                statuses.append(response.status)
        except urllib.error.HTTPError as error:
            error.close()
            statuses.append(error.code)
    assert statuses == [200] * 3 + [429] * 5, statuses  # TOKEN_RATE_LIMIT=3 for one client
    assert "10.0.0." not in server.log_text() and "10.1.0." not in server.log_text()
