"""What GET /metrics (handlers/metrics.py) counts: a leaf that handlers report into and
that imports none of them.

Counted at a few central points (the hooks in handlers/support/observe.py), so the handlers
stay unaware of it: every answered request passes `Metrics.observe` (from the access
log), which reads the handler's `metrics_label` (a class attribute: token, webhook,
admin), status and `log_fields`; the event sockets report frames and closes; the
store's calls are timed where the handlers await them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from handlers.support.observe import Answering

# No `_created` series beside each counter: the text format has no place for them but as
# extra gauges, which double what a scrape reads. (A process-wide switch of the client.)
disable_created_metrics()  # type: ignore[no-untyped-call]

# LiveKit's event names; any other (newer servers add some) is counted as "other",
# so a signed but odd sender cannot grow the number of series.
EVENT_TYPES = frozenset(
    {
        "room_started",
        "room_finished",
        "participant_joined",
        "participant_left",
        "participant_connection_aborted",
        "track_published",
        "track_unpublished",
        "egress_started",
        "egress_updated",
        "egress_ended",
        "ingress_started",
        "ingress_ended",
        "agent_job_started",
        "agent_job_ended",
    }
)
# Why a webhook was refused, by the status it got (see handlers/webhook.py).
WEBHOOK_REFUSALS = {
    400: "not_an_event",
    401: "signature",
    405: "method",
    413: "too_large",
    415: "content_type",
    503: "store_unavailable",
}
# The admin API's actions, by handler and method (handlers/rooms.py).
ADMIN_ACTIONS = {
    ("RoomsHandler", "GET"): "list_rooms",
    ("RoomHandler", "GET"): "get_room",
    ("RoomHandler", "DELETE"): "delete_room",
    ("ParticipantHandler", "GET"): "get_participant",
    ("ParticipantHandler", "PATCH"): "update_participant",
    ("RemoveHandler", "POST"): "remove_participant",
    ("MuteHandler", "POST"): "mute_track",
    ("BansHandler", "GET"): "list_bans",
    ("BanHandler", "DELETE"): "lift_ban",
}
# Close codes this server sends (handlers/events.py), as the reason a socket closed.
SERVER_CLOSES = {1008: "too_slow", 1001: "shutdown", 1013: "store_unavailable", 1011: "error"}
# Store calls take from well under a millisecond (SQLite, group commit) to a Redis round trip.
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The metrics of one application, in a registry of its own."""

    def __init__(self, socket_count: Callable[[], int], event_handlers: Any = None) -> None:
        self.registry = CollectorRegistry()
        self.exposed = self.registry  # what /metrics answers (WORKERS: every worker's, summed)
        self.token_requests = Counter(
            "livekit_app_token_requests",
            "POST /token answers, by request shape (openvidu, standard, or unknown when "
            "refused before its shape was known) and HTTP status",
            ["shape", "status"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "livekit_app_webhooks",
            "Webhooks answered, by result (stored, duplicate, refused) and the reason of a refusal",
            ["result", "reason"],
            registry=self.registry,
        )
        self.events = Counter(
            "livekit_app_events_stored",
            "Webhook events stored, by LiveKit event name (other: a name this version does not know)",
            ["type"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "livekit_app_rate_limited",
            "Requests refused with 429 by a rate limit, by handler",
            ["handler"],
            registry=self.registry,
        )
        self.admin_requests = Counter(
            "livekit_app_admin_requests",
            "Admin API answers, by action (list_rooms, remove_participant, mute_track...) and HTTP status",
            ["action", "status"],
            registry=self.registry,
        )
        sockets = Gauge("livekit_app_event_sockets", "Connected WS /events sockets", registry=self.registry)
        sockets.set_function(socket_count)
        self.sockets_closed = Counter(
            "livekit_app_event_sockets_closed",
            "WS /events sockets closed, by reason: too_slow, shutdown, store_unavailable (the "
            "replay could not read the store), error, server (another close by this server), "
            "client (the peer closed or its connection dropped)",
            ["reason"],
            registry=self.registry,
        )
        self.store_seconds = Histogram(
            "livekit_app_event_store_seconds",
            "Time the handlers waited on the event store, by operation (append, read)",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=self.registry,
        )
        # Counted once per socket and frame, the fan-out's inner loop: a plain number
        # here, turned into a counter only when /metrics is read.
        self.frames_sent = 0
        self.registry.register(_FramesSent(self))
        if event_handlers is not None:  # APP_EXTENSIONS' event handlers: read when scraped
            self.registry.register(_EventHandlers(event_handlers))
        self._children: dict[tuple[Any, ...], Any] = {}
        # The usual series exist from the start (at 0), so rates work from the first scrape.
        for labels in (("openvidu", "200"), ("standard", "201")):
            self.child(self.token_requests, *labels)
        for result in ("stored", "duplicate"):
            self.child(self.webhooks, result, "")
        for operation in ("append", "read"):
            self.child(self.store_seconds, operation)
        for reason in ("too_slow", "shutdown", "client"):
            self.child(self.sockets_closed, reason)

    def child(self, metric: Any, *labels: str) -> Any:
        # prometheus-client's labels() validates on every call; the few label sets are kept.
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe(self, handler: Answering) -> None:
        status = handler.get_status()
        fields: dict[str, Any] = getattr(handler, "log_fields", {})
        if status == 429:
            self.child(self.rate_limited, endpoint_name(handler)).inc()
        label = getattr(handler, "metrics_label", "")
        if label == "token":
            if handler.request.method == "POST":
                self.child(self.token_requests, fields.get("shape", "unknown"), str(status)).inc()
        elif label == "webhook":
            if status == 200:
                result = fields.get("result", "stored")
                self.child(self.webhooks, result, "").inc()
                if result == "stored":
                    event = fields.get("event", "")
                    self.child(self.events, event if event in EVENT_TYPES else "other").inc()
            else:
                self.child(self.webhooks, "refused", WEBHOOK_REFUSALS.get(status, str(status))).inc()
        elif label == "admin":
            action = ADMIN_ACTIONS.get((endpoint_name(handler), handler.request.method or ""), "other")
            self.child(self.admin_requests, action, str(status)).inc()

    def socket_closed(self, handler: Any) -> None:
        # Tornado keeps no trace of who closed first, so the socket notes its own closes.
        reason = (
            SERVER_CLOSES.get(handler.closed_with, "server") if hasattr(handler, "closed_with") else "client"
        )
        self.child(self.sockets_closed, reason).inc()


class _FramesSent(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        family = CounterMetricFamily(
            "livekit_app_event_frames_sent",
            "Frames written to WS /events sockets: events (replayed and live) and notices",
        )
        family.add_metric([], self.metrics.frames_sent)
        yield family


class _EventHandlers(Collector):
    """What /healthz says of the event handlers (extensions/events.py), as metrics."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def collect(self) -> Any:
        health = self.runner.health()
        handled = CounterMetricFamily(
            "livekit_app_event_handler_events_handled", "Events the event handlers (APP_EXTENSIONS) handled"
        )
        handled.add_metric([], health.get("handled", 0))
        skipped = CounterMetricFamily(
            "livekit_app_event_handler_events_skipped",
            "Events trimmed from the store (EVENTS_KEEP) before the event handlers got to them",
        )
        skipped.add_metric([], health.get("skipped", 0))
        parked = GaugeMetricFamily(
            "livekit_app_event_handler_parked",
            "Events an event handler gave up on after EVENT_HANDLER_MAX_ATTEMPTS, by handler",
            labels=["handler"],
        )
        for handler, count in health.get("parkedBy", {}).items():
            parked.add_metric([str(handler)], count)
        waiting = GaugeMetricFamily(
            "livekit_app_event_handler_oldest_pending_seconds",
            "How long the oldest event an event handler has yet to finish has waited (0: none), by handler",
            labels=["handler"],
        )
        for handler, seconds in health.get("oldestPendingSeconds", {}).items():
            waiting.add_metric([str(handler)], seconds)
        yield from (handled, skipped, parked, waiting)


def endpoint_name(handler: Any) -> str:
    """The handler class that answered: for a POST on the lane (handlers/support/lane.py),
    the one that would have."""
    answers_for = getattr(handler, "answers_for", None)
    return (answers_for if isinstance(answers_for, type) else type(handler)).__name__
