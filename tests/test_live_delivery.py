"""A socket that was open before a webhook was acknowledged receives that event: on every
store, with any EVENTS_REPLAY, from the first second after start-up (issue 20, class 11).

Sockets open a few at a time while webhooks are posted from several clients at once, so
events are stored while the sockets' replays are still asking the store where "the
newest" starts."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from eventlog.base import parse_cursor
from tests.conftest import events_url, run_async, webhook_event, webhook_request

SOCKETS = 100
EVENTS = 40
POSTERS = 4


@dataclass
class Run:
    """What was posted (id -> its position in the log), and per socket: the ids whose
    request was sent before the socket was open, and the ids it received."""

    positions: dict[str, tuple[int, int]] = field(default_factory=dict)
    sent: list[str] = field(default_factory=list)
    sockets: list[tuple[set[str], list[str]]] = field(default_factory=list)

    def wrong_sockets(self) -> list[str]:
        """Each socket must receive a run of the log, in order, once each, that holds every
        event sent after it opened (before those: a replay, or one in flight as it opened)."""
        log_order = sorted(self.positions, key=self.positions.__getitem__)
        problems = []
        for sent_before, ids in self.sockets:
            after = [event_id for event_id in log_order if event_id not in sent_before]
            start = len(log_order) - len(ids)
            if ids != log_order[start:] or (after and start > log_order.index(after[0])):
                missing = len(set(after) - set(ids))
                problems.append(
                    f"{len(ids)} received, {missing} of {len(after)} sent after it opened missing"
                )
        return problems


async def sockets_and_webhooks(socket_url: str, webhook_urls: list[str]) -> Run:
    run = Run()
    client = AsyncHTTPClient(force_instance=True)

    async def post(poster: int) -> None:
        for n in range(poster, EVENTS, POSTERS):
            event = webhook_event("participant_joined", room="live", participant={"identity": f"p{n}"})
            run.sent.append(event["id"])
            answer = await client.fetch(webhook_urls[n % len(webhook_urls)], **webhook_request(event))
            assert answer.code == 200
            parsed = parse_cursor(json.loads(answer.body)["cursor"])
            assert parsed is not None
            run.positions[event["id"]] = parsed[1]

    async def open_one() -> tuple[Any, set[str]]:
        socket = await websocket_connect(socket_url)
        return socket, set(run.sent)

    posting = asyncio.gather(*(post(poster) for poster in range(POSTERS)))
    opened: list[tuple[Any, set[str]]] = []
    while len(opened) < SOCKETS:
        opened += await asyncio.gather(*(open_one() for _ in range(10)))
    await posting
    client.close()

    async def collect(socket: Any) -> list[str]:
        ids: list[str] = []
        while True:  # every webhook was answered: read until the socket falls silent
            try:
                message = await asyncio.wait_for(socket.read_message(), 2)
            except TimeoutError:
                break
            if message is None:
                break
            frame = json.loads(message)
            if "cursor" in frame:
                ids.append(frame["event"]["id"])
        socket.close()
        return ids

    received = await asyncio.gather(*(collect(socket) for socket, _ in opened))
    run.sockets = [(sent_before, ids) for (_, sent_before), ids in zip(opened, received, strict=True)]
    return run


def check(run: Run) -> None:
    problems = run.wrong_sockets()
    assert not problems, f"{len(problems)} of {len(run.sockets)} sockets: {problems[:5]}"


@pytest.mark.parametrize("replay", ["0", "3"])
def test_sqlite_from_a_fresh_start(server_process: Any, replay: str) -> None:
    server = server_process(EVENTS_REPLAY=replay, LOG_LEVEL="INFO")
    check(run_async(sockets_and_webhooks(events_url(server.url), [server.url + "/livekit/webhook"])))


@pytest.mark.redis
@pytest.mark.parametrize("replay", ["0", "3"])
def test_redis_sockets_on_one_instance_webhooks_to_another(
    server_process: Any, redis_server: Any, replay: str
) -> None:
    redis = redis_server()
    sockets_on, webhooks_to = (
        server_process(EVENTS_REDIS_URL=redis.url, EVENTS_REPLAY=replay, LOG_LEVEL="INFO") for _ in range(2)
    )
    check(run_async(sockets_and_webhooks(events_url(sockets_on.url), [webhooks_to.url + "/livekit/webhook"])))
