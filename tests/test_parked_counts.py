"""The running server's parked counts follow the store: after `python -m extensions drop`
or `retry` in another process, /healthz and /metrics say so within seconds (SQLite and
Redis, real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from typing import Any

import pytest

from ground.config import PROJECT_DIR
from tests.admin import eventually
from tests.conftest import post_webhook, webhook_event

FAILING = "tests.sample_extensions.always_fails"
HANDLER = FAILING + ":on_event"


def parked(server: Any) -> int:
    with urllib.request.urlopen(server.url + "/healthz", timeout=10) as response:
        return int(json.loads(response.read())["eventHandlers"]["parkedBy"].get(HANDLER, -1))


def parked_metric(server: Any) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f'livekit_app_event_handler_parked{{handler="{HANDLER}"}}'):
                return float(line.split()[-1])
    return -1


def cli(server: Any, *arguments: str) -> None:
    env = {**os.environ, **{k: v for k, v in server.env.items() if k.startswith("EVENTS_")}}
    answer = subprocess.run(
        [sys.executable, "-m", "extensions", *arguments],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert answer.returncode == 0, answer.stderr


@pytest.mark.parametrize("store", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_parked_counts_follow_the_store(server_process: Any, redis_server: Any, store: str) -> None:
    extra = {"EVENTS_REDIS_URL": redis_server().url} if store == "redis" else {}
    server = server_process(APP_EXTENSIONS=FAILING, EVENT_HANDLER_MAX_ATTEMPTS="1", **extra)
    events = [webhook_event("room_started", room=f"p{n}") for n in range(3)]
    for event in events:
        assert post_webhook(server.url, event) == 200
    eventually(lambda: parked(server) == 3)
    cli(server, "drop", HANDLER, "--event", events[0]["id"])
    eventually(lambda: parked(server) == 2, timeout=10)
    eventually(lambda: parked_metric(server) == 2, timeout=10)
    cli(server, "drop")
    eventually(lambda: parked(server) == 0 and parked_metric(server) == 0, timeout=10)
