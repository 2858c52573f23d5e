"""The one broadcaster of this process: owns the event sockets and builds each event's
WebSocket frame once, whatever the number of sockets. Stores tell it about new
entries (SQLite after its commit, Redis from its reader); it knows no store."""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from eventlog import Entry, Page

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Frame:
    """One event as sent on the wire, serialised once for every socket."""

    order: tuple[int, int]  # comparable position of the cursor in the log
    cursor: str
    data: bytes  # {"cursor", "receivedAt", "event"} as UTF-8 JSON
    wire: bytes  # the whole WebSocket text frame: header and data


def frame_data(entry: Entry) -> bytes:
    cursor, received_at, event = entry.cursor, entry.received_at, entry.event_json
    return f'{{"cursor":"{cursor}","receivedAt":{received_at},"event":{event}}}'.encode()


def make_frame(entry: Entry) -> Frame:
    data = frame_data(entry)
    return Frame(entry.order, entry.cursor, data, websocket_text_frame(data))


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


def unknown_cursor_notice(since: str) -> bytes:
    message = "This cursor is not one of this event log's; sending the newest events instead"
    return notice("unknown_cursor", message, since=since)


def page_notice(page: Page, since: str | None) -> bytes | None:
    """What a reader must be told before the entries of a page: that some were dropped."""
    if page.oldest_kept is None:
        return None
    message = f"Events after {since} before {page.oldest_kept} are no longer kept; sending what is"
    return notice("history_trimmed", message, since=since, oldestCursor=page.oldest_kept)


STORE_UNAVAILABLE = notice(
    "store_unavailable", "The event store is unreachable; events resume when it is back"
)
STORE_RECOVERED = notice("store_recovered", "The event store is back; delivery resumes")


class Subscriber(Protocol):
    def deliver(self, frame: Frame) -> None: ...
    def tell(self, notice_data: bytes) -> None: ...
    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Broadcaster:
    """Listens to the event log and fans each new entry out to every socket."""

    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    @property
    def count(self) -> int:
        return len(self._subscribers)

    def entries_added(self, entries: Sequence[Entry]) -> None:
        if not self._subscribers:
            return  # frames for no one (replays are framed from the store when asked)
        for entry in entries:
            frame = make_frame(entry)
            # A subscriber may drop itself while we iterate: iterate over a copy.
            for subscriber in tuple(self._subscribers):
                try:
                    subscriber.deliver(frame)
                except Exception:  # one socket's fault must not cost the others their event
                    log.exception("delivering %s to a socket failed", frame.cursor)

    def store_state_changed(self, available: bool) -> None:
        self.tell_all(STORE_RECOVERED if available else STORE_UNAVAILABLE)

    def tell_all(self, notice_data: bytes) -> None:
        for subscriber in tuple(self._subscribers):
            subscriber.tell(notice_data)

    def close_all(self, code: int, reason: str) -> None:
        for subscriber in tuple(self._subscribers):
            subscriber.close(code, reason)
