"""A plain-function event handler that blocks for HANDLER_SECONDS, then records the event
id in RECORD_FILE."""

from __future__ import annotations

import time

from extensions import EventContext, WebhookEvent


def on_event(event: WebhookEvent, context: EventContext) -> None:
    config = context.app.config
    time.sleep(float(config.setting("HANDLER_SECONDS", "0")))
    with open(config.setting("RECORD_FILE"), "a") as record:
        record.write(f"{context.event_id}\n")
