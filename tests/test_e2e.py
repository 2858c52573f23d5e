"""End to end: the real livekit-server, Debian's Chromium and this server together."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dev.livekit_server import HOW_TO_GET, LiveKitServer, find_binary, free_port
from ground.config import PROJECT_DIR
from tests.conftest import require, wait_until
from tests.processes import ServerProcess

pytestmark = pytest.mark.e2e
WAIT_MS = 30_000


@contextlib.contextmanager
def livekit_with_app(
    workdir: Path, empty_timeout: int, **env: str
) -> Iterator[tuple[ServerProcess, LiveKitServer]]:
    """livekit-server with its webhooks pointed at this server, both on free loopback ports."""
    binary = find_binary()
    require("livekit-server", binary is not None, HOW_TO_GET)
    assert binary is not None
    app_port = free_port()
    livekit = LiveKitServer(
        binary,
        f"http://127.0.0.1:{app_port}/livekit/webhook",
        empty_timeout=empty_timeout,
        departure_timeout=2,
        log_path=workdir / "livekit.log",
    )
    app = ServerProcess(workdir, SERVER_PORT=str(app_port), **env)
    try:
        livekit.start()  # first: it picks its ports, and the app is told its URL
        app.env["LIVEKIT_URL"] = livekit.url
        app.start()
        yield app, livekit
    finally:
        livekit.stop()
        app.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, LiveKitServer]]:
    with livekit_with_app(tmp_path_factory.mktemp("e2e"), empty_timeout=5) as started:
        yield started


def open_page(browser: Any, url: str) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector('#socket-state[data-state="live"]')
    return page


def join(page: Any, room: str, name: str) -> None:
    page.fill("#room-name", room)
    page.fill("#participant-name", name)
    page.click("#join-button")
    page.wait_for_selector("#in-room:not([hidden])", timeout=WAIT_MS)


def wait_for_event(page: Any, event_type: str, room: str, text: str = "") -> None:
    """Wait until the panel has a row of that type and room whose summary contains `text`."""
    wait_until(
        page,
        """([type, room, text]) => [...document.querySelectorAll('#event-list li.event')].some(
             row => row.dataset.type === type && row.dataset.room === room
                    && row.textContent.includes(text))""",
        [event_type, room, text],
        WAIT_MS,
    )


def wait_for_playing_video(page: Any, identity: str) -> None:
    wait_until(
        page,
        'id => { const v = document.querySelector(`.tile[data-identity="${id}"] video`);'
        " return Boolean(v && v.videoWidth > 0 && !v.paused); }",
        identity,
        WAIT_MS,
    )


def test_a_and_b_two_people_meet_and_the_webhooks_tell_the_story(browser: Any, stack: Any) -> None:
    app, _ = stack
    room = f"room-ab-{int(time.time())}"
    alice = open_page(browser, app.url + "/")
    join(alice, room, "alice")
    wait_for_playing_video(alice, "alice")
    wait_for_event(alice, "room_started", room)
    wait_for_event(alice, "participant_joined", room, "alice")
    wait_for_event(alice, "track_published", room, "camera")
    wait_for_event(alice, "track_published", room, "microphone")

    bob = open_page(browser, app.url + "/")
    join(bob, room, "bob")
    wait_for_playing_video(alice, "bob")
    alice.wait_for_selector('#participant-count[data-count="2"]', timeout=WAIT_MS)
    assert alice.locator(".tile audio").count() == 1  # bob's microphone plays at alice's

    bob.click("#leave-button")
    wait_for_event(alice, "participant_left", room, "bob")
    alice.wait_for_selector('.tile[data-identity="bob"]', state="detached", timeout=WAIT_MS)
    alice.wait_for_selector('#participant-count[data-count="1"]')

    alice.click("#leave-button")
    wait_for_event(alice, "room_finished", room)
    # Every event arrived through LiveKit -> /livekit/webhook -> /events, each once.
    cursors = alice.eval_on_selector_all("#event-list li.event", "rows => rows.map(r => r.dataset.cursor)")
    assert len(cursors) == len(set(cursors))
    alice.context.close()
    bob.context.close()


def test_c_token_source_endpoint_joins(browser: Any, stack: Any) -> None:
    app, livekit = stack
    page = open_page(browser, app.url + "/")
    result = page.evaluate(
        """async () => {
             const { Room, TokenSource } = await import('/vendor/livekit-client/livekit-client.esm.mjs');
             const details = await TokenSource.endpoint('/token').fetch(
               { roomName: 'room-c', participantIdentity: 'carl' });
             const room = new Room();
             await room.connect(details.serverUrl, details.participantToken);
             const joined = { serverUrl: details.serverUrl, state: room.state,
                              identity: room.localParticipant.identity, room: room.name };
             await room.disconnect();
             return joined;
           }"""
    )
    assert result == {"serverUrl": livekit.url, "state": "connected", "identity": "carl", "room": "room-c"}
    wait_for_event(page, "participant_joined", "room-c", "carl")
    page.context.close()


OPENVIDU_STYLE_PAGE = """<!doctype html><meta charset="utf-8"><title>tutorial</title>
<p id="status">starting</p>
<script type="module">
  import { Room } from './livekit-client.esm.mjs';
  const APPLICATION_SERVER_URL = '%(app)s/';
  const status = document.getElementById('status');
  try {
    const response = await fetch(APPLICATION_SERVER_URL + 'token', {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ roomName: 'room-d', participantName: 'dora' }),
    });
    if (!response.ok) { const error = await response.json(); throw new Error(error.errorMessage); }
    const token = (await response.json()).token;
    const room = new Room();
    await room.connect('%(livekit)s', token);
    status.textContent = 'joined ' + room.name + ' as ' + room.localParticipant.identity;
    window.room = room;
  } catch (error) { status.textContent = 'failed: ' + error.message; }
