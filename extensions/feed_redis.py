"""Event handler progress on the shared Redis stream: one consumer group per handler.

Every instance reads the event stream in each handler's group (XREADGROUP), so each
event goes to one instance only; it is acknowledged (XACK) once handled. An instance
that dies leaves its events pending in the group: after EVENT_HANDLER_CLAIM_SECONDS
of silence another instance claims them (XAUTOCLAIM). An instance that restarts under
the same name (host and port) takes its own pending events back at once. A handler that
runs long tells the group so (XCLAIM JUSTID resets the idle time).

Parked events go to a stream of their own per handler (with their JSON, so trimming
cannot lose them); a retry moves them, atomically, to the handler's retry stream, which
the same group reads alongside the event stream.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ResponseError

from eventlog.base import make_cursor
from eventlog.redis import STREAM_KEY
from extensions.feed import Delivery, Parked, event_id_of

log = logging.getLogger("extensions.events")

PARKED_PREFIX = "livekit:events:parked:"
RETRY_PREFIX = "livekit:events:retry:"
BLOCK_MS = 1_000

# KEYS: parked stream, retry stream. ARGV: parked entry id. Moves one entry, atomically.
_MOVE = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entries == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(entries[1][2]))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"""


def consumer_name(port: int) -> str:
    """Stable across restarts of one instance, different between instances."""
    return f"{socket.gethostname()}:{port}"


