"""APP_EXTENSIONS: loading, the authorize chain, event handlers and routes, in process."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from livekit.api import WebhookEvent

from eventlog import open_event_log
from extensions import ExtensionError, load_extensions
from extensions.events import parse_event
from ground.config import Config
from server import make_app
from tests.conftest import open_socket, post_token, send_webhook, token_claims, webhook_event
from tests.conftest import running as started
from tests.sample_extensions import recorder

SAMPLES = "tests.sample_extensions."
FIRST, SECOND, RECORDER, ROUTES = (SAMPLES + name for name in ("first", "second", "recorder", "rooms_route"))


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[Any]:
    recorder.calls.clear()
    recorder.failures.clear()
    async with started(app):
        yield app


def raw_claims(response: Any) -> dict[str, Any]:
    body = json.loads(response.body)
    return dict(
        jwt.decode(body.get("token") or body["participant_token"], options={"verify_signature": False})
    )


# Loading


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["nope.nothing"], "APP_EXTENSIONS: no module named 'nope.nothing'"),
        ([SAMPLES + "missing"], f"no module named '{SAMPLES}missing'"),
        (
            [SAMPLES + "broken_import"],
            "could not be imported: NameError: name 'undefined_name' is not defined",
        ),
        ([SAMPLES + "bad_shapes"], "bad_shapes.authorize must take 2 argument(s): authorize(request, grant)"),
    ],
)
def test_a_module_that_cannot_be_used_is_one_clear_error(names: list[str], message: str) -> None:
    with pytest.raises(ExtensionError) as error:
        load_extensions(names)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    if "broken_import" in names[0]:
        assert "broken_import.py:5)" in str(error.value)  # where, as file:line


# make_app stops midway, as at a start-up that exits: what it opened (the event log, the
# bans table) is left to the collector, which Python 3.13 reports as unclosed.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_route_the_server_serves_already_is_refused(config: Config) -> None:
    with pytest.raises(ExtensionError, match=r"'/token\$' is already served"):
        make_app(config, open_event_log(config), None, load_extensions([SAMPLES + "taken_route"]))
    gc.collect()  # here, under this test's filter, not in whichever test comes next


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # as above
def test_a_routes_function_that_fails_is_one_clear_error(config: Config) -> None:
    with pytest.raises(ExtensionError) as error:
        make_app(config, open_event_log(config), None, load_extensions([SAMPLES + "failing_routes"]))
    message = str(error.value)
    del error
    gc.collect()
    assert message.startswith(f"{SAMPLES}failing_routes.routes(app) failed: TypeError: ")
    assert "failing_routes.py:9)" in message


def test_what_a_module_defines_is_found_in_order() -> None:
    loaded = load_extensions([SAMPLES + "first", SAMPLES + "recorder", SAMPLES + "second"])
    assert [step.source for step in loaded.authorize] == [SAMPLES + "first", SAMPLES + "second"]
    assert {(spec.name.split(":")[1], spec.event) for spec in loaded.event_handlers} == {
        ("on_event", None),
        ("on_room_finished", "room_finished"),
        ("on_participant_left", "participant_left"),
        ("on_track_published", "track_published"),
    }


def test_unknown_modules_stop_the_server_with_one_line_and_exit_2(server_process: Any) -> None:
    with pytest.raises(RuntimeError) as failed:
        server_process(APP_EXTENSIONS="nope.nothing")
    log = str(failed.value)
    assert "Configuration error: APP_EXTENSIONS: no module named 'nope.nothing'" in log
    assert "Traceback" not in log


# Authorize


@pytest.mark.gen_test
async def test_without_extensions_tokens_are_what_they_were(http_client: Any, base_url: str) -> None:
    response = await post_token(http_client, base_url, {"roomName": "R", "participantName": "alice"})
    claims = raw_claims(response)
    assert claims["video"] == {
        "roomJoin": True,
        "room": "R",
        "canPublish": True,
        "canSubscribe": True,
        "canPublishData": True,
    }
    assert "metadata" not in claims and "attributes" not in claims


@pytest.mark.extensions(FIRST, SECOND)
@pytest.mark.gen_test
async def test_authorize_steps_compose_in_order(http_client: Any, base_url: str) -> None:
    response = await post_token(http_client, base_url, {"roomName": "R", "participantName": "alice"})
    assert response.code == 200 and list(json.loads(response.body)) == ["token"]
    claims = token_claims(response)
    assert claims.metadata == "first;second;"  # first ran, then second on first's grant
    assert claims.attributes == {
        "seen_by": "second",
        "shape": "openvidu",
        "asked_room": "R",
        "granted_room": "R",
    }
    exp = raw_claims(response)["exp"]
    assert abs(exp - (time.time() + 300)) < 5  # second chose a 5-minute token
    standard = await post_token(http_client, base_url, {"participant_identity": "bob"})
    assert standard.code == 201
    attributes = token_claims(standard).attributes
    assert attributes["shape"] == "standard"
    # The request says what the client asked (no room); the grant, what the built-in rules made.
    assert attributes["asked_room"] == "" and attributes["granted_room"].startswith("room-")


@pytest.mark.extensions(FIRST, SECOND)
@pytest.mark.gen_test
async def test_authorize_may_refuse_change_identity_and_narrow(http_client: Any, base_url: str) -> None:
    refused = await post_token(http_client, base_url, {"roomName": "R", "participantName": "mallory"})
    assert refused.code == 403 and json.loads(refused.body) == {"errorMessage": "mallory may not join"}
    login = await post_token(
        http_client, base_url, {"roomName": "R", "participantName": "a"}, headers={"X-Ask": "login"}
    )
    assert login.code == 401 and login.headers["WWW-Authenticate"] == "Bearer"
    assert json.loads(login.body) == {"errorMessage": "log in first"}
    viewer = await post_token(
        http_client,
        base_url,
        {"roomName": "R", "participantName": "x"},
        headers={"Cookie": "who=carol", "X-Role": "viewer"},
    )
    claims = token_claims(viewer)
    assert claims.identity == "carol"  # from the cookie, whatever the body said
    video = raw_claims(viewer)["video"]
    assert video["canPublish"] is False and video["canPublishData"] is False and video["hidden"] is True
    assert video["room"] == "R" and video["roomJoin"] is True and video["canSubscribe"] is True
    speaker = await post_token(
        http_client, base_url, {"roomName": "R", "participantName": "y"}, headers={"X-Role": "speaker"}
    )
    assert raw_claims(speaker)["video"]["canPublishSources"] == ["microphone"]


@pytest.mark.settings(token_auth_secret="s3cret-for-tokens")
@pytest.mark.extensions(FIRST)
@pytest.mark.gen_test
async def test_built_in_rules_run_first(http_client: Any, base_url: str) -> None:
    body = {"roomName": "R", "participantName": "mallory"}
    assert (await post_token(http_client, base_url, body)).code == 401  # TOKEN_AUTH_SECRET first
    # A request is read before it is authorized: one that is not a request at all is a 400.
    assert (await post_token(http_client, base_url, {"roomName": 5, "participantName": "a"})).code == 400
    authorized = await post_token(
        http_client, base_url, body, headers={"Authorization": "Bearer s3cret-for-tokens"}
    )
    assert authorized.code == 403  # then the extension


@pytest.mark.extensions(SAMPLES + "no_return")
@pytest.mark.gen_test
async def test_an_authorize_that_returns_no_grant_mints_nothing(
    http_client: Any, base_url: str, caplog: Any
) -> None:
    response = await post_token(http_client, base_url, {"roomName": "R", "participantName": "a"})
    assert response.code == 500
    assert json.loads(response.body) == {"errorMessage": "Internal server error"}
    assert "authorize of tests.sample_extensions.no_return returned NoneType, not a Grant" in caplog.text


# Event handlers


def test_events_are_parsed_into_livekit_types_leniently() -> None:
    event = parse_event(
        json.dumps(
            webhook_event(
                "participant_joined",
                participant={"identity": "alice", "state": "A_FUTURE_STATE", "joinedAt": "17"},
                futureField={"x": 1},
                numDropped="not a number",
            )
        )
    )
    assert isinstance(event, WebhookEvent)
    assert (event.event, event.room.name, event.participant.identity) == ("participant_joined", "R", "alice")
    assert event.participant.joined_at == 17 and event.num_dropped == 0
    # A room whose name has the wrong type: the rest of the room is kept.
    odd = parse_event('{"event":"room_started","id":"EV_1","room":{"name":5,"sid":"RM_1"}}')
    assert (odd.event, odd.room.sid, odd.room.name) == ("room_started", "RM_1", "")
    assert parse_event("not json").event == "" and parse_event("[1]").event == ""


async def post_event(http_client: Any, base_url: str, event: dict[str, Any]) -> float:
    started = time.monotonic()
    response = await send_webhook(http_client, base_url, event)
    assert response.code == 200
    return time.monotonic() - started


async def until(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.extensions(RECORDER)
@pytest.mark.gen_test(timeout=30)
async def test_handlers_get_typed_events_by_name_after_the_200(
    app: Any, http_client: Any, base_url: str
) -> None:
    async with running(app):
        started = webhook_event("room_started", room="typed")
        finished = webhook_event("room_finished", room="typed")
        await post_event(http_client, base_url, started)
        await post_event(http_client, base_url, finished)
        await until(lambda: len(recorder.calls) == 3)
    by_name = [(name, context.event_id) for name, _, context in recorder.calls]
    assert sorted(by_name) == sorted(
        [("on_event", started["id"]), ("on_event", finished["id"]), ("on_room_finished", finished["id"])]
    )
    _, event, context = next(call for call in recorder.calls if call[0] == "on_room_finished")
    assert isinstance(event, WebhookEvent) and event.room.name == "typed" and event.room.sid == "RM_abc"
    assert json.loads(context.event_json) == finished and context.attempt == 1
    assert context.handler == SAMPLES + "recorder:on_room_finished"
    assert context.app.config is app.settings["config"]


@pytest.mark.settings(event_handler_retry_seconds=0.05, event_handler_max_attempts=3)
@pytest.mark.extensions(RECORDER)
@pytest.mark.gen_test(timeout=30)
async def test_a_raising_handler_is_retried_then_parked_and_others_flow(
    app: Any, http_client: Any, base_url: str
) -> None:
    async with running(app):
        flaky, poison, after = (
            webhook_event("room_started", room=name) for name in ("flaky", "poison", "after")
        )
        recorder.failures.update({flaky["id"]: 2, poison["id"]: 99})
        for event in (flaky, poison, after):
            await post_event(http_client, base_url, event)
        await until(lambda: [c.event_id for n, _, c in recorder.calls] == [flaky["id"], after["id"]])
        assert recorder.calls[0][2].attempt == 3  # two failures, then it went through
        health = json.loads((await http_client.fetch(base_url + "/healthz")).body)
        assert health["status"] == "ok"
        assert health["eventHandlers"]["parkedBy"][SAMPLES + "recorder:on_event"] == 1
        runner = app.settings["event_handlers"]
        parked = await runner.feed.parked()
        assert [(p.event_id, p.attempts) for p in parked] == [(poison["id"], 3)]
        assert "ConnectionError: not now (3)" in parked[0].error
        recorder.failures.clear()
        assert await runner.feed.retry_parked(SAMPLES + "recorder:on_event") == 1
        await until(lambda: len(recorder.calls) == 3)
        assert recorder.calls[2][2].event_id == poison["id"]
        assert runner.health()["parked"] == 0


@pytest.mark.extensions(RECORDER)
@pytest.mark.gen_test(timeout=30)
async def test_slow_handlers_delay_neither_acks_nor_sockets(
    app: Any, http_client: Any, base_url: str
) -> None:
    async with running(app):
        socket = await open_socket(base_url)
        # Both slow handlers busy for 3 s: one awaiting on the loop, one blocking a thread.
        await post_event(http_client, base_url, webhook_event("participant_left", room="slow"))
        await post_event(http_client, base_url, webhook_event("track_published", room="slow"))
        await asyncio.wait_for(socket.read_message(), 5)
        await asyncio.wait_for(socket.read_message(), 5)
        timings = []
        for n in range(5):
            event = webhook_event("room_started", room=f"quick{n}")
            acked_in = await post_event(http_client, base_url, event)
            frame = json.loads(await asyncio.wait_for(socket.read_message(), 5))
            timings.append((acked_in, time.monotonic()))
            assert frame["event"]["id"] == event["id"]
        assert not any(name in ("on_participant_left", "on_track_published") for name, _, _ in recorder.calls)
        # Generous for a loaded machine, far below the handlers' 3 s.
        assert max(acked for acked, _ in timings) < 1.0, timings
        socket.close()
        await until(lambda: len(recorder.calls) == 9)


# Routes


@pytest.mark.extensions(ROUTES)
@pytest.mark.gen_test
async def test_extension_routes_get_the_shared_context(app: Any, http_client: Any, base_url: str) -> None:
    async with running(app):
        first = json.loads((await http_client.fetch(base_url + "/ext/info")).body)
        second = json.loads((await http_client.fetch(base_url + "/ext/info")).body)
    assert first["apiUrl"] == "http://localhost:7880"  # LIVEKIT_URL with ws -> http
    assert first["client"] == second["client"]  # one LiveKitAPI for every request
    assert first["store"] == "sqlite" and first["greeting"] == "hello"


@pytest.mark.extensions(ROUTES)
@pytest.mark.gen_test
async def test_extension_routes_answer_errors_in_json(http_client: Any, base_url: str, caplog: Any) -> None:
    refused = await http_client.fetch(base_url + "/ext/fail/refused", raise_error=False)
    assert refused.code == 409 and json.loads(refused.body) == {"errorMessage": "that room is busy"}
    bug = await http_client.fetch(base_url + "/ext/fail/bug", raise_error=False)
    assert bug.code == 500 and json.loads(bug.body) == {"errorMessage": "Internal server error"}
    assert b"secret" not in bug.body and "RuntimeError: a bug with a secret inside" in caplog.text


@pytest.mark.extensions(ROUTES)
@pytest.mark.gen_test
async def test_extension_route_bodies_are_bounded(http_client: Any, base_url: str) -> None:
    small = await http_client.fetch(base_url + "/ext/echo", method="POST", body=b"x" * 1000)
    assert json.loads(small.body) == {"received": 1000}
    large = await http_client.fetch(
        base_url + "/ext/echo", method="POST", body=b"x" * 70_000, raise_error=False
    )
    assert large.code == 413 and json.loads(large.body) == {
        "errorMessage": "Request body is larger than 65536 bytes"
    }


def test_livekit_api_url_defaults_to_the_livekit_url_over_http() -> None:
    assert Config.from_env({"LIVEKIT_URL": "wss://x.livekit.cloud"}, env_file=None).livekit_http_url == (
        "https://x.livekit.cloud"
    )
    assert Config.from_env(
        {"LIVEKIT_URL": "wss://public.example", "LIVEKIT_API_URL": "http://livekit:7880"}, env_file=None
    ).livekit_http_url == ("http://livekit:7880")
    with pytest.raises(ExtensionError.__mro__[1], match="LIVEKIT_API_URL must be an http"):
        Config.from_env({"LIVEKIT_API_URL": "livekit:7880"}, env_file=None)


# CORS with credentials, and empty lists


async def preflight(http_client: Any, base_url: str, origin: str) -> Any:
    return await http_client.fetch(
        base_url + "/token",
        method="OPTIONS",
        raise_error=False,
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )


@pytest.mark.settings(cors_allowed_origins=("http://app.example:5080", "null"))
@pytest.mark.gen_test
async def test_listed_origins_may_send_cookies(http_client: Any, base_url: str) -> None:
    body = {"roomName": "R", "participantName": "a"}
    for response in (
        await preflight(http_client, base_url, "http://app.example:5080"),
        await post_token(http_client, base_url, body, headers={"Origin": "http://app.example:5080"}),
    ):
        assert response.headers["Access-Control-Allow-Origin"] == "http://app.example:5080"
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert response.headers["Vary"] == "Origin"
    electron = await post_token(http_client, base_url, body, headers={"Origin": "null"})
    assert electron.headers["Access-Control-Allow-Origin"] == "null"
    assert "Access-Control-Allow-Credentials" not in electron.headers  # opaque origins: never
    foreign = await preflight(http_client, base_url, "http://evil.example")
    assert foreign.code == 403 and "Access-Control-Allow-Credentials" not in foreign.headers


@pytest.mark.gen_test
async def test_any_origin_never_gets_credentials(http_client: Any, base_url: str) -> None:
    response = await preflight(http_client, base_url, "http://app.example:5080")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_empty_lists_mean_none_not_everything() -> None:
    empty = Config.from_env({"CORS_ALLOWED_ORIGINS": "", "TOKEN_CLIENT_FIELDS": " "}, env_file=None)
    assert empty.cors_allowed_origins == () and empty.token_client_fields == ()
    unset = Config.from_env({}, env_file=None)
    assert unset.cors_allowed_origins == ("*",)
    assert unset.token_client_fields == ("participant_metadata", "participant_attributes", "room_config")


@pytest.mark.settings(cors_allowed_origins=(), token_client_fields=())
@pytest.mark.gen_test
async def test_empty_lists_refuse_every_origin_and_field(http_client: Any, base_url: str) -> None:
    refused = await preflight(http_client, base_url, "http://localhost:5080")
    assert refused.code == 403 and "Access-Control-Allow-Origin" not in refused.headers
    metadata = await post_token(http_client, base_url, {"participant_metadata": "m"})
    assert metadata.code == 403 and "TOKEN_CLIENT_FIELDS" in json.loads(metadata.body)["errorMessage"]
    same_origin = await post_token(http_client, base_url, {"roomName": "R", "participantName": "a"})
    assert same_origin.code == 200


def test_start_up_says_what_empty_lists_mean(server_process: Any) -> None:
    server = server_process(CORS_ALLOWED_ORIGINS="", TOKEN_CLIENT_FIELDS="")
    log = server.log_text()
    assert "CORS_ALLOWED_ORIGINS is empty: no page on another origin may call /token" in log
    assert "TOKEN_CLIENT_FIELDS is empty: clients may set none of" in log


# In real processes: shutdown, and several instances on Redis


def test_shutdown_waits_for_an_extension_route_in_flight(server_process: Any) -> None:
    import threading
    import urllib.request

    server = server_process(APP_EXTENSIONS=ROUTES)
    answer: dict[str, Any] = {}

    def slow_request() -> None:
        with urllib.request.urlopen(server.url + "/ext/slow?seconds=1.5", timeout=10) as response:
            answer["status"], answer["body"] = response.status, json.loads(response.read())

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.5)  # in flight
    started = time.monotonic()
    assert server.stop() == 0
    thread.join(10)
    assert answer == {"status": 200, "body": {"slow": "done"}}
    assert time.monotonic() - started < 5


CLAIMABLE = SAMPLES + "claimable"


def recorded(path: Any) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.redis
def test_a_dead_instances_events_are_claimed_by_another(
    server_process: Any, redis_server: Any, tmp_path: Any
) -> None:
    import redis

    from tests.conftest import post_webhook

    record = tmp_path / "handled.txt"
    common = {"APP_EXTENSIONS": CLAIMABLE, "RECORD_FILE": str(record), "EVENTS_REDIS_URL": redis_server().url}
    stuck = server_process(**common, HANDLER_SECONDS="3600")
    events = [webhook_event("room_started", room=f"c{n}") for n in range(10)]
    for event in events:
        assert post_webhook(stuck.url, event) == 200
    client = redis.Redis.from_url(common["EVENTS_REDIS_URL"], decode_responses=True)
    deadline = time.monotonic() + 10
    while not (taken := client.xpending("livekit:events", CLAIMABLE + ":on_event")["pending"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    stuck.kill()  # dies with events taken and not handled (the rest not even read)
    rescuer = server_process(**common, EVENT_HANDLER_CLAIM_SECONDS="2")
    deadline = time.monotonic() + 20
    while len(recorded(record)) < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(event_id for _, event_id in recorded(record)) == sorted(e["id"] for e in events)
    assert {port for port, _ in recorded(record)} == {str(rescuer.port)}
    assert f"took over {taken} events another instance left pending" in rescuer.log_text()
    client.close()


@pytest.mark.redis
def test_a_long_handler_on_a_live_instance_is_not_taken_over(
    server_process: Any, redis_server: Any, tmp_path: Any
) -> None:
    from tests.conftest import post_webhook

    record = tmp_path / "handled.txt"
    common = {
        "APP_EXTENSIONS": CLAIMABLE,
        "RECORD_FILE": str(record),
        "EVENTS_REDIS_URL": redis_server().url,
        "EVENT_HANDLER_CLAIM_SECONDS": "1",
        "HANDLER_SECONDS": "3",
    }
    servers = [server_process(**common) for _ in range(2)]
    event = webhook_event("room_started", room="long")
    assert post_webhook(servers[0].url, event) == 200
    deadline = time.monotonic() + 10
    while not recorded(record) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # a second run, had the other instance taken it over, would end meanwhile
    assert [event_id for _, event_id in recorded(record)] == [event["id"]]
    assert not any("took over" in server.log_text() for server in servers)


def test_sigterm_with_a_handler_blocked_for_good(server_process: Any, tmp_path: Any) -> None:
    """The server stops in time; the event that was being handled is handled after the restart."""
    from tests.conftest import post_webhook

    record = tmp_path / "handled.txt"
    env = {"APP_EXTENSIONS": SAMPLES + "blocking", "RECORD_FILE": str(record)}
    server = server_process(**env, HANDLER_SECONDS="3600")
    event = webhook_event("room_started", room="blocked")
    assert post_webhook(server.url, event) == 200
    time.sleep(0.5)  # the handler is in its call
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 5
    assert not record.exists()
    server.env["HANDLER_SECONDS"] = "0"
    server.start()
    deadline = time.monotonic() + 10
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert record.read_text().split() == [event["id"]]
