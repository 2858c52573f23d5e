"""A kicked-and-banned participant who comes back with the token they already hold (tokens
cannot be revoked) is removed again at once: the real livekit-server, Chromium joining."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from dev.livekit_server import LiveKitServer
from tests.admin import SECRET, admin, eventually, path_of
from tests.conftest import request_token
from tests.processes import ServerProcess
from tests.test_e2e import livekit_with_app, open_page

pytestmark = pytest.mark.e2e

CONNECT = """async ([url, token]) => {
  const { Room, RoomEvent } = await import("/vendor/livekit-client/livekit-client.esm.mjs");
  const room = new Room();
  window.disconnectReason = null;
  window.connectError = null;
  room.on(RoomEvent.Disconnected, reason => { window.disconnectReason = reason ?? "unknown"; });
  window.heldRoom = room;
  try {
    await room.connect(url, token);
  } catch (error) {  // removed before its media connection was up: out all the same
    window.connectError = String(error);
    window.disconnectReason = window.disconnectReason ?? "connect failed";
  }
}"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[ServerProcess, LiveKitServer]]:
    with livekit_with_app(tmp_path, empty_timeout=30, ADMIN_SECRET=SECRET) as started:
        yield started


def in_room(app: ServerProcess, room: str, identity: str) -> bool:
    return admin(app.url, "GET", path_of("rooms", room, "participants", identity))[0] == 200


def test_a_banned_identity_back_with_its_old_token_is_removed_again(browser: Any, stack: Any) -> None:
    app, livekit = stack
    room = f"bans-{int(time.time())}"
    status, answer = request_token(app.url, {"roomName": room, "participantName": "bob"})
    assert status == 200
    old_token = answer["token"]  # what bob keeps
    page = open_page(browser, app.url + "/")
    try:
        page.evaluate(CONNECT, [livekit.url, old_token])
        assert page.evaluate("window.connectError") is None
        eventually(lambda: in_room(app, room, "bob"))
        status, removed, _ = admin(
            app.url, "POST", path_of("rooms", room, "participants", "bob", "remove"), {"ban_seconds": 600}
        )
        assert status == 200 and removed["ban"]["secondsLeft"] == 600
        eventually(lambda: page.evaluate("window.disconnectReason") is not None)
        eventually(lambda: not in_room(app, room, "bob"))
        cursor = app.history()[-1]["cursor"]

        # bob comes back with the token he holds: LiveKit lets him in, this server puts him out.
        def joined() -> list[dict[str, Any]]:
            return [f for f in app.history(cursor) if f["event"]["event"] == "participant_joined"]

        for _ in range(3):  # a media connection that fails here by itself is no rejoin: again
            page.evaluate(CONNECT, [livekit.url, old_token])
            eventually(lambda: page.evaluate("window.disconnectReason") is not None)
            if joined():
                break
        assert not in_room(app, room, "bob")
        enforced = eventually(
            lambda: [e for e in app.history(cursor) if e["event"]["event"] == "admin.participant_removed"]
        )
        # One a rejoin (livekit-client may try again by itself, and is removed again).
        for frame in enforced:
            removal = frame["event"]
            assert removal["participant"]["identity"] == "bob" and removal["room"]["name"] == room
            assert removal["admin"]["by"] == "ban" and removal["admin"]["ban"]["identity"] == "bob"
        came_back = joined()[0]
        assert came_back["event"]["participant"]["identity"] == "bob"
        took = enforced[0]["receivedAt"] - came_back["receivedAt"]
        print(f"webhook participant_joined -> removal recorded: {took} ms")
        assert "removed banned 'bob'" in app.log_text()
    finally:
        page.context.close()


def test_identities_that_look_the_same_are_one_for_bans_and_conflicts(browser: Any, stack: Any) -> None:
    app, livekit = stack
    strict = ServerProcess(
        Path(app.log_path.parent / "strict"), LIVEKIT_URL=livekit.url, IDENTITY_CONFLICT="reject"
    )
    strict.log_path.parent.mkdir()
    strict.start()
    room = f"alike-{int(time.time())}"
    pages = []
    try:
        for identity in ("bob", "jos\u00e9"):
            status, answer = request_token(app.url, {"roomName": room, "participantName": identity})
            assert status == 200
            pages.append(open_page(browser, app.url + "/"))
            pages[-1].evaluate(CONNECT, [livekit.url, answer["token"]])
            eventually(lambda identity=identity: in_room(app, room, identity))
        look_alikes = {
            "bob": ["bob\u200d", "bob\u200c", "b\u200dob", "\uff42ob", "bob\ufe0f"],
            "jos\u00e9": ["jose\u0301", "jos\u00e9\u200d"],
        }
        # In the room now: IDENTITY_CONFLICT=reject sees each look-alike as the one in the room.
        for alikes in look_alikes.values():
            for alike in alikes:
                status, answer = request_token(strict.url, {"roomName": room, "participantName": alike})
                assert status == 409, (alike, status, answer)
        # Banned: no look-alike gets a token.
        for identity in look_alikes:
            status, _, _ = admin(
                app.url,
                "POST",
                path_of("rooms", room, "participants", identity, "remove"),
                {"ban_seconds": 600},
            )
            assert status == 200
        for identity, alikes in look_alikes.items():
            for alike in [identity, *alikes]:
                status, answer = request_token(app.url, {"roomName": room, "participantName": alike})
                assert status == 403, (alike, status, answer)
                assert "is banned from room" in answer["errorMessage"]
        # Names that look different are not caught; an NFD name gets its token in NFC.
        assert request_token(app.url, {"roomName": room, "participantName": "Bob"})[0] == 200
        status, answer = request_token(app.url, {"roomName": "elsewhere", "participantName": "jose\u0301"})
        assert status == 200
        assert jwt.decode(answer["token"], options={"verify_signature": False})["sub"] == "jos\u00e9"
    finally:
        for page in pages:
            page.context.close()
        strict.stop()
