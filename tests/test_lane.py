"""POST /token on the lane (handlers/support/lane.py): answered without a RequestHandler
when no step of the chain waits, and then exactly as TokenHandler answers."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
import tornado.web

from extensions.authorize import Grant, Step, TokenRequest
from handlers.support.lane import Lane
from handlers.token import TokenEndpoint, TokenHandler
from handlers.webhook import WebhookEndpoint, WebhookHandler
from tests.conftest import post_token, send_webhook, webhook_event, webhook_request

# Headers that differ between any two answers.
PER_ANSWER = {"Date", "X-Request-Id"}

REQUESTS: list[tuple[Any, dict[str, str]]] = [
    ({"roomName": "R", "participantName": "ada"}, {}),
    ({"room_name": "R", "participant_identity": "ada", "participant_name": "Ada"}, {}),
    ({"roomName": "R", "participantName": "ada"}, {"Origin": "http://localhost:5080"}),
    ({"roomName": "R", "participantName": "ada"}, {"Origin": "http://evil.example"}),
    ({"roomName": "R", "participantName": "ada"}, {"Authorization": "Bearer wrong"}),
    ({"roomName": "R", "participantName": "\u3164"}, {}),
    ({"roomName": "R"}, {}),
    ({"room_name": "R", "participant_metadata": 5}, {}),
    ([1, 2], {}),
    ("{not json", {}),
    ("", {}),
    ({"roomName": "R", "participantName": "ada"}, {"Content-Type": "text/plain"}),
    ({"room_name": "R", "room_config": {"egress": {}}}, {}),
]


def endpoint_of(app: Any, handler: type) -> Any:
    for rule in app.wildcard_router.rules:
        if rule.target is handler:
            return rule.target_kwargs["endpoint"]
    raise AssertionError(f"no route to {handler.__name__}")


def token_endpoint(app: Any) -> TokenEndpoint:
    endpoint: TokenEndpoint = endpoint_of(app, TokenHandler)
    return endpoint


def answer_seen(response: Any) -> tuple[int, dict[str, str], Any]:
    """What a client sees of an answer, without what differs each time: the time and
    request id, and the token's times and signature (its claims are compared)."""
    headers = {name: value for name, value in response.headers.get_all() if name not in PER_ANSWER}
    body = json.loads(response.body)
    for field in ("token", "participant_token"):
        if field in body:
            payload = body[field].split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            body[field] = {name: value for name, value in claims.items() if name not in ("nbf", "exp")}
    return response.code, headers, body


@pytest.fixture
def lane_finishes(monkeypatch: pytest.MonkeyPatch) -> list[Lane]:
    """Every Lane that answered, so a test sees which way a request went."""
    seen: list[Lane] = []
    finish = Lane.finish

    def counted(self: Lane) -> None:
        seen.append(self)
        finish(self)

    monkeypatch.setattr(Lane, "finish", counted)
    return seen


