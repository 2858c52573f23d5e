"""GET /openapi.json describes what the server really answers: every route is in it, every
documented answer is produced here by a real request and validated with openapi-core, and
real WebSocket frames are validated against its frame schemas."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from contextlib import closing
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import tornado.web
from openapi_core import Config as OpenApiConfig
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_schema_validator import OAS31Validator
from tornado.httpclient import HTTPClient, HTTPRequest, HTTPResponse
from tornado.httputil import HTTPHeaders
from tornado.websocket import websocket_connect
from werkzeug.datastructures import Headers, ImmutableMultiDict

from dev.livekit_server import HOW_TO_GET, LiveKitServer, find_binary, free_port
from ground.config import Config
from handlers.openapi import OPENAPI_FILE
from handlers.support.base import Handler
from tests.conftest import require, webhook_event, webhook_request
from tests.test_rooms import create_room

DOCUMENT = json.loads(OPENAPI_FILE.read_text())
# Checks the document itself (openapi-spec-validator); LiveKit's webhook media type is JSON.
API = OpenAPI.from_dict(
    DOCUMENT, config=OpenApiConfig(extra_media_type_deserializers={"application/webhook+json": json.loads})
)
FRAME = OAS31Validator({"$ref": "#/components/schemas/Frame", "components": DOCUMENT["components"]})
TOKEN = "/token"
# Every (path, method, status) answered and validated by the tests of this module.
SEEN: set[tuple[str, str, str]] = set()


class OpenApiRequest:
    """A request made by Tornado's client, as openapi-core reads one."""

    def __init__(self, request: HTTPRequest) -> None:
        url = urlsplit(request.url)
        self.host_url = f"{url.scheme}://{url.netloc}"
        self.path = url.path
        self.method = request.method.lower()
        self.body = request.body or b""
        self.content_type = request.headers.get("Content-Type", "")
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qsl(url.query)),
            header=Headers(list(HTTPHeaders(request.headers).get_all())),
            cookie=ImmutableMultiDict(),
        )


class OpenApiResponse:
    """Its answer, as openapi-core reads one."""

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status_code = status
        self.headers = Headers(list(headers.get_all()))
        self.content_type = headers.get("Content-Type", "")
        self.data = body


def documented_path(path: str) -> str:
    for template in DOCUMENT["paths"]:
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            return str(template)
    raise AssertionError(f"{path} is not in the document")


def check(response: HTTPResponse, request_is_valid: bool = True) -> HTTPResponse:
    """Validates a real answer (and, unless the test sends bad input on purpose, its
    request) against the document, and notes it as seen."""
    request = OpenApiRequest(response.request)
    if request_is_valid:
        API.validate_request(request)
    API.validate_response(request, OpenApiResponse(response.code, response.headers, response.body))
    SEEN.add((documented_path(request.path), request.method, str(response.code)))
    return response


async def fetch(
    http_client: Any, base_url: str, path: str, valid: bool = True, **kwargs: Any
) -> HTTPResponse:
    return check(await http_client.fetch(base_url + path, **{"raise_error": False, **kwargs}), valid)


def json_post(body: Any, **headers: str) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return {"method": "POST", "body": raw, "headers": {"Content-Type": "application/json", **headers}}


def all_documented() -> set[tuple[str, str, str]]:
    return {
        (path, method, status)
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        for status in operation["responses"]
    }


@pytest.mark.settings(cors_allowed_origins=("http://localhost:5080",), room_name_pattern="room-.*")
@pytest.mark.gen_test
async def test_token_answers(http_client: Any, base_url: str) -> None:
    openvidu = await fetch(
        http_client, base_url, TOKEN, **json_post({"roomName": "room-1", "participantName": "a"})
    )
    assert openvidu.code == 200
    standard = await fetch(http_client, base_url, TOKEN, **json_post({"room_name": "room-2"}))
    assert standard.code == 201
    assert (await fetch(http_client, base_url, TOKEN, False, **json_post(b"{nope"))).code == 400
    assert (await fetch(http_client, base_url, TOKEN, **json_post({"room_name": "lobby"}))).code == 422
    too_big = json_post({"room_name": "room-3", "participant_metadata": "x" * 70_000})
    assert (await fetch(http_client, base_url, TOKEN, **too_big)).code == 413
    plain = {"method": "POST", "body": b"roomName=r", "headers": {"Content-Type": "text/plain"}}
    assert (await fetch(http_client, base_url, TOKEN, False, **plain)).code == 415
    preflight = {"method": "OPTIONS", "headers": {"Access-Control-Request-Method": "POST"}}
    allowed = await fetch(
        http_client,
        base_url,
        TOKEN,
        headers={**preflight["headers"], "Origin": "http://localhost:5080"},
        method="OPTIONS",
    )
    refused = await fetch(
        http_client,
        base_url,
        TOKEN,
        headers={**preflight["headers"], "Origin": "http://evil.example"},
        method="OPTIONS",
    )
    assert (allowed.code, refused.code) == (204, 403)


