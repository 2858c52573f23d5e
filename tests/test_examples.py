"""The shipped examples, run as the README says, against a real server process.
(In-process tests come before the browser test: Playwright's sync API then holds this
thread's event loop.)"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import post_token, post_webhook, token_claims, webhook_event

FORWARD = {"APP_EXTENSIONS": "examples.forward_events", "EVENT_HANDLER_RETRY_SECONDS": "0.05"}


def health(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(base_url + "/healthz", timeout=5) as response:
        return dict(json.loads(response.read()))


def test_forward_retries_until_the_receiver_takes_it(server_process: Any, receiver: Any) -> None:
    target = receiver([503, 503, 503])
    server = server_process(**FORWARD, FORWARD_URL=target.url)
    event = webhook_event("participant_joined", room="fwd", participant={"identity": "alice"})
    assert post_webhook(server.url, event) == 200
    assert target.wait_for(1) == [event["id"]]
    assert [status for _, _, status in target.received] == [503, 503, 503, 200]
    headers, body, _ = target.received[-1]
    assert headers["X-Event-Id"] == event["id"]
    assert headers["Content-Type"] == "application/json"
    stored = server.history()[-1]["event"]
    assert json.loads(body) == stored == event  # LiveKit's JSON, as stored
    assert "failed on " + event["id"] in server.log_text()  # each retry is logged
    assert health(server.url)["eventHandlers"]["parked"] == 0


def test_forward_after_sigkill_and_restart(server_process: Any, receiver: Any) -> None:
    target = receiver(then=503)  # down: nothing gets through
    server = server_process(**{**FORWARD, "EVENT_HANDLER_RETRY_SECONDS": "30"}, FORWARD_URL=target.url)
    events = [webhook_event("room_started", room=f"k{n}") for n in range(20)]
    for event in events:
        assert post_webhook(server.url, event) == 200
    deadline = time.monotonic() + 10
    while not target.received and time.monotonic() < deadline:
        time.sleep(0.02)
    assert target.received and target.delivered() == []
    server.kill()
    target.then = 200  # the receiver is back
    server.start()
    assert sorted(target.wait_for(20)) == sorted(event["id"] for event in events)
    assert target.delivered() == [event["id"] for event in events]  # in the log's order


def test_forward_config_error_is_one_line(server_process: Any) -> None:
    with pytest.raises(RuntimeError, match="server did not start") as failed:
        server_process(APP_EXTENSIONS="examples.forward_events")
    assert "examples.forward_events needs FORWARD_URL" in str(failed.value)
    assert "Traceback" not in str(failed.value)


def test_forward_parks_then_retries_on_request(server_process: Any, receiver: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    from ground.config import PROJECT_DIR

    target = receiver(then=500)
    server = server_process(**FORWARD, FORWARD_URL=target.url, EVENT_HANDLER_MAX_ATTEMPTS="3")
    poison, healthy = webhook_event("room_started", room="p1"), webhook_event("room_started", room="p2")
    assert post_webhook(server.url, poison) == 200
    deadline = time.monotonic() + 10
    while len(target.received) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    target.then = 200
    assert post_webhook(server.url, healthy) == 200
    assert target.wait_for(1) == [healthy["id"]]  # the others keep flowing
    handlers = health(server.url)["eventHandlers"]
    assert handlers["parked"] == 1 and handlers["parkedBy"] == {"examples.forward_events:on_event": 1}
    assert "gave up on " + poison["id"] + " after 3 attempts, parked" in server.log_text()
    cli = [sys.executable, "-m", "extensions"]
    env = {**server.env, "PYTHONPATH": str(PROJECT_DIR)}
    listed = subprocess.run(
        [*cli, "parked"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert poison["id"] in listed.stdout and "3 attempts" in listed.stdout and "500" in listed.stdout
    retried = subprocess.run(
        [*cli, "retry"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert retried.stdout.startswith("1 handed back")
    assert target.wait_for(2) == [healthy["id"], poison["id"]]
    deadline = time.monotonic() + 5
    while health(server.url)["eventHandlers"]["parked"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert health(server.url)["eventHandlers"]["parked"] == 0


@pytest.mark.redis
def test_forward_three_instances_on_redis_each_event_once(
    server_process: Any, receiver: Any, redis_server: Any
) -> None:
    target = receiver()
    redis_url = redis_server().url
    servers = [
        server_process(**FORWARD, FORWARD_URL=target.url, EVENTS_REDIS_URL=redis_url) for _ in range(3)
    ]
    events = [
        webhook_event("participant_joined", room="many", participant={"identity": f"p{n}"})
        for n in range(300)
    ]

    def post(numbered: tuple[int, dict[str, Any]]) -> int:
        number, event = numbered
        return post_webhook(servers[number % 3].url, event)

    with ThreadPoolExecutor(6) as pool:
        assert set(pool.map(post, enumerate(events))) == {200}
    delivered = target.wait_for(300, timeout=60)
    time.sleep(1.5)  # anything sent twice would arrive meanwhile
    counts = Counter(target.delivered())
    assert set(counts) == {event["id"] for event in events}
    assert [event_id for event_id, count in counts.items() if count > 1] == []
    assert len(delivered) == 300
    handled = [health(server.url)["eventHandlers"]["handled"] for server in servers]
    assert sum(handled) == 300 and all(handled), handled  # shared out, each to one instance


SESSION_SECRET = "a-session-secret-of-32-characters-at-least"
APP_SESSION = {"environ": {"APP_SESSION_SECRET": SESSION_SECRET}}


def session(secret: str = SESSION_SECRET, expires_in: int = 600, **claims: Any) -> str:
    import jwt

    return jwt.encode({"exp": int(time.time()) + expires_in, **claims}, secret, algorithm="HS256")


@pytest.mark.settings(**APP_SESSION)
@pytest.mark.extensions("examples.app_session")
@pytest.mark.gen_test
async def test_app_session_decides_who_joins_which_room(app: Any, http_client: Any, base_url: str) -> None:
    from tests.conftest import running

    async with running(app):
        alice = session(sub="user-42", name="Alice", rooms=["daily", "retro"])
        openvidu = {"roomName": "daily", "participantName": "whoever"}
        granted = await post_token(
            http_client, base_url, openvidu, headers={"Authorization": f"Bearer {alice}"}
        )
        assert granted.code == 200
        claims = token_claims(granted)
        assert (claims.identity, claims.name, claims.video.room) == ("user-42", "Alice", "daily")
        standard = await post_token(
            http_client,
            base_url,
            {"room_name": "retro", "participant_identity": "x"},
            headers={"Cookie": f"app_session={alice}"},
        )
        assert standard.code == 201 and token_claims(standard).identity == "user-42"
        other_room = await post_token(
            http_client,
            base_url,
            {**openvidu, "roomName": "board"},
            headers={"Authorization": f"Bearer {alice}"},
        )
        assert other_room.code == 403
        assert json.loads(other_room.body)["errorMessage"] == "Your session does not allow room 'board'"
        nameless = session(sub="user-7", rooms=["daily"])
        no_name = await post_token(
            http_client, base_url, openvidu, headers={"Authorization": f"Bearer {nameless}"}
        )
        assert (token_claims(no_name).identity, token_claims(no_name).name) == ("user-7", "")
        for headers in (
            {},
            {"Authorization": "Bearer not-a-jwt"},
            {"Authorization": f"Bearer {session(secret='another-secret-of-32-characters-or-more', sub='u')}"},
            {"Authorization": f"Bearer {session(expires_in=-120, sub='u', rooms=['daily'])}"},
            {"Authorization": f"Bearer {session(sub='u', rooms=['daily'], expires_in=600)[:-2]}xx"},
        ):
            refused = await post_token(http_client, base_url, openvidu, headers=headers)
            assert refused.code == 401, headers
            assert json.loads(refused.body)["errorMessage"].startswith(
                ("Sign in first", "Your session is not valid")
            )


@pytest.mark.settings(**APP_SESSION)
@pytest.mark.extensions("examples.app_session")
@pytest.mark.gen_test
async def test_bans_apply_to_the_identity_the_extension_chose(
    app: Any, http_client: Any, base_url: str
) -> None:
    """Bans and identity conflicts are the chain's last step: they see the session's `sub`,
    not the participantName the client typed."""
    from tests.conftest import running

    async with running(app):
        await app.settings["rooms"].bans.ban("daily", "user-42", 60)
        session_42 = session(sub="user-42", rooms=["daily"])
        for typed in ("user-42", "someone-else"):
            body = {"roomName": "daily", "participantName": typed}
            refused = await post_token(
                http_client, base_url, body, headers={"Authorization": f"Bearer {session_42}"}
            )
            assert refused.code == 403 and "user-42" in json.loads(refused.body)["errorMessage"]
        other = session(sub="user-7", rooms=["daily"])
        body = {"roomName": "daily", "participantName": "user-42"}
        allowed = await post_token(http_client, base_url, body, headers={"Authorization": f"Bearer {other}"})
        assert allowed.code == 200 and token_claims(allowed).identity == "user-7"


def test_app_session_needs_its_secret(server_process: Any) -> None:
    with pytest.raises(RuntimeError) as failed:
        server_process(APP_EXTENSIONS="examples.app_session", APP_SESSION_SECRET="short")
    assert "examples.app_session needs APP_SESSION_SECRET, 32 characters or more" in str(failed.value)
    # The extensions' LiveKit client, opened before the setups ran, is closed on the way out.
    assert "Unclosed client session" not in str(failed.value)


def test_room_finished_summary_from_the_durable_log(server_process: Any, tmp_path: Path) -> None:
    summaries = tmp_path / "rooms.txt"
    server = server_process(APP_EXTENSIONS="examples.room_finished_summary", ROOM_SUMMARY_FILE=str(summaries))
    room = {"sid": "RM_sum", "name": "standup", "creationTime": "1771351000"}
    posted = [
        webhook_event("room_started", room="standup", createdAt="1771351000"),
        webhook_event("participant_joined", participant={"identity": "alice"}),
        webhook_event("participant_joined", participant={"identity": "bob"}),
        webhook_event("participant_left", participant={"identity": "bob"}),
        webhook_event("participant_joined", participant={"identity": "bob"}),  # back again: seen once
        webhook_event("participant_joined", room="elsewhere", participant={"identity": "carol"}),
    ]
    for event in posted:
        if event["room"]["name"] == "R":
            event["room"] = room
        event["room"]["sid"] = "RM_sum" if event["room"]["name"] != "elsewhere" else "RM_other"
    for event in posted:
        assert post_webhook(server.url, event) == 200
    server.kill()  # the joins are in the durable log, not in memory: a restarted server sees them
    server.start()
    finished = webhook_event("room_finished", createdAt="1771351725")
    finished["room"] = room
    assert post_webhook(server.url, finished) == 200
    deadline = time.monotonic() + 10
    while not summaries.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = summaries.read_text()
    assert line.endswith(
        f' room "standup" (RM_sum) lasted 12m05s, 2 participants: "alice", "bob" [{finished["id"]}]\n'
    )
    assert line.startswith("2026-02-17T18:08:45Z")


@pytest.mark.browser
def test_app_session_cookie_from_another_origin_in_a_real_browser(
    server_process: Any, browser: Any, tmp_path: Path
) -> None:
    """A browser app on its own origin sends its session cookie to /token: it works only
    with CORS credentials for a listed origin (Chromium enforces it, not this test)."""
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    from dev.livekit_server import free_port

    (tmp_path / "app.html").write_text("<!doctype html><title>app</title>")
    app_port = free_port()
    app_origin = f"http://localhost:{app_port}"

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    pages = ThreadingHTTPServer(("127.0.0.1", app_port), Quiet)
    Thread(target=pages.serve_forever, daemon=True).start()
    try:
        env = {"APP_EXTENSIONS": "examples.app_session", "APP_SESSION_SECRET": SESSION_SECRET}
        listed = server_process(**env, CORS_ALLOWED_ORIGINS=app_origin)
        anyone = server_process(**env)  # CORS_ALLOWED_ORIGINS=*: no credentials
        context = browser.new_context()
        # Cookies are per host, not per port: the app's login set it for localhost.
        context.add_cookies(
            [{"name": "app_session", "value": session(sub="u-1", rooms=["daily"]), "url": app_origin}]
        )
        page = context.new_page()
        page.goto(app_origin + "/app.html")
        ask_js = """async (url) => {
            try {
                const response = await fetch(url, {method: "POST", credentials: "include",
                    headers: {"Content-Type": "application/json"},
                    body: JSON.stringify({roomName: "daily", participantName: "ignored"})});
                return [response.status, await response.json()];
            } catch (error) { return ["blocked", String(error)]; }
        }"""
        status, body = page.evaluate(ask_js, listed.url.replace("127.0.0.1", "localhost") + "/token")
        assert status == 200, body
        assert token_claims(body["token"]).identity == "u-1"
        blocked, _ = page.evaluate(ask_js, anyone.url.replace("127.0.0.1", "localhost") + "/token")
        assert blocked == "blocked"  # `*` with credentials: the browser refuses to read it
        context.close()
    finally:
        pages.shutdown()
        pages.server_close()