@pytest.fixture
def held_store(app: Any, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The webhooks' store holds every append until the event returned is set."""
    event_log = endpoint_of(app, WebhookHandler).event_log
    store, release = event_log.append, asyncio.Event()

    async def held_append(*args: Any) -> Any:
        await release.wait()
        return await store(*args)

    monkeypatch.setattr(event_log, "append", held_append)
    return release


async def until(condition: Callable[[], Any]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)


async def send_raw_webhook(
    base_url: str, event: dict[str, Any], keep_back: int = 0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A signed webhook on a connection of its own, but for its last `keep_back` bytes."""
    request = webhook_request(event)
    body: bytes = request["body"]
    host, port = base_url.split("//")[1].split(":")
    head = "".join(f"{name}: {value}\r\n" for name, value in request["headers"].items())
    start = f"POST /livekit/webhook HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"{start}{head}\r\n".encode() + body[: len(body) - keep_back])
    await writer.drain()
    return reader, writer


@pytest.mark.settings(cors_allowed_origins=("http://localhost:5080",), token_auth_secret="s3cret")
@pytest.mark.gen_test
async def test_the_lane_answers_every_request_as_the_handler_does(
    app: Any, http_client: Any, base_url: str, lane_finishes: list[Lane]
) -> None:
    endpoint = token_endpoint(app)
    assert endpoint.on_lane  # the built-in rules and bans held in memory never wait
    for body, headers in REQUESTS:
        sent = {"Authorization": "Bearer s3cret", "Content-Type": "application/json", **headers}
        answers = []
        for on_lane in (True, False):
            endpoint.on_lane = on_lane
            before = len(lane_finishes)
            response = await post_token(http_client, base_url, body, headers=sent)
            assert len(lane_finishes) - before == (1 if on_lane else 0), (body, headers)
            answers.append(answer_seen(response))
        lane, handler = answers
        assert lane == handler, (body, headers)
        assert lane[0] in (200, 201) or "errorMessage" in lane[2]


@pytest.mark.gen_test
async def test_a_form_body_is_415_on_the_lane(
    http_client: Any, base_url: str, lane_finishes: list[Lane]
) -> None:
    # TokenHandler's way answers a malformed one 400: Tornado parses form bodies before
    # any handler code runs. The lane checks the media type first.
    headers = {"Content-Type": "multipart/form-data; boundary=x"}
    response = await post_token(http_client, base_url, "--x\r\nbroken", headers=headers)
    assert response.code == 415 and len(lane_finishes) == 1
    assert json.loads(response.body) == {"errorMessage": "Content-Type must be application/json"}


@pytest.mark.settings(token_rate_limit=2)
@pytest.mark.gen_test
async def test_the_lane_counts_against_the_same_rate_limit(
    app: Any, http_client: Any, base_url: str, lane_finishes: list[Lane]
) -> None:
    endpoint = token_endpoint(app)
    first = await post_token(http_client, base_url)  # on the lane
    endpoint.on_lane = False
    second = await post_token(http_client, base_url)  # by TokenHandler
    endpoint.on_lane = True
    third = await post_token(http_client, base_url)  # on the lane, over the limit
    assert [first.code, second.code, third.code] == [200, 200, 429]
    assert third.headers["Retry-After"].isdigit()
    assert len(lane_finishes) == 2


@pytest.mark.extensions("tests.sample_extensions.first")
@pytest.mark.gen_test
async def test_an_extension_step_keeps_tokens_with_the_handler(
    app: Any, http_client: Any, base_url: str, lane_finishes: list[Lane]
) -> None:
    assert not token_endpoint(app).on_lane  # an extension's step may wait
    response = await post_token(http_client, base_url, headers={"X-Role": "viewer"})
    assert response.code == 200 and lane_finishes == []


@pytest.mark.settings(identity_conflict="reject")
def test_identity_conflicts_that_ask_livekit_keep_tokens_with_the_handler(app: Any) -> None:
    assert not token_endpoint(app).on_lane


@pytest.mark.gen_test
async def test_a_step_that_waits_though_it_said_it_would_not_is_a_500(
    app: Any, http_client: Any, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def waits(request: TokenRequest, grant: Grant) -> Grant:
        await asyncio.sleep(0)
        return grant

    endpoint = token_endpoint(app)
    endpoint.steps = (*endpoint.steps, Step("a step that waits", waits, waits=False))
    with caplog.at_level(logging.ERROR):
        response = await post_token(http_client, base_url)
    assert response.code == 500
    assert json.loads(response.body) == {"errorMessage": "Internal server error"}
    assert "a step of the /token chain waited" in caplog.text


@pytest.mark.gen_test
async def test_a_webhook_waiting_for_the_store_is_in_flight_until_answered(
    app: Any, http_client: Any, base_url: str, held_store: asyncio.Event
) -> None:
    in_flight = app.settings["requests_in_flight"]
    answer = asyncio.ensure_future(send_webhook(http_client, base_url, webhook_event()))
    await until(lambda: in_flight)
    assert len(in_flight) == 1  # what a graceful shutdown waits for
    held_store.set()
    response = await answer
    assert response.code == 200 and json.loads(response.body)["status"] == "stored"
    assert not in_flight


@pytest.mark.gen_test
async def test_a_webhook_whose_store_fails_unexpectedly_is_a_500(
    app: Any,
    http_client: Any,
    base_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint: WebhookEndpoint = endpoint_of(app, WebhookHandler)

    async def broken_append(*args: Any) -> Any:
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(endpoint.event_log, "append", broken_append)
    with caplog.at_level(logging.ERROR):
        response = await send_webhook(http_client, base_url, webhook_event())
    assert response.code == 500
    assert json.loads(response.body) == {"errorMessage": "Internal server error"}
    assert "the disk caught fire" in caplog.text
    assert not app.settings["requests_in_flight"]


async def rate_limited_twice_counts_once(
    http_client: Any, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.test_metrics import scrape, value

    with caplog.at_level(logging.WARNING):
        codes = [(await post_token(http_client, base_url)).code for _ in range(2)]
    assert codes == [200, 429]
    samples = await scrape(http_client, base_url)
    assert value(samples, "livekit_app_rate_limited_total", handler="TokenHandler") == 1
    assert value(samples, "livekit_app_token_requests_total", shape="unknown", status="429") == 1
    assert "429 POST /token" in caplog.text
    assert "Exception" not in caplog.text


@pytest.mark.settings(token_rate_limit=1)
@pytest.mark.gen_test
async def test_a_429_on_the_lane_is_counted_once(
    app: Any, http_client: Any, base_url: str, lane_finishes: list[Lane], caplog: pytest.LogCaptureFixture
) -> None:
    await rate_limited_twice_counts_once(http_client, base_url, caplog)
    assert len(lane_finishes) == 2


@pytest.mark.extensions("tests.sample_extensions.first")
@pytest.mark.settings(token_rate_limit=1)
@pytest.mark.gen_test
async def test_a_429_from_token_handler_is_counted_once(
    app: Any, http_client: Any, base_url: str, lane_finishes: list[Lane], caplog: pytest.LogCaptureFixture
) -> None:
    await rate_limited_twice_counts_once(http_client, base_url, caplog)
    assert lane_finishes == []


async def in_flight_while(app: Any, base_url: str, finish: bool) -> tuple[int, bytes]:
    """A webhook whose body is half sent: how many requests are in flight meanwhile, and
    the answer once the rest comes (`finish`) or the client leaves."""
    in_flight = app.settings["requests_in_flight"]
    event = webhook_event()
    reader, writer = await send_raw_webhook(base_url, event, keep_back=15)
    await until(lambda: in_flight)
    during = len(in_flight)
    answer = b""
    if finish:
        writer.write(webhook_request(event)["body"][-15:])
        await writer.drain()
        answer = await reader.readuntil(b"}")
    writer.close()
    await until(lambda: not in_flight)
    assert not in_flight
    return during, answer


@pytest.mark.gen_test
async def test_a_webhook_is_in_flight_while_its_body_arrives(
    app: Any, http_server: Any, base_url: str
) -> None:
    during, answer = await in_flight_while(app, base_url, finish=True)
    assert during == 1  # a graceful shutdown waits for the rest of it
    assert answer.startswith(b"HTTP/1.1 200 OK") and b'"status":"stored"' in answer
    during, answer = await in_flight_while(app, base_url, finish=False)
    assert during == 1 and answer == b""  # and no longer once its client has gone


@pytest.mark.gen_test
async def test_an_http_error_from_a_step_is_answered_as_the_handler_does(
    app: Any, http_client: Any, base_url: str, lane_finishes: list[Lane]
) -> None:
    def teapot(request: TokenRequest, grant: Grant) -> Grant:
        raise tornado.web.HTTPError(418)

    def unavailable(request: TokenRequest, grant: Grant) -> Grant:
        raise tornado.web.HTTPError(503)

    def unnamed(request: TokenRequest, grant: Grant) -> Grant:
        raise tornado.web.HTTPError(499)  # a code Python has no name for

    endpoint = token_endpoint(app)
    built_in = endpoint.steps
    for step, expected in (
        (teapot, (418, "I'm a Teapot")),
        (unavailable, (503, "Internal server error")),
        (unnamed, (499, "Client error")),
    ):
        endpoint.steps = (*built_in, Step("an odd step", step, waits=False))
        answers = []
        for on_lane in (True, False):
            endpoint.on_lane = on_lane
            answers.append(answer_seen(await post_token(http_client, base_url)))
        assert answers[0] == answers[1]
        assert (answers[0][0], answers[0][2]["errorMessage"]) == expected
    assert len(lane_finishes) == 3


@pytest.mark.settings(events_redis_url="redis://127.0.0.1:9/0")
def test_bans_in_redis_keep_tokens_with_the_handler(app: Any) -> None:
    assert not token_endpoint(app).on_lane  # asking Redis waits


@pytest.mark.gen_test
async def test_a_webhook_whose_client_left_is_still_stored(
    app: Any, http_server: Any, base_url: str, held_store: asyncio.Event
) -> None:
    endpoint: WebhookEndpoint = endpoint_of(app, WebhookHandler)
    in_flight = app.settings["requests_in_flight"]
    event = webhook_event()
    _, writer = await send_raw_webhook(base_url, event)
    await until(lambda: in_flight)
    writer.close()  # gone before the store answers
    await asyncio.sleep(0.1)
    assert len(in_flight) == 1  # a graceful shutdown still waits for the store
    held_store.set()
    await until(lambda: not in_flight)
    assert not in_flight
    page = await endpoint.event_log.read(None, 10, 1 << 20)
    assert event["id"] in [json.loads(entry.event_json)["id"] for entry in page.entries]
