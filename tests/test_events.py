"""The event log through WS /events and GET /events/history: replay, resume, duplicates,
restarts, crashes, slow sockets and foreign origins."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.conftest import events_url, post_webhook, read_frames, send_webhook, webhook_event
from tests.processes import EventSocket


async def post_events(http_client: Any, base_url: str, count: int, **fields: Any) -> list[dict[str, Any]]:
    answers = []
    for n in range(count):
        event = webhook_event("room_started", room=f"r{n}", **fields)
        response = await send_webhook(http_client, base_url, event)
        assert response.code == 200
        answers.append({"id": event["id"], "cursor": json.loads(response.body)["cursor"]})
    return answers


@pytest.mark.gen_test
async def test_replay_after_a_cursor_then_live(http_client: Any, base_url: str) -> None:
    posted = await post_events(http_client, base_url, 5)
    client = await websocket_connect(events_url(base_url, posted[1]["cursor"]))
    replayed = await read_frames(client, 3)
    assert [frame["event"]["id"] for frame in replayed] == [p["id"] for p in posted[2:]]
    live = await post_events(http_client, base_url, 1)
    assert (await read_frames(client, 1))[0]["event"]["id"] == live[0]["id"]
    client.close()


@pytest.mark.settings(events_replay=3)
@pytest.mark.gen_test
async def test_without_a_cursor_the_newest_events_replay(http_client: Any, base_url: str) -> None:
    posted = await post_events(http_client, base_url, 5)
    client = await websocket_connect(events_url(base_url))
    assert [f["event"]["id"] for f in await read_frames(client, 3)] == [p["id"] for p in posted[2:]]
    client.close()


@pytest.mark.settings(events_keep=3)
@pytest.mark.gen_test
async def test_a_cursor_older_than_what_is_kept_gets_a_notice_first(http_client: Any, base_url: str) -> None:
    posted = await post_events(http_client, base_url, 6)
    client = await websocket_connect(events_url(base_url, posted[0]["cursor"]))
    notice, *frames = await read_frames(client, 4)
    assert notice["notice"] == "history_trimmed"
    assert notice["oldestCursor"] == posted[3]["cursor"]
    assert "cursor" not in notice and notice["message"]
    assert [f["event"]["id"] for f in frames] == [p["id"] for p in posted[3:]]
    client.close()
    listed = json.loads(
        (await http_client.fetch(base_url + f"/events/history?since={posted[0]['cursor']}")).body
    )
    assert listed[0]["notice"] == "history_trimmed" and len(listed) == 4


@pytest.mark.parametrize("cursor", ["999", "abc", "-1", "1-2"])
@pytest.mark.gen_test
async def test_an_unknown_cursor_gets_a_notice_then_the_newest(
    http_client: Any, base_url: str, cursor: str
) -> None:
    posted = await post_events(http_client, base_url, 2)
    client = await websocket_connect(events_url(base_url, cursor))
    notice, *frames = await read_frames(client, 3)
    assert notice["notice"] == "unknown_cursor" and notice["since"] == cursor
    assert [f["event"]["id"] for f in frames] == [p["id"] for p in posted]
    client.close()


@pytest.mark.gen_test
async def test_a_cursor_not_in_utf8_is_refused_before_the_upgrade(http_client: Any, base_url: str) -> None:
    # It was read after the upgrade: the socket was dropped without a close frame and stayed
    # a subscriber for good (counted, and written to on every event), one per request.
    for _ in range(3):
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(events_url(base_url, "%ff"))
        assert refused.value.code == 400
    answer = await http_client.fetch(base_url + "/events?since=%ff", raise_error=False)
    assert answer.code == 400 and json.loads(answer.body)["errorMessage"]
    await asyncio.sleep(0.1)
    assert json.loads((await http_client.fetch(base_url + "/healthz")).body)["sockets"] == 0


@pytest.mark.gen_test(timeout=60)
async def test_events_posted_during_a_replay_arrive_once_and_in_order(
    http_client: Any, base_url: str
) -> None:
    posted = await post_events(http_client, base_url, 300)
    client_task = asyncio.ensure_future(websocket_connect(events_url(base_url, "0")))
    posted += await post_events(http_client, base_url, 100)  # while the replay is being read and sent
    client = await client_task
    frames = await read_frames(client, 400)
    assert [frame["cursor"] for frame in frames] == [p["cursor"] for p in posted]
    live = await post_events(http_client, base_url, 1)
    assert (await read_frames(client, 1))[0]["cursor"] == live[0]["cursor"]
    client.close()


@pytest.mark.parametrize(
    "closed_for",
    [
        pytest.param(b"more than 8 events waiting", marks=pytest.mark.settings(events_socket_queue=8)),
        # 60 events of 200 kB: 2 MiB of them come before 1,000 events do.
        pytest.param(
            b"more than 2097152 bytes of events waiting",
            marks=pytest.mark.settings(events_socket_queue_bytes=2 * 1024 * 1024),
        ),
    ],
    ids=["events", "bytes"],
)
@pytest.mark.gen_test(timeout=60)
async def test_a_socket_that_never_reads_is_closed_and_others_keep_up(
    http_client: Any, base_url: str, http_port: int, closed_for: bytes
) -> None:
    # A peer that completes the handshake and then never reads, with a tiny receive buffer.
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", http_port))
    stuck.sendall(
        b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    reader = await websocket_connect(events_url(base_url))
    reading = asyncio.ensure_future(read_frames(reader, 60))
    posted = await post_events(http_client, base_url, 60, pad="x" * 200_000)
    frames = await reading
    assert [f["event"]["id"] for f in frames] == [p["id"] for p in posted]
    health = json.loads((await http_client.fetch(base_url + "/healthz")).body)
    assert health["sockets"] == 1
    stuck.setblocking(False)
    received = b""
    deadline = asyncio.get_running_loop().time() + 10
    while b"Too slow" not in received[-200:] and asyncio.get_running_loop().time() < deadline:
        try:
            received += stuck.recv(1 << 20)
        except BlockingIOError:
            await asyncio.sleep(0.01)
    stuck.close()
    assert b"Too slow: " + closed_for in received
    reader.close()


@pytest.mark.gen_test
async def test_a_foreign_origin_is_refused(http_client: Any, base_url: str) -> None:
    request = HTTPRequest(events_url(base_url), headers={"Origin": "http://evil.example"})
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(request)
    assert refused.value.code == 403
    own = HTTPRequest(events_url(base_url), headers={"Origin": base_url})
    (await websocket_connect(own)).close()


@pytest.mark.settings(events_allowed_origins=("http://localhost:5080",))
@pytest.mark.gen_test
async def test_listed_origins_are_allowed(http_server: Any, base_url: str) -> None:
    listed = HTTPRequest(events_url(base_url), headers={"Origin": "http://localhost:5080"})
    (await websocket_connect(listed)).close()
    with pytest.raises(HTTPClientError):
        await websocket_connect(
            HTTPRequest(events_url(base_url), headers={"Origin": "http://localhost:5081"})
        )


@pytest.mark.parametrize("limit", ["0", "1001", "x", "-1", "²"])
@pytest.mark.gen_test
async def test_history_limit_is_checked(http_client: Any, base_url: str, limit: str) -> None:
    response = await http_client.fetch(base_url + f"/events/history?limit={limit}", raise_error=False)
    assert response.code == 400
    assert "limit must be" in json.loads(response.body)["errorMessage"]


def test_a_restart_keeps_events_and_cursors(server_process: Any) -> None:
    server = server_process()
    events = [webhook_event("room_started", room=f"r{n}") for n in range(3)]
    assert all(post_webhook(server.url, event) == 200 for event in events)
    first = server.history()
    assert server.stop() == 0
    server.start()
    assert server.history() == first
    assert [frame["event"]["id"] for frame in server.history(since=first[0]["cursor"])] == [
        e["id"] for e in events[1:]
    ]
    later = webhook_event("room_finished")
    assert post_webhook(server.url, later) == 200
    assert [frame["event"]["id"] for frame in server.history(since=first[-1]["cursor"])] == [later["id"]]


def test_kill_9_loses_nothing_that_was_acknowledged(server_process: Any) -> None:
    server = server_process()
    events = [
        webhook_event("participant_joined", room="crash", participant={"identity": f"p{n}"})
        for n in range(300)
    ]
    acknowledged: list[str] = []

    def send(event: dict[str, Any]) -> None:
        try:
            if post_webhook(server.url, event) == 200:
                acknowledged.append(event["id"])
        except OSError:
            pass  # the server died under this request: not acknowledged

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(send, event) for event in events]
        while len(acknowledged) < 200:
            pass
        server.kill()
        for future in futures:
            future.result()
    server.start()
    stored = {frame["event"]["id"] for frame in server.history()}
    assert len(acknowledged) >= 200
    assert set(acknowledged) <= stored


@pytest.mark.gen_test(timeout=30)
async def test_each_event_is_framed_once_whatever_the_number_of_sockets(
    http_client: Any, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import handlers.support.broadcast

    built: list[str] = []
    make_frame = handlers.support.broadcast.make_frame

    def counting(entry: Any) -> Any:
        built.append(entry.cursor)
        return make_frame(entry)

    monkeypatch.setattr(handlers.support.broadcast, "make_frame", counting)
    sockets = [await websocket_connect(events_url(base_url)) for _ in range(5)]
    posted = await post_events(http_client, base_url, 3)
    for socket_ in sockets:
        assert [frame["cursor"] for frame in await read_frames(socket_, 3)] == [p["cursor"] for p in posted]
        socket_.close()
    assert built == [p["cursor"] for p in posted]  # once per event, not once per socket


@pytest.mark.settings(events_socket_queue=8)
@pytest.mark.gen_test(timeout=60)
async def test_a_small_socket_queue_does_not_cut_a_healthy_replay(http_client: Any, base_url: str) -> None:
    posted = await post_events(http_client, base_url, 400, pad="x" * 20_000)
    client = await websocket_connect(events_url(base_url, "0"))
    await asyncio.sleep(0.5)  # a reader that keeps up, if not at once (a page that is busy)
    frames = await read_frames(client, 400)
    assert [frame["cursor"] for frame in frames] == [p["cursor"] for p in posted]
    live = await post_events(http_client, base_url, 1)
    assert (await read_frames(client, 1))[0]["cursor"] == live[0]["cursor"]
    client.close()


@pytest.mark.settings(events_keep=2)
@pytest.mark.gen_test
async def test_a_retry_of_a_trimmed_event_is_still_a_duplicate(http_client: Any, base_url: str) -> None:
    first = webhook_event("room_started", room="first")
    assert (await send_webhook(http_client, base_url, first)).code == 200
    later = await post_events(http_client, base_url, 3)  # the first is no longer kept
    retried = await send_webhook(http_client, base_url, first)
    assert json.loads(retried.body) == {"status": "duplicate"}
    listed = json.loads((await http_client.fetch(base_url + "/events/history")).body)
    assert [frame["event"]["id"] for frame in listed] == [p["id"] for p in later[1:]]


def health_of(server: Any) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(server.url + "/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_store_file_deleted_or_replaced_while_running_is_not_written_to(
    server_process: Any, tmp_path: Any, how: str
) -> None:
    import os
    import sqlite3
    from contextlib import closing

    server = server_process()
    page = EventSocket(events_url(server.url))
    before = webhook_event("room_started", room="before")
    assert post_webhook(server.url, before) == 200
    path = tmp_path / "events.sqlite3"
    if how == "deleted":
        os.unlink(path)
    else:
        with closing(sqlite3.connect(tmp_path / "other.sqlite3")) as other, other:
            other.execute("CREATE TABLE t (x)")
        os.replace(tmp_path / "other.sqlite3", path)
    after = webhook_event("room_started", room="after")
    assert post_webhook(server.url, after) == 503  # not acknowledged: LiveKit retries
    assert post_webhook(server.url, after) == 503
    status, health = health_of(server)
    health.pop("rooms")  # the room directory's part: LiveKit is not running here
    assert (status, health) == (
        503,
        {"status": "degraded", "eventStore": {"store": "sqlite", "ok": False}, "sockets": 1},
    )
    assert "deleted or replaced" in server.log_text()
    time.sleep(0.2)
    assert [frame["event"]["id"] for frame in page.events] == [before["id"]]  # nothing unacknowledged sent
    page.close()
    server.stop()
    server.start()  # what the README says to do: the server starts on the file EVENTS_DB names
    assert post_webhook(server.url, after) == 200


@pytest.mark.parametrize("how", ["memory", "file"])
def test_a_cursor_of_a_lost_log_gets_unknown_cursor(server_process: Any, tmp_path: Any, how: str) -> None:
    import os

    env = {"EVENTS_DB": ":memory:"} if how == "memory" else {}
    server = server_process(**env)
    old = [webhook_event("room_started", room=f"old{n}") for n in range(3)]
    assert [post_webhook(server.url, event) for event in old] == [200] * 3
    cursor = server.history()[1]["cursor"]
    server.stop()
    if how == "file":
        for name in os.listdir(tmp_path):
            if name.startswith("events.sqlite3"):
                os.unlink(tmp_path / name)
    server.start()  # a new, empty log
    new = [webhook_event("room_started", room=f"new{n}") for n in range(5)]
    assert [post_webhook(server.url, event) for event in new] == [200] * 5
    listed = server.history(since=cursor)
    assert listed[0]["notice"] == "unknown_cursor"  # never a silent skip of the new log's first events
    assert [frame["event"]["id"] for frame in listed[1:]] == [event["id"] for event in new]
    page = EventSocket(events_url(server.url, cursor))
    assert page.wait_for_notice("unknown_cursor")
    assert [frame["event"]["id"] for frame in page.wait_for(5)] == [event["id"] for event in new]
    page.close()
