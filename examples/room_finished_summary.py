"""When a room ends, write one line about it: how long it lasted and who was there.

    APP_EXTENSIONS=examples.room_finished_summary ROOM_SUMMARY_FILE=data/rooms.txt

The "consume the event as you wish" of OpenVidu's tutorials, done after LiveKit got its
200, from the durable event log: the participants are the `participant_joined` events
of that room still kept in the log (EVENTS_KEEP), not a list held in memory, so the line
is right after a restart and on whichever instance handles the event. A line looks like

    2026-02-17T18:11:47Z room "demo-room" (RM_xxx) lasted 12m05s, 2 participants: "alice", "bob" [EV_xxx]

At least once: if the server dies while writing, the line may appear twice, with the
same event id at its end.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from eventlog import EventLog
from extensions import AppContext, EventContext, WebhookEvent


def summary_path(app: AppContext) -> Path:
    return Path(app.config.setting("ROOM_SUMMARY_FILE", "data/room_summaries.txt"))


async def on_room_finished(event: WebhookEvent, context: EventContext) -> None:
    room = event.room
    seen: list[str] = []
    started = room.creation_time
    async for stored in kept_events(context.app.event_log):
        stored_room = stored.get("room", {})
        if stored_room.get("sid", stored_room.get("name")) != (room.sid or room.name):
            continue
        if stored.get("event") == "room_started" and not started:
            started = int(stored.get("createdAt", 0))
        identity = stored.get("participant", {}).get("identity")
        if stored.get("event") == "participant_joined" and identity and identity not in seen:
            seen.append(identity)
    ended = event.created_at or int(time.time())
    lasted = max(0, ended - started) if started else 0
    who = f"{len(seen)} participant{'' if len(seen) == 1 else 's'}"
    if seen:
        who += ": " + ", ".join(json.dumps(identity) for identity in seen)
    line = (
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(ended))} room {json.dumps(room.name)} ({room.sid})"
        f" lasted {lasted // 60}m{lasted % 60:02d}s, {who} [{context.event_id}]\n"
    )
    await asyncio.to_thread(_append, summary_path(context.app), line)


async def kept_events(event_log: EventLog) -> AsyncIterator[dict[str, Any]]:
    """Every event the log keeps, oldest first, a bounded page at a time."""
    since = None
    while True:
        page = await event_log.read(since, 500, 1024 * 1024)
        for entry in page.entries:
            yield orjson.loads(entry.event_json)
        if not page.more:
            return
        since = page.resume or page.entries[-1].cursor


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as summaries:
        summaries.write(line)
