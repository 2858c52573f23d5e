"""The shared store for several instances: one Redis Stream.

A webhook on any instance is XADDed to the stream (its id checked and recorded in
the same script, so a retried event is stored once); each instance runs one
XREAD BLOCK reader that hands every new entry to its own sockets. Every socket
everywhere therefore sees the stream's order, and a cursor (the stream id) means
the same on every instance.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from eventlog.base import EventLog, Frame, Replay, StoreUnavailable, make_frame, notice, parse_cursor

log = logging.getLogger(__name__)

STREAM_KEY = "livekit:events"
SEEN_KEY_PREFIX = "livekit:events:seen:"
# LiveKit retries within about a minute; a day of remembered ids is plenty.
SEEN_SECONDS = 86_400
READ_BLOCK_MS = 5_000
READ_BATCH = 500

# KEYS: stream, seen-id key. ARGV: maxlen, received_at, event json, seen seconds.
# Returns the new stream id, or false when the event id was stored before.
_APPEND = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[4]) then
  return false
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'r', ARGV[2], 'e', ARGV[3])
"""


def _frame(entry_id: str, fields: Any) -> Frame:
    position = parse_cursor(entry_id)
    assert position is not None, entry_id
    return make_frame(position, entry_id, int(fields["r"]), fields["e"])


def _frames(entries: Any) -> list[Frame]:
    """Stream entries, as redis-py returns them, to frames."""
    return [_frame(str(entry_id), fields) for entry_id, fields in entries or []]


class RedisEventLog(EventLog):
    def __init__(self, url: str, keep: int, replay_count: int) -> None:
        super().__init__(replay_count)
        self.url = url
        self.keep = keep
        retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2)
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": 2,
            "retry": retry,
        }
        self._redis = redis.Redis.from_url(url, socket_timeout=3, **options)
        # The reader blocks in XREAD: its own connection, with a timeout beyond the block.
        self._reader_redis = redis.Redis.from_url(url, socket_timeout=READ_BLOCK_MS / 1000 + 3, **options)
        self._append = self._redis.register_script(_APPEND)
        self._reader: asyncio.Task[None] | None = None
        self._available = True
        self._error = ""

    async def start(self) -> None:
        if self._reader is not None:
            return
        # Fix where live delivery starts before any socket can connect and ask for a replay.
        try:
            last_id: str | None = await self._last_id()
        except (RedisError, OSError) as error:
            log.error("Redis event stream unavailable at start-up: %s", error)
            last_id = None
        self._reader = asyncio.create_task(self._read_forever(last_id))

    async def _last_id(self) -> str:
        newest: Any = await self._reader_redis.xrevrange(STREAM_KEY, count=1)
        return str(newest[0][0]) if newest else "0-0"

    async def _read_forever(self, last_id: str | None) -> None:
        """The one reader of this instance: stream entries, in order, to local sockets."""
        delay = 0.1
        while True:
            try:
                if last_id is None:
                    last_id = await self._last_id()
                answer: Any = await self._reader_redis.xread(
                    {STREAM_KEY: last_id}, count=READ_BATCH, block=READ_BLOCK_MS
                )
                self._set_available(True)
                delay = 0.1
                for _stream, entries in answer or []:
                    for frame in _frames(entries):
                        self._publish(frame)
                        last_id = frame.cursor
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                self._set_available(False, str(error))
                # Resume from the last delivered id once Redis is back: nothing is skipped.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _set_available(self, available: bool, error: str = "") -> None:
        if available == self._available:
            return
        self._available, self._error = available, error
        if available:
            log.info("Redis event stream is back; delivery resumes from the last cursor")
            self._tell_all(notice("store_recovered", "The event store is back; delivery resumes"))
        else:
            log.error("Redis event stream unavailable: %s", error)
            self._tell_all(
                notice("store_unavailable", "The event store is unreachable; events resume when it is back")
            )

    async def append(self, event_id: str, received_at: int, event_json: str) -> Frame | None:
        try:
            entry_id = await self._append(
                keys=[STREAM_KEY, SEEN_KEY_PREFIX + event_id],
                args=[self.keep, received_at, event_json, SEEN_SECONDS],
            )
        except (RedisError, OSError) as error:
            self._set_available(False, str(error))
            raise StoreUnavailable(str(error)) from error
        if not entry_id:
            return None
        # The reader delivers it, to this instance's sockets as to every other's.
        return _frame(str(entry_id), {"r": str(received_at), "e": event_json})

    async def read(self, since: str | None, limit: int) -> Replay:
        try:
            return await self._read(since, limit)
        except (RedisError, OSError) as error:
            raise StoreUnavailable(str(error)) from error

    async def _read(self, since: str | None, limit: int) -> Replay:
        if since is None:
            newest: Any = await self._redis.xrevrange(STREAM_KEY, count=limit)
            return Replay(None, _frames(reversed(newest)))
        position = parse_cursor(since)
        info = await self._stream_info()
        last = parse_cursor(info.get("last-generated-id", "0-0")) or (0, 0)
        if position is None or "-" not in since or position > last:
            message = "This cursor is not one of this stream's; sending the newest events instead"
            return Replay(
                notice("unknown_cursor", message, since=since), (await self._read(None, limit)).frames
            )
        frames = _frames(await self._redis.xrange(STREAM_KEY, min=f"({since}", count=limit))
        # Trimming (MAXLEN ~) leaves no record of what it dropped: when entries were dropped
        # and the cursor is before the first kept one, say so (at worst when nothing was lost).
        first = parse_cursor(info.get("recorded-first-entry-id", "0-0")) or (0, 0)
        trimmed = int(info.get("entries-added", 0)) > int(info.get("length", 0))
        if trimmed and position < first:
            oldest = info["recorded-first-entry-id"]
            message = f"Events after {since} before {oldest} are no longer kept; sending what is"
            return Replay(notice("history_trimmed", message, since=since, oldestCursor=oldest), frames)
        return Replay(None, frames)

    async def _stream_info(self) -> dict[str, str]:
        try:
            info = await self._redis.xinfo_stream(STREAM_KEY)
        except redis.ResponseError:  # no stream yet: nothing was ever stored
            return {}
        return {key: str(value) for key, value in info.items() if not isinstance(value, (tuple, list))}

    def health(self) -> dict[str, Any]:
        state: dict[str, Any] = {"store": "redis", "ok": self._available}
        if not self._available:
            state["error"] = self._error
        return state

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._redis.aclose()
        await self._reader_redis.aclose()
