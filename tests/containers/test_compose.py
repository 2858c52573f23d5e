"""compose.yaml and docs/containers.md's stacks, as written, run with podman-compose.

The public files name public images; no registry is reachable here, so stand_ins.py builds
local ones, and local_images/compose.local.yaml (compose.local-lan.yaml for the docs'
files) swaps them in. Published ports are free ports on 127.0.0.1, chosen through
compose.yaml's own variables (an override file can add ports, not replace them). Every
container, volume and network is named `lkapptest-...` and removed after each test,
whatever happened (conftest.py's `names`).
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dev.livekit_server import free_port
from ground.config import PROJECT_DIR
from tests.conftest import require
from tests.containers.podman import (
    CONTAINERS_DOC,
    doc_block,
    environment,
    get,
    in_container,
    podman,
    report_line,
    wait_healthy,
)
from tests.containers.stand_ins import Images, caddy_image

pytestmark = pytest.mark.containers
COMPOSE_OVERRIDE = "tests/containers/local_images/compose.local.yaml"
# Variables of compose.yaml and docs/containers.md's files that the tests set.
COMPOSE_VARIABLES = (
    "PUBLISH_ADDRESS",
    "SERVER_PUBLISHED_PORT",
    "LIVEKIT_PUBLISHED_PORT",
    "LIVEKIT_URL",
    "RTC_PUBLISH_ADDRESS",
    "LIVEKIT_RTC_TCP_PORT",
    "LIVEKIT_RTC_UDP_PORT",
    "LIVEKIT_NODE_IP",
    "LIVEKIT_API_KEY",
    "LIVEKIT_API_SECRET",
    "APP_ENV",
    "ADMIN_SECRET",
    "LAN_HOST",
    "LAN_PUBLISH_ADDRESS",
    "LAN_SERVER_PORT",
    "LAN_LIVEKIT_PORT",
    "LAN_CA_PORT",
    "SERVER_UPSTREAMS",
)


def skip_if_dotenv_overrides_them() -> None:
    """podman-compose 1.0.3 prefers a .env beside compose.yaml to the environment it is
    given (Docker Compose does the opposite): one that sets the tests' variables would
    change what they test."""
    dotenv = PROJECT_DIR / ".env"
    if dotenv.exists():
        assigned = re.findall(r"^\s*(\w+)\s*=", dotenv.read_text(), re.MULTILINE)
        if clashing := sorted(set(COMPOSE_VARIABLES) & set(assigned)):
            pytest.skip(f"{dotenv} sets {clashing}, which podman-compose 1.0.3 prefers to the test's")


def readme_commands() -> list[str]:
    """The README's container section: its shell block's command lines."""
    readme = (PROJECT_DIR / "README.md").read_text()
    section = re.search(r"^## Run it in containers\n(.*?)^## ", readme, re.DOTALL | re.MULTILINE)
    assert section, "README has a `## Run it in containers` section"
    block = re.search(r"```sh\n(.*?)```", section.group(1), re.DOTALL)
    assert block, "with a sh block"
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def test_the_readme_compose_stack(
    images: Images, names: str, browser: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The README's commands as written (podman-compose, the local images): LiveKit's real
    webhooks reach the server by service name and land in Redis, the server reaches
    LiveKit's API by service name, and a browser on this machine joins a room through the
    published ports and sees its events."""
    skip_if_dotenv_overrides_them()
    up, *after = readme_commands()
    assert up.startswith("docker compose up"), up
    livekit_port, admin_secret = free_port(), secrets.token_hex(20)
    settings = {
        "PUBLISH_ADDRESS": "127.0.0.1",
        "SERVER_PUBLISHED_PORT": str(free_port()),
        "LIVEKIT_PUBLISHED_PORT": str(livekit_port),
        "LIVEKIT_URL": f"ws://127.0.0.1:{livekit_port}",
        "LIVEKIT_RTC_TCP_PORT": str(free_port()),
        "LIVEKIT_RTC_UDP_PORT": str(free_port(socket.SOCK_DGRAM)),
        "ADMIN_SECRET": admin_secret,
        "TEST_SERVER_IMAGE": images.server,
        "TEST_PYTHON_IMAGE": images.base,
        "TEST_NODE_IMAGE": images.node,
        "TEST_LIVEKIT_IMAGE": images.livekit,
        "TEST_REDIS_IMAGE": images.redis,
    }
    compose = f"podman-compose -p {names} -f compose.yaml -f {COMPOSE_OVERRIDE}"
    env = environment(**settings)

    def run(command: str) -> None:
        as_here = command.replace("docker compose", compose, 1)
        result = subprocess.run(
            ["bash", "-c", as_here], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=600
        )
        with open(tmp_path / "compose.log", "a") as log:
            log.write(f"$ {as_here}\n{result.stdout}\n{result.stderr}\n")
        assert result.returncode == 0, f"{as_here}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    started = time.monotonic()
    run(up)
    up_returned = time.monotonic()
    server, redis = f"{names}_server_1", f"{names}_redis_1"
    wait_healthy(server)
    report_line(request)(
        f"compose up (the README's command, a warm build included) {up_returned - started:.1f} s, "
        f"then healthy after {time.monotonic() - up_returned:.1f} s"
    )
    url = f"http://127.0.0.1:{settings['SERVER_PUBLISHED_PORT']}"
    assert get(url + "/healthz")[1]["eventStore"] == {"store": "redis", "ok": True}

    from tests.test_e2e import join, open_page, wait_for_event

    room = f"boxed-{secrets.token_hex(3)}"
    page = open_page(browser, url + "/")
    try:
        join(page, room, "alice")
        wait_for_event(page, "participant_joined", room, "alice")
        wait_for_event(page, "track_published", room, "camera")
        # The server asks LiveKit's API at http://livekit:7880 (LIVEKIT_API_URL).
        status, found = get(f"{url}/rooms/{room}", {"Authorization": f"Bearer {admin_secret}"})
        assert status == 200, found
        assert [participant["identity"] for participant in found["participants"]] == ["alice"]
    finally:
        page.context.close()
    # The events the page showed came from LiveKit's webhooks, stored in Redis's stream.
    status, history = get(url + "/events/history?limit=1000")
    ids = [frame["event"]["id"] for frame in history if frame["event"].get("room", {}).get("name") == room]
    assert len(ids) >= 2
    stream = podman("exec", redis, "redis-cli", "XRANGE", "livekit:events", "-", "+").stdout
    assert all(event_id in stream for event_id in ids)

    for command in after:
        run(command)
    left = podman("ps", "--all", "--format", "{{.Names}}", "--filter", f"name={names}").stdout.split()
    assert left == []


