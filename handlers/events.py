"""WS /events: replay by cursor, then live events; GET /events/history: the same, as a list."""

from __future__ import annotations

import contextlib
import logging
from asyncio import Future

import tornado.websocket
from tornado.iostream import StreamClosedError

from eventlog import EventLog, Frame, StoreUnavailable
from eventlog.base import notice
from handlers.base import ApiError, AwaitingHandler
from handlers.origins import UNKNOWN_HOST, EveryOriginChecked, known_host, same_origin

log = logging.getLogger(__name__)

# Close code for a socket that cannot keep up: policy violation, with a reason that says so.
CLOSE_TOO_SLOW = 1008
CLOSE_GOING_AWAY = 1001
HISTORY_MAX = 1000
REPLAY_BATCH = 100


class EventsSocketHandler(EveryOriginChecked, tornado.websocket.WebSocketHandler):
    """Relays what the event log yields; knows nothing about webhooks or tokens."""

    def initialize(self, event_log: EventLog) -> None:
        self.event_log = event_log
        self.queue_limit: int = self.settings["config"].events_socket_queue
        # Live frames that arrive while the replay is being sent wait here.
        self.held: list[Frame] | None = []
        self.last_order = (-1, -1)
        # Frames written while the connection's buffer was not empty: what the peer has
        # not taken yet. Counted without a callback per write, which fan-out would pay
        # for every socket and every event.
        self.waiting = 0

    def check_origin(self, origin: str) -> bool:
        # The events name participants: only this server's own pages and listed origins.
        config = self.settings["config"]
        allowed = config.events_allowed_origins
        return "*" in allowed or origin.rstrip("/") in allowed or same_origin(origin, self.request, config)

    async def open(self) -> None:
        self.event_log.subscribe(self)
        since = self.get_query_argument("since", None) or None
        try:
            replay = await self.event_log.read(since, _replay_limit(since, self.event_log))
        except StoreUnavailable:
            self.tell(notice("store_unavailable", "The event store cannot be read; live events follow"))
            replay = None
        if replay is not None:
            if replay.notice is not None:
                self.tell(replay.notice)
            for count, frame in enumerate(replay.frames, 1):
                written = self.send(frame)
                if written is not None and count % REPLAY_BATCH == 0:
                    # A long replay waits for the peer instead of counting as slowness.
                    try:
                        await written
                    except StreamClosedError:
                        return
                    self.waiting = 0
        held, self.held = self.held or [], None
        for frame in held:
            self.deliver(frame)

    def deliver(self, frame: Frame) -> None:
        if self.held is not None:
            self.held.append(frame)
            if len(self.held) > self.queue_limit:
                self.too_slow()
        elif frame.order > self.last_order:
            self.send(frame)

    def send(self, frame: Frame) -> Future[None] | None:
        self.last_order = frame.order
        connection = self.ws_connection
        if connection is None or connection.is_closing() or connection.stream is None:
            return None
        stream = connection.stream
        self.waiting = self.waiting + 1 if stream.writing() else 0
        if self.waiting > self.queue_limit:
            self.too_slow()
            return None
        # The frame was built once for every socket (no compression is negotiated, so
        # all get the same bytes): write it as is. write_message would build it again
        # and wrap each write in a task, which was most of the fan-out's time.
        try:
            return stream.write(frame.wire)
        except StreamClosedError:
            return None  # on_close follows

    def tell(self, notice_data: bytes) -> None:
        if self.ws_connection is not None and not self.ws_connection.is_closing():
            with contextlib.suppress(tornado.websocket.WebSocketClosedError):
                self.write_message(notice_data)

    def too_slow(self) -> None:
        self.event_log.unsubscribe(self)
        log.warning(
            "closing events socket from %s: %d frames waiting", self.request.remote_ip, self.queue_limit
        )
        self.close(
            CLOSE_TOO_SLOW,
            f"Too slow: more than {self.queue_limit} events waiting; reconnect with your cursor",
        )

    def on_message(self, message: str | bytes) -> None:
        """Clients have nothing to say; the socket only carries events to them."""

    def on_close(self) -> None:
        self.event_log.unsubscribe(self)


class EventHistoryHandler(AwaitingHandler):
    """GET /events/history?since=&limit=: the frames a socket would replay, as a JSON list."""

    def initialize(self, event_log: EventLog) -> None:
        self.event_log = event_log

    async def get(self) -> None:
        if not known_host(self.request, self.config):  # DNS rebinding: see handlers/origins.py
            raise ApiError(403, UNKNOWN_HOST)
        since = self.get_query_argument("since", None) or None
        raw_limit = self.get_query_argument("limit", "100")
        if not raw_limit.isascii() or not raw_limit.isdigit() or not 1 <= int(raw_limit) <= HISTORY_MAX:
            raise ApiError(400, f"limit must be a whole number from 1 to {HISTORY_MAX}")
        try:
            replay = await self.event_log.read(since, int(raw_limit))
        except StoreUnavailable:
            raise ApiError(503, "The event store cannot be read; retry later") from None
        parts = ([replay.notice] if replay.notice else []) + [frame.data for frame in replay.frames]
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(b"[" + b",".join(parts) + b"]")


def _replay_limit(since: str | None, event_log: EventLog) -> int:
    # After a cursor: everything that is kept; without one: the newest EVENTS_REPLAY.
    return event_log.replay_count if since is None else 1_000_000