@pytest.mark.settings(token_auth_secret="door", token_client_fields=(), token_rate_limit=2)
@pytest.mark.gen_test
async def test_token_refusals(http_client: Any, base_url: str) -> None:
    door = {"Authorization": "Bearer door"}
    assert (await fetch(http_client, base_url, TOKEN, **json_post({}))).code == 401
    forbidden = json_post({"participant_metadata": "m"}, **door)
    assert (await fetch(http_client, base_url, TOKEN, **forbidden)).code == 403
    assert (await fetch(http_client, base_url, TOKEN, **json_post({}, **door))).code == 429  # the 3rd of 2


@pytest.mark.gen_test
async def test_webhook_answers(http_client: Any, base_url: str, config: Config) -> None:
    event = webhook_event("participant_joined", participant={"identity": "alice"})
    paths = ("/livekit/webhook", "/webhook")
    for path in paths:
        assert (await fetch(http_client, base_url, path, **webhook_request(event))).code == 200
    assert json.loads((await fetch(http_client, base_url, "/webhook", **webhook_request(event))).body) == {
        "status": "duplicate"
    }
    wrong_type = webhook_request(webhook_event())
    wrong_type["headers"]["Content-Type"] = "text/plain"
    for path in paths:
        bad_signature = webhook_request(webhook_event(), secret="wrong")
        assert (await fetch(http_client, base_url, path, **bad_signature)).code == 401
        assert (await fetch(http_client, base_url, path, False, **webhook_request(b"[]"))).code == 400
        huge = webhook_request(webhook_event(pad="x" * (1024 * 1024)))
        assert (await fetch(http_client, base_url, path, **huge)).code == 413
        assert (await fetch(http_client, base_url, path, False, **wrong_type)).code == 415
    with closing(sqlite3.connect(config.events_db)) as other:  # a real SQLite failure
        other.execute("CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'full'); END")
    for path in paths:
        refused = await fetch(http_client, base_url, path, **webhook_request(webhook_event()))
        assert refused.code == 503
    assert (await fetch(http_client, base_url, "/healthz")).code == 503
    assert (await fetch(http_client, base_url, "/healthz", method="HEAD")).code == 503


@pytest.mark.settings(events_keep=2)
@pytest.mark.gen_test
async def test_history_health_and_socket_frames(http_client: Any, base_url: str, config: Config) -> None:
    assert (await fetch(http_client, base_url, "/healthz")).code == 200
    assert (await fetch(http_client, base_url, "/healthz", method="HEAD")).code == 200
    for _ in range(3):
        await http_client.fetch(base_url + "/livekit/webhook", **webhook_request(webhook_event()))
    listed = json.loads((await fetch(http_client, base_url, "/events/history?limit=10")).body)
    trimmed = json.loads((await fetch(http_client, base_url, "/events/history?since=0")).body)
    assert [frame.get("notice") for frame in trimmed][:1] == ["history_trimmed"]
    assert (await fetch(http_client, base_url, "/events/history?limit=0", False)).code == 400

    ws_url = base_url.replace("http", "ws") + "/events"
    frames = []
    for query in ("", "?since=0", "?since=not-a-cursor"):
        socket = await websocket_connect(ws_url + query)
        check_upgrade(socket, base_url + "/events" + query)
        frames += [json.loads(await socket.read_message()) for _ in range(2)]
        socket.close()
    notices = {frame["notice"] for frame in frames if "notice" in frame}
    assert notices == {"history_trimmed", "unknown_cursor"}
    for frame in frames + listed + trimmed:
        FRAME.validate(frame)
    assert (await fetch(http_client, base_url, "/events", False)).code == 400
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Origin": "http://evil.example",
    }
    assert (await fetch(http_client, base_url, "/events", headers=upgrade)).code == 403

    with closing(sqlite3.connect(config.events_db)) as other:  # the store cannot be read
        other.execute("DROP TABLE events")
    assert (await fetch(http_client, base_url, "/events/history")).code == 503


