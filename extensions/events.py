"""Event handlers: adopters' code run for each stored webhook event, after LiveKit got its
200, at least once, from the durable event log.

Each handler runs on its own, in the log's order: a feed hands it the events it has not
handled yet, it is called with each (retried with backoff when it raises), and its
progress is written back to the store only after it returned. A handler that still
raises after EVENT_HANDLER_MAX_ATTEMPTS parks that event and goes on with the next.
Coroutine handlers run on the event loop (they must await, never block); plain functions
run on a thread of their own, so a slow one holds up nothing but itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import Message
from livekit.api import WebhookEvent

from eventlog import Entry, EventLog
from extensions.app import AppContext
from extensions.feed import Delivery, Feed
from ground.config import Config
from ground.logsafe import printable, quoted

log = logging.getLogger("extensions.events")

BATCH = 100
MAX_BACKOFF_SECONDS = 60.0
COUNT_SECONDS = 2.0  # how often the parked counts are read from the store again (both stores)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class EventContext:
    """What comes with an event besides the event itself.

    - `event_id`: LiveKit's event id (`EV_...`), the same on every retry: use it to
      make your side effects idempotent (at least once means maybe twice);
    - `event_json`: LiveKit's JSON as stored, for forwarding it as is;
    - `cursor` / `received_at` (ms): where and when the event log got it;
    - `attempt`: 1 on the first call, 2 on the first retry...;
    - `handler`: this handler's name, `module:function`;
    - `app`: the server's config, event log and LiveKit API client (an asyncio client:
      use it from `async def` handlers, not from plain functions, which run on a thread).
    """

    event_id: str
    event_json: str
    cursor: str
    received_at: int
    attempt: int
    handler: str
    app: AppContext


EventHandler = Callable[[WebhookEvent, EventContext], "Awaitable[None] | None"]


@dataclass(frozen=True)
class HandlerSpec:
    """A handler found in an extension module: `on_event` (every event) or `on_<event>`."""

    name: str  # module:function, also the key of its progress in the store
    event: str | None  # None: every event
    function: EventHandler

    @property
    def is_coroutine(self) -> bool:
        return inspect.iscoroutinefunction(self.function)


def parse_event(event_json: str) -> WebhookEvent:
    """livekit-api's typed event, leniently: unknown fields and enum values are ignored, and
    a field this version cannot read (a changed type) is left empty; never an exception."""
    event = WebhookEvent()
    try:
        data = orjson.loads(event_json)
    except orjson.JSONDecodeError:
        return event
    if isinstance(data, dict):
        try:
            _merge_leniently(data, event)
        except Exception:  # whatever protobuf raises next: keep what was read
            log.warning("an event could not be fully read as a WebhookEvent", exc_info=True)
    return event


def _merge_leniently(data: dict[str, Any], message: Message) -> None:
    try:
        ParseDict(data, message, ignore_unknown_fields=True)
        return
    except (ParseError, ValueError, TypeError, RecursionError):
        message.Clear()
    fields = message.DESCRIPTOR.fields_by_camelcase_name
    for key, value in data.items():
        part = type(message)()
        try:
            ParseDict({key: value}, part, ignore_unknown_fields=True)
        except (ParseError, ValueError, TypeError, RecursionError):
            # A nested message: keep the parts of it that parse.
            field = fields.get(key) or message.DESCRIPTOR.fields_by_name.get(key)
            nested = field is not None and field.message_type is not None and not _repeated(field)
            if nested and field is not None and isinstance(value, dict):
                _merge_leniently(value, getattr(message, field.name))
            continue
        message.MergeFrom(part)


def _repeated(field: Any) -> bool:
    return bool(field.is_repeated)


def event_name(event_json: str) -> str:
    with contextlib.suppress(orjson.JSONDecodeError, TypeError):
        data = orjson.loads(event_json)
        if isinstance(data, dict) and isinstance(data.get("event"), str):
            return str(data["event"])
    return ""


class EventHandlerRunner:
    """Runs every registered handler against the feed until stopped."""

    def __init__(self, handlers: list[HandlerSpec], feed: Feed, app: AppContext) -> None:
        self.handlers = handlers
        self.feed = feed
        self.app = app
        self.max_attempts = app.config.event_handler_max_attempts
        self.first_backoff = app.config.event_handler_retry_seconds
        self.claim_seconds = app.config.event_handler_claim_seconds
        self.stuck_seconds = app.config.event_handler_stuck_seconds
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.handled = 0
        # Per handler, since when (ms) the event in its hands has waited, and whether the
        # log said it is stuck on it.
        self._pending_since: dict[str, int] = {}
        self._said_stuck: set[str] = set()

    async def start(self) -> None:
        """Register the handlers in the store (before the server listens, so a new handler
        starts right after the newest event), then run them. A store that cannot be
        reached now (Redis down) is tried again in the background, like the event log."""
        if not self.handlers:
            return
        try:
            await self.feed.start([handler.name for handler in self.handlers])
        except Exception as error:
            log.error("event handlers wait for the event store: %s", error)
            self._tasks = [asyncio.create_task(self._start_later(), name="event handlers start")]
            return
        self._run_all()

    def _run_all(self) -> None:
        # Added to the list, never replacing it: _start_later, which calls this, stays in
        # it too, so that stop() waits for it (a task nobody holds may be collected).
        self._tasks += [
            asyncio.create_task(self._run(handler), name=f"event handler {handler.name}")
            for handler in self.handlers
        ]
        self._tasks.append(asyncio.create_task(self._watch_forever(), name="event handler watch"))

    async def _start_later(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            try:
                await self.feed.start([handler.name for handler in self.handlers])
            except Exception as error:
                log.debug("event store still unreachable: %s", error)
                delay = min(delay * 2, 5.0)
                continue
            if self._stopping.is_set():
                return
            log.info("event handlers started")
            self._run_all()
            return

    def wake(self) -> None:
        self.feed.wake()

    def health(self) -> dict[str, Any]:
        return {
            "handlers": len(self.handlers),
            "handled": self.handled,
            **self.feed.health(),
            "oldestPendingSeconds": self.oldest_pending(),
        }

    def oldest_pending(self) -> dict[str, float]:
        """Per handler, how long the oldest event it has yet to finish has waited (0: none)."""
        now = _now_ms()
        return {
            handler.name: round(max(0, now - self._pending_since[handler.name]) / 1000, 1)
            if handler.name in self._pending_since
            else 0.0
            for handler in self.handlers
        }

    def _watch_stuck(self) -> None:
        """A log line (once an event) for a handler past EVENT_HANDLER_STUCK_SECONDS."""
        for name, seconds in self.oldest_pending().items():
            if seconds >= self.stuck_seconds and name not in self._said_stuck:
                self._said_stuck.add(name)
                log.warning(
                    "event handler %s has an event waiting %.0f s (EVENT_HANDLER_STUCK_SECONDS=%g): "
                    "its later events wait behind it",
                    name,
                    seconds,
                    self.stuck_seconds,
                )

    async def _watch_forever(self) -> None:
        counted_at = 0.0
        while not self._stopping.is_set():
            self._watch_stuck()
            if time.monotonic() - counted_at >= COUNT_SECONDS:
                counted_at = time.monotonic()
                try:  # the store is the truth: the CLI or another instance may have changed it
                    await self.feed.count_parked()
                except Exception as error:
                    log.debug("event handlers: parked events not counted now: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), min(1.0, self.stuck_seconds / 4))

    async def stop(self, timeout: float) -> None:
        """Let handlers finish the call they are in (within `timeout`), then stop. Whatever
        was not handled stays in the store and is handled after the next start."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.feed.wake()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.feed.close()

    async def _run(self, handler: HandlerSpec) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            try:
                deliveries = await self.feed.next(handler.name, BATCH)
                skipped: list[Delivery] = []
                for delivery in deliveries:
                    if self._stopping.is_set():
                        break
                    if handler.event is not None and event_name(delivery.event_json) != handler.event:
                        skipped.append(delivery)  # not this handler's event: progress only
                        continue
                    if skipped:
                        await self.feed.done(handler.name, skipped)
                        skipped = []
                    await self._handle(handler, delivery)
                if skipped:
                    await self.feed.done(handler.name, skipped)
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the store failed: nothing was lost, try again
                log.error("event handler %s cannot reach the event store: %s", handler.name, error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, 5.0)

    async def _handle(self, handler: HandlerSpec, delivery: Delivery) -> None:
        """Call until it returns or the attempts are spent; then record the outcome."""
        # A parked event retried has waited since its retry, not since it was received.
        self._pending_since[handler.name] = _now_ms() if delivery.parked_key else delivery.received_at
        try:
            await self._attempts(handler, delivery)
        finally:
            self._pending_since.pop(handler.name, None)
            self._said_stuck.discard(handler.name)

    async def _attempts(self, handler: HandlerSpec, delivery: Delivery) -> None:
        attempt = 0
        while True:
            attempt += 1
            context = EventContext(
                delivery.event_id,
                delivery.event_json,
                delivery.cursor,
                delivery.received_at,
                attempt,
                handler.name,
                self.app,
            )
            try:
                await self._call(handler, delivery, context)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # One log line whatever the handler's message holds (event data, a client's names).
                reason = printable(f"{type(error).__name__}: {error}")
                event_id = quoted(delivery.event_id)
                if attempt >= self.max_attempts:
                    log.error(
                        "event handler %s gave up on %s after %d attempts, parked (%s)",
                        handler.name,
                        event_id,
                        attempt,
                        reason,
                        exc_info=error,
                    )
                    await self.feed.park(handler.name, delivery, attempt, reason[:2000])
                    return
                wait = self._backoff(attempt)
                log.warning(
                    "event handler %s failed on %s (attempt %d of %d, next in %.1f s): %s",
                    handler.name,
                    event_id,
                    attempt,
                    self.max_attempts,
                    wait,
                    reason,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), wait)
                if self._stopping.is_set():
                    return  # not recorded: handled again after the next start
                continue
            self.handled += 1
            await self.feed.done(handler.name, [delivery])
            return

    async def _call(self, handler: HandlerSpec, delivery: Delivery, context: EventContext) -> None:
        event = parse_event(delivery.event_json)
        if handler.is_coroutine:
            call: asyncio.Future[Any] = asyncio.ensure_future(handler.function(event, context))  # type: ignore[arg-type]
        else:
            call = _in_daemon_thread(handler.function, event, context)
        try:
            # A long call tells other instances it is alive, so they do not claim its event.
            while True:
                done, _ = await asyncio.wait({call}, timeout=self.claim_seconds / 3)
                if done:
                    call.result()
                    return
                await self.feed.keep_claimed(handler.name, delivery)
        except asyncio.CancelledError:
            call.cancel()  # a thread runs on, but its outcome is not recorded
            raise

    def _backoff(self, attempt: int) -> float:
        base = min(self.first_backoff * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
        return base * random.uniform(0.8, 1.2)  # spread instances that failed together


def _in_daemon_thread(function: Any, *args: Any) -> asyncio.Future[Any]:
    """Run a plain function on a thread of its own, a daemon: a handler blocked for good
    cannot hold up the process's exit (a pool's threads are joined at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(outcome: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)

    def run() -> None:
        outcome, failure = None, None
        try:
            outcome = function(*args)
        except BaseException as error:
            failure = error
        with contextlib.suppress(RuntimeError):  # the loop is gone: the process is exiting
            loop.call_soon_threadsafe(settle, outcome, failure)

    threading.Thread(target=run, name="event handler", daemon=True).start()
    return future


def open_feed(config: Config, event_log: EventLog) -> Feed:
    """The feed of the store the event log uses."""
    if config.events_redis_url:
        from extensions.feed_redis import RedisFeed, consumer_name

        return RedisFeed(
            config.events_redis_url, consumer_name(config.server_port), config.event_handler_claim_seconds
        )
    from extensions.feed_sqlite import SqliteFeed

    return SqliteFeed(config.events_db, event_log)


class WakeOnAppend:
    """Listens to the event log: each new event wakes the handlers instead of a poll."""

    def __init__(self, runner: EventHandlerRunner) -> None:
        self.runner = runner

    def entries_added(self, entries: Sequence[Entry]) -> None:
        self.runner.wake()

    def store_state_changed(self, available: bool) -> None:
        if available:
            self.runner.wake()
