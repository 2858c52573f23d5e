"""The server's image, built from the Dockerfile and run with podman as `docker run` would.

Every container and volume is named `lkapptest-...` and removed after each test, whatever
happened (conftest.py's `names`).
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from dev.livekit_server import free_port
from ground.config import PROJECT_DIR
from tests.conftest import post_webhook, request_token, token_claims, webhook_event
from tests.containers.podman import (
    CONTAINERS_DOC,
    doc_block,
    get,
    inspect,
    podman,
    remove_everything_named,
    wait_healthy,
)
from tests.containers.stand_ins import Images

pytestmark = pytest.mark.containers


class ServerContainer:
    """The server image run as `docker run` would: its port published on a free loopback
    port, /data on a named volume."""

    def __init__(self, image: str, name: str, volume: str) -> None:
        self.image, self.name, self.volume = image, name, volume
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerContainer:
        podman(
            "run", "--detach", "--name", self.name, "--publish", f"127.0.0.1:{self.port}:6080",
            "--volume", f"{self.volume}:/data", self.image,
        )  # fmt: skip
        wait_healthy(self.name)
        return self

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr


def test_the_image_runs_as_non_root_healthy_and_answers_tokens_in_both_shapes(
    images: Images, names: str
) -> None:
    server = ServerContainer(images.server, f"{names}-server", f"{names}-data").start()
    assert inspect(server.name, "{{.Config.User}}") == "app"
    assert podman("exec", server.name, "id", "-u").stdout.strip() not in ("", "0")
    assert inspect(server.name, "{{.State.Health.Status}}") == "healthy"
    status, health = get(server.url + "/healthz")
    assert status == 200 and health["status"] == "ok"
    assert (health["eventStore"], health["sockets"]) == ({"store": "sqlite", "ok": True}, 0)

    status, answer = request_token(server.url, {"roomName": "boxed", "participantName": "alice"})
    assert status == 200 and set(answer) == {"token"}
    claims = token_claims(answer["token"])
    assert (claims.identity, claims.video.room, claims.video.room_join) == ("alice", "boxed", True)

    status, answer = request_token(server.url, {"room_name": "boxed", "participant_identity": "bob"})
    assert status == 201 and answer["server_url"] == "ws://localhost:7880"
    assert token_claims(answer["participant_token"]).identity == "bob"


def test_stop_drains_and_the_volume_keeps_the_event_log(images: Images, names: str) -> None:
    """`podman stop` while webhooks keep coming: the server exits by itself within the grace
    period, and a new container on the same volume has every event it acknowledged."""
    volume = f"{names}-data"
    first = ServerContainer(images.server, f"{names}-first", volume).start()
    acknowledged: list[str] = []
    stopping = threading.Event()

    def send() -> None:
        while True:
            event = webhook_event("room_started", room="drain")
            try:
                status = post_webhook(first.url, event)
            except OSError:  # the port closed: nothing more is acknowledged
                if stopping.is_set():
                    return
                continue
            if status == 200:
                acknowledged.append(event["id"])

    senders = [threading.Thread(target=send, daemon=True) for _ in range(4)]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    stopping.set()
    podman("stop", "--time", "10", first.name, timeout=60)
    for sender in senders:
        sender.join(20)
    assert not any(sender.is_alive() for sender in senders)
    # 0, not 137: it exited on its own, before the grace period ended in a SIGKILL.
    assert inspect(first.name, "{{.State.ExitCode}}") == "0", first.logs()[-3000:]
    assert "Shutting down (SIGTERM)" in first.logs() and "Stopped" in first.logs()
    podman("rm", first.name)

    second = ServerContainer(images.server, f"{names}-second", volume).start()
    status, history = get(second.url + "/events/history?limit=1000")
    assert status == 200
    stored = [frame["event"]["id"] for frame in history]
    assert 40 <= len(acknowledged) < 1000 and len(stored) < 1000  # all of them on one page
    assert set(acknowledged) <= set(stored)
    assert len(stored) == len(set(stored))


def test_extensions_from_a_derived_image_and_from_a_mount(images: Images, names: str, tmp_path: Path) -> None:
    """docs/containers.md's two ways to add APP_EXTENSIONS, with examples/room_list.py."""
    dockerfile = doc_block("FROM livekit-tornado-app-server").replace(
        "livekit-tornado-app-server", images.server, 1
    )
    dockerfile = dockerfile.replace("my_auth", "room_list")
    (tmp_path / "Dockerfile").write_text(dockerfile)
    (tmp_path / "room_list.py").write_text((PROJECT_DIR / "examples" / "room_list.py").read_text())
    derived = f"localhost/{names}-derived:1"
    try:
        podman("build", "--format", "docker", "--tag", derived, str(tmp_path), timeout=300)
        built = ServerContainer(derived, f"{names}-derived", f"{names}-data-1").start()
        mounted = ServerContainer(images.server, f"{names}-mounted", f"{names}-data-2")
        mount = re.search(r'`-v "\$PWD/my_extensions:(\S+)" -e (\S+)`', CONTAINERS_DOC.read_text())
        assert mount, "the mount example"
        inside, environment = mount.groups()
        volume = f"{PROJECT_DIR / 'examples'}:{inside.replace('my_extensions', 'examples')}"
        environment = environment.replace("my_extensions.auth", "examples.room_list")
        podman(
            "run", "--detach", "--name", mounted.name, "--publish", f"127.0.0.1:{mounted.port}:6080",
            "--volume", f"{mounted.volume}:/data", "--volume", volume, "--env", environment, images.server,
        )  # fmt: skip
        wait_healthy(mounted.name)
        for server in (built, mounted):
            # The extension's route answers (404 without it): LiveKit is not running here.
            status, answer = get(server.url + "/example/rooms")
            assert status == 503 and "LiveKit cannot be reached" in answer["errorMessage"], answer
    finally:
        remove_everything_named(names)
        podman("rmi", "--force", derived, check=False)