def check_upgrade(socket: Any, url: str, **headers: str) -> None:
    """The 101 of a WebSocket handshake, which the HTTP client does not return as a response."""
    request = OpenApiRequest(HTTPRequest(url, headers={"Upgrade": "websocket", **headers}))
    API.validate_request(request)
    API.validate_response(request, OpenApiResponse(101, socket.headers, b""))
    SEEN.add((documented_path(request.path), "get", "101"))


@pytest.mark.settings(events_auth_secret="e" * 40)
@pytest.mark.gen_test
async def test_the_event_stream_with_a_secret(http_client: Any, base_url: str) -> None:
    bearer = {"Authorization": "Bearer " + "e" * 40}
    assert (await fetch(http_client, base_url, "/events/history")).code == 401
    assert (await fetch(http_client, base_url, "/events", headers=UPGRADE)).code == 401
    assert (await fetch(http_client, base_url, "/events/history", headers=bearer)).code == 200


@pytest.mark.settings(app_env="production")
@pytest.mark.gen_test
async def test_the_event_stream_in_production_without_a_secret(http_client: Any, base_url: str) -> None:
    assert (await fetch(http_client, base_url, "/events/history")).code == 403
    assert (await fetch(http_client, base_url, "/events", headers=UPGRADE)).code == 403


@pytest.mark.gen_test
async def test_pages_files_and_this_document(http_client: Any, base_url: str) -> None:
    assert (await fetch(http_client, base_url, "/")).code == 200
    assert (await fetch(http_client, base_url, "/", method="HEAD")).code == 200
    assert (await fetch(http_client, base_url, "/static/room.js")).code == 200
    assert (await fetch(http_client, base_url, "/static/none.js")).code == 404
    assert (await fetch(http_client, base_url, "/vendor/qrcode-generator/qrcode.mjs")).code == 200
    assert (await fetch(http_client, base_url, "/vendor/qrcode-generator/none.mjs")).code == 404
    assert (
        await fetch(http_client, base_url, "/vendor/qrcode-generator/qrcode.mjs", method="HEAD")
    ).code == 200
    assert (
        await fetch(http_client, base_url, "/vendor/qrcode-generator/none.mjs", method="HEAD")
    ).code == 404
    assert (await fetch(http_client, base_url, "/vendor/livekit-client/livekit-client.umd.js")).code == 200
    assert (await fetch(http_client, base_url, "/vendor/livekit-client/none.js")).code == 404
    assert (await fetch(http_client, base_url, "/static/style.css", method="HEAD")).code == 200
    assert (await fetch(http_client, base_url, "/static/none.css", method="HEAD")).code == 404
    assert (
        await fetch(http_client, base_url, "/vendor/livekit-client/livekit-client.umd.js", method="HEAD")
    ).code == 200
    assert (await fetch(http_client, base_url, "/vendor/livekit-client/none.js", method="HEAD")).code == 404
    served = await fetch(http_client, base_url, "/openapi.json")
    assert json.loads(served.body) == DOCUMENT
    assert served.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.gen_test
async def test_metrics_public_in_development(http_client: Any, base_url: str) -> None:
    assert (await fetch(http_client, base_url, "/metrics")).code == 200


@pytest.mark.settings(metrics_auth_secret="scraper")
@pytest.mark.gen_test
async def test_metrics_with_a_secret(http_client: Any, base_url: str) -> None:
    assert (await fetch(http_client, base_url, "/metrics")).code == 401
    assert (
        await fetch(http_client, base_url, "/metrics", headers={"Authorization": "Bearer scraper"})
    ).code == 200


@pytest.mark.settings(app_env="production")
@pytest.mark.gen_test
async def test_metrics_in_production(http_client: Any, base_url: str) -> None:
    assert (await fetch(http_client, base_url, "/metrics")).code == 403


@pytest.mark.settings(metrics_enabled=False)
@pytest.mark.gen_test
async def test_metrics_off(http_client: Any, base_url: str) -> None:
    assert (await fetch(http_client, base_url, "/metrics")).code == 404


