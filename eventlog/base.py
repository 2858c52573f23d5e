"""The event log seam: what the handlers see, whichever store runs underneath.

A store appends verified webhook events, gives each a cursor, keeps the newest
ones and reads them back a bounded page at a time. It knows nothing of sockets:
it tells its listeners (the broadcaster) about each new entry once it is durable.
"""

from __future__ import annotations

import logging
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

# LiveKit retries a webhook within minutes; an event id is remembered this long,
# whatever EVENTS_KEEP keeps, so a late retry is still recognised.
SEEN_SECONDS = 86_400

# The cursor before the first event of any log: `since=0` asks for everything kept.
START = "0"
_CURSOR = re.compile(r"([0-9a-f]{12})\.(\d{1,20})(?:-(\d{1,20}))?", re.ASCII)
_MAX_PART = 2**64 - 1


class StoreUnavailable(Exception):
    """The store could not durably write or read; nothing was acknowledged."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored event, as the store gives it back."""

    order: tuple[int, int]  # its position in the log, comparable within one log
    cursor: str  # opaque to clients: `<log id>.<position>`
    received_at: int  # milliseconds since the epoch
    event_json: str  # LiveKit's event, as stored


@dataclass(frozen=True, slots=True)
class Page:
    """A bounded run of entries after a cursor, and what the reader must be told."""

    entries: list[Entry]
    more: bool = False  # the page was cut (count or bytes): read on from `resume`
    resume: str | None = None  # where the next page starts (past skipped foreign entries too)
    unknown_cursor: bool = False  # the cursor is not one of this log's: nothing was read
    oldest_kept: str | None = None  # set when entries after the cursor were already dropped


class Listener(Protocol):
    """Told by a store about each new entry, in log order, once it is durable."""

    def entries_added(self, entries: Sequence[Entry]) -> None: ...
    def store_state_changed(self, available: bool) -> None: ...


def new_log_id() -> str:
    """Made once when a store is created and kept in it: part of every cursor, so a
    cursor of another log (a deleted file, a wiped Redis) is recognised as foreign."""
    return secrets.token_hex(6)


def make_cursor(log_id: str, position: str) -> str:
    return f"{log_id}.{position}"


def parse_cursor(cursor: str) -> tuple[str, tuple[int, int]] | None:
    """`(log id, position)` of `<log id>.N` or `<log id>.MS-SEQ`; `START` is position 0
    of every log (log id ""); None for anything else, parts beyond 64 bits included."""
    if cursor == START:
        return "", (0, 0)
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        return None
    position = int(match.group(2)), int(match.group(3) or 0)
    if max(position) > _MAX_PART:
        return None
    return match.group(1), position


@dataclass(frozen=True, slots=True)
class Told:
    """How far this process's listeners were told: every entry after it reaches them."""

    order: tuple[int, int]
    cursor: str | None  # None: nothing was kept yet, so "from the oldest"


class EventLog(ABC):
    """Base of every store: keeps its listeners and tells them what was added."""

    kind = ""  # "sqlite" or "redis", for /healthz and the start-up line

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        # Set by the store once it knows where its listeners start; None until then.
        self.told: Told | None = None

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _entries_added(self, entries: Sequence[Entry]) -> None:
        self.told = Told(entries[-1].order, entries[-1].cursor)
        for listener in self._listeners:
            try:
                listener.entries_added(entries)
            except Exception:  # one broken listener must not stop the store or the others
                log.exception("event listener %r failed", listener)

    def _state_changed(self, available: bool) -> None:
        for listener in self._listeners:
            try:
                listener.store_state_changed(available)
            except Exception:
                log.exception("event listener %r failed", listener)

    async def start(self) -> None:  # noqa: B027 - a store with no background work keeps this
        """Connect and start background work; called once the event loop runs."""

    @abstractmethod
    async def append(self, event_id: str, received_at: int, event_json: str) -> str | None:
        """Store durably and return the new entry's cursor; None when this event id was
        stored before. Listeners hear of the entry once it is durable.

        Raises StoreUnavailable when nothing could be stored."""

    @abstractmethod
    async def read(self, since: str | None, limit: int, max_bytes: int) -> Page:
        """At most `limit` entries after `since` in log order, cut once they pass
        `max_bytes` (never fewer than one); `since` None reads from the oldest kept.

        Raises StoreUnavailable when the store cannot be read."""

    @abstractmethod
    async def newest_start(self, count: int) -> str | None:
        """The cursor after which the newest `count` entries follow; None when fewer
        are kept (read from the oldest)."""

    async def replay_start(self, count: int, told: Told | None) -> str | None:
        """Where a new socket without a cursor starts reading: before the newest `count`
        entries, and never after what the listeners had been told when it subscribed
        (`told`), since the live entries it saw while reading are not sent twice but
        read back from here. Raises StoreUnavailable."""
        start = await self.newest_start(count)
        if start is None or told is None:
            return start
        parsed = parse_cursor(start)
        return told.cursor if parsed is not None and parsed[1] > told.order else start

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """`{"store": kind, "ok": bool}` for /healthz; the details go to the log."""

    @abstractmethod
    async def close(self) -> None: ...


def within_bytes(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """The leading entries whose events fit in `max_bytes`, at least one."""
    total = 0
    for index, entry in enumerate(entries):
        total += len(entry.event_json)
        if total > max_bytes and index > 0:
            return entries[:index]
    return entries
