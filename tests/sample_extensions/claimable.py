"""An event handler that takes HANDLER_SECONDS, then writes "<port> <event id>" to RECORD_FILE."""

from __future__ import annotations

import asyncio

from extensions import EventContext, WebhookEvent


async def on_event(event: WebhookEvent, context: EventContext) -> None:
    config = context.app.config
    await asyncio.sleep(float(config.setting("HANDLER_SECONDS", "0")))
    with open(config.setting("RECORD_FILE"), "a") as record:
        record.write(f"{config.server_port} {context.event_id}\n")