def test_every_compose_variable_is_in_the_docs_table() -> None:
    """Each ${NAME} of compose.yaml, and each variable passed on from the shell (NAME:)."""
    lines = (PROJECT_DIR / "compose.yaml").read_text().splitlines()
    compose = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{(\w+)", compose)) | set(re.findall(r"^      (\w+):$", compose, re.MULTILINE))
    table = "\n".join(line for line in CONTAINERS_DOC.read_text().splitlines() if line.startswith("| `"))
    assert sorted(name for name in used if f"`{name}`" not in table) == []


def test_the_https_layout_with_two_instances(
    images: Images, names: str, browser: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """docs/containers.md's HTTPS (Caddy, OpenVidu's LAN layout) and second-instance blocks,
    as written, with 127.0.0.1 as the LAN address: the page over HTTPS with Caddy's CA, a
    room joined through wss://, events from either instance, tokens from both."""
    skip_if_dotenv_overrides_them()
    caddy = caddy_image(images.base, report_line(request))
    require("caddy", caddy is not None, "install Debian's caddy (`make system-packages` as root)")
    assert caddy is not None
    lan_file, more_file, caddyfile = (
        tmp_path / "compose.lan.yaml",
        tmp_path / "compose.more.yaml",
        tmp_path / "Caddyfile.lan",
    )
    lan_compose = doc_block("# compose.lan.yaml")
    assert "./Caddyfile.lan:" in lan_compose
    lan_file.write_text(lan_compose.replace("./Caddyfile.lan:", f"{caddyfile}:"))
    more_file.write_text(doc_block("# compose.more.yaml"))
    caddyfile.write_text(doc_block("# Caddyfile.lan"))
    https_port, livekit_https_port, ca_port = free_port(), free_port(), free_port()
    # The .env block, for 127.0.0.1 and free ports on it.
    dotenv = dict(line.split("=", 1) for line in doc_block("LAN_HOST=192.168.1.20").splitlines())
    dotenv = {
        key: value.replace("192.168.1.20:7443", f"127.0.0.1:{livekit_https_port}")
        for key, value in dotenv.items()
    }
    dotenv = {key: value.replace("192.168.1.20", "127.0.0.1") for key, value in dotenv.items()}
    assert dotenv.pop("RTC_PUBLISH_ADDRESS") == "0.0.0.0"  # the tests publish on 127.0.0.1 only
    upstreams = re.search(r"`SERVER_UPSTREAMS=([^`]+)`", CONTAINERS_DOC.read_text())
    assert upstreams
    settings = {
        **dotenv,
        "SERVER_UPSTREAMS": upstreams.group(1),
        "PUBLISH_ADDRESS": "127.0.0.1",
        "RTC_PUBLISH_ADDRESS": "127.0.0.1",
        "LAN_PUBLISH_ADDRESS": "127.0.0.1",
        "SERVER_PUBLISHED_PORT": str(free_port()),
        "LIVEKIT_PUBLISHED_PORT": str(free_port()),
        "LIVEKIT_RTC_TCP_PORT": str(free_port()),
        "LIVEKIT_RTC_UDP_PORT": str(free_port(socket.SOCK_DGRAM)),
        "LAN_SERVER_PORT": str(https_port),
        "LAN_LIVEKIT_PORT": str(livekit_https_port),
        "LAN_CA_PORT": str(ca_port),
        "TEST_SERVER_IMAGE": images.server,
        "TEST_PYTHON_IMAGE": images.base,
        "TEST_NODE_IMAGE": images.node,
        "TEST_LIVEKIT_IMAGE": images.livekit,
        "TEST_REDIS_IMAGE": images.redis,
        "TEST_CADDY_IMAGE": caddy,
    }
    command = re.search(
        r"`(docker compose -f compose\.yaml -f compose\.lan\.yaml -f compose\.more\.yaml up[^`]*)`",
        CONTAINERS_DOC.read_text(),
    )
    assert command, "the command that starts the layout with two instances"
    as_here = (
        command.group(1)
        .replace("docker compose", f"podman-compose -p {names}", 1)
        .replace("compose.lan.yaml", str(lan_file))
        .replace("compose.more.yaml", str(more_file))
    )
    as_here = as_here.replace(
        " up", f" -f {COMPOSE_OVERRIDE} -f tests/containers/local_images/compose.local-lan.yaml up", 1
    )
    result = subprocess.run(
        ["bash", "-c", as_here], cwd=PROJECT_DIR, env=environment(**settings),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, f"{as_here}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    first, second = f"{names}_server_1", f"{names}_server-2_1"
    wait_healthy(first)
    wait_healthy(second)

    import ssl

    ca = urllib.request.urlopen(f"http://127.0.0.1:{ca_port}/lan-ca.crt", timeout=10).read().decode()
    assert ca.startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE KEY" not in ca
    for path in ("/root.key", "/root.crt", "/"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{ca_port}{path}", timeout=10).close()
        assert refused.value.code == 404
        refused.value.close()
    trusting = ssl.create_default_context(cadata=ca)
    page_url = f"https://127.0.0.1:{https_port}"
    for number in range(20):  # Caddy spreads them over both instances
        token_request = urllib.request.Request(
            page_url + "/token",
            data=json.dumps({"roomName": "lan", "participantName": f"p{number}"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(token_request, timeout=10, context=trusting) as answer:
            assert answer.status == 200
    for server in (first, second):
        served = re.search(
            r'^livekit_app_token_requests_total\{shape="openvidu".*?\} (\S+)$',
            in_container(server, "/metrics"),
            re.MULTILINE,
        )
        assert served and float(served.group(1)) > 0, f"{server} answered no token"

    from tests.test_e2e import join, wait_for_event

    room = f"lan-{secrets.token_hex(3)}"
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        page.goto(page_url + "/")
        page.wait_for_selector('#socket-state[data-state="live"]')
        join(page, room, "alice")
        wait_for_event(page, "participant_joined", room, "alice")
        wait_for_event(page, "track_published", room, "camera")
    finally:
        context.close()
    # LiveKit posted them to `server`; the second instance has them through Redis.
    for server in (first, second):
        history = json.loads(in_container(server, "/events/history?limit=1000"))
        assert any(frame["event"].get("room", {}).get("name") == room for frame in history), server
