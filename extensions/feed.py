"""The store's side of event handlers: the events a handler has yet to handle on this
instance, and its progress (a checkpoint, the events it parked). One feed per store:
feed_sqlite for the SQLite file, feed_redis for the Redis stream (a consumer group)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

import orjson


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stored event, handed to one handler."""

    cursor: str  # the event's cursor in the event log
    event_id: str
    received_at: int  # ms since the epoch
    event_json: str  # LiveKit's JSON, as stored
    parked_key: str = ""  # set when this is a retry of a parked event: its key in the parked store
    key: str = ""  # the store's own id of the entry, when it is not the cursor (a Redis stream id)


@dataclass(frozen=True, slots=True)
class Parked:
    """An event a handler gave up on after its attempts; kept until retried."""

    handler: str
    key: str
    event_id: str
    cursor: str
    attempts: int
    error: str
    parked_at: int  # ms since the epoch


def event_id_of(event_json: str) -> str:
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
        return str(orjson.loads(event_json).get("id", ""))
    return ""


class Feed(Protocol):
    async def start(self, handlers: list[str]) -> None:
        """Register the handlers: a new one starts after the newest stored event."""

    async def next(self, handler: str, limit: int) -> list[Delivery]:
        """The next events for `handler`, in order; waits a little for new ones, then
        returns what there is (maybe nothing). Retries of parked events come first."""

    async def done(self, handler: str, deliveries: list[Delivery]) -> None:
        """Progress: these are handled (or not the handler's business) and never come again."""

    async def park(self, handler: str, delivery: Delivery, attempts: int, error: str) -> None:
        """Set the event aside (kept with its JSON and the last error), and move past it."""

    async def keep_claimed(self, handler: str, delivery: Delivery) -> None:
        """Tell other instances this one is still working on it (a long handler)."""

    async def count_parked(self) -> None:
        """Read the parked counts health() gives from the store again (another process,
        `python -m extensions`, another instance, may have changed them)."""

    async def parked(self, handler: str | None = None) -> list[Parked]:
        """What is parked, oldest first."""

    async def retry_parked(self, handler: str | None = None, event_id: str | None = None) -> int:
        """Hand parked events back to their handlers; returns how many."""

    async def drop_parked(self, handler: str | None = None, event_id: str | None = None) -> int:
        """Forget parked events for good; returns how many."""

    async def open(self) -> None:
        """Be ready for parked(), retry_parked() and drop_parked() without start()."""

    def health(self) -> dict[str, Any]:
        """Counts for /healthz: parked events per handler, events skipped by trimming."""

    def wake(self) -> None:
        """A new event was stored: stop waiting."""

    async def close(self) -> None: ...
