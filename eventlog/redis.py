"""The shared store for several instances: one Redis Stream.

A webhook on any instance is XADDed to the stream by one script that checks its id,
adds the entry, and only then records the id, so a retried event is stored once and
a failed add is not remembered. Each instance runs one XREAD BLOCK reader that tells
its listeners about every new entry. Every socket everywhere therefore sees the
stream's order, and a cursor (log id and stream id) means the same on every instance.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import redis.asyncio as redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from eventlog.base import (
    SEEN_SECONDS,
    START,
    Entry,
    EventLog,
    Page,
    StoreUnavailable,
    Told,
    make_cursor,
    new_log_id,
    parse_cursor,
    within_bytes,
)

log = logging.getLogger(__name__)

STREAM_KEY = "livekit:events"
SEEN_KEY_PREFIX = "livekit:events:seen:"
# The id of the log this stream holds: made with the stream, part of every cursor.
LOG_ID_KEY = "livekit:events:log-id"
READ_BLOCK_MS = 5_000
READ_BATCH = 500
MAX_CONNECTIONS = 32
RESTART_SECONDS = 1.0  # before the reader starts again after it stopped (never by design)
# Replay pages read at once: the other connections stay free for webhooks.
CONCURRENT_READS = 8
_FOREIGN_REMEMBERED = 1_000

# KEYS: stream, seen-id key, log-id key. ARGV: maxlen, received_at, event json,
# seen seconds, a new log id (used when the stream has none yet).
# Returns {log id, stream id}, or false when the event id was stored before. A
# failing XADD raises inside the script, before the id is recorded as seen.
_APPEND = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return false
end
local log_id = redis.call('GET', KEYS[3])
if not log_id then
  log_id = ARGV[5]
  redis.call('SET', KEYS[3], log_id)
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'r', ARGV[2], 'e', ARGV[3], 'l', log_id)
redis.call('SET', KEYS[2], '1', 'EX', ARGV[4])
return {log_id, id}
"""

# KEYS: stream. ARGV: count. The id of the entry before the newest `count`, or false
# when fewer are kept; walks back in small steps so memory stays bounded.
_NEWEST_START = """
local left = tonumber(ARGV[1]) + 1
local last = '+'
while true do
  local step = math.min(left, 100)
  local batch = redis.call('XREVRANGE', KEYS[1], last, '-', 'COUNT', step)
  if #batch < step then
    return false
  end
  left = left - step
  last = batch[step][1]
  if left == 0 then
    return last
  end
  last = '(' .. last
end
"""


def _position(entry_id: str) -> tuple[int, int] | None:
    """A stream id `MS-SEQ` as a comparable pair; None if it is not one (or beyond 64 bits)."""
    parsed = parse_cursor(make_cursor("0" * 12, entry_id)) if "-" in entry_id else None
    return None if parsed is None else parsed[1]


def _since(since: str) -> tuple[str, tuple[int, int]] | None:
    """`(log id, position)` of a client's cursor; log id "" for the start of any log."""
    if since == START:
        return "", (0, 0)
    parsed = parse_cursor(since)
    if parsed is None or "-" not in since:  # a SQLite cursor, or not a cursor at all
        return None
    return parsed


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


