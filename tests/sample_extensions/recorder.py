"""Event handlers that record what they get; `failures` makes one raise that many times."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from extensions import EventContext, WebhookEvent

calls: list[tuple[str, Any, EventContext]] = []
failures: dict[str, int] = {}  # event id -> times left to raise


async def on_event(event: WebhookEvent, context: EventContext) -> None:
    if failures.get(context.event_id, 0) > 0:
        failures[context.event_id] -= 1
        raise ConnectionError(f"not now ({context.attempt})")
    calls.append(("on_event", event, context))


def on_room_finished(event: WebhookEvent, context: EventContext) -> None:
    """A plain function: runs on a thread of its own."""
    calls.append(("on_room_finished", event, context))


async def on_participant_left(event: WebhookEvent, context: EventContext) -> None:
    """Slow, on the event loop (awaiting)."""
    await asyncio.sleep(3)
    calls.append(("on_participant_left", event, context))


def on_track_published(event: WebhookEvent, context: EventContext) -> None:
    """Slow and blocking, on its own thread."""
    time.sleep(3)
    calls.append(("on_track_published", event, context))