ADMIN_SECRET = "openapi-test-admin-secret-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_SECRET}"}
# Every operation of the admin API, with a body it accepts.
ADMIN_CALLS: list[tuple[str, str, Any]] = [
    ("GET", "/rooms", None),
    ("GET", "/rooms/R", None),
    ("DELETE", "/rooms/R", None),
    ("GET", "/rooms/R/participants/p", None),
    ("PATCH", "/rooms/R/participants/p", {"metadata": "m"}),
    ("POST", "/rooms/R/participants/p/remove", {}),
    ("POST", "/rooms/R/participants/p/mute", {"source": "microphone"}),
    ("GET", "/rooms/R/bans", None),
    ("DELETE", "/rooms/R/bans/p", None),
]
UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def admin_call(method: str, body: Any, headers: dict[str, str]) -> dict[str, Any]:
    sent = dict(headers)
    if body is not None:
        sent["Content-Type"] = "application/json"
    return {"method": method, "body": None if body is None else json.dumps(body), "headers": sent}


@pytest.mark.settings(admin_secret=ADMIN_SECRET, identity_conflict="reject")
@pytest.mark.gen_test
async def test_admin_answers_without_livekit(
    http_client: Any, base_url: str, app: tornado.web.Application, config: Config
) -> None:
    # This in-process app has no LiveKit API client: what needs LiveKit answers 503.
    for method, path, body in ADMIN_CALLS:
        anonymous = await fetch(http_client, base_url, path, **admin_call(method, body, {}))
        wrong = await fetch(
            http_client, base_url, path, **admin_call(method, body, {"Authorization": "Bearer x"})
        )
        right = await fetch(http_client, base_url, path, **admin_call(method, body, ADMIN))
        expected = {"/rooms/R/bans": 200, "/rooms/R/bans/p": 404}.get(path, 503)
        assert (anonymous.code, wrong.code, right.code) == (401, 403, expected), (method, path)
    for method, path, body in ADMIN_CALLS:
        if body is not None:
            bad = {"PATCH": {}, "POST": {"ban_seconds": 0} if path.endswith("remove") else {"muted": "yes"}}
            assert (
                await fetch(http_client, base_url, path, False, **admin_call(method, bad[method], ADMIN))
            ).code == 400
            huge = admin_call(method, {"metadata": "x" * 70_000}, ADMIN)
            assert (await fetch(http_client, base_url, path, False, **huge)).code == 413
            plain = {"method": method, "body": "{}", "headers": {**ADMIN, "Content-Type": "text/plain"}}
            assert (await fetch(http_client, base_url, path, False, **plain)).code == 415

    bans = app.settings["rooms"].bans
    await bans.ban("R", "p", 60)
    await bans.ban("R", "q", 60)
    assert (
        json.loads((await fetch(http_client, base_url, "/rooms/R/bans", headers=ADMIN)).body)[0]["identity"]
        == "p"
    )
    banned = await fetch(http_client, base_url, TOKEN, **json_post({"roomName": "R", "participantName": "p"}))
    assert banned.code == 403 and int(banned.headers["Retry-After"]) > 0
    # IDENTITY_CONFLICT=reject asks LiveKit who is in the room; this app cannot.
    unknown = await fetch(
        http_client, base_url, TOKEN, **json_post({"roomName": "R", "participantName": "x"})
    )
    assert unknown.code == 503
    assert (await fetch(http_client, base_url, "/rooms/R/bans/p", method="DELETE", headers=ADMIN)).code == 200
    with closing(sqlite3.connect(config.events_db)) as other:  # the ban list cannot be written
        other.execute("DROP TABLE bans")
    assert (await fetch(http_client, base_url, "/rooms/R/bans/q", method="DELETE", headers=ADMIN)).code == 503

    ws_url = base_url.replace("http", "ws") + "/live/rooms"
    socket = await websocket_connect(HTTPRequest(ws_url, headers=ADMIN))
    check_upgrade(socket, base_url + "/live/rooms", **ADMIN)
    socket.close()
    for headers, status in (
        ({"Authorization": "Basic x"}, 401),
        ({"Authorization": "Bearer x"}, 403),
        ({**ADMIN, "Origin": "http://evil.example"}, 403),
    ):
        assert (
            await fetch(http_client, base_url, "/live/rooms", headers={**UPGRADE, **headers})
        ).code == status


@pytest.mark.gen_test
async def test_admin_api_off(http_client: Any, base_url: str) -> None:
    for method, path, body in ADMIN_CALLS:
        assert (await fetch(http_client, base_url, path, **admin_call(method, body, ADMIN))).code == 404
    assert (await fetch(http_client, base_url, "/live/rooms", headers=UPGRADE)).code == 404