class RedisEventLog(EventLog):
    kind = "redis"

    def __init__(self, url: str, keep: int) -> None:
        super().__init__()
        self.url = url
        self.keep = keep
        retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2)
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": 2,
            "retry": retry,
        }
        # Webhooks and replay pages share these: beyond them a command waits for a free
        # connection (up to its timeout) rather than failing at once.
        self._pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=3, socket_timeout=3, **options
        )
        self._redis = redis.Redis(connection_pool=self._pool)
        # The reader blocks in XREAD: its own connection, with a timeout beyond the block.
        self._reader_redis = redis.Redis.from_url(url, socket_timeout=READ_BLOCK_MS / 1000 + 3, **options)
        self._append = self._redis.register_script(_APPEND)
        self._newest_start = self._redis.register_script(_NEWEST_START)
        self._reads = asyncio.Semaphore(CONCURRENT_READS)
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._available = True
        self.log_id = ""  # learnt from Redis at start, on each append and each read
        self._foreign: set[str] = set()
        self._restart: asyncio.Task[None] | None = None  # the reader's, after it stopped
        self._entry_bytes = 1024  # running estimate, to size pages to a byte budget

    async def start(self) -> None:
        if self._reader is not None:
            return
        # Fix where live delivery starts before any socket can connect and ask for a replay.
        try:
            await self._redis.set(LOG_ID_KEY, new_log_id(), nx=True)
            self.log_id = str(await self._redis.get(LOG_ID_KEY) or "")
            last_id: str | None = await self._last_id()
        except (RedisError, OSError) as error:
            log.error("Redis event stream unavailable at start-up: %s", error)
            last_id = None
        self._reader = asyncio.create_task(self._read_forever(last_id))
        self._reader.add_done_callback(self._reader_ended)

    def _reader_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closing:
            return
        # Cannot happen by design (the loop catches everything); if it does, say so loudly.
        log.error("Redis event reader stopped: %r; restarting it", task.exception())
        self._set_available(False)
        self._reader = None
        # Held until it ends (a task nobody holds may be collected mid-way); close() cancels it.
        self._restart = asyncio.get_running_loop().create_task(
            self._start_again(), name="redis reader restart"
        )

    async def _start_again(self) -> None:
        await asyncio.sleep(RESTART_SECONDS)
        if not self._closing:
            await self.start()

    async def _last_id(self) -> str:
        newest: Any = await self._reader_redis.xrevrange(STREAM_KEY, count=1)
        return str(newest[0][0]) if newest else "0-0"

    async def _read_forever(self, last_id: str | None) -> None:
        """The one reader of this instance: stream entries, in order, to the listeners.
        It never stops on an error: it logs it, says the store is unavailable, and
        tries again from the last entry it delivered."""
        delay = 0.1
        while not self._closing:
            try:
                if last_id is None:
                    last_id = await self._last_id()
                if self.told is None and self.log_id:
                    self.told = self._told_at(last_id)
                answer: Any = await self._reader_redis.xread(
                    {STREAM_KEY: last_id}, count=READ_BATCH, block=READ_BLOCK_MS
                )
                self._set_available(True)
                delay = 0.1
                for _stream, items in answer or []:
                    entries = list(self._entries(items))
                    last_id = str(items[-1][0])
                    if entries:
                        self._entries_added(entries)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if self._closing:
                    return
                if not isinstance(error, (RedisError, OSError)):
                    log.exception(
                        "Redis event reader failed; it starts again from the last entry it delivered"
                    )
                elif self._available:
                    log.error("Redis event stream unavailable: %s", error)
                self._set_available(False)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _told_at(self, entry_id: str) -> Told:
        """Where this reader starts: every entry after `entry_id` reaches the listeners."""
        position = _position(entry_id) or (0, 0)
        return Told(position, make_cursor(self.log_id, entry_id) if position > (0, 0) else None)

    def _set_available(self, available: bool) -> None:
        if available == self._available:
            return
        self._available = available
        if available:
            log.info("Redis event stream is back; delivery resumes from the last cursor")
        self._state_changed(available)

    def _entries(self, items: Iterable[Any]) -> Iterable[Entry]:
        """Stream entries, as redis-py returns them, to entries; ones not written by
        this server (no event, a bad time) are skipped and logged once each."""
        for raw_id, fields in items:
            entry_id = str(raw_id)
            position = _position(entry_id)
            event_json, received_at = fields.get("e"), fields.get("r", "")
            if position is None or not isinstance(event_json, str) or not _digits(received_at):
                self._skip(entry_id)
                continue
            log_id = fields.get("l") or self.log_id
            yield Entry(position, make_cursor(log_id, entry_id), int(received_at), event_json)

    def _skip(self, entry_id: str) -> None:
        if entry_id in self._foreign:
            return
        if len(self._foreign) >= _FOREIGN_REMEMBERED:
            self._foreign.clear()
        self._foreign.add(entry_id)
        log.warning("skipping stream entry %s of %s: not an event this server wrote", entry_id, STREAM_KEY)

    async def append(self, event_id: str, received_at: int, event_json: str) -> str | None:
        try:
            answer = await self._append(
                keys=[STREAM_KEY, SEEN_KEY_PREFIX + event_id, LOG_ID_KEY],
                args=[self.keep, received_at, event_json, SEEN_SECONDS, new_log_id()],
            )
        except (RedisError, OSError) as error:
            log.error("Redis event store write failed, webhook answered 503: %s", error)
            if not isinstance(error, ResponseError):  # Redis answered: the connection is fine
                self._set_available(False)
            raise StoreUnavailable(str(error)) from error
        if not answer:
            return None
        self.log_id, entry_id = str(answer[0]), str(answer[1])
        # The reader tells the listeners, on this instance as on every other.
        return make_cursor(self.log_id, entry_id)

    async def read(self, since: str | None, limit: int, max_bytes: int) -> Page:
        try:
            async with self._reads:
                return await self._read(since, limit, max_bytes)
        except (RedisError, OSError) as error:
            log.error("Redis event store read failed: %s", error)
            raise StoreUnavailable(str(error)) from error

    async def _read(self, since: str | None, limit: int, max_bytes: int) -> Page:
        parsed = ("", (0, 0)) if since is None else _since(since)
        if parsed is None:
            return Page([], unknown_cursor=True)
        after = "-" if since is None else "({}-{}".format(*parsed[1])
        # Sized to the byte budget from the entries seen so far; at least one.
        count = max(1, min(limit, max_bytes // max(1, self._entry_bytes)))
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(LOG_ID_KEY)
        pipe.xinfo_stream(STREAM_KEY)
        pipe.xrange(STREAM_KEY, min=after, count=count + 1)
        log_id, info, items = await pipe.execute(raise_on_error=False)
        for answer in (log_id, items):
            if isinstance(answer, Exception):
                raise answer
        if isinstance(info, ResponseError) and "no such key" in str(info).lower():
            info = {}  # no stream yet: nothing was ever stored
        elif isinstance(info, Exception):
            raise info
        self.log_id = log_id or self.log_id
        last = _position(str(info.get("last-generated-id", "0-0"))) or (0, 0)
        if since is not None and (parsed[0] not in ("", log_id) or parsed[1] > last):
            return Page([], unknown_cursor=True)
        more = len(items) > count
        items = items[:count]
        entries = list(self._entries(items))
        if entries:
            size = sum(len(entry.event_json) for entry in entries) // len(entries)
            self._entry_bytes = (self._entry_bytes + size) // 2 or 1
        kept = within_bytes(entries, max_bytes)
        resume: str | None
        if len(kept) < len(entries):
            more, resume = True, kept[-1].cursor
        else:
            resume = make_cursor(self.log_id, str(items[-1][0])) if items else None
        return Page(kept, more=more, resume=resume, oldest_kept=self._trimmed(since, parsed[1], info))

    def _trimmed(self, since: str | None, position: tuple[int, int], info: dict[str, Any]) -> str | None:
        """The oldest kept entry's cursor when entries after `since` were trimmed.
        MAXLEN ~ leaves no record of what it dropped: when entries were dropped and the
        cursor is before the first kept one, say so (at worst when nothing was lost)."""
        if since is None or int(info.get("entries-added", 0)) <= int(info.get("length", 0)):
            return None
        first_id = str(info.get("recorded-first-entry-id", "0-0"))
        first = _position(first_id)
        if first is None or position >= first:
            return None
        return make_cursor(self.log_id, first_id)

    async def newest_start(self, count: int) -> str | None:
        try:
            entry_id = await self._newest_start(keys=[STREAM_KEY], args=[count])
            if entry_id and not self.log_id:
                self.log_id = str(await self._redis.get(LOG_ID_KEY) or "")
        except (RedisError, OSError) as error:
            log.error("Redis event store read failed: %s", error)
            raise StoreUnavailable(str(error)) from error
        return make_cursor(self.log_id, str(entry_id)) if entry_id else None

    def health(self) -> dict[str, Any]:
        return {"store": self.kind, "ok": self._available}

    async def close(self) -> None:
        self._closing = True
        if self._restart is not None:
            self._restart.cancel()
            await asyncio.gather(self._restart, return_exceptions=True)
        if self._reader is not None:
            self._reader.cancel()
            # A cancelled read inside redis-py can end in another error: closing its
            # connection ends a blocked XREAD whatever happens to the cancellation.
            await self._reader_redis.connection_pool.disconnect()
            await asyncio.wait({self._reader}, timeout=2)
        await self._redis.aclose()
        await self._pool.disconnect()
        await self._reader_redis.aclose()
