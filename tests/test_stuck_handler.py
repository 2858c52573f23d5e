"""A stuck event handler is visible: /healthz and /metrics say, per handler, how long its
oldest pending event has waited, and the log says once when it passes
EVENT_HANDLER_STUCK_SECONDS (a real process; the handler sleeps an hour)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from tests.admin import eventually
from tests.conftest import post_webhook, webhook_event

CLAIMABLE = "tests.sample_extensions.claimable"
HANDLER = CLAIMABLE + ":on_event"


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def test_a_stuck_handler_shows_in_healthz_metrics_and_the_log(server_process: Any, tmp_path: Path) -> None:
    server = server_process(
        APP_EXTENSIONS=CLAIMABLE,
        RECORD_FILE=str(tmp_path / "handled.txt"),
        HANDLER_SECONDS="3600",
        EVENT_HANDLER_STUCK_SECONDS="2",
    )

    def waited() -> float:
        return float(
            json.loads(get(server.url + "/healthz"))["eventHandlers"]["oldestPendingSeconds"][HANDLER]
        )

    assert waited() == 0  # nothing to do yet
    for room in ("a", "b", "c"):
        assert post_webhook(server.url, webhook_event("room_started", room=room)) == 200
    eventually(lambda: waited() >= 2.5)
    metrics = get(server.url + "/metrics").decode()
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith(f'livekit_app_event_handler_oldest_pending_seconds{{handler="{HANDLER}"}}')
    )
    assert float(line.split()[-1]) >= 2.5
    eventually(lambda: "event handler " + HANDLER + " has an event waiting" in server.log_text())
    assert server.log_text().count("has an event waiting") == 1  # once, not once a second
