"""The event log seam: what the handlers see, whichever store runs underneath.

A store appends verified webhook events, gives each a cursor, keeps the newest
ones, replays them by cursor, and hands every new one to the local fan-out.
"""

from __future__ import annotations

import re
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import orjson


class StoreUnavailable(Exception):
    """The store could not durably write or read; nothing was acknowledged."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One event as sent on the wire, serialised once for every socket."""

    order: tuple[int, int]  # comparable position of the cursor in the log
    cursor: str
    data: bytes  # {"cursor", "receivedAt", "event"} as UTF-8 JSON
    wire: bytes  # the whole WebSocket text frame: header and data


def make_frame(order: tuple[int, int], cursor: str, received_at: int, event_json: str) -> Frame:
    data = f'{{"cursor":"{cursor}","receivedAt":{received_at},"event":{event_json}}}'.encode()
    return Frame(order, cursor, data, websocket_text_frame(data))


def websocket_text_frame(data: bytes) -> bytes:
    """A final, unmasked, uncompressed text frame (RFC 6455 5.2): what a server sends
    every client alike, so it is built once per event rather than once per socket."""
    size = len(data)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size <= 0xFFFF:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + data


def notice(code: str, message: str, **details: Any) -> bytes:
    """A frame that is not an event: it has `notice` and no `cursor`."""
    return orjson.dumps({"notice": code, "message": message, **details})


@dataclass(frozen=True, slots=True)
class Replay:
    notice: bytes | None  # set when the replay cannot be what the client asked for
    frames: list[Frame]


class Subscriber(Protocol):
    def deliver(self, frame: Frame) -> None: ...
    def tell(self, notice_data: bytes) -> None: ...
    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class EventLog(ABC):
    """Base of every store: keeps this process's subscribers and fans out to them."""

    def __init__(self, replay_count: int) -> None:
        self.replay_count = replay_count
        self._subscribers: set[Subscriber] = set()

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def _publish(self, frame: Frame) -> None:
        # A subscriber may drop itself while we iterate: iterate over a copy.
        for subscriber in tuple(self._subscribers):
            subscriber.deliver(frame)

    def _tell_all(self, notice_data: bytes) -> None:
        for subscriber in tuple(self._subscribers):
            subscriber.tell(notice_data)

    def close_sockets(self, code: int, reason: str) -> None:
        for subscriber in tuple(self._subscribers):
            subscriber.close(code, reason)

    async def start(self) -> None:  # noqa: B027 - a store with no background work keeps this
        """Connect and start background work; called once the event loop runs."""

    @abstractmethod
    async def append(self, event_id: str, received_at: int, event_json: str) -> Frame | None:
        """Store durably, then publish. None when the id was stored before.

        Raises StoreUnavailable when nothing could be stored."""

    @abstractmethod
    async def read(self, since: str | None, limit: int) -> Replay:
        """Events after `since` in order (at most `limit`), or the newest `limit`."""

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """`{"store": name, "ok": bool, ...}` for /healthz."""

    @abstractmethod
    async def close(self) -> None: ...


_CURSOR = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?", re.ASCII)


def parse_cursor(cursor: str) -> tuple[int, int] | None:
    """Cursors are `N` (SQLite row) or `MS-SEQ` (Redis stream id); None if neither."""
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)
