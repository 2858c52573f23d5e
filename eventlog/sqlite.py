"""The embedded default store: one SQLite file in WAL mode.

All database work runs on one thread of its own so the event loop never waits
on a disk flush. Appends that arrive while a commit is in progress are written
together in the next transaction (group commit): one fsync for many webhooks,
and each webhook is answered only after the commit that holds it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from eventlog.base import EventLog, Frame, Replay, StoreUnavailable, make_frame, notice, parse_cursor

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    received_at INTEGER NOT NULL,
    event TEXT NOT NULL
)
"""
# Another process may hold the write lock (a backup, the sqlite3 shell): a write waits for
# it this long, in short steps so that close() can stop the wait (SQLite's own cannot be).
BUSY_SECONDS = 5.0
BUSY_STEP_MS = 50
_Row = tuple[int, int, str]
_Pending = tuple[str, int, str, "asyncio.Future[Frame | None]"]


class SqliteEventLog(EventLog):
    _closing = False

    def __init__(self, path: str, keep: int, replay_count: int) -> None:
        super().__init__(replay_count)
        self.path = path
        self.keep = keep
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-events")
        self._db = self._thread.submit(self._open).result()
        self._pending: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._last_error = ""

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the webhook gets its 200.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute(_SCHEMA)
        db.execute(f"PRAGMA busy_timeout={BUSY_STEP_MS}")  # from now on writes wait in _begin
        return db

    async def append(self, event_id: str, received_at: int, event_json: str) -> Frame | None:
        future: asyncio.Future[Frame | None] = asyncio.get_running_loop().create_future()
        self._pending.append((event_id, received_at, event_json, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())
        return await future

    async def _write_pending(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            rows = [(event_id, received_at, event_json) for event_id, received_at, event_json, _ in batch]
            try:
                seqs = await loop.run_in_executor(self._thread, self._insert, rows)
            except sqlite3.Error as error:
                self._last_error = str(error)
                log.error("event store write failed, %d webhooks answered 503: %s", len(batch), error)
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(StoreUnavailable(str(error)))
                continue
            self._last_error = ""
            # Publish in commit order, before answering, so a socket never sees a gap.
            for (_, received_at, event_json, future), seq in zip(batch, seqs, strict=True):
                frame = None if seq is None else make_frame((seq, 0), str(seq), received_at, event_json)
                if frame is not None:
                    self._publish(frame)
                if not future.done():
                    future.set_result(frame)

    def _insert(self, rows: list[tuple[str, int, str]]) -> list[int | None]:
        seqs: list[int | None] = []
        db = self._db
        self._begin(db)
        try:
            for row in rows:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO events (event_id, received_at, event) VALUES (?, ?, ?)", row
                )
                seqs.append(cursor.lastrowid if cursor.rowcount == 1 else None)
            newest = max((seq for seq in seqs if seq is not None), default=0)
            if newest > self.keep:
                db.execute("DELETE FROM events WHERE seq <= ?", (newest - self.keep,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return seqs

    def _begin(self, db: sqlite3.Connection) -> None:
        deadline = time.monotonic() + BUSY_SECONDS
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                busy = error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or self._closing or time.monotonic() > deadline:
                    raise

    async def read(self, since: str | None, limit: int) -> Replay:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, self._read, since, limit)
        except sqlite3.Error as error:
            raise StoreUnavailable(str(error)) from error

    def _read(self, since: str | None, limit: int) -> Replay:
        db = self._db
        if since is None:
            return Replay(
                None,
                self._frames(
                    db.execute(
                        "SELECT * FROM (SELECT seq, received_at, event FROM events ORDER BY seq DESC LIMIT ?)"
                        " ORDER BY seq",
                        (limit,),
                    )
                ),
            )
        position = parse_cursor(since)
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        last_seq = row[0] if row else 0
        if position is None or position[1] != 0 or position[0] > last_seq:
            newest = self._read(None, limit)
            message = "This cursor is not one of this server's; sending the newest events instead"
            return Replay(notice("unknown_cursor", message, since=since), newest.frames)
        after = position[0]
        frames = self._frames(
            db.execute(
                "SELECT seq, received_at, event FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            )
        )
        oldest = db.execute("SELECT min(seq) FROM events").fetchone()[0]
        if oldest is not None and oldest > after + 1:
            message = f"Events after {since} up to {oldest - 1} are no longer kept; sending what is"
            trimmed = notice("history_trimmed", message, since=since, oldestCursor=str(oldest))
            return Replay(trimmed, frames)
        return Replay(None, frames)

    @staticmethod
    def _frames(rows: Any) -> list[Frame]:
        return [make_frame((seq, 0), str(seq), received_at, event) for seq, received_at, event in rows]

    def health(self) -> dict[str, Any]:
        state: dict[str, Any] = {"store": "sqlite", "ok": not self._last_error}
        if self._last_error:
            state["error"] = self._last_error
        return state

    async def close(self) -> None:
        # Bounded: a write still waiting for another process's lock gives up now (503:
        # what is not committed was not acknowledged) rather than wait out BUSY_SECONDS.
        self._closing = True
        if self._writer is not None:
            await asyncio.shield(self._writer)
        await asyncio.get_running_loop().run_in_executor(self._thread, self._db.close)
        self._thread.shutdown(wait=True)
