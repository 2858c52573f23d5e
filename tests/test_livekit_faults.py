"""A LiveKit that hangs or talks nonsense (a test double: the fault injected), against
this server as a real process: every call has a deadline that applies (LIVEKIT_TIMEOUT),
hung calls of one kind never starve the others, nonsense is a 503 and never a 500, and
the room directory keeps going and comes back when LiveKit does."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from livekit.protocol.models import Room
from livekit.protocol.room import ListRoomsResponse

from tests.admin import SECRET, RoomsSocket, admin, eventually
from tests.conftest import API_KEY, API_SECRET
from tests.livekit_double import LiveKitDouble

TIMEOUT = 2  # LIVEKIT_TIMEOUT of these servers
CLIENT_TIMEOUT = TIMEOUT + 8  # far beyond: an answer within it came from the deadline


@pytest.fixture
def double() -> Iterator[LiveKitDouble]:
    started = LiveKitDouble().start()
    yield started
    started.stop()


def start_app(server_process: Any, double: LiveKitDouble, **env: str) -> Any:
    return server_process(
        LIVEKIT_API_URL=double.url,
        LIVEKIT_API_KEY=API_KEY,
        LIVEKIT_API_SECRET=API_SECRET,
        ADMIN_SECRET=SECRET,
        LIVEKIT_TIMEOUT=str(TIMEOUT),
        ROOMS_RECONCILE_SECONDS="1",
        **env,
    )


def timed_admin(base_url: str, path: str) -> tuple[int, Any, float]:
    started = time.monotonic()
    status, answer, _ = admin(base_url, "GET", path, timeout=CLIENT_TIMEOUT)
    return status, answer, time.monotonic() - started


def token_status(base_url: str, identity: str) -> tuple[int, float]:
    body = json.dumps({"room": "R", "identity": identity}).encode()
    request = urllib.request.Request(
        base_url + "/token", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT) as response:
            return response.status, time.monotonic()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, time.monotonic()


def test_hanging_livekit_answers_503_within_the_deadline_and_recovers(
    server_process: Any, double: LiveKitDouble
) -> None:
    app = start_app(server_process, double, IDENTITY_CONFLICT="reject")
    double.fault = "hang"
    with ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(lambda _: timed_admin(app.url, "/rooms"), range(200)))
    statuses = {status for status, _, _ in answers}
    assert statuses == {503}, statuses
    assert all(double.url in body["errorMessage"] for _, body, _ in answers)
    assert "LIVEKIT_TIMEOUT" in answers[0][1]["errorMessage"]
    slowest = max(seconds for _, _, seconds in answers)
    print(f"200 admin calls against a hanging LiveKit: slowest answer {slowest:.2f} s (deadline {TIMEOUT} s)")
    # /token's identity-conflict check is bounded the same way.
    status, _ = token_status(app.url, "alice")
    assert status == 503
    # LiveKit recovers: the next calls succeed at once (no pool left full of hung calls).
    double.fault = "ok"
    status, rooms, seconds = timed_admin(app.url, "/rooms")
    assert (status, rooms) == (200, [])
    print(f"first call after recovery: {seconds * 1000:.0f} ms")
    assert token_status(app.url, "alice")[0] == 201


def test_hung_admin_calls_do_not_starve_token_conflict_checks(
    server_process: Any, double: LiveKitDouble
) -> None:
    app = start_app(server_process, double, IDENTITY_CONFLICT="reject")
    double.faults = {"ListRooms": "hang"}  # the admin API's listing hangs; ListParticipants answers
    with ThreadPoolExecutor(150) as pool:
        hung = [pool.submit(timed_admin, app.url, "/rooms") for _ in range(140)]
        time.sleep(0.5)  # let them take every connection they can
        tokens = [token_status(app.url, f"user-{n}") for n in range(5)]
        first_admin_answer = min(
            started + seconds
            for started, (_, _, seconds) in ((time.monotonic(), future.result()) for future in hung)
        )
    assert [status for status, _ in tokens] == [201] * 5
    # Every token was answered while the hung admin calls were still waiting for LiveKit.
    assert max(answered for _, answered in tokens) < first_admin_answer
    assert {future.result()[0] for future in hung} == {503}


@pytest.mark.parametrize("fault", ["html", "garbage", "list"])
def test_nonsense_from_livekit_is_a_503_never_a_500(
    server_process: Any, double: LiveKitDouble, fault: str
) -> None:
    app = start_app(server_process, double, IDENTITY_CONFLICT="suffix")
    double.fault = fault
    calls = [
        ("GET", "/rooms", None),
        ("GET", "/rooms/R", None),
        ("DELETE", "/rooms/R", None),
        ("GET", "/rooms/R/participants/bob", None),
        ("PATCH", "/rooms/R/participants/bob", {"name": "B"}),
        ("POST", "/rooms/R/participants/bob/remove", {}),
        ("POST", "/rooms/R/participants/bob/mute", {"source": "microphone"}),
    ]
    for method, path, body in calls:
        status, answer, _ = admin(app.url, method, path, body)
        assert status == 503, (method, path, status, answer)
        assert double.url in answer["errorMessage"], answer
    assert token_status(app.url, "alice")[0] == 503
    assert "Traceback" not in app.log_text()


def test_the_room_directory_survives_nonsense_and_comes_back(
    server_process: Any, double: LiveKitDouble
) -> None:
    double.fault = "garbage"
    app = start_app(server_process, double)

    def health() -> Any:
        with urllib.request.urlopen(app.url + "/healthz", timeout=CLIENT_TIMEOUT) as response:
            return json.loads(response.read())

    eventually(lambda: health()["rooms"]["livekit"]["ok"] is False)
    socket = RoomsSocket(app.url)  # admins are told why
    try:
        eventually(lambda: socket.messages and double.url in socket.messages[0]["livekit"]["error"])
    finally:
        socket.close()
    # LiveKit comes back with a room: the directory, still running, reconciles and shows it.
    double.rooms = ListRoomsResponse(rooms=[Room(name="back", sid="RM_back")]).SerializeToString()
    double.fault = "ok"
    socket = RoomsSocket(app.url)
    try:
        eventually(lambda: "back" in socket.rooms())
    finally:
        socket.close()
    assert health()["rooms"]["livekit"]["ok"] is True
    assert health()["rooms"]["down"] == []
    assert "the room directory stopped" not in app.log_text()


def test_an_extensions_call_through_its_client_has_the_deadline_too(
    server_process: Any, double: LiveKitDouble
) -> None:
    app = start_app(server_process, double, APP_EXTENSIONS="examples.room_list")
    double.fault = "hang"
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: timed_admin(app.url, "/example/rooms"), range(20)))
    assert {status for status, _, _ in answers} == {503}  # the example's own answer to a timeout
    double.fault = "ok"
    status, body, _ = timed_admin(app.url, "/example/rooms")
    assert (status, body) == (200, {"rooms": []})
