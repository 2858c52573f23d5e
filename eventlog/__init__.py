"""The webhook event log: durable, replayable by cursor, fanned out to sockets."""

from __future__ import annotations

from config import Config
from eventlog.base import EventLog, Frame, Replay, StoreUnavailable, Subscriber

__all__ = ["EventLog", "Frame", "Replay", "StoreUnavailable", "Subscriber", "open_event_log"]


def open_event_log(config: Config) -> EventLog:
    """The Redis stream when EVENTS_REDIS_URL is set, else the SQLite file."""
    if config.events_redis_url:
        from eventlog.redis import RedisEventLog

        return RedisEventLog(config.events_redis_url, config.events_keep, config.events_replay)
    from eventlog.sqlite import SqliteEventLog

    return SqliteEventLog(config.events_db, config.events_keep, config.events_replay)
