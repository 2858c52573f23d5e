"""Parked events, from the command line, for the store the server's settings name:

    python -m extensions parked [HANDLER]                 list them
    python -m extensions retry [HANDLER] [--event EV_ID]  hand them back to their handlers
    python -m extensions drop [HANDLER] [--event EV_ID]   forget them

A running server picks retried events up within a second or two (with Redis, whichever
instance is free). HANDLER is `module:function`, as /healthz and the logs name it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from eventlog import open_event_log
from extensions.events import open_feed
from ground.config import Config, ConfigError


async def main(command: str, handler: str | None, event_id: str | None) -> int:
    config = Config.from_env()
    event_log = open_event_log(config)
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
