"""The webhook event log: durable, read back by cursor a page at a time."""

from __future__ import annotations

import os

from eventlog.base import START, Entry, EventLog, Listener, Page, StoreUnavailable, Told
from ground.config import Config

__all__ = ["START", "Entry", "EventLog", "Listener", "Page", "StoreUnavailable", "Told", "open_event_log"]


def open_event_log(config: Config, shared_dir: str | None = None) -> EventLog:
    """The Redis stream when EVENTS_REDIS_URL is set, else the SQLite file. `shared_dir`
    (WORKERS): other processes write to the same file, so this one follows it for their
    entries, and they take turns by a lock file in that directory."""
    if config.events_redis_url:
        from eventlog.redis import RedisEventLog

        return RedisEventLog(config.events_redis_url, config.events_keep)
    from eventlog.sqlite import SqliteEventLog

    if shared_dir is None:
        return SqliteEventLog(config.events_db, config.events_keep)
    return SqliteEventLog(
        config.events_db,
        config.events_keep,
        shared=True,
        writers_lock=os.path.join(shared_dir, "events-writers.lock"),
        file_record=os.path.join(shared_dir, "events-file"),
    )
