"""The webhook event log: durable, read back by cursor a page at a time."""

from __future__ import annotations

from eventlog.base import START, Entry, EventLog, Listener, Page, StoreUnavailable, Told
from ground.config import Config

__all__ = ["START", "Entry", "EventLog", "Listener", "Page", "StoreUnavailable", "Told", "open_event_log"]


def open_event_log(config: Config, shared: bool = False) -> EventLog:
    """The Redis stream when EVENTS_REDIS_URL is set, else the SQLite file; `shared`: other
    processes (WORKERS) write to the same file, so this one follows it for their entries."""
    if config.events_redis_url:
        from eventlog.redis import RedisEventLog

        return RedisEventLog(config.events_redis_url, config.events_keep)
    from eventlog.sqlite import SqliteEventLog

    return SqliteEventLog(config.events_db, config.events_keep, shared=shared)
