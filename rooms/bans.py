"""Bans: an identity kept out of a room until a time, in the store the events use,
so that every instance refuses the same tokens.

Rooms and identities are kept by their canonical key (rooms/names.py): a ban on `bob`
holds for every identity that looks like `bob`.

SQLite: a `bans` table in the event log's file, read into memory at start-up and
written through (one instance per file, as the event log). With WORKERS, each of which
may set or lift a ban, a counter in a file the workers share (BanVersion) moves after
every change is committed: a worker reads the table again when it has moved, so a check
is a dict lookup and a read of that counter (a read of the file on every check had cost
/token with WORKERS=2 about 15% of its throughput). Redis: one sorted set per room
(`livekit:bans:<room>`, identity -> end in ms), which expires with its last ban.
"""

from __future__ import annotations

import asyncio
import fcntl
import mmap
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import redis.asyncio as redis
from redis.exceptions import RedisError

from ground.config import Config
from rooms.names import canonical

MAX_BAN_SECONDS = 365 * 86_400
READ_BUSY_MS = 200
REDIS_KEY_PREFIX = "livekit:bans:"
REDIS_CONNECTIONS = 16
REDIS_SECONDS = 3


class BansUnavailable(Exception):
    """The ban store could not be read or written; nothing was changed."""


@dataclass(frozen=True)
class Ban:
    room: str
    identity: str
    ends_at_ms: int

    def json(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "identity": self.identity,
            "endsAt": self.ends_at_ms,
            "secondsLeft": max(0, -(-(self.ends_at_ms - _now_ms()) // 1000)),
        }

    def refusal(self) -> str:
        ends = datetime.fromtimestamp(self.ends_at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"{self.identity!r} is banned from room {self.room!r} until {ends} "
            f"({self.json()['secondsLeft']} s from now)"
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


class BanStore(ABC):
    # True when `find` answers from this process's memory, never waiting on anything.
    finds_at_once: ClassVar[bool] = False

    @abstractmethod
    async def ban(self, room: str, identity: str, seconds: int) -> Ban: ...

    @abstractmethod
    async def lift(self, room: str, identity: str) -> bool:
        """False when there was no ban in force."""

    @abstractmethod
    async def find(self, room: str, identity: str) -> Ban | None:
        """The ban in force, if any; asked on every token request."""

    @abstractmethod
    async def list(self, room: str) -> list[Ban]: ...

    @abstractmethod
    async def close(self) -> None: ...


def open_ban_store(config: Config, shared_dir: str | None = None) -> BanStore:
    """`shared_dir`: other processes (WORKERS) set and lift bans in the same store."""
    if config.events_redis_url:
        return RedisBans(config.events_redis_url)
    return SqliteBans(
        config.events_db, BanVersion(os.path.join(shared_dir, "bans.version")) if shared_dir else None
    )


class BanVersion:
    """A number the processes sharing a ban table raise after each change they commit:
    one that reads another number than it last did reads the table again. A change is
    committed before the number moves, so whoever sees the new number finds the change."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, 8)  # (the same size for every process: a no-op after the first)
        self._map = mmap.mmap(self._fd, 8)

    def read(self) -> int:
        return int.from_bytes(self._map[:8], "little")

    def raise_(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)  # no raise lost to another process's
        try:
            self._map[:8] = ((self.read() + 1) % (1 << 64)).to_bytes(8, "little")
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS bans (
    room TEXT NOT NULL,
    identity TEXT NOT NULL,
    ends_at_ms INTEGER NOT NULL,
    PRIMARY KEY (room, identity)
)
"""


class SqliteBans(BanStore):
    finds_at_once = True  # the table is held in memory; another process's change is read at once

    def __init__(self, path: str, version: BanVersion | None = None) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-bans")
        # WORKERS: `version` says when another process changed the table.
        self._version = version
        self._version_read = version.read() if version else 0
        self._db, self._bans = self._thread.submit(self._open, path).result()
        # Its own connection: the writer's may be busy in the thread meanwhile.
        self._reader = (
            sqlite3.connect(path, isolation_level=None, check_same_thread=False) if version else None
        )
        if self._reader is not None:
            # A WAL read waits only in rare moments (another process recovering the file):
            # briefly then, rather than answer 503 at once.
            self._reader.execute(f"PRAGMA busy_timeout={READ_BUSY_MS}")

    @staticmethod
    def _open(path: str) -> tuple[sqlite3.Connection, dict[tuple[str, str], int]]:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        db.execute(_SCHEMA)
        db.execute("DELETE FROM bans WHERE ends_at_ms <= ?", (_now_ms(),))
        return db, _read_all(db)

    async def _write(self, sql: str, parameters: tuple[Any, ...]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self._write_now, sql, parameters)
        except sqlite3.Error as error:
            raise BansUnavailable(f"The ban list could not be written: {error}") from None

    def _write_now(self, sql: str, parameters: tuple[Any, ...]) -> None:
        self._db.execute(sql, parameters)
        if self._version is not None:
            # Committed: the others read it from now on, however busy this event loop is.
            self._version.raise_()

    async def ban(self, room: str, identity: str, seconds: int) -> Ban:
        room, identity = canonical(room), canonical(identity)
        ends = _now_ms() + seconds * 1000
        await self._write(
            "INSERT INTO bans (room, identity, ends_at_ms) VALUES (?, ?, ?)"
            " ON CONFLICT (room, identity) DO UPDATE SET ends_at_ms = excluded.ends_at_ms",
            (room, identity, ends),
        )
        self._bans[room, identity] = ends  # only once it is on disk
        return Ban(room, identity, ends)

    async def lift(self, room: str, identity: str) -> bool:
        room, identity = canonical(room), canonical(identity)
        in_force = await self.find(room, identity) is not None
        await self._write("DELETE FROM bans WHERE room = ? AND identity = ?", (room, identity))
        self._bans.pop((room, identity), None)
        return in_force

    async def find(self, room: str, identity: str) -> Ban | None:
        room, identity = canonical(room), canonical(identity)
        ends = self._current().get((room, identity))
        if ends is None:
            return None
        if ends <= _now_ms():
            del self._bans[room, identity]  # the row goes at the next start-up
            return None
        return Ban(room, identity, ends)

    async def list(self, room: str) -> list[Ban]:
        room = canonical(room)
        now = _now_ms()
        return sorted(
            (
                Ban(r, identity, ends)
                for (r, identity), ends in self._current().items()
                if r == room and ends > now
            ),
            key=lambda ban: ban.identity,
        )

    def _current(self) -> dict[tuple[str, str], int]:
        """The bans, read again from the file when another process changed them. Read on
        the event loop: a read in WAL mode waits for no writer, and a failed one is a 503,
        never a skipped ban."""
        if self._version is None or (version := self._version.read()) == self._version_read:
            return self._bans
        assert self._reader is not None
        try:
            self._bans = _read_all(self._reader)
        except sqlite3.Error as error:
            raise BansUnavailable(f"The ban list could not be read: {error}") from None
        self._version_read = version
        return self._bans

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._version is not None:
            self._version.close()
        await asyncio.get_running_loop().run_in_executor(self._thread, self._db.close)
        self._thread.shutdown(wait=True)


def _read_all(db: sqlite3.Connection) -> dict[tuple[str, str], int]:
    rows = db.execute("SELECT room, identity, ends_at_ms FROM bans WHERE ends_at_ms > ?", (_now_ms(),))
    return {(room, identity): ends for room, identity, ends in rows}


class RedisBans(BanStore):
    def __init__(self, url: str) -> None:
        # At most REDIS_CONNECTIONS: a request finding them all busy waits up to
        # REDIS_SECONDS for one, then answers 503 (BansUnavailable), as a silent Redis does.
        self._pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_CONNECTIONS,
            timeout=REDIS_SECONDS,
            socket_connect_timeout=REDIS_SECONDS,
            socket_timeout=REDIS_SECONDS,
            decode_responses=True,
        )
        self._redis = redis.Redis(connection_pool=self._pool)

    async def _ask(self, call: Any) -> Any:
        try:
            return await call
        except (RedisError, OSError) as error:
            raise BansUnavailable(f"The ban list in Redis is unavailable: {error}") from None

    async def ban(self, room: str, identity: str, seconds: int) -> Ban:
        room, identity = canonical(room), canonical(identity)
        ends = _now_ms() + seconds * 1000
        key = REDIS_KEY_PREFIX + room
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {identity: ends})
            # The set lives as long as its longest ban: NX sets a first expiry, GT extends it.
            pipe.pexpireat(key, ends, nx=True)
            pipe.pexpireat(key, ends, gt=True)
            await self._ask(pipe.execute())
        return Ban(room, identity, ends)

    async def lift(self, room: str, identity: str) -> bool:
        room, identity = canonical(room), canonical(identity)
        in_force = await self.find(room, identity) is not None
        await self._ask(self._redis.zrem(REDIS_KEY_PREFIX + room, identity))
        return in_force

    async def find(self, room: str, identity: str) -> Ban | None:
        room, identity = canonical(room), canonical(identity)
        ends = await self._ask(self._redis.zscore(REDIS_KEY_PREFIX + room, identity))
        if ends is None or ends <= _now_ms():
            return None
        return Ban(room, identity, int(ends))

    async def list(self, room: str) -> list[Ban]:
        room = canonical(room)
        entries = await self._ask(
            self._redis.zrangebyscore(REDIS_KEY_PREFIX + room, f"({_now_ms()}", "+inf", withscores=True)
        )
        return sorted(
            (Ban(room, identity, int(ends)) for identity, ends in entries), key=lambda b: b.identity
        )

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()
