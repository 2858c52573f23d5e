"""WS /events: replay by cursor, a page at a time, then live events; GET /events/history:
the same, as a list. Both need EVENTS_AUTH_SECRET when it is set (and in production)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import tornado.httputil
import tornado.websocket
from tornado.iostream import StreamClosedError

from eventlog import Entry, EventLog, StoreUnavailable, Told
from ground.config import Config
from ground.credentials import bearer_credential, secret_matches
from ground.errors import ApiError
from handlers.support.base import Handler, JsonErrors, Route
from handlers.support.broadcast import (
    Broadcaster,
    Frame,
    frame_data,
    make_frame,
    notice,
    page_notice,
    unknown_cursor_notice,
)
from handlers.support.observe import frame_sent, socket_closed, timed_store
from handlers.support.origins import UNKNOWN_HOST, EveryOriginChecked, known_host, same_origin

log = logging.getLogger(__name__)

# Close code for a socket that cannot keep up: policy violation, with a reason that says so.
CLOSE_TOO_SLOW = 1008
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013
CLOSE_SERVER_ERROR = 1011
HISTORY_MAX = 1000
HISTORY_MAX_BYTES = 1024 * 1024
# A replay is read from the store and written a page at a time; the next page only
# once the socket has taken this one. What a socket costs is one page, at most.
REPLAY_PAGE_EVENTS = 100
REPLAY_PAGE_BYTES = 64 * 1024
# Browsers cannot set headers on a WebSocket: they offer these two subprotocols.
SUBPROTOCOL = "livekit-events"
BEARER_PROTOCOL = "bearer."
_NOTHING = (-1, -1)
_CANNOT_READ = notice("store_unavailable", "The event store cannot be read; reconnect with your cursor")


def check_events_credential(config: Config, request: tornado.httputil.HTTPServerRequest) -> None:
    """With EVENTS_AUTH_SECRET set, the stream needs it as a bearer: the Authorization
    header, or (browsers) the WebSocket subprotocol `bearer.<secret>` next to
    `livekit-events`. In production without a secret, the stream is off."""
    secret = config.events_auth_secret
    if not secret:
        if config.app_env == "production":
            raise ApiError(403, "The event stream is off: in production it needs EVENTS_AUTH_SECRET")
        return
    given = bearer_credential(request.headers.get("Authorization", ""))
    if not given:
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        given = next((p[len(BEARER_PROTOCOL) :] for p in protocols if p.startswith(BEARER_PROTOCOL)), "")
    if not secret_matches(given, secret):
        raise ApiError(
            401,
            "The event stream needs Authorization: Bearer <EVENTS_AUTH_SECRET> "
            f"(browsers: the WebSocket subprotocols {SUBPROTOCOL} and {BEARER_PROTOCOL}<secret>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


class _Closed(Exception):
    """The socket went away (or was closed as too slow) during the replay."""


class EventsSocketHandler(EveryOriginChecked, JsonErrors, tornado.websocket.WebSocketHandler):
    """Replays what the event log holds, then relays what the broadcaster fans out."""

    def initialize(self, event_log: EventLog, broadcaster: Broadcaster) -> None:
        self.event_log = event_log
        self.broadcaster = broadcaster
        config: Config = self.settings["config"]
        self.queue_limit = config.events_socket_queue
        self.queue_bytes = config.events_socket_queue_bytes
        self.send_timeout = config.events_send_timeout.total_seconds()
        # While replaying, live frames are not sent nor held: they are in the store,
        # and the replay reads on until it has sent the newest one seen live.
        self.replaying = True
        self.newest_live = _NOTHING
        self.last_order = _NOTHING
        # Live frames written while the connection's buffer was not empty: what the peer
        # has not taken yet. Counted without a callback per write, which fan-out would
        # pay for every socket and every event.
        self.waiting = self.waiting_bytes = 0
        self.replay_task: asyncio.Future[None] | None = None
        self.since: str | None = None
        self.told: Told | None = None

    def prepare(self) -> None:
        check_events_credential(self.settings["config"], self.request)
        # Before the upgrade: a `since` that is not UTF-8 gets a 400 here, not an aborted socket.
        self.since = self.get_query_argument("since", None) or None

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return SUBPROTOCOL if SUBPROTOCOL in subprotocols else None

    def check_origin(self, origin: str) -> bool:
        # The events name participants: only this server's own pages and listed origins.
        config = self.settings["config"]
        allowed = config.events_allowed_origins
        return "*" in allowed or origin.rstrip("/") in allowed or same_origin(origin, self.request, config)

    def open(self) -> None:
        # Subscribed, and how far the broadcaster had been told, in one step: whatever
        # is acknowledged from now on comes live or is read back from there.
        self.broadcaster.subscribe(self)
        self.told = self.event_log.told
        # A task of its own: the connection keeps reading (pongs, the close) meanwhile.
        self.replay_task = asyncio.ensure_future(self.replay_then_live(self.since))

    async def replay_then_live(self, since: str | None) -> None:
        try:
            await self._replay_then_live(since)
        finally:
            self.replay_task = None  # a finished task is not kept for the socket's life

    async def _replay_then_live(self, since: str | None) -> None:
        try:
            await self.replay(since)
        except StoreUnavailable:
            # Going live now would leave a gap: the client comes back with its cursor.
            self.tell(_CANNOT_READ)
            self.broadcaster.unsubscribe(self)
            self.close(CLOSE_TRY_AGAIN, "The event store cannot be read; reconnect with your cursor")
            return
        except _Closed:
            return
        except Exception:
            log.exception("replay to %s failed", self.request.remote_ip)
            self.close(CLOSE_SERVER_ERROR, "The replay failed; reconnect with your cursor")
            return
        self.replaying = False
        self.waiting = self.waiting_bytes = 0

    async def replay(self, since: str | None) -> None:
        """Pages after `since` (without one: the newest EVENTS_REPLAY) until the store has
        nothing newer than what was sent and nothing newer was seen live."""
        event_log = self.event_log
        replay_count = self.settings["config"].events_replay
        cursor = since if since is not None else await event_log.replay_start(replay_count, self.told)
        fell_back = since is None
        idle_reads = 0
        while True:
            self.ensure_open()
            page = await timed_store(
                self, "read", event_log.read(cursor, REPLAY_PAGE_EVENTS, REPLAY_PAGE_BYTES)
            )
            self.ensure_open()
            if page.unknown_cursor:
                self.tell(unknown_cursor_notice(cursor or ""))
                # The newest events of this log; if even that cursor is gone, all of them.
                cursor = None if fell_back else await event_log.replay_start(replay_count, self.told)
                fell_back = True
                continue
            trimmed = page_notice(page, cursor)
            if trimmed is not None:
                self.tell(trimmed)
            if page.entries:
                await self.send_page(page.entries)
            cursor = page.resume or cursor
            idle_reads = 0 if page.entries else idle_reads + 1
            if page.more:
                continue
            if self.newest_live <= self.last_order:
                return
            if idle_reads > 2:  # seen live, yet not in the store: never expected
                log.warning("replay did not find the newest live event in the store; going live")
                return

    def ensure_open(self) -> None:
        connection = self.ws_connection
        if connection is None or connection.is_closing() or connection.stream is None:
            raise _Closed

    async def send_page(self, entries: list[Entry]) -> None:
        self.ensure_open()
        assert self.ws_connection is not None and self.ws_connection.stream is not None
        self.last_order = entries[-1].order
        try:
            written = self.ws_connection.stream.write(b"".join(make_frame(entry).wire for entry in entries))
            frame_sent(self, len(entries))
        except StreamClosedError:
            raise _Closed from None
        done, _ = await asyncio.wait([written], timeout=self.send_timeout)
        if not done:
            self.too_slow(f"a replay page was not taken within {self.send_timeout:g} s")
            raise _Closed
        if written.exception() is not None:
            raise _Closed

    def deliver(self, frame: Frame) -> None:
        if self.replaying:
            if frame.order > self.newest_live:
                self.newest_live = frame.order
            return
        if frame.order <= self.last_order:
            return  # already sent by the replay
        self.last_order = frame.order
        connection = self.ws_connection
        if connection is None or connection.is_closing() or connection.stream is None:
            return
        stream = connection.stream
        if stream.writing():
            self.waiting += 1
            self.waiting_bytes += len(frame.wire)
        else:
            self.waiting = self.waiting_bytes = 0
        if self.waiting > self.queue_limit:
            self.too_slow(f"more than {self.queue_limit} events waiting")
            return
        if self.waiting_bytes > self.queue_bytes:  # a few large events hold memory too
            self.too_slow(f"more than {self.queue_bytes} bytes of events waiting")
            return
        # The frame was built once for every socket (no compression is negotiated, so
        # all get the same bytes): write it as is. write_message would build it again
        # and wrap each write in a task, which was most of the fan-out's time.
        try:
            stream.write(frame.wire)
            frame_sent(self)
        except StreamClosedError:
            pass  # on_close follows

    def tell(self, notice_data: bytes) -> None:
        if self.ws_connection is not None and not self.ws_connection.is_closing():
            with contextlib.suppress(tornado.websocket.WebSocketClosedError):
                self.write_message(notice_data)
                frame_sent(self)

    def too_slow(self, why: str) -> None:
        self.broadcaster.unsubscribe(self)
        log.warning("closing events socket from %s: %s", self.request.remote_ip, why)
        self.close(CLOSE_TOO_SLOW, f"Too slow: {why}; reconnect with your cursor")

    def on_message(self, message: str | bytes) -> None:
        """Clients have nothing to say; the socket only carries events to them."""

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self.closed_with = code  # the reason this server closed it, for /metrics
        super().close(code, reason)

    def on_close(self) -> None:
        self.broadcaster.unsubscribe(self)
        socket_closed(self)
        if self.replay_task is not None and not self.replay_task.done():
            self.replay_task.cancel()


class EventHistoryHandler(Handler):
    """GET /events/history?since=&limit=: what a socket would replay, as a JSON list."""

    def initialize(self, event_log: EventLog) -> None:
        self.event_log = event_log

    def prepare(self) -> None:
        check_events_credential(self.config, self.request)

    async def get(self) -> None:
        if not known_host(self.request, self.config):  # DNS rebinding: see handlers/support/origins.py
            raise ApiError(403, UNKNOWN_HOST)
        since = self.get_query_argument("since", None) or None
        raw_limit = self.get_query_argument("limit", "100")
        if not raw_limit.isascii() or not raw_limit.isdigit() or not 1 <= int(raw_limit) <= HISTORY_MAX:
            raise ApiError(400, f"limit must be a whole number from 1 to {HISTORY_MAX}")
        limit = int(raw_limit)
        parts: list[bytes] = []
        try:
            cursor = since if since is not None else await self.event_log.newest_start(limit)
            page = await timed_store(self, "read", self.event_log.read(cursor, limit, HISTORY_MAX_BYTES))
            if page.unknown_cursor:
                parts.append(unknown_cursor_notice(cursor or ""))
                cursor = await self.event_log.newest_start(limit)
                page = await timed_store(self, "read", self.event_log.read(cursor, limit, HISTORY_MAX_BYTES))
        except StoreUnavailable:
            raise ApiError(503, "The event store cannot be read; retry later") from None
        trimmed = page_notice(page, cursor)
        parts += ([trimmed] if trimmed else []) + [frame_data(entry) for entry in page.entries]
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(b"[" + b",".join(parts) + b"]")


def routes(event_log: EventLog, broadcaster: Broadcaster) -> list[Route]:
    return [
        (r"/events", EventsSocketHandler, {"event_log": event_log, "broadcaster": broadcaster}),
        (r"/events/history", EventHistoryHandler, {"event_log": event_log}),
    ]
