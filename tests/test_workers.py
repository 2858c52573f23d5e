"""WORKERS=N: pre-forked processes sharing one port behave, from a client's point of view,
like one server (issue 21). Real processes: `python server.py` with WORKERS=2 and 3."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit import api
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from dev.livekit_server import HOW_TO_GET, LiveKitServer, find_binary, free_port
from ground.config import PROJECT_DIR
from tests.admin import SECRET, admin, path_of
from tests.conftest import (
    events_url,
    post_webhook,
    request_token,
    require,
    run_async,
    webhook_event,
    webhook_request,
)
from tests.test_metrics import Samples, parse
from tests.test_startup import FAILURES, run_failure, run_server, without_root_file_access

WORKER_COUNTS = [2, 3]


def health(url: str) -> tuple[dict[str, Any], str]:
    with urllib.request.urlopen(url + "/healthz", timeout=5) as answer:
        return json.loads(answer.read()), answer.headers["X-Worker-Id"]


def workers_seen(url: str, count: int) -> set[str]:
    """Ask /healthz (a new connection each time) until `count` workers answered."""
    seen: set[str] = set()
    deadline = time.monotonic() + 20  # a replaced worker starts after a pause
    while time.monotonic() < deadline:
        time.sleep(0.01)
        body, header = health(url)
        assert str(body["worker"]) == header
        seen.add(header)
        if len(seen) == count:
            break
    return seen


async def sockets_on_every_worker(url: str, count: int) -> dict[str, Any]:
    """One events socket per worker: connect until each worker holds one (its handshake
    says which), closing the spare ones."""
    held: dict[str, Any] = {}
    for _ in range(400):
        socket = await websocket_connect(events_url(url))
        worker = socket.headers["X-Worker-Id"]
        if worker in held:
            socket.close()
        else:
            held[worker] = socket
        if len(held) == count:
            return held
    raise AssertionError(f"sockets reached only workers {sorted(held)}")


async def post_spread(url: str, events: list[dict[str, Any]], clients: int = 8) -> dict[str, str]:
    """POST every event, `clients` at a time; event id -> the worker that acknowledged it."""
    client = AsyncHTTPClient(force_instance=True, max_clients=clients)
    acknowledged: dict[str, str] = {}

    async def post(event: dict[str, Any]) -> None:
        answer = await client.fetch(url + "/livekit/webhook", **webhook_request(event))
        assert answer.code == 200
        acknowledged[event["id"]] = answer.headers["X-Worker-Id"]

    try:
        await asyncio.gather(*(post(event) for event in events))
    finally:
        client.close()
    return acknowledged


async def read_events(socket: Any, count: int) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while len(frames) < count:
        message = await asyncio.wait_for(socket.read_message(), 20)
        assert message is not None, "socket closed early"
        frame = json.loads(message)
        if "cursor" in frame:
            frames.append(frame)
    with_more = await asyncio.wait({asyncio.ensure_future(socket.read_message())}, timeout=0.5)
    assert not with_more[0] or "cursor" not in json.loads(with_more[0].pop().result() or "{}"), "a duplicate"
    socket.close()
    return frames


@pytest.mark.parametrize("store", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_every_socket_on_every_worker_gets_every_event_once_in_one_order(
    server_process: Any, redis_server: Any, workers: int, store: str
) -> None:
    env = {"EVENTS_REDIS_URL": redis_server().url} if store == "redis" else {}
    server = server_process(WORKERS=str(workers), EVENTS_REPLAY="0", LOG_LEVEL="INFO", **env)
    events = [
        webhook_event("participant_joined", room="w", participant={"identity": f"p{n}"}) for n in range(1000)
    ]

    async def scenario() -> tuple[dict[str, str], dict[str, list[dict[str, Any]]]]:
        sockets = await sockets_on_every_worker(server.url, workers)
        acknowledged = await post_spread(server.url, events)
        received = dict(
            zip(
                sockets,
                await asyncio.gather(*(read_events(s, len(events)) for s in sockets.values())),
                strict=True,
            )
        )
        return acknowledged, received

    acknowledged, received = run_async(scenario())
    assert set(acknowledged.values()) == {str(n) for n in range(workers)}  # every worker acknowledged some
    orders = {worker: [frame["cursor"] for frame in frames] for worker, frames in received.items()}
    first = next(iter(orders.values()))
    assert all(order == first for order in orders.values())  # the same cursors, in one order
    for frames in received.values():
        assert sorted(frame["event"]["id"] for frame in frames) == sorted(acknowledged)  # each once
    # A client that reconnects with a cursor gets the rest, whichever worker it lands on.
    history = json.loads(urllib.request.urlopen(server.url + f"/events/history?since={first[989]}").read())
    assert [frame["cursor"] for frame in history] == first[990:]


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_health_names_the_worker_and_every_worker_answers(server_process: Any, workers: int) -> None:
    server = server_process(WORKERS=str(workers), LOG_LEVEL="INFO")
    assert workers_seen(server.url, workers) == {str(n) for n in range(workers)}
    log = server.log_text()
    assert log.count("Listening on") == 1 and f"Serving with {workers} workers" in log


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_a_burst_of_connections_is_spread_over_the_workers(server_process: Any, workers: int) -> None:
    """32 keep-alive connections opened at once, as a load generator or a proxy's pool
    does: every worker gets some (on one shared socket, the first awake took them all)."""
    server = started(server_process(WORKERS=str(workers)), workers)
    connections = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=5) for _ in range(32)]
    try:
        for connection in connections:
            connection.connect()
        held: dict[str, int] = {}
        for connection in connections:
            connection.request("GET", "/healthz")
            answer = connection.getresponse()
            answer.read()
            held[answer.headers["X-Worker-Id"]] = held.get(answer.headers["X-Worker-Id"], 0) + 1
    finally:
        for connection in connections:
            connection.close()
    assert sorted(held) == [str(n) for n in range(workers)] and min(held.values()) >= 2, held


def listening_sockets(pid: int, port: int) -> set[int]:
    """The inodes of the listening TCP sockets on `port` that process `pid` holds."""
    listening = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
            listening.add(int(fields[9]))
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            held.add(int(target[8:-1]))
    return listening & held


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_each_worker_holds_its_own_listening_socket_and_the_parent_all(
    server_process: Any, workers: int
) -> None:
    server = started(server_process(WORKERS=str(workers)), workers)
    assert server.process is not None
    parent = listening_sockets(server.process.pid, server.port)
    own = [listening_sockets(pid, server.port) for pid in worker_pids(server.process.pid)]
    assert len(parent) == workers and all(len(sockets) == 1 for sockets in own), (parent, own)
    assert set().union(*own) == parent  # one each, none shared


def test_a_second_server_on_the_port_of_one_with_workers_is_refused(
    server_process: Any, tmp_path: Path
) -> None:
    """Each worker's sockets share the port with the others' (SO_REUSEPORT), never with
    another server started the same way."""
    first = started(server_process(WORKERS="2"), 2)
    for workers in ("2", "1"):
        result = run_server(tmp_path, {"WORKERS": workers, "SERVER_PORT": str(first.port)})
        output = (result.stdout + result.stderr).strip()
        assert result.returncode == 1 and f"port {first.port}" in output, output
        assert "Address already in use" in output and len(output.splitlines()) == 1, output
    assert workers_seen(first.url, 2) == {"0", "1"}


def started(server: Any, workers: int) -> Any:
    """The server once every worker serves (it answers as soon as worker 0 does)."""
    deadline = time.monotonic() + 30
    while f"Serving with {workers} workers" not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)
    return server


def worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children]


def kill_last_started_worker(server: Any) -> None:
    os.kill(sorted(worker_pids(server.process.pid), key=started_at)[-1], signal.SIGKILL)


def wait_for_log(server: Any, text: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while text not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_pinned_workers_are_each_held_to_one_core_round_robin(server_process: Any, workers: int) -> None:
    server = started(server_process(WORKERS=str(workers), WORKERS_PINNED="true"), workers)
    assert server.process is not None
    cores = sorted(os.sched_getaffinity(server.process.pid))  # the parent keeps them all
    first = sorted(worker_pids(server.process.pid), key=started_at)  # worker 0 starts first
    assert len(first) == workers
    for worker, pid in enumerate(first):  # every thread of it: the store's too
        assert cores_of(pid) == {frozenset({cores[worker % len(cores)]})}, (worker, cores_of(pid))
    # The replacement of the last worker is held to that worker's core.
    os.kill(first[-1], signal.SIGKILL)
    assert workers_seen(server.url, workers) == {str(n) for n in range(workers)}
    [replacement] = set(worker_pids(server.process.pid)) - set(first)
    assert cores_of(replacement) == {frozenset({cores[(workers - 1) % len(cores)]})}


def test_workers_are_pinned_by_default_only_when_there_is_one_per_core(server_process: Any) -> None:
    cores = os.sched_getaffinity(0)
    if len(cores) < 2:
        pytest.skip("WORKERS=auto on one core is one worker, which is never pinned")
    one_each = started(server_process(WORKERS="auto"), len(cores))
    assert one_each.process is not None
    held = [cores_of(pid) for pid in worker_pids(one_each.process.pid)]
    assert all(len(affinity) == 1 and len(next(iter(affinity))) == 1 for affinity in held), held
    assert set().union(*held) == {frozenset({core}) for core in cores}  # a core each
    assert "each held to a core of its own" in one_each.log_text()
    one_each.stop()
    for count, pinned in ((len(cores) + 1, "auto"), (len(cores), "false")):
        settings = {"WORKERS": str(count), "WORKERS_PINNED": pinned}
        free = started(server_process(**settings), count)
        assert free.process is not None
        assert all(cores_of(pid) == {frozenset(cores)} for pid in worker_pids(free.process.pid)), settings
        assert "held to a core" not in free.log_text()
        free.stop()


def cores_of(pid: int) -> set[frozenset[int]]:
    """The CPU affinity of each of a process's threads (a thread that just ended, passed over)."""
    affinities = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            affinities.add(frozenset(os.sched_getaffinity(int(task.name))))
    return affinities