class RedisFeed:
    def __init__(self, url: str, consumer: str, claim_seconds: int) -> None:
        self.consumer = consumer
        self.claim_ms = claim_seconds * 1000
        self._redis = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2, socket_timeout=BLOCK_MS / 1000 + 3
        )
        self._move = self._redis.register_script(_MOVE)
        self._own_pending: dict[str, bool] = {}
        self._next_claim: dict[str, float] = {}
        self._parked_counts: dict[str, int] = {}
        self.skipped = 0
        self.claimed = 0

    async def start(self, handlers: list[str]) -> None:
        for handler in handlers:
            await self._create_groups(handler)
            self._own_pending[handler] = True
            self._next_claim[handler] = 0.0
            self._parked_counts[handler] = 0
        await self.count_parked()

    async def _create_groups(self, handler: str) -> None:
        # A new group starts after the newest event; its retry stream from the start.
        for key, first in ((STREAM_KEY, "$"), (RETRY_PREFIX + handler, "0")):
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
                await self._redis.xgroup_create(key, handler, id=first, mkstream=True)

    def wake(self) -> None:
        """Nothing to do: XREADGROUP BLOCK returns as soon as an event is added."""

    async def next(self, handler: str, limit: int) -> list[Delivery]:
        try:
            return await self._next(handler, limit)
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            # Redis lost the groups (a restart without persistence, a flush): start again.
            log.error("event handler %s: its consumer group is gone from Redis; it starts over", handler)
            await self._create_groups(handler)
            return []

    async def _next(self, handler: str, limit: int) -> list[Delivery]:
        streams = (STREAM_KEY, RETRY_PREFIX + handler)
        if self._own_pending[handler]:
            # Ours from before a restart or an error: they come first, in order.
            answer: Any = await self._redis.xreadgroup(
                handler, self.consumer, {key: "0" for key in streams}, count=limit
            )
            deliveries = await self._deliveries(handler, answer)
            if deliveries:
                return deliveries
            if not any(entries for _, entries in answer or []):
                self._own_pending[handler] = False
        if time.monotonic() >= self._next_claim[handler]:
            claimed = await self._claim(handler, streams, limit)
            if claimed:
                return claimed
            self._next_claim[handler] = time.monotonic() + self.claim_ms / 2000
        answer = await self._redis.xreadgroup(
            handler, self.consumer, {key: ">" for key in streams}, count=limit, block=BLOCK_MS
        )
        return await self._deliveries(handler, answer)

    async def _claim(self, handler: str, streams: tuple[str, ...], limit: int) -> list[Delivery]:
        """Events another instance took and has said nothing about for too long."""
        for key in streams:
            answer: Any = await self._redis.xautoclaim(
                key, handler, self.consumer, self.claim_ms, "0-0", count=limit
            )
            entries = answer[1] if answer else []
            if entries:
                self.claimed += len(entries)
                log.warning(
                    "event handler %s: took over %d events another instance left pending for over %d s",
                    handler,
                    len(entries),
                    self.claim_ms // 1000,
                )
                return await self._deliveries(handler, [[key, entries]])
        return []

    async def _deliveries(self, handler: str, answer: Any) -> list[Delivery]:
        deliveries: list[Delivery] = []
        unreadable: list[tuple[str, str]] = []
        for key, entries in answer or []:
            for entry_id, fields in entries:
                if not fields or "e" not in fields:
                    unreadable.append((key, entry_id))  # trimmed meanwhile, or not ours
                    continue
                if key == STREAM_KEY:
                    cursor = make_cursor(fields.get("l", ""), entry_id)  # as the event log names it
                    deliveries.append(_delivery(cursor, fields, key=entry_id))
                else:
                    deliveries.append(_delivery(fields["c"], fields, parked_key=entry_id))
        if unreadable:
            self.skipped += len(unreadable)
            log.error(
                "event handler %s: %d stream entries were trimmed before it handled them, or are not events",
                handler,
                len(unreadable),
            )
            for key, entry_id in unreadable:
                await self._redis.xack(key, handler, entry_id)
        return deliveries

    async def done(self, handler: str, deliveries: list[Delivery]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                stored = [d.key for d in deliveries if not d.parked_key]
                if stored:
                    pipe.xack(STREAM_KEY, handler, *stored)
                retried = [d.parked_key for d in deliveries if d.parked_key]
                if retried:
                    pipe.xack(RETRY_PREFIX + handler, handler, *retried)
                    pipe.xdel(RETRY_PREFIX + handler, *retried)
                await pipe.execute()
        except BaseException:
            self._own_pending[handler] = True  # read them again: handled twice, never lost
            raise

    async def park(self, handler: str, delivery: Delivery, attempts: int, error: str) -> None:
        fields = {
            "c": delivery.cursor,
            "i": delivery.event_id,
            "r": str(delivery.received_at),
            "e": delivery.event_json,
            "a": str(attempts),
            "x": error,
            "t": str(int(time.time() * 1000)),
        }
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xadd(PARKED_PREFIX + handler, fields)  # type: ignore[arg-type]
                if delivery.parked_key:
                    pipe.xack(RETRY_PREFIX + handler, handler, delivery.parked_key)
                    pipe.xdel(RETRY_PREFIX + handler, delivery.parked_key)
                else:
                    pipe.xack(STREAM_KEY, handler, delivery.key)
                await pipe.execute()
        except BaseException:
            self._own_pending[handler] = True
            raise
        self._parked_counts[handler] = self._parked_counts.get(handler, 0) + 1

    async def keep_claimed(self, handler: str, delivery: Delivery) -> None:
        key = RETRY_PREFIX + handler if delivery.parked_key else STREAM_KEY
        entry_id = delivery.parked_key or delivery.key
        await self._redis.xclaim(key, handler, self.consumer, 0, [entry_id], justid=True)

    async def _handlers(self) -> list[str]:
        known = set(self._parked_counts)
        async for key in self._redis.scan_iter(match=PARKED_PREFIX + "*", count=1000):
            known.add(str(key).removeprefix(PARKED_PREFIX))
        return sorted(known)

    async def count_parked(self) -> None:
        for handler in self._parked_counts:
            self._parked_counts[handler] = int(await self._redis.xlen(PARKED_PREFIX + handler))

    async def parked(self, handler: str | None = None) -> list[Parked]:
        found: list[Parked] = []
        for name in [handler] if handler else await self._handlers():
            entries: Any = await self._redis.xrange(PARKED_PREFIX + name)
            for entry_id, fields in entries:
                found.append(
                    Parked(
                        name,
                        entry_id,
                        fields.get("i", ""),
                        fields.get("c", ""),
                        int(fields.get("a", 0)),
                        fields.get("x", ""),
                        int(fields.get("t", 0)),
                    )
                )
        return found

    async def retry_parked(self, handler: str | None = None, event_id: str | None = None) -> int:
        moved = 0
        for parked in await self.parked(handler):
            if event_id is None or parked.event_id == event_id:
                moved += int(
                    await self._move(
                        keys=[PARKED_PREFIX + parked.handler, RETRY_PREFIX + parked.handler],
                        args=[parked.key],
                    )
                )
        return moved

    async def drop_parked(self, handler: str | None = None, event_id: str | None = None) -> int:
        dropped = 0
        for parked in await self.parked(handler):
            if event_id is None or parked.event_id == event_id:
                dropped += int(await self._redis.xdel(PARKED_PREFIX + parked.handler, parked.key))
        return dropped

    async def open(self) -> None:
        """Nothing to open: the client connects on first use."""

    def health(self) -> dict[str, Any]:
        return {
            "parked": sum(self._parked_counts.values()),
            "parkedBy": dict(self._parked_counts),
            "skipped": self.skipped,
            "claimed": self.claimed,
        }

    async def close(self) -> None:
        await self._redis.aclose()


def _delivery(cursor: str, fields: dict[str, str], parked_key: str = "", key: str = "") -> Delivery:
    event_json = fields["e"]
    event_id = fields.get("i") or event_id_of(event_json)
    return Delivery(cursor, event_id, int(fields.get("r", 0)), event_json, parked_key, key)