@pytest.fixture(scope="module")
def livekit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    binary = find_binary()
    require("livekit-server", binary is not None, HOW_TO_GET)
    assert binary is not None
    workdir = tmp_path_factory.mktemp("openapi-livekit")
    server = LiveKitServer(
        binary, f"http://127.0.0.1:{free_port()}/livekit/webhook", log_path=workdir / "lk.log"
    )
    server.start()
    yield server
    server.stop()


@pytest.mark.e2e
def test_admin_answers_from_livekit(livekit: LiveKitServer, server_process: Any) -> None:
    server = server_process(LIVEKIT_URL=livekit.url, ADMIN_SECRET=ADMIN_SECRET)
    create_room(livekit, "openapi-room")
    client = HTTPClient()
    try:
        for method, path in (
            ("GET", "/rooms"),
            ("GET", "/rooms/openapi-room"),
            ("DELETE", "/rooms/openapi-room"),
            ("GET", "/rooms/openapi-room"),
        ):
            check(client.fetch(server.url + path, method=method, headers=ADMIN, raise_error=False))
    finally:
        client.close()
    assert {
        ("/rooms", "get", "200"),
        ("/rooms/{room}", "delete", "200"),
        ("/rooms/{room}", "get", "404"),
    } <= SEEN


def test_every_route_and_method_is_documented(app: tornado.web.Application) -> None:
    # Tornado's static_path also routes these two to static/, which has neither file (404).
    implicit = {r"/(favicon\.ico)", r"/(robots\.txt)"}
    routes = {
        rule.matcher.regex.pattern.rstrip("$"): rule.target
        for rule in app.wildcard_router.rules
        if rule.matcher.regex.pattern.rstrip("$") not in implicit
    }
    assert set(routes) >= {"/+token", "/livekit/webhook", "/events", "/metrics"}
    documented = {re.sub(r"\{[^}]+\}", "x", path): path for path in DOCUMENT["paths"]}
    for pattern, handler in routes.items():
        paths = [path for example, path in documented.items() if re.fullmatch(pattern, example)]
        assert paths, f"route {pattern} ({handler.__name__}) is not in docs/openapi.json"
        implemented = {
            method.lower()
            for method in handler.SUPPORTED_METHODS
            if getattr(handler, method.lower()) is not getattr(tornado.web.RequestHandler, method.lower())
        }
        if not getattr(handler, "cors_methods", "not a Handler"):
            implemented.discard("options")  # the one handler base answers it 405 without CORS
        if issubclass(handler, Handler) and handler.lane.__func__ is not Handler.lane.__func__:  # type: ignore[attr-defined]
            implemented.add("post")  # answered on the lane (handlers/support/lane.py)
        assert set(DOCUMENT["paths"][paths[0]]) == implemented, pattern
    for example, path in documented.items():
        assert any(re.fullmatch(pattern, example) for pattern in routes), (
            f"{path} is documented but not served"
        )


def test_every_documented_answer_was_produced(request: pytest.FixtureRequest) -> None:
    module = sys.modules[__name__]
    ran = [item for item in request.session.items if getattr(item, "module", None) is module]
    if len(ran) < len([name for name in dir(module) if name.startswith("test_")]):
        pytest.skip("runs only with the whole module, whose tests produce the answers")
    assert all_documented() - SEEN - PRODUCED_ELSEWHERE == set()


# Documented answers this module cannot produce without a participant in a LiveKit room
# (a browser), or without a Redis that fails: the tests named here produce them.
PRODUCED_ELSEWHERE = {
    ("/token", "post", "409"),  # tests/test_rooms_e2e.py (IDENTITY_CONFLICT with a real participant)
    ("/rooms/{room}/participants/{identity}", "get", "200"),  # tests/test_rooms_e2e.py
    ("/rooms/{room}/participants/{identity}", "patch", "200"),  # tests/test_rooms_e2e.py
    ("/rooms/{room}/participants/{identity}/remove", "post", "200"),  # tests/test_rooms_e2e.py
    ("/rooms/{room}/participants/{identity}/mute", "post", "200"),  # tests/test_rooms_e2e.py
    ("/rooms/{room}/bans", "get", "503"),  # only the Redis ban store can fail to list (tests/test_rooms.py)
}