def started_at(pid: int) -> int:
    """When a process started, in clock ticks since boot (proc(5), field 22)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_a_killed_worker_is_replaced_and_logged(server_process: Any, workers: int) -> None:
    server = started(server_process(WORKERS=str(workers), LOG_LEVEL="INFO"), workers)
    assert server.process is not None
    before = worker_pids(server.process.pid)
    assert len(before) == workers
    os.kill(before[-1], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while "was killed by signal 9; starting another" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (
        f"worker {workers - 1} (pid {before[-1]}) was killed by signal 9; starting another"
        in server.log_text()
    )
    assert workers_seen(server.url, workers) == {str(n) for n in range(workers)}  # the new one serves
    after = worker_pids(server.process.pid)
    assert len(after) == workers and before[-1] not in after


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_sigterm_drains_every_worker(server_process: Any, workers: int) -> None:
    server = started(server_process(WORKERS=str(workers), LOG_LEVEL="INFO"), workers)

    async def open_then_stop() -> list[int | None]:
        sockets = await sockets_on_every_worker(server.url, workers)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        codes = []
        for socket in sockets.values():  # each worker says goodbye to its sockets
            while await asyncio.wait_for(socket.read_message(), 10) is not None:
                pass
            codes.append(socket.close_code)
            socket.close()
        return codes

    assert run_async(open_then_stop()) == [1001] * workers
    assert server.process is not None and server.process.wait(10) == 0
    log = server.log_text()
    for worker in range(workers):
        assert f"worker {worker}: Stopped" in log
    assert "Traceback" not in log
    shared = re.search(r"workers \(WORKERS;[^)]* sharing ([^;)\s]+)", log)
    assert shared and not Path(shared[1]).exists()  # the parent removed what the workers shared


@pytest.mark.parametrize("failure", FAILURES[:7], ids=[failure[0] for failure in FAILURES[:7]])
def test_a_start_up_failure_with_workers_is_one_line(tmp_path: Path, failure: tuple[Any, ...]) -> None:
    _, _, _, exit_code, says = failure
    result = run_failure(tmp_path, failure, WORKERS="3")  # closes what the setup holds open
    output = (result.stdout + result.stderr).strip()
    assert "Traceback" not in output and len(output.splitlines()) == 1, output
    assert all(part in output for part in says) and result.returncode == exit_code, output


@pytest.mark.parametrize("value", ["0", "many", "1000"])
def test_workers_must_be_a_number_or_auto(tmp_path: Path, value: str) -> None:
    result = run_server(tmp_path, {"WORKERS": value}, without_root_file_access)
    assert result.returncode == 2 and "WORKERS" in result.stderr


def token_answer(
    url: str, source: str = "127.0.0.1", room: str = "limits", identity: str = "p"
) -> tuple[int, str]:
    """POST /token on a new connection from the loopback address `source` (each address
    is another client): the status and the worker that answered."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname or "", parts.port, timeout=20, source_address=(source, 0)
    )
    try:
        body = json.dumps({"roomName": room, "participantName": identity})
        connection.request("POST", "/token", body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        return answer.status, answer.headers["X-Worker-Id"]
    finally:
        connection.close()


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_the_rate_limit_is_per_client_whichever_worker_answers(server_process: Any, workers: int) -> None:
    """A client gets TOKEN_RATE_LIMIT tokens in all, not that many from each worker: ask
    until every worker has refused it once (so each one has seen its bucket empty)."""
    limit = 6
    server = started(
        server_process(WORKERS=str(workers), TOKEN_RATE_LIMIT=str(limit), LOG_LEVEL="INFO"), workers
    )
    began = time.monotonic()
    answers: list[tuple[int, str]] = []
    while len({worker for status, worker in answers if status == 429}) < workers:
        assert len(answers) < 2000, (
            f"429s came only from workers {sorted({w for s, w in answers if s == 429})}"
        )
        answers.append(token_answer(server.url))
    refilled = (time.monotonic() - began) * limit / 60  # the bucket refills meanwhile
    granted = [status for status, _ in answers].count(200)
    assert [status for status, _ in answers[:limit]] == [200] * limit
    assert limit <= granted <= limit + refilled, (granted, answers)  # per worker: >= limit * workers
    assert {status for status, _ in answers} == {200, 429}
    # Another client still has its whole allowance.
    assert [token_answer(server.url, "127.0.0.3")[0] for _ in range(limit)] == [200] * limit


def from_every_worker(ask: Callable[[], tuple[Any, str]], workers: int) -> dict[str, set[Any]]:
    """Ask (each time on a new connection) until every worker has answered; each worker's
    answers."""
    answers: dict[str, set[Any]] = {}
    for _ in range(400):
        answer, worker = ask()
        answers.setdefault(worker, set()).add(answer)
        if len(answers) == workers:
            return answers
    raise AssertionError(f"only workers {sorted(answers)} answered")


@pytest.fixture(scope="module")
def livekit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    binary = find_binary()
    require("livekit-server", binary is not None, HOW_TO_GET)
    assert binary is not None
    workdir = tmp_path_factory.mktemp("workers-livekit")
    server = LiveKitServer(
        binary, f"http://127.0.0.1:{free_port()}/livekit/webhook", log_path=workdir / "lk.log"
    )
    server.start()
    yield server
    server.stop()


async def signal_only_participant(livekit_url: str, token: str) -> Any:
    """A participant LiveKit lists: a client that joins over LiveKit's signal WebSocket
    (and no media, so no browser is needed); it stays until closed or removed."""
    socket = await websocket_connect(
        f"{livekit_url}/rtc?access_token={token}&protocol=15&sdk=js&version=2.0.0"
    )
    assert await asyncio.wait_for(socket.read_message(), 20) is not None  # the join answer
    return socket


@pytest.mark.e2e
@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_a_ban_set_through_one_worker_refuses_tokens_on_every_worker(
    livekit: LiveKitServer, server_process: Any, workers: int
) -> None:
    room = f"bans-{workers}"
    server = started(
        server_process(
            WORKERS=str(workers),
            LIVEKIT_URL=livekit.url,
            ADMIN_SECRET=SECRET,
            TOKEN_RATE_LIMIT="0",
            LOG_LEVEL="INFO",
        ),
        workers,
    )

    def bob_token() -> tuple[int, str]:
        return token_answer(server.url, room=room, identity="bob")

    assert set().union(*from_every_worker(bob_token, workers).values()) == {200}
    status, answer = request_token(server.url, {"roomName": room, "participantName": "bob"})

    async def join_then_remove_with_a_ban() -> tuple[int, Any]:
        bob = await signal_only_participant(livekit.url, answer["token"])
        try:
            path = path_of("rooms", room, "participants", "bob", "remove")
            status, removed, _ = await asyncio.to_thread(admin, server.url, "POST", path, {"ban_seconds": 60})
            return status, removed
        finally:
            bob.close()

    status, removed = run_async(join_then_remove_with_a_ban())
    assert status == 200 and removed["ban"]["secondsLeft"] == 60, removed
    # At once, every worker refuses bob (the worker that banned him too), and lists the ban.
    assert set().union(*from_every_worker(bob_token, workers).values()) == {403}

    def bans() -> tuple[tuple[str, ...], str]:
        status, listed, headers = admin(server.url, "GET", path_of("rooms", room, "bans"))
        assert status == 200
        return tuple(ban["identity"] for ban in listed), headers["X-Worker-Id"]

    assert set().union(*from_every_worker(bans, workers).values()) == {("bob",)}
    # Lifted through one worker: every worker gives bob a token again.
    assert admin(server.url, "DELETE", path_of("rooms", room, "bans", "bob"))[0] == 200
    assert set().union(*from_every_worker(bob_token, workers).values()) == {200}


@pytest.mark.parametrize("store", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_event_handlers_run_once_per_event_whichever_worker_acknowledged_it(
    server_process: Any, redis_server: Any, tmp_path: Path, workers: int, store: str
) -> None:
    record = tmp_path / "handled.txt"
    env = {"EVENTS_REDIS_URL": redis_server().url} if store == "redis" else {}
    server = started(
        server_process(
            WORKERS=str(workers),
            APP_EXTENSIONS="tests.sample_extensions.file_recorder",
            RECORD_EVENTS_TO=str(record),
            LOG_LEVEL="INFO",
            **env,
        ),
        workers,
    )
    events = [webhook_event("room_started", room=f"h{n}") for n in range(200)]
    acknowledged = run_async(post_spread(server.url, events))
    assert len(set(acknowledged.values())) == workers  # every worker acknowledged some
    last = webhook_event("room_finished", room="last")  # handled after all the others
    run_async(post_spread(server.url, [last]))

    def handled() -> list[list[str]]:
        return [line.split() for line in record.read_text().splitlines()] if record.exists() else []

    deadline = time.monotonic() + 30
    while last["id"] not in {event_id for _, event_id in handled()}:
        assert time.monotonic() < deadline, f"{len(handled())} handled"
        time.sleep(0.05)
    lines = handled()
    assert sorted(event_id for _, event_id in lines) == sorted([*acknowledged, last["id"]])  # each once
    assert len({pid for pid, _ in lines}) == 1  # in one process
    # Every worker's /healthz shows them (worker 0's figures), within a second or two.
    told: set[str] = set()
    while len(told) < workers:
        body, worker = health(server.url)
        if body.get("eventHandlers", {}).get("handled") == len(lines):
            told.add(worker)
        assert time.monotonic() < deadline + 30, body
        time.sleep(0.05)


class CountingForwarder:
    """Test double for the network between this server and LiveKit's API: forwards each
    request to livekit-server as it is and counts them by path."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls: dict[str, int] = {}
        forwarder = self

        class Forward(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                forwarder.calls[self.path] = forwarder.calls.get(self.path, 0) + 1
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {
                    name: self.headers[name]
                    for name in ("Authorization", "Content-Type")
                    if name in self.headers
                }
                request = urllib.request.Request(forwarder.upstream + self.path, body, headers, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=10) as answer:
                        status, kind, data = answer.status, answer.headers["Content-Type"], answer.read()
                except urllib.error.HTTPError as error:
                    status, kind, data = error.code, error.headers["Content-Type"], error.read()
                self.send_response(status)
                self.send_header("Content-Type", kind or "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def directories_of_every_worker(url: str, workers: int, room: str) -> dict[str, set[str]]:
    """Open WS /live/rooms until one is on every worker; each worker's room names once
    its directory shows `room`."""
    sockets: dict[str, Any] = {}
    for _ in range(400):
        socket = await websocket_connect(url.replace("http", "ws", 1) + "/live/rooms")
        worker = socket.headers["X-Worker-Id"]
        if worker in sockets:
            socket.close()
            continue
        await socket.write_message(json.dumps({"authorization": f"Bearer {SECRET}"}))
        sockets[worker] = socket
        if len(sockets) == workers:
            break
    assert len(sockets) == workers, f"only workers {sorted(sockets)}"
    shown: dict[str, set[str]] = {}
    for worker, socket in sockets.items():
        rooms: set[str] = set()
        while room not in rooms:
            message = json.loads(await asyncio.wait_for(socket.read_message(), 30))
            if message["type"] == "snapshot":
                rooms = {listed["name"] for listed in message["rooms"]}
            elif message["type"] == "room":
                rooms.add(message["room"]["name"])
            elif message["type"] == "room_closed":
                rooms.discard(message["name"])
        shown[worker] = rooms
        socket.close()
    return shown


@pytest.mark.e2e
@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_one_worker_reconciles_the_room_directory_for_all(
    livekit: LiveKitServer, server_process: Any, workers: int
) -> None:
    forwarder = CountingForwarder(livekit.url.replace("ws", "http", 1))
    try:
        server = started(
            server_process(
                WORKERS=str(workers),
                LIVEKIT_URL=livekit.url,
                LIVEKIT_API_URL=forwarder.url,
                ADMIN_SECRET=SECRET,
                ROOMS_RECONCILE_SECONDS="3600",  # only at start-up and when a worker sees a gap
                LOG_LEVEL="INFO",
            ),
            workers,
        )
        room = f"made-behind-its-back-{workers}"  # no webhook tells this server of it
        run_async(create_room(livekit, room))
        # A participant in a room no worker knows: each sees a gap and wants a reconcile.
        run_async(
            post_spread(
                server.url, [webhook_event("participant_joined", room="gap", participant={"identity": "x"})]
            )
        )
        shown = run_async(directories_of_every_worker(server.url, workers, room))
    finally:
        forwarder.stop()
    assert len(shown) == workers and all(room in rooms for rooms in shown.values())
    # One at start-up, one or two for the gap (asks that come in during one make another):
    # not one or two per worker.
    assert 2 <= forwarder.calls.get("/twirp/livekit.RoomService/ListRooms", 0) <= 3, forwarder.calls


async def create_room(livekit: LiveKitServer, name: str) -> None:
    async with api.LiveKitAPI(livekit.url.replace("ws", "http", 1), "devkey", "secret") as client:
        await client.room.create_room(api.CreateRoomRequest(name=name))


def scrape(url: str) -> tuple[Samples, str]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        return parse(answer.read().decode()), answer.headers["X-Worker-Id"]


@pytest.mark.parametrize("store", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_metrics_show_the_whole_server_whichever_worker_is_scraped(
    server_process: Any, redis_server: Any, workers: int, store: str
) -> None:
    env = {"EVENTS_REDIS_URL": redis_server().url} if store == "redis" else {}
    server = started(
        server_process(WORKERS=str(workers), TOKEN_RATE_LIMIT="0", LOG_LEVEL="INFO", **env), workers
    )
    events = [
        webhook_event("participant_joined", room="m", participant={"identity": f"p{n}"}) for n in range(300)
    ]

    # Every worker answers the sums: its own figures now, the others' within a second.
    whole = {
        "stored": (("livekit_app_webhooks_total", (("reason", ""), ("result", "stored"))), 300.0),
        "joined": (("livekit_app_events_stored_total", (("type", "participant_joined"),)), 300.0),
        "tokens": (("livekit_app_token_requests_total", (("shape", "openvidu"), ("status", "200"))), 30.0),
        "sockets": (("livekit_app_event_sockets", ()), float(workers)),
    }

    async def scenario() -> dict[str, Samples]:
        sockets = await sockets_on_every_worker(server.url, workers)  # one each: the gauge sums them
        try:
            acknowledged = await post_spread(server.url, events)
            assert len(set(acknowledged.values())) == workers
            tokens = [await asyncio.to_thread(token_answer, server.url) for _ in range(30)]
            assert {status for status, _ in tokens} == {200}
            deadline = time.monotonic() + 30
            answered: dict[str, Samples] = {}
            while len(answered) < workers:
                samples, worker = await asyncio.to_thread(scrape, server.url)
                if all(samples.get(key) == want for key, want in whole.values()):
                    answered[worker] = samples
                seen = {name: samples.get(key) for name, (key, _) in whole.items()}
                assert time.monotonic() < deadline, f"worker {worker}: {seen}"
                await asyncio.sleep(0.05)

            # /healthz too: every worker counts every worker's sockets.
            def sockets_and_workers() -> tuple[tuple[int, int], str]:
                body, worker = health(server.url)
                return (body["sockets"], body["workers"]), worker

            healths = await asyncio.to_thread(from_every_worker, sockets_and_workers, workers)
            assert all(answers == {(workers, workers)} for answers in healths.values()), healths
            return answered
        finally:
            for socket in sockets.values():
                socket.close()

    assert len(run_async(scenario())) == workers


def test_figures_files_that_do_not_read_as_such_are_passed_over(tmp_path: Path) -> None:
    """A scrape or /healthz never fails on what else is in the shared directory."""
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from handlers.support.worker_figures import SUFFIX, WorkerFigures

    def figures_of(directory: Path, count: float) -> WorkerFigures:
        registry = CollectorRegistry()
        Counter("things", "Things", registry=registry).inc(count)
        return WorkerFigures(str(directory), registry, lambda: {"sockets": 2, "eventHandlers": None})

    other = figures_of(tmp_path, 3)
    other.path = str(tmp_path / f"1{SUFFIX}")  # as another worker (pid 1, alive) writes it
    other.write()
    for name, text in [
        (f"2{SUFFIX}", "not json"),
        (f"3{SUFFIX}", "[1, 2]"),
        (
            f"4{SUFFIX}",
            '{"families": [["x", "y", "counter", [["x_total", {"a": 1}, 5]]]], "health": {"sockets": 1}}',
        ),
        (f"5{SUFFIX}", '{"families": [], "health": {"sockets": "many"}}'),
        (f"not-a-pid{SUFFIX}", "{}"),
    ]:
        (tmp_path / name).write_text(text)
    mine = figures_of(tmp_path, 4)
    scraped = parse(generate_latest(mine.exposed).decode())
    assert scraped[("things_total", ())] == 7.0  # 4 here and 3 from worker 1; the rest passed over
    assert [figures["sockets"] for figures in mine.everyone_alive()] == [2, 2]


def test_a_listing_that_does_not_read_as_one_is_passed_over(tmp_path: Path) -> None:
    from rooms.shared import LISTING_FILE, DirectoryShare

    follower = DirectoryShare(str(tmp_path), leader=False)
    for text in [
        "not json",
        "[]",
        '{"rooms": {"a": 1}, "status": {}}',
        '{"rooms": {}, "status": {"ok": true}}',
        # Whole but for one participant that does not say who it is.
        '{"askedAt": 1, "status": {"ok": true, "error": "", "reconciledAt": 1},'
        ' "rooms": {"a": [{"name": "a"}, {"x": {"identity": "x"}}]}}',
    ]:
        (tmp_path / LISTING_FILE).unlink(missing_ok=True)
        (tmp_path / LISTING_FILE).write_text(text)
        assert follower.newest() is None, text
    leader = DirectoryShare(str(tmp_path), leader=True)
    asked_at = leader.asking()
    assert follower.asking_since() == asked_at
    leader.publish({}, {"ok": True, "error": "", "reconciledAt": 1}, asked_at)
    assert follower.newest() == ({}, {"ok": True, "error": "", "reconciledAt": 1}, asked_at)


def processes_with(marker: str) -> list[int]:
    """Processes of ours whose environment holds `marker` (the server and its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
    return found


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.6, 1.0, 1.5])
def test_sigterm_during_start_up_stops_every_worker(
    server_process: Any, tmp_path: Path, delay: float
) -> None:
    """Whenever the signal comes (before, between and after the workers' starts), the
    server stops and leaves no worker serving (it went on serving, or exited 241, before)."""
    marker = f"start-up-{delay}-{time.monotonic_ns()}"
    server = server_process(WORKERS="3", LOG_LEVEL="INFO", STOP_MARKER=marker)
    server.stop()  # started and stopped once: its store exists, the timing is a warm start's
    assert server.process is not None

    process = subprocess.Popen(
        server.process.args,
        env=server.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    try:
        # -SIGTERM: it came before Python had set up anything (no worker was started yet).
        assert process.wait(20) in (0, -signal.SIGTERM)
    finally:
        process.kill()
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []


def test_workers_stop_when_the_parent_is_killed(server_process: Any) -> None:
    marker = f"orphans-{time.monotonic_ns()}"
    server = started(server_process(WORKERS="2", STOP_MARKER=marker), 2)
    assert server.process is not None
    workers = worker_pids(server.process.pid)
    assert len(workers) == 2
    server.process.kill()  # SIGKILL: the parent can tell no one
    server.process.wait()
    deadline = time.monotonic() + 15
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []  # each worker drained and ended
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url + "/healthz", timeout=2)


def test_an_in_memory_store_with_workers_is_refused(tmp_path: Path) -> None:
    result = run_server(tmp_path, {"WORKERS": "2", "EVENTS_DB": ":memory:"}, without_root_file_access)
    assert result.returncode == 2
    assert "EVENTS_DB=:memory: is a log in each process" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_holding_the_write_lock_for_good_costs_others_a_503_not_a_hang(server_process: Any) -> None:
    """As a worker stopped (SIGSTOP) while it writes would: the lock is held from outside."""
    import fcntl

    server = started(server_process(WORKERS="2", LOG_LEVEL="INFO"), 2)
    shared = re.search(r"workers \(WORKERS;[^)]* sharing ([^;)\s]+)", server.log_text())
    assert shared
    lock = os.open(Path(shared[1]) / "events-writers.lock", os.O_RDWR)
    try:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        started_at_ = time.monotonic()
        status = post_webhook(server.url, webhook_event("room_started", room="held"))
        waited = time.monotonic() - started_at_
    finally:
        os.close(lock)
    assert status == 503
    assert waited < 9  # BUSY_SECONDS (5 s), not for good
    assert post_webhook(server.url, webhook_event("room_started", room="free")) == 200


def test_connections_do_not_wait_for_a_worker_that_cannot_be_replaced(
    server_process: Any, tmp_path: Path
) -> None:
    """Its listening set is closed when it dies: new connections go to the others (or are
    refused), instead of waiting in a queue no one accepts from."""
    store = tmp_path / "store"
    store.mkdir()
    server = started(server_process(WORKERS="2", EVENTS_DB=str(store / "events.sqlite3")), 2)
    assert server.process is not None
    store.rename(tmp_path / "moved")  # the running workers keep their open store
    store.write_text("not a directory")  # every replacement now fails to start
    kill_last_started_worker(server)
    wait_for_log(server, "exited with code")  # the first replacement has failed
    outcomes: dict[str, int] = {}
    # Each failed start in a row waits twice as long before the next (1 s, 2 s, 4 s ...).
    assert "exited with code 1; starting another in 1 s (1 failed start in a row)" in server.log_text()
    for _ in range(40):
        try:
            with urllib.request.urlopen(server.url + "/healthz", timeout=5) as answer:
                outcome = str(answer.status)
        except urllib.error.HTTPError as error:  # 503: the store is not where it was
            outcome = str(error.code)
        except TimeoutError:
            outcome = "waited"
        except OSError as error:
            outcome = "waited" if "timed out" in str(error) else type(error).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        time.sleep(0.05)
    assert "waited" not in outcomes, outcomes
    assert outcomes.get("503", 0) >= 20, outcomes  # answered, by worker 0
    wait_for_log(server, "starting another in 2 s (2 failed starts in a row)")


def figures_counting(directory: Path, count: float, pid: int | None = None) -> tuple[Any, Any]:
    """A worker's figures with one counter at `count` (and a gauge at 1), its file written;
    `pid`: as that worker would have written it. With the counter, to count on."""
    from prometheus_client import CollectorRegistry, Counter, Gauge

    from handlers.support.worker_figures import SUFFIX, WorkerFigures

    registry = CollectorRegistry()
    counter = Counter("things", "Things", registry=registry)
    counter.inc(count)
    Gauge("open_things", "Open things", registry=registry).set(1)
    figures = WorkerFigures(str(directory), registry, lambda: {"sockets": 1, "eventHandlers": None})
    if pid is not None:
        figures.path = str(directory / f"{pid}{SUFFIX}")
    figures.write()
    return figures, counter


def scraped_things(figures: Any) -> tuple[float, float]:
    from prometheus_client import generate_latest

    samples = parse(generate_latest(figures.exposed).decode())
    return samples[("things_total", ())], samples[("open_things", ())]


def test_an_ended_workers_file_is_folded_into_the_retired_counts(tmp_path: Path) -> None:
    from handlers.support.worker_figures import RETIRED, SUFFIX, retire

    figures_counting(tmp_path, 5, pid=1)  # alive (pid 1 always is)
    for dead_pid, count in [(2**22 + 1, 3), (2**22 + 2, 4)]:  # beyond pid_max: never alive
        figures_counting(tmp_path, count, pid=dead_pid)
        retire(str(tmp_path), dead_pid)
        assert not (tmp_path / f"{dead_pid}{SUFFIX}").exists()
    mine, _ = figures_counting(tmp_path, 10)
    files = sorted(path.name for path in tmp_path.glob(f"*{SUFFIX}"))
    assert files == sorted([f"1{SUFFIX}", RETIRED, f"{os.getpid()}{SUFFIX}"])
    # The ended workers' counts stay; their gauges do not (this worker's and pid 1's).
    assert scraped_things(mine) == (10 + 5 + 3 + 4, 2)
    assert len(mine.everyone_alive()) == 2


def test_counters_never_go_back_whichever_worker_answers(tmp_path: Path) -> None:
    """Each worker reads the other's counts as last written (up to a second old): two
    scrapes answered by two workers would disagree, and the later one go back."""
    first, first_counter = figures_counting(tmp_path, 10, pid=1)
    second, second_counter = figures_counting(tmp_path, 7)
    first_counter.inc(5)  # not written yet
    assert scraped_things(first) == (15 + 7, 2)  # its own now, the other's as written
    second_counter.inc(1)
    # Read alone, 8 now and the first's 10 as written: 18, less than 22 answered before.
    assert scraped_things(second)[0] == 22
    first.write()
    second.write()
    assert scraped_things(second)[0] == 15 + 8  # and on again once the files catch up


def counted_in_files(shared: Path) -> float:
    """The OpenVidu-shaped tokens answered, as the workers' files (and the retired one) say:
    what a scrape adds up, without the highest answered before standing in for a late file."""
    total = 0.0
    for path in shared.glob("*.figures.json"):
        with contextlib.suppress(ValueError, OSError):
            for name, _, _, samples in json.loads(path.read_text())["families"]:
                if name == "livekit_app_token_requests":
                    total += sum(v for _, labels, v in samples if labels.get("shape") == "openvidu")
    return total


def test_the_parent_folds_a_dead_workers_figures_and_removes_its_file(server_process: Any) -> None:
    from handlers.support.worker_figures import RETIRED, SUFFIX

    server = started(server_process(WORKERS="2", LOG_LEVEL="INFO", TOKEN_RATE_LIMIT="0"), 2)
    assert server.process is not None
    shared = re.search(r"workers \(WORKERS;[^)]* sharing ([^;)\s]+)", server.log_text())
    assert shared
    tokens = ("livekit_app_token_requests_total", (("shape", "openvidu"), ("status", "200")))
    for round_ in range(3):
        assert {request_token(server.url)[0] for _ in range(10)} == {200}
        deadline = time.monotonic() + 20
        while counted_in_files(Path(shared[1])) != 10 * (round_ + 1):  # every worker wrote its count
            assert time.monotonic() < deadline
            time.sleep(0.1)
        victim = sorted(worker_pids(server.process.pid), key=started_at)[-1]
        os.kill(victim, signal.SIGKILL)
        wait_for_log(server, f"(pid {victim}) was killed")
        assert workers_seen(server.url, 2) == {"0", "1"}
    live = sorted(f"{pid}{SUFFIX}" for pid in worker_pids(server.process.pid))
    assert sorted(path.name for path in Path(shared[1]).glob(f"*{SUFFIX}")) == sorted([*live, RETIRED])
    assert scrape(server.url)[0][tokens] == 30  # what the killed workers answered is still counted


def test_a_replacement_worker_does_not_start_a_log_of_its_own_when_the_store_was_deleted(
    server_process: Any, tmp_path: Path
) -> None:
    store = tmp_path / "events.sqlite3"
    server = started(server_process(WORKERS="2", LOG_LEVEL="INFO", EVENTS_DB=str(store)), 2)
    assert server.process is not None
    assert post_webhook(server.url, webhook_event("room_started", room="before")) == 200
    for path in tmp_path.glob("events.sqlite3*"):
        path.unlink()
    kill_last_started_worker(server)
    wait_for_log(server, "is not the file the other workers opened")
    # Every webhook is refused (by worker 0: its file is gone), none stored in a new log.
    statuses = {post_webhook(server.url, webhook_event("room_started", room=f"after-{n}")) for n in range(10)}
    assert statuses == {503}


STOPPED_WHILE_BINDING = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from workers import ListeningSets, Supervisor

def serve(worker, ready):
    ready()
    time.sleep(60)
    return 0

def bind():
    os.kill(os.getpid(), signal.SIGTERM)  # the stop comes while a set is bound again
    return []

sys.exit(Supervisor(2, serve, listening=ListeningSets([[], []], bind)).run())
"""


def test_a_stop_while_a_replacement_is_being_started_stops_it_too() -> None:
    """The replacement forked after the stop signal's handler ran is told to stop as well,
    instead of serving on while the parent waits for it for good."""
    process = subprocess.Popen([sys.executable, "-c", STOPPED_WHILE_BINDING, str(PROJECT_DIR)])
    try:
        deadline = time.monotonic() + 20
        while len(worker_pids(process.pid)) < 2:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.02)
        os.kill(worker_pids(process.pid)[0], signal.SIGKILL)  # its replacement's set is bound again
        assert process.wait(15) == 0
    finally:
        process.kill()
        process.wait()


FAILS_WHILE_MARKED = """
import os


def setup(app):
    if os.path.exists(os.environ["FAIL_MARKER"]):
        raise RuntimeError("the marker is there")
"""


def test_healthz_is_degraded_while_a_worker_fails_to_start(server_process: Any, tmp_path: Path) -> None:
    (tmp_path / "fails_while_marked.py").write_text(FAILS_WHILE_MARKED)
    marker = tmp_path / "marker"
    server = started(
        server_process(
            WORKERS="2",
            LOG_LEVEL="INFO",
            APP_EXTENSIONS="fails_while_marked",
            PYTHONPATH=str(tmp_path),
            FAIL_MARKER=str(marker),
        ),
        2,
    )
    assert server.process is not None
    body, _ = health(server.url)
    assert (body["status"], body["workers"], body["workersExpected"]) == ("ok", 2, 2)
    marker.touch()
    kill_last_started_worker(server)
    wait_for_log(server, "(1 failed start in a row)")
    body, worker = health(server.url)  # only worker 0 is left to answer
    assert (body["status"], body["workers"], body["workersExpected"], worker) == ("degraded", 1, 2, "0")
    marker.unlink()
    deadline = time.monotonic() + 20
    while health(server.url)[0]["status"] != "ok":  # the next try (after 1 or 2 s) starts
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.1)
    assert workers_seen(server.url, 2) == {"0", "1"}
