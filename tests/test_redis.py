"""Several instances sharing one Redis stream behave, from a page's point of view, like one."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import events_url, post_webhook, webhook_event
from tests.processes import EventSocket

pytestmark = pytest.mark.redis


def health(server: Any) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(server.url + "/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_three_instances_deliver_every_event_once_in_one_order(
    server_process: Any, redis_server: Any
) -> None:
    redis = redis_server()
    servers = [server_process(EVENTS_REDIS_URL=redis.url) for _ in range(3)]
    sockets = [EventSocket(events_url(server.url)) for server in servers]
    events = [
        webhook_event("participant_joined", room="shared", participant={"identity": f"p{n}"})
        for n in range(150)
    ]

    def post(n: int) -> int:
        return post_webhook(servers[n % 3].url, events[n])  # to all three instances at once

    with ThreadPoolExecutor(9) as pool:
        statuses = list(pool.map(post, range(len(events))))
    assert statuses == [200] * len(events)
    # A retried event on another instance is acknowledged and not stored again.
    assert post_webhook(servers[1].url, events[0]) == 200

    received = [socket_.wait_for(len(events)) for socket_ in sockets]
    for frames in received:
        assert sorted(frame["event"]["id"] for frame in frames) == sorted(event["id"] for event in events)
    orders = [[frame["cursor"] for frame in frames] for frames in received]
    assert orders[0] == orders[1] == orders[2]  # the same order everywhere
    time.sleep(0.3)
    assert [len(socket_.events) for socket_ in sockets] == [len(events)] * 3  # nothing twice
    for socket_ in sockets:
        socket_.close()


def test_reconnect_to_another_instance_with_a_cursor(server_process: Any, redis_server: Any) -> None:
    redis = redis_server()
    first, second = (server_process(EVENTS_REDIS_URL=redis.url) for _ in range(2))
    events = [webhook_event("room_started", room=f"r{n}") for n in range(6)]
    for event in events[:3]:
        assert post_webhook(first.url, event) == 200
    page = EventSocket(events_url(first.url))
    cursor = page.wait_for(3)[-1]["cursor"]
    page.close()
    for event in events[3:]:  # while the page is away
        assert post_webhook(first.url, event) == 200
    again = EventSocket(events_url(second.url, cursor))
    assert [frame["event"]["id"] for frame in again.wait_for(3)] == [event["id"] for event in events[3:]]
    assert [frame["event"]["id"] for frame in second.history()] == [event["id"] for event in events]
    again.close()


def test_trimmed_history_gets_the_notice(server_process: Any, redis_server: Any) -> None:
    redis = redis_server()
    server = server_process(EVENTS_REDIS_URL=redis.url, EVENTS_KEEP="1")
    cursors = []
    for n in range(400):  # MAXLEN ~ trims whole nodes of about 100 entries
        assert post_webhook(server.url, webhook_event("room_started", room=f"r{n}")) == 200
    cursors = [frame["cursor"] for frame in server.history(limit=1000)]
    assert len(cursors) < 400
    listed = server.history(since="0")
    assert listed[0]["notice"] == "history_trimmed"
    assert listed[0]["oldestCursor"] == cursors[0]
    assert [frame["cursor"] for frame in listed[1:]] == cursors
    unknown = server.history(since="9999999999999-0")
    assert unknown[0]["notice"] == "unknown_cursor"


def test_redis_down_then_back(server_process: Any, redis_server: Any) -> None:
    redis = redis_server(persistent=True)
    server = server_process(EVENTS_REDIS_URL=redis.url)
    page = EventSocket(events_url(server.url))
    before = [webhook_event("room_started", room=f"b{n}") for n in range(5)]
    assert [post_webhook(server.url, event) for event in before] == [200] * 5
    page.wait_for(5)

    redis.stop()
    down = webhook_event("room_started", room="down")
    assert post_webhook(server.url, down) == 503  # LiveKit retries a 5xx
    status, body = health(server)
    assert status == 503 and body["eventStore"]["ok"] is False
    assert page.wait_for_notice("store_unavailable")

    redis.start()  # same port, same directory: what was acknowledged is still there
    deadline = time.monotonic() + 20
    while health(server)[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert health(server)[0] == 200
    assert page.wait_for_notice("store_recovered")
    after = [down] + [webhook_event("room_started", room=f"a{n}") for n in range(5)]
    assert [post_webhook(server.url, event) for event in after] == [200] * 6
    ids = [frame["event"]["id"] for frame in page.wait_for(11)]
    assert ids == [event["id"] for event in before + after]
    assert [frame["event"]["id"] for frame in server.history()] == ids
    page.close()


def test_a_replay_while_other_instances_take_webhooks_has_no_gap(
    server_process: Any, redis_server: Any
) -> None:
    redis = redis_server()
    first, second = (server_process(EVENTS_REDIS_URL=redis.url) for _ in range(2))
    before = [webhook_event("room_started", room=f"b{n}") for n in range(200)]
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda event: post_webhook(first.url, event), before)) == {200}
        during = [webhook_event("room_started", room=f"d{n}") for n in range(200)]
        posting = [pool.submit(post_webhook, first.url, event) for event in during]
        # Joins the stream from the start while the other instance keeps taking webhooks.
        page = EventSocket(events_url(second.url, "0"))
        assert {future.result() for future in posting} == {200}
    frames = page.wait_for(400)
    ids = [frame["event"]["id"] for frame in frames]
    assert sorted(ids) == sorted(event["id"] for event in before + during)  # none missing, none twice
    assert [frame["cursor"] for frame in frames] == [frame["cursor"] for frame in second.history(limit=1000)]
    page.close()


def test_a_failed_add_is_not_remembered_as_seen(server_process: Any, redis_server: Any) -> None:
    import redis as redis_client

    redis = redis_server()
    server = server_process(EVENTS_REDIS_URL=redis.url)
    direct = redis_client.Redis.from_url(redis.url)
    direct.delete("livekit:events")
    direct.set("livekit:events", "not a stream")  # XADD now fails inside the script
    event = webhook_event("room_started", room="lost-before")
    assert post_webhook(server.url, event) == 503
    direct.delete("livekit:events")
    assert post_webhook(server.url, event) == 200  # LiveKit's retry is stored, not "duplicate"
    assert [frame["event"]["id"] for frame in server.history()] == [event["id"]]
    direct.close()


def test_a_foreign_entry_is_skipped_and_live_delivery_goes_on(server_process: Any, redis_server: Any) -> None:
    import redis as redis_client

    redis = redis_server()
    server = server_process(EVENTS_REDIS_URL=redis.url)
    page = EventSocket(events_url(server.url))
    first = webhook_event("room_started", room="first")
    assert post_webhook(server.url, first) == 200
    direct = redis_client.Redis.from_url(redis.url)
    direct.xadd("livekit:events", {"x": "y"})  # someone else's entry in our stream
    direct.xadd("livekit:events", {"r": "not a time", "e": "{}"})
    later = webhook_event("room_finished", room="later")
    assert post_webhook(server.url, later) == 200
    assert [frame["event"]["id"] for frame in page.wait_for(2)] == [first["id"], later["id"]]
    assert [frame["event"]["id"] for frame in server.history()] == [first["id"], later["id"]]
    assert health(server)[0] == 200
    assert "not an event this server wrote" in server.log_text()
    page.close()
    direct.close()


def test_the_reader_never_dies_silently(server_process: Any, redis_server: Any) -> None:
    import redis as redis_client

    redis = redis_server()
    server = server_process(EVENTS_REDIS_URL=redis.url)
    page = EventSocket(events_url(server.url))
    before = webhook_event("room_started", room="before")
    assert post_webhook(server.url, before) == 200
    # Live: its replay is over. (A replay that fails closes the socket, and under load
    # the stream could break before the replay read it.)
    assert len(page.wait_for(1)) == 1
    direct = redis_client.Redis.from_url(redis.url)
    direct.set("livekit:events", "not a stream")  # the reader's XREAD now fails
    deadline = time.monotonic() + 10
    while health(server)[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    status, body = health(server)
    assert status == 503 and body["eventStore"] == {"store": "redis", "ok": False}
    assert page.wait_for_notice("store_unavailable")
    direct.delete("livekit:events")  # repaired: the reader carries on by itself
    deadline = time.monotonic() + 10
    while health(server)[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert health(server)[0] == 200
    event = webhook_event("room_started", room="after")
    assert post_webhook(server.url, event) == 200
    assert [frame["event"]["id"] for frame in page.wait_for(2)] == [before["id"], event["id"]]
    page.close()
    direct.close()


@pytest.mark.parametrize(
    "cursor", ["0-99999999999999999999", "99999999999999999999-0", "{log}.0-99999999999999999999"]
)
def test_cursors_beyond_64_bits_are_unknown(server_process: Any, redis_server: Any, cursor: str) -> None:
    redis = redis_server()
    server = server_process(EVENTS_REDIS_URL=redis.url)
    event = webhook_event("room_started")
    assert post_webhook(server.url, event) == 200
    log_id = server.history()[0]["cursor"].split(".")[0]
    listed = server.history(since=cursor.format(log=log_id))
    assert listed[0]["notice"] == "unknown_cursor"
    assert [frame["event"]["id"] for frame in listed[1:]] == [event["id"]]


def test_health_gives_no_internal_details(server_process: Any, redis_server: Any) -> None:
    redis = redis_server()
    server = server_process(EVENTS_REDIS_URL=redis.url)
    redis.stop()
    assert post_webhook(server.url, webhook_event()) == 503
    status, body = health(server)
    assert (status, body["status"], body["eventStore"]) == (503, "degraded", {"store": "redis", "ok": False})
    assert str(redis.port) not in json.dumps(body) and "127.0.0.1" not in json.dumps(body)
    assert "Redis event store write failed" in server.log_text()  # the details are in the log
