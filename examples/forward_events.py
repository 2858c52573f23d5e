"""Forward every stored webhook event to your own service, at least once.

    APP_EXTENSIONS=examples.forward_events FORWARD_URL=https://example.com/livekit-events

Each event is POSTed to FORWARD_URL as LiveKit's JSON, exactly as stored, with the
header `X-Event-Id: <event id>`. A non-2xx answer or a connection error raises, so the
server retries the event with backoff and, after EVENT_HANDLER_MAX_ATTEMPTS, parks it
(`python -m extensions retry` sends it again). At least once: after a crash an event
may arrive twice, with the same X-Event-Id; drop repeats on your side.
"""

from __future__ import annotations

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from extensions import AppContext, EventContext, ExtensionError, WebhookEvent


def setup(app: AppContext) -> None:
    """Refuse to start without somewhere to forward to."""
    if not app.config.setting("FORWARD_URL").startswith(("http://", "https://")):
        raise ExtensionError("examples.forward_events needs FORWARD_URL, the http(s) URL to POST events to")


async def on_event(event: WebhookEvent, context: EventContext) -> None:
    """Every event, whatever its name."""
    url = context.app.config.setting("FORWARD_URL")
    request = HTTPRequest(
        url,
        method="POST",
        body=context.event_json,
        headers={"Content-Type": "application/json", "X-Event-Id": context.event_id},
        request_timeout=10,
    )
    # raise_error=False: a connection error is code 599, a non-2xx like any other.
    response = await AsyncHTTPClient().fetch(request, raise_error=False)
    if not 200 <= response.code < 300:
        raise RuntimeError(f"{url} answered {response.code} to {event.event} {context.event_id}")
