"""Event handler progress next to the SQLite event log: one checkpoint row per handler,
parked events in a table of their own (with their JSON, so trimming cannot lose them).

The events themselves are read through the event log (`read(since, limit)`); this module
only writes its own two tables, on a connection and thread of its own. One instance owns
a SQLite file, so there is nobody to share the work with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from eventlog import START, EventLog
from eventlog.base import parse_cursor
from extensions.feed import Delivery, Parked, event_id_of

log = logging.getLogger("extensions.events")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS handler_checkpoints (
    handler TEXT PRIMARY KEY,
    cursor TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS handler_parked (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    handler TEXT NOT NULL,
    event_id TEXT NOT NULL,
    cursor TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    event TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    parked_at INTEGER NOT NULL,
    retry INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS handler_parked_by_handler ON handler_parked (handler, retry, id);
"""
POLL_SECONDS = 1.0
PAGE_BYTES = 1024 * 1024


def _now_ms() -> int:
    return int(time.time() * 1000)


class SqliteFeed:
    def __init__(self, path: str, event_log: EventLog) -> None:
        self.path = path
        self.event_log = event_log
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-handlers")
        self._db: sqlite3.Connection | None = None
        self._position: dict[str, str] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._parked_counts: dict[str, int] = {}
        self.skipped = 0

    async def _run(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a power cut may forget the newest progress; those events are handled
        # again (at least once), never skipped.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        return db

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "start() first"
        return self._db

    async def open(self) -> None:
        if self._db is None:
            self._db = await self._run(self._open)

    async def start(self, handlers: list[str]) -> None:
        await self.open()
        end = await self.event_log.newest_start(0) or START
        for handler in handlers:
            self._position[handler] = await self._run(self._checkpoint, handler, end)
            self._wakeups[handler] = asyncio.Event()
        await self.count_parked()

    async def count_parked(self) -> None:
        rows = await self._run(
            lambda: self.db.execute(
                "SELECT handler, count(*) FROM handler_parked GROUP BY handler"
            ).fetchall()
        )
        self._parked_counts = dict.fromkeys(self._position, 0) | dict(rows)

    def _checkpoint(self, handler: str, end: str) -> str:
        """The handler's checkpoint; a new handler's is the newest event stored now."""
        self.db.execute(
            "INSERT OR IGNORE INTO handler_checkpoints (handler, cursor, updated_at) VALUES (?, ?, ?)",
            (handler, end, _now_ms()),
        )
        row = self.db.execute("SELECT cursor FROM handler_checkpoints WHERE handler = ?", (handler,))
        return str(row.fetchone()[0])

    def wake(self) -> None:
        for wakeup in self._wakeups.values():
            wakeup.set()

    async def next(self, handler: str, limit: int) -> list[Delivery]:
        wakeup = self._wakeups[handler]
        wakeup.clear()  # before reading: a wake-up during the read is not lost
        retries = await self._run(self._retries, handler, limit)
        if retries:
            return retries
        since = self._position[handler]
        page = await self.event_log.read(since, limit, PAGE_BYTES)
        if page.unknown_cursor:
            # Not a cursor of this log (the store was replaced): what it holds now is new.
            log.error("event handler %s: its checkpoint is not in this event log; starting over", handler)
            self._position[handler] = START
            return []
        if page.oldest_kept is not None:
            self._gap(handler, since, page.oldest_kept)
        if page.entries:
            return [
                Delivery(entry.cursor, event_id_of(entry.event_json), entry.received_at, entry.event_json)
                for entry in page.entries
            ]
        if page.resume and page.resume != since:
            self._position[handler] = page.resume  # past entries that are not events
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), POLL_SECONDS)
        return []

    def _gap(self, handler: str, since: str, oldest_kept: str) -> None:
        """EVENTS_KEEP dropped events before this handler got to them: counted, said loudly."""
        before, after = parse_cursor(since), parse_cursor(oldest_kept)
        lost = after[1][0] - before[1][0] - 1 if before and after else 1
        self.skipped += max(lost, 1)
        log.error(
            "event handler %s: events after %s were trimmed (EVENTS_KEEP) before it handled them; "
            "going on from %s",
            handler,
            since,
            oldest_kept,
        )

    def _retries(self, handler: str, limit: int) -> list[Delivery]:
        rows = self.db.execute(
            "SELECT id, cursor, event_id, received_at, event FROM handler_parked"
            " WHERE handler = ? AND retry = 1 ORDER BY id LIMIT ?",
            (handler, limit),
        ).fetchall()
        return [
            Delivery(cursor, event_id, received_at, event, str(key))
            for key, cursor, event_id, received_at, event in rows
        ]

    async def done(self, handler: str, deliveries: list[Delivery]) -> None:
        retried = [(int(d.parked_key),) for d in deliveries if d.parked_key]
        stored = [d.cursor for d in deliveries if not d.parked_key]
        await self._run(self._done, handler, retried, stored[-1] if stored else None)
        if stored:
            self._position[handler] = stored[-1]
        self._parked_counts[handler] -= len(retried)

    def _done(self, handler: str, retried: list[tuple[int]], cursor: str | None) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("DELETE FROM handler_parked WHERE id = ?", retried)
            if cursor is not None:
                self._set_checkpoint(handler, cursor)

    def _set_checkpoint(self, handler: str, cursor: str) -> None:
        self.db.execute(
            "UPDATE handler_checkpoints SET cursor = ?, updated_at = ? WHERE handler = ?",
            (cursor, _now_ms(), handler),
        )

    async def park(self, handler: str, delivery: Delivery, attempts: int, error: str) -> None:
        await self._run(self._park, handler, delivery, attempts, error)
        if not delivery.parked_key:
            self._position[handler] = delivery.cursor
            self._parked_counts[handler] += 1

    def _park(self, handler: str, delivery: Delivery, attempts: int, error: str) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if delivery.parked_key:
                self.db.execute(
                    "UPDATE handler_parked SET attempts = attempts + ?, error = ?, parked_at = ?, retry = 0"
                    " WHERE id = ?",
                    (attempts, error, _now_ms(), int(delivery.parked_key)),
                )
                return
            self.db.execute(
                "INSERT INTO handler_parked (handler, event_id, cursor, received_at, event, attempts, error,"
                " parked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    handler,
                    delivery.event_id,
                    delivery.cursor,
                    delivery.received_at,
                    delivery.event_json,
                    attempts,
                    error,
                    _now_ms(),
                ),
            )
            self._set_checkpoint(handler, delivery.cursor)

    async def keep_claimed(self, handler: str, delivery: Delivery) -> None:
        """Nothing to do: no other instance reads this file."""

    async def parked(self, handler: str | None = None) -> list[Parked]:
        rows = await self._run(
            lambda: self.db.execute(
                "SELECT handler, id, event_id, cursor, attempts, error, parked_at FROM handler_parked"
                " WHERE ? IS NULL OR handler = ? ORDER BY id",
                (handler, handler),
            ).fetchall()
        )
        return [Parked(h, str(key), e, c, a, err, at) for h, key, e, c, a, err, at in rows]

    async def retry_parked(self, handler: str | None = None, event_id: str | None = None) -> int:
        def mark() -> int:
            with self.db:
                return self.db.execute(
                    "UPDATE handler_parked SET retry = 1 WHERE retry = 0"
                    " AND (? IS NULL OR handler = ?) AND (? IS NULL OR event_id = ?)",
                    (handler, handler, event_id, event_id),
                ).rowcount

        count: int = await self._run(mark)
        self.wake()
        return count

    async def drop_parked(self, handler: str | None = None, event_id: str | None = None) -> int:
        def drop() -> int:
            with self.db:
                return self.db.execute(
                    "DELETE FROM handler_parked"
                    " WHERE (? IS NULL OR handler = ?) AND (? IS NULL OR event_id = ?)",
                    (handler, handler, event_id, event_id),
                ).rowcount

        count: int = await self._run(drop)
        return count

    def health(self) -> dict[str, Any]:
        return {
            "parked": sum(self._parked_counts.values()),
            "parkedBy": dict(self._parked_counts),
            "skipped": self.skipped,
        }

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)
