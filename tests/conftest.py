"""Shared fixtures: a server built by make_app with test settings, and LiveKit-style signing."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from livekit.api import AccessToken

from eventlog import open_event_log
from extensions import load_extensions
from ground.config import Config
from server import make_app, start_app, stop_app
from tests.processes import Receiver, ServerProcess

API_KEY = "devkey"
API_SECRET = "secret"


@pytest.fixture
def config(tmp_path: Any, request: pytest.FixtureRequest) -> Config:
    """Test settings; a test changes some with `@pytest.mark.settings(name=value)`."""
    marker = request.node.get_closest_marker("settings")
    overrides = marker.kwargs if marker else {}
    return Config(**{"events_db": str(tmp_path / "events.sqlite3"), **overrides})


@pytest.fixture
def app(config: Config, request: pytest.FixtureRequest, io_loop: Any) -> Any:
    """The app; a test loads extension modules with `@pytest.mark.extensions("module", ...)`."""
    marker = request.node.get_closest_marker("extensions")
    extensions = load_extensions(marker.args if marker else ())
    application = make_app(config, open_event_log(config), None, extensions)
    yield application
    # Its stores closed as main() closes them (Python 3.13 reports an unclosed SQLite
    # connection), unless the test ran it with `running`, which did.
    if not application.settings.get("stopped"):
        io_loop.run_sync(lambda: stop_app(application))


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[Any]:
    """The app as main() runs it: store, LiveKit client, extensions' setup and event
    handlers started (pytest-tornado's fixtures only serve it); stopped on the way out."""
    await start_app(app)
    try:
        yield app
    finally:
        await stop_app(app)
        app.settings["stopped"] = True


def webhook_event(event: str = "room_started", room: str = "R", **extra: Any) -> dict[str, Any]:
    """An event shaped as livekit-server sends it: protobuf JSON, int64 as strings."""
    body: dict[str, Any] = {
        "event": event,
        "id": f"EV_{secrets.token_hex(6)}",
        "createdAt": str(int(time.time())),
        "room": {"sid": "RM_abc", "name": room, "emptyTimeout": 300, "creationTime": str(int(time.time()))},
    }
    body.update(extra)
    return body


# One helper per kind of request the tests make, in process (pytest-tornado's http_client):


OPENVIDU_BODY = {"roomName": "R", "participantName": "alice"}


async def post_token(
    http_client: Any,
    base_url: str,
    body: Any = OPENVIDU_BODY,
    path: str = "/token",
    headers: dict[str, str] | None = None,
    **fetch_options: Any,
) -> Any:
    """POST /token with a JSON body (or raw bytes/str as given); the answer, whatever its status."""
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return await http_client.fetch(
        base_url + path,
        method="POST",
        body=raw,
        raise_error=False,
        headers={"Content-Type": "application/json", **(headers or {})},
        **fetch_options,
    )


def token_claims(answer: Any) -> Any:
    """The claims of the token in a /token answer (either shape) or of a token, verified
    with livekit-api's TokenVerifier."""
    from livekit.api import TokenVerifier

    if isinstance(answer, str):
        token = answer
    else:
        body = json.loads(answer.body)
        token = body.get("token") or body["participant_token"]
    return TokenVerifier(API_KEY, API_SECRET).verify(token)


def request_token(
    base_url: str, body: Any = OPENVIDU_BODY, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """POST /token to a server in a real process: the status and the JSON answer."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        base_url + "/token",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), json.loads(error.read())


async def send_webhook(
    http_client: Any,
    base_url: str,
    event: dict[str, Any] | bytes,
    path: str = "/livekit/webhook",
    **sign_args: Any,
) -> Any:
    """POST a webhook signed as livekit-server signs it; the answer, whatever its status."""
    return await http_client.fetch(base_url + path, **webhook_request(event, **sign_args))


def events_url(base_url: str, since: str | None = None) -> str:
    return base_url.replace("http", "ws", 1) + "/events" + (f"?since={since}" if since else "")


async def open_socket(base_url: str, since: str | None = None, **headers: str) -> Any:
    """WS /events (after `since`), as a browser on this server's own page opens it."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    return await websocket_connect(HTTPRequest(events_url(base_url, since), headers=headers))


async def read_frames(socket: Any, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The next `count` frames of an events socket, parsed; fails if it closes first."""
    import asyncio

    frames = []
    for _ in range(count):
        message = await asyncio.wait_for(socket.read_message(), timeout)
        assert message is not None, "socket closed early"
        frames.append(json.loads(message))
    return frames


def sign(
    body: bytes, secret: str = API_SECRET, key: str = API_KEY, ttl: timedelta = timedelta(minutes=5)
) -> str:
    """The Authorization header livekit-server sends: HS256 JWT, iss = key, sha256 of the body."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return AccessToken(key, secret).with_sha256(digest).with_ttl(ttl).to_jwt()


def webhook_request(event: dict[str, Any] | bytes, **sign_args: Any) -> dict[str, Any]:
    """fetch() keyword arguments for a signed webhook POST."""
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    return {
        "method": "POST",
        "body": body,
        "headers": {"Content-Type": "application/webhook+json", "Authorization": sign(body, **sign_args)},
        "raise_error": False,
    }


def require(component: str, available: bool, how: str) -> None:
    """Skip a test whose real component is missing; in CI, fail instead."""
    if available:
        return
    message = f"{component} is not available: {how}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " (CI=true: a missing real component fails the run)", pytrace=False)
    pytest.skip(message)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Any:
    # Module scope: Playwright's sync API holds an event loop on this thread while it
    # runs, which the Tornado tests of other modules need free.
    require(
        "Chromium", Path(CHROMIUM).is_file(), "install Debian's chromium (`make system-packages` as root)"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def server_process(tmp_path: Path) -> Any:
    """This server in a subprocess on a free port, with its own event store."""
    started: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        process = ServerProcess(tmp_path, **env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """This server in a subprocess; `preexec` runs in the child first (e.g. a lower limit)."""
    started: list[ServerProcess] = []

    def start(preexec: Callable[[], None] | None = None, **env: str) -> ServerProcess:
        server = ServerProcess(tmp_path, **{"LOG_LEVEL": "INFO", **env})
        server.preexec_fn = preexec
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def receiver() -> Any:
    """Start HTTP endpoints that record what is POSTed to them (see Receiver)."""
    started: list[Receiver] = []

    def start(statuses: list[int] | None = None, then: int = 200) -> Receiver:
        started.append(Receiver(statuses, then))
        return started[-1]

    yield start
    for one in started:
        one.stop()


def post_webhook(
    base_url: str, event: dict[str, Any], path: str = "/livekit/webhook", **sign_args: Any
) -> int:
    """POST a signed webhook the way livekit-server does; returns the status code."""
    import urllib.error
    import urllib.request

    request = webhook_request(event, **sign_args)
    http_request = urllib.request.Request(base_url + path, data=request["body"], headers=request["headers"])
    try:
        with urllib.request.urlopen(http_request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def wait_until(page: Any, function: str, arg: Any = None, timeout_ms: int = 10_000) -> Any:
    """Poll `function(arg)` in the page until it is truthy. Playwright's wait_for_function
    evaluates strings in the page, which the demo page's CSP (no 'unsafe-eval') refuses."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        result = page.evaluate(function, arg)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_ms} ms waiting for {function}")
        page.wait_for_timeout(50)


class RedisServer:
    """Debian's redis-server on a free loopback port, in a directory of its own."""

    def __init__(self, directory: Path, persistent: bool = False) -> None:
        from dev.livekit_server import free_port

        self.port = free_port()
        self.directory = directory
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def info(self, section: str, field: str) -> int:
        """One figure of INFO, asked on a connection of its own (counted in it too)."""
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            return int(client.info(section)[field])
        finally:
            client.close()

    def start(self) -> RedisServer:
        from dev.livekit_server import is_listening

        # Persistent: every write is on disk before Redis answers, so a restart keeps it.
        durability = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.directory),
                *durability,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not is_listening(self.port):
            assert self.process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Any:
    require(
        "redis-server",
        shutil.which("redis-server") is not None,
        "install Debian's redis-server (`make system-packages` as root)",
    )
    started: list[RedisServer] = []

    def start(persistent: bool = False) -> RedisServer:
        directory = tmp_path / f"redis-{len(started)}"
        directory.mkdir()
        for attempt in range(3):  # a free port may be taken by another process meanwhile
            server = RedisServer(directory, persistent)
            try:
                server.start()
                break
            except AssertionError:
                server.stop()
                if attempt == 2:
                    raise
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def run_async(work: Any) -> Any:
    """Run a coroutine to completion on a loop of its own. Not asyncio.run: that unsets the
    thread's current loop, which pytest-tornado's tests leave behind, unclosed (it would
    warn, an error here, during whichever test runs next)."""
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(work)
    finally:
        loop.close()