</script>"""


def test_d_a_tutorial_page_on_another_origin_gets_a_token_through_cors(
    browser: Any, stack: Any, tmp_path: Path
) -> None:
    app, livekit = stack
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(OPENVIDU_STYLE_PAGE % {"app": app.url, "livekit": livekit.url})
    shutil.copy(PROJECT_DIR / "node_modules/livekit-client/dist/livekit-client.esm.mjs", site)
    port = free_port()
    static_server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        context = browser.new_context()
        page = context.new_page()
        origins: set[str] = set()
        page.on(
            "request",
            lambda request: (
                request.url.endswith("/token") and origins.add(request.all_headers().get("origin", ""))
            ),
        )
        for _ in range(50):
            try:
                page.goto(f"http://127.0.0.1:{port}/index.html")
                break
            except Exception:
                time.sleep(0.1)
        page.wait_for_function(
            "document.getElementById('status').textContent !== 'starting'", timeout=WAIT_MS
        )
        assert page.inner_text("#status") == "joined room-d as dora"
        assert origins == {f"http://127.0.0.1:{port}"}  # a cross-origin request...
        assert "204 OPTIONS /token" in app.log_text()  # ...preflighted for real
        page.evaluate("window.room.disconnect()")
        context.close()
    finally:
        static_server.terminate()
        static_server.wait()
    # LiveKit posts the join's webhook on its own schedule, possibly after the page saw the join.
    deadline = time.monotonic() + WAIT_MS / 1000
    while not any(
        frame.get("event", {}).get("participant", {}).get("identity") == "dora" for frame in app.history()
    ):
        assert time.monotonic() < deadline, "no webhook event of dora's reached the event log"
        time.sleep(0.1)


def test_e_a_livekit_server_with_the_wrong_secret_is_refused(tmp_path: Path, server_process: Any) -> None:
    binary = find_binary()
    require("livekit-server", binary is not None, HOW_TO_GET)
    assert binary is not None
    app = server_process()
    wrong = {"devkey": "a-different-secret-that-is-long-enough-0123"}
    livekit = LiveKitServer(
        binary, app.url + "/livekit/webhook", keys=wrong, log_path=tmp_path / "lk.log"
    ).start()
    try:
        from livekit import api

        async def create_room() -> None:
            async with api.LiveKitAPI(livekit.url.replace("ws", "http"), "devkey", wrong["devkey"]) as client:
                await client.room.create_room(api.CreateRoomRequest(name="room-e"))

        # Playwright's sync API may hold this thread's event loop: run on a thread of its own.
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, create_room()).result()
        deadline = time.monotonic() + 20
        while "401 POST /livekit/webhook" not in app.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "401 POST /livekit/webhook" in app.log_text(), "LiveKit's webhook never reached the server"
        assert app.history() == [], "a webhook signed with the wrong secret reached the event log"
    finally:
        livekit.stop()


def test_the_readme_screenshot_scene(browser: Any, stack: Any, tmp_path: Path) -> None:
    """Two people in a room with the event JSON open; `make screenshot` (SCREENSHOT=1)
    keeps the picture as docs/screenshot.png, otherwise it goes to a temporary folder."""
    app, _ = stack
    alice = open_page(browser, app.url + "/")
    bob = open_page(browser, app.url + "/")
    join(alice, "demo-room", "alice")
    join(bob, "demo-room", "bob")
    wait_for_playing_video(alice, "bob")
    wait_for_playing_video(alice, "alice")
    wait_for_event(alice, "track_published", "demo-room", "bob")
    alice.locator("#event-list li.event button").first.click()
    assert alice.locator("#event-list li.event pre").first.is_visible()
    alice.wait_for_timeout(500)
    target = (
        PROJECT_DIR / "docs" / "screenshot.png" if os.environ.get("SCREENSHOT") else tmp_path / "shot.png"
    )
    target.parent.mkdir(exist_ok=True)
    alice.screenshot(path=str(target))
    assert target.read_bytes().startswith(b"\x89PNG")
    for page in (alice, bob):
        page.click("#leave-button")
        page.context.close()
