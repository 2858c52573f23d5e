"""Background tasks are held until they end and are cancelled by close()/stop(): the Redis
event log's reader restart, and the event handlers' start once the store is back. Real
Redis; the reader's end (which never happens by design) is the injected fault."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

import eventlog.redis
from eventlog import open_event_log
from extensions.app import AppContext, SharedLiveKitAPI
from extensions.events import EventHandlerRunner, HandlerSpec, open_feed
from ground.config import Config
from tests.conftest import RedisServer, require, run_async

DEADLINE_SECONDS = 30.0


def other_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()]


@pytest.mark.redis
def test_a_closed_redis_event_log_does_not_start_its_reader_again(
    redis_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = redis_server()
    config = Config(events_db=str(tmp_path / "events.sqlite3"), events_redis_url=store.url)
    restart_seconds = getattr(eventlog.redis, "RESTART_SECONDS", 1.0)

    async def scenario() -> tuple[list[asyncio.Task[Any]], int]:
        event_log = open_event_log(config)
        ended = asyncio.Event()

        async def reader_that_ends(last_id: str | None) -> None:
            ended.set()
            raise RuntimeError("injected: the reader ends")

        event_log._read_forever = reader_that_ends  # type: ignore[attr-defined]
        await event_log.start()
        async with asyncio.timeout(DEADLINE_SECONDS):
            await ended.wait()
        await asyncio.sleep(0)  # its done callback, which plans the restart
        await event_log.close()
        left = other_tasks()
        await asyncio.sleep(3 * restart_seconds)  # past the restart it had planned
        return left + other_tasks(), store.info("clients", "connected_clients") - 1  # less the asking one

    left, clients = run_async(scenario())
    assert left == []
    assert clients == 0  # no reader started again on a closed log, holding a connection


@pytest.mark.redis
def test_event_handlers_that_waited_for_the_store_stop_with_nothing_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require("redis-server", shutil.which("redis-server") is not None, "install Debian's redis-server")
    (tmp_path / "redis").mkdir()
    store = RedisServer(tmp_path / "redis")  # not started yet: the handlers wait for it
    config = Config(events_db=str(tmp_path / "events.sqlite3"), events_redis_url=store.url)
    handled: list[str] = []

    async def on_event(event: Any, context: Any) -> None:
        handled.append(event.id)

    async def scenario() -> list[asyncio.Task[Any]]:
        event_log = open_event_log(config)
        shared_api = SharedLiveKitAPI(lambda: None)  # type: ignore[arg-type,return-value]
        handler = HandlerSpec("tests:on_event", None, on_event)
        runner = EventHandlerRunner(
            [handler], open_feed(config, event_log), AppContext(config, event_log, shared_api)
        )
        await runner.start()
        try:
            await asyncio.get_running_loop().run_in_executor(None, store.start)
            async with asyncio.timeout(DEADLINE_SECONDS):
                while not any("event handlers started" in r.getMessage() for r in caplog.records):
                    await asyncio.sleep(0.05)
        finally:
            await runner.stop(timeout=5)
            await event_log.close()
        return other_tasks()

    try:
        with caplog.at_level(logging.INFO, logger="extensions.events"):
            left = run_async(scenario())
    finally:
        store.stop()
    assert any("event handlers wait for the event store" in r.getMessage() for r in caplog.records)
    assert left == []
