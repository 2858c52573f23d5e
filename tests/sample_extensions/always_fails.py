"""An event handler that always fails: with EVENT_HANDLER_MAX_ATTEMPTS=1 each event is parked."""

from __future__ import annotations

from extensions import EventContext, WebhookEvent


async def on_event(event: WebhookEvent, context: EventContext) -> None:
    raise RuntimeError("always fails")
