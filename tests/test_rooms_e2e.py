"""Rooms and moderation end to end: the real livekit-server, Chromium pages joining rooms,
the admin API acting on them and the rooms panel showing it."""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit import api

from dev.livekit_server import HOW_TO_GET, LiveKitServer, find_binary, free_port
from ground.config import PROJECT_DIR
from tests.admin import SECRET, RoomsSocket, admin, eventually, path_of
from tests.conftest import request_token, require, wait_until
from tests.processes import ServerProcess
from tests.test_e2e import WAIT_MS, join, open_page, wait_for_event, wait_for_playing_video
from tests.test_readme import curl_examples
from tests.test_rooms import in_a_thread

pytestmark = pytest.mark.e2e
RECONCILE_SECONDS = 4


class WebhookGate:
    """Test double for the network between livekit-server and this server: forwards
    each webhook, except those of the rooms it is told to drop, which it answers 400
    (LiveKit retries only connection errors and 5xx, so a 4xx is a webhook lost)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.dropping: set[str] = set()
        self.dropped: list[tuple[str, str]] = []
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                event = json.loads(body)
                room = event.get("room", {}).get("name", "")
                if room in gate.dropping:
                    gate.dropped.append((room, event["event"]))
                    self.send_response(400)
                    self.end_headers()
                    return
                headers = {name: self.headers[name] for name in ("Content-Type", "Authorization")}
                request = urllib.request.Request(gate.target, data=body, headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=10) as answer:
                        status, data = answer.status, answer.read()
                except urllib.error.HTTPError as error:
                    with error:
                        status, data = error.code, error.read()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/livekit/webhook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def livekit_binary() -> str:
    binary = find_binary()
    require("livekit-server", binary is not None, HOW_TO_GET)
    assert binary is not None
    return binary


@pytest.fixture(scope="module")
def stack(
    livekit_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, LiveKitServer, WebhookGate]]:
    """livekit-server -> webhook gate -> this server (with ADMIN_SECRET), on free ports."""
    workdir = tmp_path_factory.mktemp("rooms-e2e")
    app_port = free_port()
    gate = WebhookGate(f"http://127.0.0.1:{app_port}/livekit/webhook")
    livekit = LiveKitServer(
        livekit_binary, gate.url, empty_timeout=30, departure_timeout=2, log_path=workdir / "livekit.log"
    )
    app = ServerProcess(
        workdir,
        SERVER_PORT=str(app_port),
        ADMIN_SECRET=SECRET,
        ROOMS_RECONCILE_SECONDS=str(RECONCILE_SECONDS),
    )
    try:
        livekit.start()
        app.env["LIVEKIT_URL"] = livekit.url
        app.start()
        yield app, livekit, gate
    finally:
        livekit.stop()
        app.stop()
        gate.stop()


@pytest.fixture
def other_app(stack: Any, tmp_path: Path) -> Iterator[Any]:
    """Another instance of this server on the same LiveKit server, with other settings."""
    started: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        directory = tmp_path / f"app-{len(started)}"
        directory.mkdir()
        app = ServerProcess(directory, LIVEKIT_URL=stack[1].url, **env).start()
        started.append(app)
        return app

    yield start
    for app in started:
        app.stop()


def unlock(page: Any) -> None:
    """Give the rooms panel the admin secret, as a person would."""
    page.wait_for_selector("#admin-key-form:not([hidden])", timeout=WAIT_MS)
    page.fill("#admin-key", SECRET)
    page.press("#admin-key", "Enter")
    page.wait_for_selector('#rooms-state[data-state="live"]', timeout=WAIT_MS)


def panel_has(page: Any, room: str, identity: str, extra: str = "") -> None:
    """Wait until the rooms panel shows `identity` in `room` (and `extra`, a selector inside the row)."""
    selector = f'.room-entry[data-room="{room}"] .participant[data-identity="{identity}"] {extra}'.strip()
    page.wait_for_selector(selector, timeout=WAIT_MS, state="attached")


def panel_identities(page: Any, room: str) -> set[str]:
    return set(
        page.eval_on_selector_all(
            f'.room-entry[data-room="{room}"] .participant', "rows => rows.map(r => r.dataset.identity)"
        )
    )


def livekit_identities(livekit: LiveKitServer, room: str) -> set[str]:
    async def ask() -> set[str]:
        async with api.LiveKitAPI(livekit.url.replace("ws", "http"), "devkey", "secret") as client:
            answer = await client.room.list_participants(api.ListParticipantsRequest(room=room))
            return {participant.identity for participant in answer.participants}

    return set(in_a_thread(ask()))


def test_a_moderating_a_room_of_two(browser: Any, stack: Any) -> None:
    app, _, _ = stack
    room = f"moderated-{int(time.time())}"
    alice = open_page(browser, app.url + "/")
    bob = open_page(browser, app.url + "/")
    for page in (alice, bob):
        unlock(page)
    join(alice, room, "alice")
    join(bob, room, "bob")
    wait_for_playing_video(bob, "alice")
    wait_for_playing_video(alice, "bob")

    # The API lists the room with both, their tracks, and never the room's TURN password.
    eventually(
        lambda: any(
            r["name"] == room and r["numParticipants"] == 2 for r in admin(app.url, "GET", "/rooms")[1]
        )
    )
    status, detail, _ = admin(app.url, "GET", path_of("rooms", room))
    assert status == 200 and "turnPassword" not in json.dumps(detail)
    participants = {p["identity"]: p for p in detail["participants"]}
    assert set(participants) == {"alice", "bob"}
    assert {t["source"] for t in participants["alice"]["tracks"]} == {"CAMERA", "MICROPHONE"}
    assert participants["alice"]["permission"]["canPublish"] is True
    # The panel: the page's own room, highlighted, with both in it.
    alice.wait_for_selector(f'.room-entry[data-room="{room}"][data-own="true"]', timeout=WAIT_MS)
    panel_has(alice, room, "bob", '.track[data-source="CAMERA"]')
    panel_has(bob, room, "alice", '.track[data-source="MICROPHONE"][data-muted="false"]')

    # Mute alice's microphone: bob's page shows her muted.
    status, muted, _ = admin(
        app.url, "POST", path_of("rooms", room, "participants", "alice", "mute"), {"source": "microphone"}
    )
    assert status == 200 and [t["muted"] for t in muted["tracks"]] == [True]
    panel_has(bob, room, "alice", '.track[data-source="MICROPHONE"][data-muted="true"]')
    bob.wait_for_selector('.tile[data-identity="alice"][data-mic-muted="true"]', timeout=WAIT_MS)

    # No publishing for alice: her camera stops at bob's; her other permissions stay.
    status, updated, _ = admin(
        app.url,
        "PATCH",
        path_of("rooms", room, "participants", "alice"),
        {"permission": {"canPublish": False}},
    )
    assert status == 200
    assert updated["participant"]["permission"]["canPublish"] is False
    assert updated["participant"]["permission"]["canSubscribe"] is True
    bob.wait_for_selector('.tile[data-identity="alice"] video', state="detached", timeout=WAIT_MS)
    panel_has(bob, room, "alice", ".track.none")

    # Kick bob with a ban of 60 s: his page says so, and /token keeps him out of this room only.
    status, removed, _ = admin(
        app.url, "POST", path_of("rooms", room, "participants", "bob", "remove"), {"ban_seconds": 60}
    )
    assert status == 200 and removed["removed"] == "bob" and removed["ban"]["secondsLeft"] == 60
    bob.wait_for_selector("#in-room", state="hidden", timeout=WAIT_MS)
    assert "You were removed from the room by its admin." in bob.inner_text("#room-error")
    status, refused = request_token(app.url, {"roomName": room, "participantName": "bob"})
    assert status == 403 and refused["errorMessage"].startswith(f"'bob' is banned from room '{room}' until ")
    assert request_token(app.url, {"roomName": room + "-other", "participantName": "bob"})[0] == 200
    bob.click("#join-button")  # rejoining under the ban: the page shows the 403's message
    wait_until(bob, "() => document.getElementById('room-error').textContent.includes('is banned from room')")
    assert bob.is_hidden("#in-room")
    assert [ban["identity"] for ban in admin(app.url, "GET", path_of("rooms", room, "bans"))[1]] == ["bob"]
    wait_for_event(alice, "admin.participant_removed", room, "bob")
    status, lifted, _ = admin(app.url, "DELETE", path_of("rooms", room, "bans", "bob"))
    assert (status, lifted) == (200, {"lifted": "bob", "room": room})
    assert request_token(app.url, {"roomName": room, "participantName": "bob"})[0] == 200
    wait_for_event(alice, "admin.ban_lifted", room, "bob")

    # End the room: alice's page is told, LiveKit's room_finished reaches the event panel.
    assert admin(app.url, "DELETE", path_of("rooms", room))[:2] == (200, {"deleted": room})
    alice.wait_for_selector("#in-room", state="hidden", timeout=WAIT_MS)
    assert "The room was ended by its admin." in alice.inner_text("#room-error")
    wait_for_event(alice, "room_finished", room)
    alice.wait_for_selector(f'.room-entry[data-room="{room}"]', state="detached", timeout=WAIT_MS)
    for page in (alice, bob):
        page.context.close()


def test_b_a_lost_participant_joined_webhook_is_made_good_within_one_reconcile(
    browser: Any, stack: Any
) -> None:
    app, livekit, gate = stack
    room = f"lossy-{int(time.time())}"
    directory = RoomsSocket(app.url)
    carol = open_page(browser, app.url + "/")
    try:
        gate.dropping.add(room)  # LiveKit cannot reach us for a moment
        join(carol, room, "carol")
        eventually(lambda: "carol" in livekit_identities(livekit, room))
        in_livekit = time.monotonic()
        assert (room, "participant_joined") in gate.dropped
        eventually(lambda: "carol" in directory.identities(room), timeout=RECONCILE_SECONDS + 5)
        took = time.monotonic() - in_livekit
        assert took <= RECONCILE_SECONDS + 2, f"{took:.1f} s"
        print(f"lost join made good by the directory in {took:.1f} s (period {RECONCILE_SECONDS} s)")
        # The panel, GET /rooms/{room} and RoomService agree.
        unlock(carol)
        panel_has(carol, room, "carol")
        api_identities = {
            p["identity"] for p in admin(app.url, "GET", path_of("rooms", room))[1]["participants"]
        }
        assert (
            panel_identities(carol, room) == api_identities == livekit_identities(livekit, room) == {"carol"}
        )
        # Not one webhook of this room reached the server: the directory had it from RoomService.
        assert not any(f["event"].get("room", {}).get("name") == room for f in app.history())
    finally:
        gate.dropping.discard(room)
        directory.close()
        carol.context.close()


def test_c_zero_config_panel_suffixed_names_keyboard_and_small_screens(
    browser: Any, other_app: Any, tmp_path: Path
) -> None:
    app = other_app(IDENTITY_CONFLICT="suffix", ROOMS_RECONCILE_SECONDS="2")
    room = "tutorial-room"
    first = open_page(browser, app.url + "/")
    second = open_page(browser, app.url + "/")
    # In development without ADMIN_SECRET, the page's own panel needs nothing.
    first.wait_for_selector('#rooms-state[data-state="live"]', timeout=WAIT_MS)
    assert first.is_hidden("#admin-key-form")
    join(first, room, "Participant0")
    join(second, room, "Participant0")  # the OpenVidu tutorials' prefilled name, twice
    assert second.inner_text("#room-title") == f"In room “{room}” as Participant0-2"
    first.wait_for_selector('#participant-count[data-count="2"]', timeout=WAIT_MS)
    assert first.is_visible("#in-room")  # not knocked out by the newcomer
    panel_has(first, room, "Participant0-2")
    names = first.eval_on_selector_all(
        f'.room-entry[data-room="{room}"] .participant-name', "cells => cells.map(c => c.textContent)"
    )
    assert names == ["Participant0", "Participant0"]  # the display name stays what was typed

    # 360 px wide: everything fits, nothing scrolls sideways.
    first.set_viewport_size({"width": 360, "height": 800})
    assert first.evaluate("document.documentElement.scrollWidth") <= 360

    # Keyboard only: choose a ban, Tab to Kick, Enter.
    row = f'.room-entry[data-room="{room}"] .participant[data-identity="Participant0-2"]'
    first.focus(f"{row} select")
    first.keyboard.press("ArrowDown")  # Ban 1 min
    first.keyboard.press("Tab")
    assert first.evaluate("document.activeElement.dataset.action") == "kick"
    first.keyboard.press("Enter")
    second.wait_for_selector("#in-room", state="hidden", timeout=WAIT_MS)
    assert "removed from the room" in second.inner_text("#room-error")
    # Asking again as Participant0 would be suffixed to the banned Participant0-2: refused.
    second.click("#join-button")
    wait_until(second, "() => document.getElementById('room-error').textContent.includes('is banned')")

    # A page on another origin gets nothing from this zero-config admin API.
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(
        "<!doctype html><title>elsewhere</title><p>elsewhere</p>", encoding="utf-8"
    )
    port = free_port()
    static_server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        elsewhere = first.context.new_page()
        eventually(lambda: _goto(elsewhere, f"http://127.0.0.1:{port}/index.html"), timeout=10)
        outcome = elsewhere.evaluate(
            """async ([app, path]) => {
                 const read = await fetch(app + '/rooms', { headers: { 'X-Requested-With': 'x' } })
                   .then(r => 'read ' + r.status, e => 'blocked');
                 await fetch(app + path, { method: 'POST', mode: 'no-cors', body: '{}' }).catch(() => null);
                 return read;
               }""",
            [app.url, path_of("rooms", room, "participants", "Participant0", "remove")],
        )
        assert outcome == "blocked"
        eventually(lambda: "/participants/Participant0/remove" in app.log_text())
        assert re.search(r"404 POST /rooms/tutorial-room/participants/Participant0/remove", app.log_text())
        assert first.is_visible("#in-room")  # still in the room
    finally:
        static_server.terminate()
        static_server.wait()
    for page in (first, second):
        page.context.close()


def _goto(page: Any, url: str) -> bool:
    try:
        page.goto(url)
        return True
    except Exception:
        return False


def test_d_identity_conflicts_replace_and_reject(browser: Any, stack: Any, other_app: Any) -> None:
    app, _, _ = stack
    room = f"conflicts-{int(time.time())}"
    first = open_page(browser, app.url + "/")
    second = open_page(browser, app.url + "/")
    join(first, room, "Participant1")
    join(second, room, "Participant1")  # IDENTITY_CONFLICT=replace: LiveKit's own behaviour
    first.wait_for_selector("#in-room", state="hidden", timeout=WAIT_MS)
    assert "Someone else joined this room with your name" in first.inner_text("#room-error")

    rejecting = other_app(IDENTITY_CONFLICT="reject")
    third = open_page(browser, rejecting.url + "/")
    third.fill("#room-name", room)
    third.fill("#participant-name", "Participant1")
    third.click("#join-button")
    wait_until(third, "() => document.getElementById('room-error').textContent.includes('already')")
    assert f"'Participant1' is in room '{room}' already" in third.inner_text("#room-error")
    assert third.is_hidden("#in-room") and second.is_visible("#in-room")
    join(third, room, "Participant2")
    for page in (first, second, third):
        page.context.close()


def test_e_the_readme_admin_examples_run_as_written(browser: Any, stack: Any) -> None:
    app, _, _ = stack
    alice = open_page(browser, app.url + "/")
    bob = open_page(browser, app.url + "/")
    join(alice, "demo-room", "alice")
    join(bob, "demo-room", "bob")
    wait_for_playing_video(bob, "alice")
    examples = curl_examples(admin=True)
    assert len(examples) >= 8
    for command, expected in examples:
        local = command.replace("localhost:6080", f"127.0.0.1:{app.port}")
        result = subprocess.run(
            ["bash", "-c", local],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin", "ADMIN_SECRET": SECRET},
        )
        pattern = ".*".join(re.escape(part) for part in expected.split("..."))
        assert re.fullmatch(pattern, result.stdout.strip()), (command, result.stdout, result.stderr)
    for page in (alice, bob):
        page.context.close()
