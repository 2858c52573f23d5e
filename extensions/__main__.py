"""Parked events, from the command line, for the store the server's settings name:

    python -m extensions parked [HANDLER]                 list them
    python -m extensions retry [HANDLER] [--event EV_ID]  hand them back to their handlers
    python -m extensions drop [HANDLER] [--event EV_ID]   forget them

A running server picks retried events up within a second or two (with Redis, whichever
instance is free). HANDLER is `module:function`, as /healthz and the logs name it.

It never creates a store: a missing EVENTS_DB file, a file that is not SQLite or a
Redis it cannot reach is one line on standard error and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.exceptions import RedisError

from eventlog import StoreUnavailable, open_event_log
from extensions.events import open_feed
from ground.config import Config, ConfigError


class StoreProblem(Exception):
    """The store the settings name cannot be used here; the message says why, in one line."""


SQLITE_HEADER = b"SQLite format 3\x00"


async def check_store(config: Config) -> None:
    """The store must exist already and answer: the CLI works on the server's store."""
    if config.events_redis_url:
        where = urlsplit(config.events_redis_url)
        name = f"{where.hostname}:{where.port or 6379}"
        client = redis.Redis.from_url(config.events_redis_url, socket_connect_timeout=3, socket_timeout=3)
        try:
            await client.ping()
        except (RedisError, OSError) as error:
            raise StoreProblem(f"cannot reach Redis at {name} (EVENTS_REDIS_URL): {error}") from None
        finally:
            await client.aclose()
        return
    path = Path(config.events_db)
    if not path.is_file():
        raise StoreProblem(
            f"no event store at {path} (EVENTS_DB): the server creates it on its first start; "
            "this command never does"
        )
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except OSError as error:
        raise StoreProblem(f"cannot read {path} (EVENTS_DB): {error.strerror}") from None
    if header != SQLITE_HEADER:
        raise StoreProblem(f"{path} (EVENTS_DB) is not a SQLite file")


async def main(command: str, handler: str | None, event_id: str | None) -> int:
    config = Config.from_env()
    await check_store(config)
    try:
        event_log = open_event_log(config)
    except sqlite3.Error as error:
        raise StoreProblem(f"cannot open {config.events_db} (EVENTS_DB): {error}") from None
    feed = open_feed(config, event_log)
    try:
        await feed.open()
        if command == "parked":
            parked = await feed.parked(handler)
            for item in parked:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(item.parked_at / 1000))
                print(f"{item.handler}\t{item.event_id}\t{item.attempts} attempts\t{when}\t{item.error}")
            print(f"{len(parked)} parked", file=sys.stderr)
        elif command == "retry":
            print(f"{await feed.retry_parked(handler, event_id)} handed back to their handlers")
        else:
            print(f"{await feed.drop_parked(handler, event_id)} dropped")
    finally:
        await feed.close()
        await event_log.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m extensions", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["parked", "retry", "drop"])
    parser.add_argument("handler", nargs="?", help="module:function (default: every handler)")
    parser.add_argument("--event", help="only this event id")
    arguments = parser.parse_args()
    try:
        sys.exit(asyncio.run(main(arguments.command, arguments.handler, arguments.event)))
    except ConfigError as error:
        sys.exit(f"Configuration error: {error}")
    except StoreProblem as error:
        sys.exit(" ".join(f"python -m extensions: {error}".split()))
    except (sqlite3.Error, RedisError, OSError, StoreUnavailable) as error:
        sys.exit(
            " ".join(f"python -m extensions: the event store failed: {type(error).__name__}: {error}".split())
        )
