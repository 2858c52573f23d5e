"""The embedded default store: one SQLite file in WAL mode.

Writes run on one thread of their own so the event loop never waits on a disk
flush. Appends that arrive while a commit is in progress are written together in
the next transaction (group commit): one fsync for many webhooks, and each webhook
is answered only after the commit that holds it. Reads run on another thread with
their own connection: in WAL mode they see the last commit and never hold up a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from eventlog.base import (
    SEEN_SECONDS,
    Entry,
    EventLog,
    Page,
    StoreUnavailable,
    Told,
    make_cursor,
    new_log_id,
    parse_cursor,
)

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    received_at INTEGER NOT NULL,
    event TEXT NOT NULL
);
-- Event ids of the last SEEN_SECONDS, kept or not: LiveKit's retries are recognised.
CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, seen_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_time ON seen (seen_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Another process may hold the write lock (a backup, the sqlite3 shell): a write waits for
# it this long, in short steps so that close() can stop the wait (SQLite's own cannot be).
BUSY_SECONDS = 5.0
BUSY_STEP_MS = 50
LOCK_FIRST_PAUSE, LOCK_MAX_PAUSE = 0.0002, 0.001  # seconds between looks at the workers' lock
_PRUNE_EVERY_SECONDS = 60
# WORKERS on one file: how often a worker looks for entries the others appended, and how
# many it reads at once.
FOLLOW_SECONDS = 0.01
FOLLOW_BATCH = 500
_Pending = tuple[str, int, str, "asyncio.Future[str | None]"]


class FileReplaced(sqlite3.Error):
    """EVENTS_DB no longer names the file this store writes to."""


class SqliteEventLog(EventLog):
    kind = "sqlite"
    _closing = False

    def __init__(
        self, path: str, keep: int, shared: bool = False, writers_lock: str = "", file_record: str = ""
    ) -> None:
        super().__init__()
        self.path = path
        self.keep = keep
        # WORKERS: other processes append to this file too. Listeners then hear of every
        # entry, ours and theirs, from one follower that reads the file in seq order.
        self.shared = shared
        # And they take turns writing by a lock file of their own, looked at again within a
        # millisecond of a miss: waiting on SQLite's lock sleeps 1 to 50 ms a try.
        self._writers_lock = os.open(writers_lock, os.O_RDWR | os.O_CREAT, 0o600) if writers_lock else -1
        self._follower: asyncio.Task[None] | None = None
        self._appended = asyncio.Event()
        self.in_memory = path == ":memory:"
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-events-write")
        if file_record and not self.in_memory and os.path.exists(file_record):
            self._check_recorded(file_record, self._identity())  # before creating one anew
        self._db = self._writer_thread.submit(self._open_writer).result()
        if file_record and not self.in_memory:
            self._same_file_as_the_others(file_record)
        if self.in_memory:
            # Another connection would open another, empty database: reads share the
            # writer's. Pages are bounded and in memory, so they cost a write little.
            self._reader_thread, self._reader_db = self._writer_thread, self._db
        else:
            self._reader_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-events-read")
            self._reader_db = self._reader_thread.submit(self._connect).result()
        self._pending: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._last_error = ""
        self._replaced = False
        self._pruned_at = 0.0

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def _open_writer(self) -> sqlite3.Connection:
        if not self.in_memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the webhook gets its 200.
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('log_id', ?)", (new_log_id(),))
        self.log_id: str = db.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()[0]
        db.execute("COMMIT")
        # Which file this is: a commit is acknowledged only while EVENTS_DB still names it.
        self._file = self._identity()
        newest = db.execute("SELECT max(seq) FROM events").fetchone()[0]
        self.told = Told((newest or 0, 0), None if newest is None else make_cursor(self.log_id, str(newest)))
        db.execute(f"PRAGMA busy_timeout={BUSY_STEP_MS}")  # from now on writes wait in _begin
        return db

    def _same_file_as_the_others(self, record: str) -> None:
        """WORKERS: the first worker records which file it opened; one started later (a
        replacement) after EVENTS_DB was deleted or replaced would otherwise serve a new
        log of its own, beside the others' 503s."""
        assert self._file is not None
        mine = f"{self._file[0]}:{self._file[1]}"
        partial = f"{record}.{os.getpid()}"
        Path(partial).write_text(mine)
        try:
            os.link(partial, record)  # whole or not at all, and only the first one's
        except FileExistsError:
            self._check_recorded(record, self._file)
        finally:
            os.remove(partial)

    def _check_recorded(self, record: str, identity: tuple[int, int] | None) -> None:
        if identity is None or Path(record).read_text() != f"{identity[0]}:{identity[1]}":
            raise sqlite3.OperationalError(
                f"EVENTS_DB {self.path} is not the file the other workers opened (it was deleted or "
                "replaced while the server ran): restart the server"
            )

    def _identity(self) -> tuple[int, int] | None:
        if self.in_memory:
            return None
        try:
            status = os.stat(self.path)
        except OSError:
            return (-1, -1)
        return status.st_dev, status.st_ino

    def _check_file(self) -> None:
        if self._replaced or self._identity() != self._file:
            if not self._replaced:
                self._replaced = True
                log.error(
                    "EVENTS_DB %s was deleted or replaced while the server ran: webhooks now get 503 "
                    "(nothing is acknowledged into a file no one will read). Restart the server; "
                    "see docs/operating.md, 'When the event store fails'",
                    self.path,
                )
            raise FileReplaced(f"{self.path} was deleted or replaced")

    async def append(self, event_id: str, received_at: int, event_json: str) -> str | None:
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
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
                seqs = await loop.run_in_executor(self._writer_thread, self._insert, rows)
            except sqlite3.Error as error:
                self._last_error = str(error)
                log.error("event store write failed, %d webhooks answered 503: %s", len(batch), error)
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(StoreUnavailable(str(error)))
                continue
            self._last_error = ""
            entries = [
                Entry((seq, 0), make_cursor(self.log_id, str(seq)), received_at, event_json)
                for (_, received_at, event_json, _), seq in zip(batch, seqs, strict=True)
                if seq is not None
            ]
            # Listeners hear in commit order, before the webhooks are answered (shared: from
            # the follower, woken now, which keeps every process's entries in one order).
            if entries and not self.shared:
                self._entries_added(entries)
            elif entries:
                self._appended.set()
            for (*_, future), seq in zip(batch, seqs, strict=True):
                if not future.done():
                    future.set_result(None if seq is None else make_cursor(self.log_id, str(seq)))

    def _insert(self, rows: list[tuple[str, int, str]]) -> list[int | None]:
        self._check_file()
        db = self._db
        if self._writers_lock >= 0:
            self._lock_writers()
        try:
            return self._insert_in_turn(db, rows)
        finally:
            if self._writers_lock >= 0:
                fcntl.lockf(self._writers_lock, fcntl.LOCK_UN)

    def _insert_in_turn(self, db: sqlite3.Connection, rows: list[tuple[str, int, str]]) -> list[int | None]:
        seqs: list[int | None] = []
        now = time.time()
        self._begin(db)
        try:
            for event_id, received_at, event_json in rows:
                seen = db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (event_id, int(now * 1000)))
                if seen.rowcount != 1:
                    seqs.append(None)  # seen within SEEN_SECONDS, kept or not
                    continue
                cursor = db.execute(
                    "INSERT OR IGNORE INTO events (event_id, received_at, event) VALUES (?, ?, ?)",
                    (event_id, received_at, event_json),
                )
                seqs.append(cursor.lastrowid if cursor.rowcount == 1 else None)
            newest = max((seq for seq in seqs if seq is not None), default=0)
            if newest > self.keep:
                db.execute("DELETE FROM events WHERE seq <= ?", (newest - self.keep,))
            if now - self._pruned_at > _PRUNE_EVERY_SECONDS:
                self._pruned_at = now
                db.execute("DELETE FROM seen WHERE seen_at < ?", (int((now - SEEN_SECONDS) * 1000),))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        # Committed, but into the file EVENTS_DB names? If not, nothing is acknowledged.
        self._check_file()
        return seqs

    async def start(self) -> None:
        if self.shared and self._follower is None:
            self._follower = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        """Shared file: tell the listeners of each entry after `told`, whoever wrote it.
        Woken by this process's own commits, and every FOLLOW_SECONDS for the others'.
        Seqs are given under SQLite's write lock, so none appears behind a later one."""
        loop = asyncio.get_running_loop()
        failing = False
        while not self._closing:
            after = self.told.order[0] if self.told else 0
            try:
                entries = await loop.run_in_executor(self._reader_thread, self._entries_after, after)
            except sqlite3.Error as error:
                if not failing:
                    log.error("reading the shared event store failed; retrying: %s", error)
                failing = True
                await asyncio.sleep(FOLLOW_SECONDS * 10)
                continue
            failing = False
            if entries:
                self._entries_added(entries)
                if len(entries) == FOLLOW_BATCH:
                    continue
            self._appended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._appended.wait(), FOLLOW_SECONDS)

    def _entries_after(self, after: int) -> list[Entry]:
        rows = self._reader_db.execute(
            "SELECT seq, received_at, event FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, FOLLOW_BATCH),
        ).fetchall()
        return [Entry((seq, 0), make_cursor(self.log_id, str(seq)), at, event) for seq, at, event in rows]

    def _lock_writers(self) -> None:
        """The workers' lock, waited for as SQLite's own (BUSY_SECONDS): a worker stopped
        while it held it (SIGSTOP, a debugger) must not hang every other's webhooks. The
        kernel lets go of it when its holder dies."""
        deadline = time.monotonic() + BUSY_SECONDS
        pause = LOCK_FIRST_PAUSE
        while True:
            try:
                fcntl.lockf(self._writers_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as error:
                held = error.errno in (errno.EACCES, errno.EAGAIN)
                if not held or self._closing or time.monotonic() > deadline:
                    why = f"not free within {BUSY_SECONDS:g} s" if held else str(error)
                    raise sqlite3.OperationalError(f"the workers' write lock: {why}") from None
                # Another worker's commit takes a millisecond or so: look again within one.
                time.sleep(pause)
                pause = min(pause * 2, LOCK_MAX_PAUSE)

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

    async def read(self, since: str | None, limit: int, max_bytes: int) -> Page:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader_thread, self._read, since, limit, max_bytes)
        except sqlite3.Error as error:
            log.error("event store read failed: %s", error)
            raise StoreUnavailable(str(error)) from error

    def _read(self, since: str | None, limit: int, max_bytes: int) -> Page:
        db = self._reader_db
        db.execute("BEGIN")  # one snapshot for the checks and the rows
        try:
            return self._read_in_snapshot(db, since, limit, max_bytes)
        finally:
            db.execute("COMMIT")

    def _read_in_snapshot(
        self, db: sqlite3.Connection, since: str | None, limit: int, max_bytes: int
    ) -> Page:
        after = 0
        if since is not None:
            parsed = parse_cursor(since)
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            last_seq = row[0] if row else 0
            if parsed is None or parsed[0] not in ("", self.log_id) or parsed[1][1] != 0:
                return Page([], unknown_cursor=True)
            after = parsed[1][0]
            if after > last_seq:
                return Page([], unknown_cursor=True)
        entries: list[Entry] = []
        total = 0
        more = False
        rows = db.execute(
            "SELECT seq, received_at, event FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit + 1),
        )
        for seq, received_at, event_json in rows:
            total += len(event_json)
            if len(entries) == limit or (entries and total > max_bytes):
                more = True
                break
            entries.append(Entry((seq, 0), make_cursor(self.log_id, str(seq)), received_at, event_json))
        rows.close()
        oldest_kept = None
        if since is not None:
            oldest = db.execute("SELECT min(seq) FROM events").fetchone()[0]
            if oldest is not None and oldest > after + 1:
                oldest_kept = make_cursor(self.log_id, str(oldest))
        resume = entries[-1].cursor if entries else None
        return Page(entries, more=more, resume=resume, oldest_kept=oldest_kept)

    async def newest_start(self, count: int) -> str | None:
        def newest() -> str | None:
            row = self._reader_db.execute(
                "SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?", (count,)
            ).fetchone()
            return None if row is None else make_cursor(self.log_id, str(row[0]))

        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader_thread, newest)
        except sqlite3.Error as error:
            raise StoreUnavailable(str(error)) from error

    def health(self) -> dict[str, Any]:
        replaced = self._replaced
        if not replaced:
            try:
                self._check_file()
            except FileReplaced:
                replaced = True
        return {"store": self.kind, "ok": not self._last_error and not replaced}

    async def close(self) -> None:
        # Bounded: a write still waiting for another process's lock gives up now (503:
        # what is not committed was not acknowledged) rather than wait out BUSY_SECONDS.
        self._closing = True
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.wait({self._follower}, timeout=2)
        if self._writer is not None:
            await asyncio.shield(self._writer)
        loop = asyncio.get_running_loop()
        if self._reader_db is not self._db:
            await loop.run_in_executor(self._reader_thread, self._reader_db.close)
            self._reader_thread.shutdown(wait=True)
        await loop.run_in_executor(self._writer_thread, self._db.close)
        self._writer_thread.shutdown(wait=True)
        if self._writers_lock >= 0:
            os.close(self._writers_lock)
