"""The event log seam on both stores, used directly: it only stores and reads. Append
gives the cursor (None for a duplicate), listeners hear of an entry once it is durable,
reads are bounded pages, and a cursor says which log it belongs to."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from contextlib import closing
from pathlib import Path

import pytest

from eventlog import START, Entry, EventLog, Page
from eventlog.redis import RedisEventLog
from eventlog.sqlite import SqliteEventLog
from tests.conftest import run_async

Scenario = Callable[[EventLog], Awaitable[None]]


class Recorder:
    """A listener, as the broadcaster is one: records what it is told."""

    def __init__(self, check: Callable[[Entry], None] | None = None) -> None:
        self.entries: list[Entry] = []
        self.states: list[bool] = []
        self.check = check

    def entries_added(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            if self.check is not None:
                self.check(entry)
            self.entries.append(entry)

    def store_state_changed(self, available: bool) -> None:
        self.states.append(available)

    async def wait_for(self, count: int) -> list[Entry]:
        for _ in range(500):
            if len(self.entries) >= count:
                break
            await asyncio.sleep(0.01)
        return self.entries


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., EventLog]:
    if request.param == "sqlite":
        return lambda keep=1000, name="events.sqlite3": SqliteEventLog(str(tmp_path / name), keep)
    redis = request.getfixturevalue("redis_server")()
    return lambda keep=1000, name="": RedisEventLog(redis.url, keep)


def run(store: EventLog, scenario: Scenario) -> None:
    async def main() -> None:
        await store.start()
        try:
            await scenario(store)
        finally:
            await store.close()

    run_async(main())


def event(n: int, pad: int = 0) -> str:
    return json.dumps({"event": "room_started", "id": f"EV_{n}", "room": {"name": "r"}, "pad": "x" * pad})


async def read_all(store: EventLog, since: str | None, limit: int, max_bytes: int) -> list[Page]:
    pages = [await store.read(since, limit, max_bytes)]
    while pages[-1].more:
        pages.append(await store.read(pages[-1].resume, limit, max_bytes))
    return pages


def test_append_gives_the_cursor_and_listeners_hear_once_it_is_durable(
    make_store: Callable[..., EventLog],
) -> None:
    store = make_store()

    def on_disk(entry: Entry) -> None:
        if isinstance(store, SqliteEventLog):  # another connection sees it: it is committed
            with closing(sqlite3.connect(store.path)) as other:
                assert other.execute(
                    "SELECT count(*) FROM events WHERE event = ?", (entry.event_json,)
                ).fetchone()

    recorder = Recorder(on_disk)
    store.add_listener(recorder)

    async def scenario(store: EventLog) -> None:
        cursors = await asyncio.gather(*(store.append(f"EV_{n}", 1000 + n, event(n)) for n in range(20)))
        assert all(isinstance(cursor, str) for cursor in cursors)
        assert len(set(cursors)) == 20
        assert await store.append("EV_3", 2000, event(3)) is None  # a retry: not stored again
        heard = await recorder.wait_for(20)
        assert sorted(entry.cursor for entry in heard) == sorted(cursors)  # type: ignore[type-var]
        assert sorted(entry.event_json for entry in heard) == sorted(event(n) for n in range(20))
        assert [entry.order for entry in heard] == sorted(entry.order for entry in heard)  # log order
        await asyncio.sleep(0.1)
        assert len(recorder.entries) == 20  # the duplicate was not heard of
        assert not hasattr(store, "subscribe")  # sockets are the broadcaster's

    run(store, scenario)


def test_reads_are_bounded_pages_in_order(make_store: Callable[..., EventLog]) -> None:
    async def scenario(store: EventLog) -> None:
        cursors = [await store.append(f"EV_{n}", n, event(n, pad=1000)) for n in range(250)]
        pages = await read_all(store, START, 100, 1 << 20)
        assert [len(page.entries) for page in pages] == [100, 100, 50]
        assert [entry.cursor for page in pages for entry in page.entries] == cursors
        # A byte budget cuts a page (never below one event), whatever the count allows.
        small = await read_all(store, START, 100, 10_000)
        assert max(len(page.entries) for page in small) <= 10
        assert [entry.cursor for page in small for entry in page.entries] == cursors
        assert len((await store.read(START, 100, 10)).entries) == 1
        # After a cursor: what follows it; the newest N: after newest_start(N).
        after = await store.read(cursors[247], 100, 1 << 20)
        assert [entry.cursor for entry in after.entries] == cursors[248:]
        assert not after.more and after.oldest_kept is None
        newest = await store.read(await store.newest_start(7), 100, 1 << 20)
        assert [entry.cursor for entry in newest.entries] == cursors[-7:]
        assert await store.newest_start(250) is None  # fewer kept than asked: from the oldest

    run(make_store(), scenario)


@pytest.mark.parametrize(
    "cursor",
    ["1", "abc", "0-1", "000000000000.1", "000000000000.1-0", "0.1", "-1", "1e3", "0-99999999999999999999"],
)
def test_cursors_that_are_not_this_logs_are_unknown(make_store: Callable[..., EventLog], cursor: str) -> None:
    async def scenario(store: EventLog) -> None:
        for n in range(3):
            await store.append(f"EV_{n}", n, event(n))
        page = await store.read(cursor, 100, 1 << 20)
        assert page.unknown_cursor and page.entries == []

    run(make_store(), scenario)


def test_a_cursor_from_another_log_is_unknown(make_store: Callable[..., EventLog]) -> None:
    first = make_store(name="first.sqlite3")
    cursors: list[str | None] = []

    async def write_first(store: EventLog) -> None:
        cursors.extend([await store.append(f"EV_{n}", n, event(n)) for n in range(3)])

    run(first, write_first)

    async def wipe_redis(store: EventLog) -> None:
        if isinstance(store, RedisEventLog):
            await store._redis.flushall()  # a Redis that lost its data: a new log

    run(make_store(name="first.sqlite3"), wipe_redis)
    second = make_store(name="second.sqlite3")

    async def read_second(store: EventLog) -> None:
        for n in range(5):
            await store.append(f"EV_{n}", n, event(n))
        page = await store.read(cursors[1], 100, 1 << 20)
        assert page.unknown_cursor and page.entries == []  # never a silent skip
        assert len((await store.read(START, 100, 1 << 20)).entries) == 5

    run(second, read_second)


def test_trimmed_entries_are_said_and_ids_are_remembered_beyond_what_is_kept(
    make_store: Callable[..., EventLog],
) -> None:
    async def scenario(store: EventLog) -> None:
        cursors = [await store.append(f"EV_{n}", n, event(n)) for n in range(400)]
        page = await store.read(cursors[0], 1000, 1 << 20)
        assert page.oldest_kept is not None and page.oldest_kept != cursors[1]
        assert page.entries[0].cursor == page.oldest_kept
        assert page.entries[-1].cursor == cursors[-1]
        # LiveKit retries the first event after it was trimmed: still a duplicate.
        assert await store.append("EV_0", 999, event(0)) is None

    run(make_store(keep=2), scenario)
