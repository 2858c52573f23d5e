"""An event handler for tests across processes: appends `<pid> <event id>` to the file
named by RECORD_EVENTS_TO, one line per call (one write: lines never interleave)."""

from __future__ import annotations

import os

from extensions import EventContext, WebhookEvent


def on_event(event: WebhookEvent, context: EventContext) -> None:
    """A plain function: runs on a thread of its own."""
    descriptor = os.open(os.environ["RECORD_EVENTS_TO"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, f"{os.getpid()} {context.event_id}\n".encode())
    finally:
        os.close(descriptor)
