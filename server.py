"""The application server: make_app() builds it from its parts, run() and main() serve it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import tornado.httpserver
import tornado.web
from livekit.api import LiveKitAPI

from eventlog import EventLog, open_event_log
from extensions import Extensions, load_extensions
from extensions.app import AppContext, SharedLiveKitAPI
from extensions.authorize import Step
from extensions.events import EventHandlerRunner, WakeOnAppend, open_feed
from ground.config import PROJECT_DIR, Config, ConfigError
from ground.connections import Listener, bind_listening, default_max_connections, open_file_limit
from handlers import events, pages, token, webhook
from handlers import rooms as rooms_handlers
from handlers.events import CLOSE_GOING_AWAY
from handlers.metrics import listen_metrics, metrics_routes
from handlers.openapi import OPENAPI_FILE, OpenApiHandler
from handlers.pages import StaticFileHandler
from handlers.support.application import make_application
from handlers.support.base import tracked_rule
from handlers.support.broadcast import Broadcaster
from handlers.support.metrics import Metrics
from handlers.support.observe import setup_logging
from handlers.support.token_rules import BUILT_IN
from handlers.support.worker_figures import WorkerFigures, retire
from rooms import Rooms
from rooms.livekit import open_extensions_livekit_api, open_rooms_livekit_api
from workers import ListeningSets, Supervisor, hold_to_one_core, pins_workers

log = logging.getLogger("server")

# Anything larger is cut at the connection; endpoints set their own, smaller limits.
MAX_BODY_BYTES = 2 * 1024 * 1024
# docs/operating.md promises an exit within 5 s of SIGTERM: requests in flight get this long to be
# answered, idle connections and the store a little more.
SHUTDOWN_SECONDS = 3.5
SHUTDOWN_QUIET_SECONDS = 0.1
CONNECTIONS_CLOSE_SECONDS = 0.5
EXIT_CONFIG, EXIT_RUNTIME = 2, 1
SHARED_MEMORY = "/dev/shm"


class StartupError(Exception):
    """The server cannot start here; the message says what is wrong and what to set."""


def make_app(
    config: Config,
    event_log: EventLog,
    livekit_api: LiveKitAPI | None,
    extensions: Extensions,
    worker: int | None = None,
    shared_dir: str | None = None,
) -> tornado.web.Application:
    """The application, from what it depends on: the settings, the event log (not started),
    the server's own LiveKit API client (main() opens it; without one the admin API answers
    503; extensions get a client of their own), what APP_EXTENSIONS' modules define, and
    with WORKERS, which process this is (None: the only one) and the directory the
    processes share (server.run makes it)."""
    # PyJWT warns on every signature with a short key; main() warns once instead.
    warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)
    broadcaster = Broadcaster()  # the one owner of the event sockets; the store tells it what is new
    event_log.add_listener(broadcaster)
    # Extensions get a client of their own (its own pool): their calls and ours never wait for each other.
    app_context = AppContext(config, event_log, SharedLiveKitAPI(lambda: open_extensions_livekit_api(config)))
    # Event handlers run once per event: in worker 0 only (restarted if it dies).
    runner = (
        EventHandlerRunner(list(extensions.event_handlers), open_feed(config, event_log), app_context)
        if extensions.event_handlers and not worker
        else None
    )
    rooms = Rooms(config, event_log, livekit_api, shared_dir, leader=not worker)
    metrics = Metrics(lambda: broadcaster.count, runner) if config.metrics_enabled else None
    figures = None  # WORKERS: /metrics and /healthz for all of them
    if shared_dir:
        figures = WorkerFigures(
            shared_dir,
            metrics.registry if metrics else None,
            lambda: {"sockets": broadcaster.count, "eventHandlers": runner.health() if runner else None},
        )
        if metrics:
            metrics.exposed = figures.exposed
    # Who gets a token: the built-in rules, the extensions' in order, then bans and
    # identity conflicts, on the identity the others settled on.
    authorize = (
        BUILT_IN,
        *extensions.authorize,
        Step("bans and IDENTITY_CONFLICT", rooms.admission.authorize, waits=rooms.admission.waits),
    )
    # Each module's routes, tried in order: the busiest endpoint first; extensions' last.
    routes: list[Any] = [
        *token.routes(config, authorize, app_context, shared_dir),
        *webhook.routes(config, event_log),
        *pages.routes(event_log, broadcaster, runner, rooms.directory, worker, figures),
        *events.routes(event_log, broadcaster),
        *rooms_handlers.routes(rooms, event_log),
        *metrics_routes(config, metrics),
        (r"/openapi\.json", OpenApiHandler, {"document": OPENAPI_FILE.read_bytes()}),
    ]
    routes += map(tracked_rule, extensions.routes(app_context, [str(route[0]) for route in routes]))
    return make_application(
        config,
        routes,
        worker,
        event_log=event_log,
        broadcaster=broadcaster,
        rooms=rooms,
        extensions=extensions,
        app_context=app_context,
        event_handlers=runner,
        static_path=str(PROJECT_DIR / "static"),
        static_handler_class=StaticFileHandler,
        metrics=metrics,
        worker_figures=figures,
        websocket_ping_interval=20,
        websocket_ping_timeout=20,
        websocket_max_message_size=4096,
    )


def run() -> None:
    """Read the config, then serve on the chosen event loop until SIGTERM, SIGINT or SIGHUP,
    in this process or (WORKERS > 1) in pre-forked workers. What stops it from starting is
    one line: exit 2 for a setting, 1 for anything else."""
    try:
        config = Config.from_env()
        extensions = load_extensions(config.app_extensions)
    except ConfigError as error:
        print(f"Configuration error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    setup_logging(config)
    if config.workers == 1:
        raise SystemExit(serve(config, extensions))
    try:
        sockets = listen_per_worker(config)  # bound once, here: a set for each worker
    except StartupError as error:
        log.error("Cannot start: %s", error)
        raise SystemExit(EXIT_RUNTIME) from None
    # What the workers share beside the store (the rate limit's buckets, the room
    # directory's listing, their figures for /metrics and /healthz, the writers' lock): in
    # memory where the machine has a memory file system; made here, removed when they stop.
    shared_dir = tempfile.mkdtemp(
        prefix="livekit-app-", dir=SHARED_MEMORY if os.access(SHARED_MEMORY, os.W_OK) else None
    )
    pinned = pins_workers(config)

    def serve_worker(worker: int, ready: Callable[[], None]) -> int:
        if pinned:
            hold_to_one_core(worker)
        return serve(config, extensions, Worker(worker, own_sockets(sockets, worker), ready, shared_dir))

    about = ("each held to a core of its own; " if pinned else "") + f"sharing {shared_dir}"
    rebind = (
        (lambda: bind_listening(config.server_port, config.server_host, True))
        if SPREADS_CONNECTIONS
        else None
    )
    supervisor = Supervisor(
        config.workers,
        serve_worker,
        about,
        ListeningSets(sockets, rebind),
        ended=lambda pid: retire(shared_dir, pid),  # its counts stay in /metrics, its file goes
    )
    try:
        code = supervisor.run()
    finally:
        shutil.rmtree(shared_dir, ignore_errors=True)
    raise SystemExit(code)


@dataclass(frozen=True)
class Worker:
    """One of WORKERS processes: its number, the sockets the parent bound, how it tells
    the parent that it serves, and the directory the workers share."""

    number: int
    sockets: list[socket.socket]
    ready: Callable[[], None]
    shared_dir: str


def serve(config: Config, extensions: Extensions, worker: Worker | None = None) -> int:
    """Run the server to its end in this process; its exit code."""
    try:
        if config.event_loop == "uvloop":
            import uvloop

            uvloop.run(main(config, extensions, worker))
        else:
            asyncio.run(main(config, extensions, worker))
    except ConfigError as error:  # an extension refused the settings (its setup, its routes)
        print(f"Configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as error:
        log.error("Cannot start: %s", error)
        return EXIT_RUNTIME
    return 0


def explain_settings(config: Config) -> None:
    """Settings whose empty value is easy to misread: say what it means."""
    if not config.cors_allowed_origins:
        log.info(
            "CORS_ALLOWED_ORIGINS is empty: no page on another origin may call /token "
            "(same-origin pages and non-browser clients still may)"
        )
    if not config.token_client_fields:
        log.info("TOKEN_CLIENT_FIELDS is empty: clients may set none of metadata, attributes, room_config")
    if config.app_extensions:
        log.info("Extensions: %s", ", ".join(config.app_extensions))


async def start_app(app: tornado.web.Application) -> None:
    """What needs the running loop: the store, the LiveKit API client, the extensions'
    setup, the event handlers, the room directory."""
    event_log: EventLog = app.settings["event_log"]
    await event_log.start()
    app_context: AppContext = app.settings["app_context"]
    app_context.shared_api.get()
    extensions: Extensions = app.settings["extensions"]
    await extensions.run_setups(app_context)
    runner: EventHandlerRunner | None = app.settings["event_handlers"]
    if runner is not None:
        await runner.start()
        event_log.add_listener(WakeOnAppend(runner))
    await app.settings["rooms"].start()
    figures: WorkerFigures | None = app.settings["worker_figures"]
    if figures:
        figures.start()


async def main(config: Config, extensions: Extensions | None = None, worker: Worker | None = None) -> None:
    sockets = worker.sockets if worker else listen(config)
    try:  # METRICS_PORT: one port, so one worker serves it (WORKERS)
        metrics_sockets = listen_metrics_port(config) if worker is None or worker.number == 0 else []
    except StartupError:
        for sock in sockets:
            sock.close()
        raise
    livekit_api = open_rooms_livekit_api(config)
    app: tornado.web.Application | None = None
    try:
        event_log = open_event_log(config, worker.shared_dir if worker else None)
        number, shared_dir = (worker.number, worker.shared_dir) if worker else (None, None)
        app = make_app(config, event_log, livekit_api, extensions or Extensions(), number, shared_dir)
        await start_app(app)
    except (ConfigError, sqlite3.Error, OSError) as error:
        for sock in sockets + metrics_sockets:
            sock.close()
        await livekit_api.aclose()
        if app is not None:  # the extensions' client, opened by start_app before their setups
            await app.settings["app_context"].shared_api.aclose()
        if isinstance(error, ConfigError):
            raise
        raise StartupError(
            f"the event store {config.events_db} cannot be opened for writing ({error}): "
            "set EVENTS_DB to a writable SQLite file, or move this file away if it is not one"
        ) from None
    # xheaders: X-Real-Ip / X-Forwarded-For become the client address, only behind a trusted proxy.
    # The listener bounds the time to send a request's headers (IDLE_TIMEOUT, slow senders
    # and idle keep-alive connections alike); handlers/support/bodies.py bounds the bodies.
    server = tornado.httpserver.HTTPServer(
        app, max_body_size=MAX_BODY_BYTES, xheaders=config.trust_proxy_headers
    )
    listener = Listener(server, sockets, max_connections(config), config.idle_timeout.total_seconds())
    listener.start()
    settle_heap()
    app.settings["metrics_server"] = listen_metrics(config, app.settings["metrics"], metrics_sockets)
    if worker is None or worker.number == 0:  # said once, not by every worker
        explain_startup(config, event_log, listener, worker is not None)

    # SIGHUP too: a closed terminal or a supervisor's reload stops the server gracefully
    # (there is no reload: the config is read once); unless started with it ignored (nohup).
    stopped_by: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if signal.getsignal(signum) != signal.SIG_IGN:
            asyncio.get_running_loop().add_signal_handler(signum, _stop, stopped_by, signum.name)
    if worker is not None:  # serving, and a SIGTERM from now on drains it
        worker.ready()
    who = f"worker {worker.number}: " if worker else ""
    log.info("%sShutting down (%s)", who, await stopped_by)
    await shutdown(listener, server, app)
    log.info("%sStopped", who)


# A young collection once this many more container objects are alive (Python's 700 made
# one every few requests); reference counting frees a request's objects anyway.
GC_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """What start-up made (modules, settings, the application) lives as long as the
    process: out of the collector's sight (gc.freeze), and collections less often. Cyclic
    garbage is still collected; the collector's passes over the heap had cost /token and
    webhook ingest about 5% of their throughput (make bench)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def explain_startup(config: Config, event_log: EventLog, listener: Listener, workers: bool) -> None:
    """The start-up lines: warnings about the settings, then where it listens."""
    if config.uses_dev_credentials:
        log.warning(
            "Using the development API key and secret (devkey/secret): fine for a local "
            "LiveKit server in dev mode, never for a reachable one"
        )
    elif len(config.livekit_api_secret) < 32:
        log.warning("LIVEKIT_API_SECRET is shorter than 32 characters; use a longer one")
    if config.app_env == "production" and not config.events_auth_secret:
        log.warning("WS /events and /events/history are off: in production they need EVENTS_AUTH_SECRET")
    explain_settings(config)
    log.info(
        "Listening on http://localhost:%d (LiveKit at %s, events in %s, at most %d connections%s)",
        config.server_port,
        config.livekit_url,
        event_log.kind,
        listener.max_connections,
        " per worker" if workers else "",
    )


def _stop(stopped_by: asyncio.Future[str], signal_name: str) -> None:
    if not stopped_by.done():
        stopped_by.set_result(signal_name)


def listen(config: Config, reuse_port: bool = False) -> list[socket.socket]:
    try:
        return bind_listening(config.server_port, config.server_host, reuse_port)
    except OSError as error:
        where = f"port {config.server_port} on {config.server_host or 'all interfaces'}"
        raise StartupError(
            f"{where} is not available ({error.strerror or error}): set SERVER_PORT to a free port "
            "(and SERVER_HOST to an address of this machine, or leave it empty)"
        ) from None


# Where SO_REUSEPORT spreads new connections over the sockets bound with it (Linux);
# elsewhere the workers share one set.
SPREADS_CONNECTIONS = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listen_per_worker(config: Config) -> list[list[socket.socket]]:
    """WORKERS: a set of listening sockets for each worker on the one port, among which the
    kernel spreads new connections (SO_REUSEPORT). On one shared set, the worker that
    woke first took every connection of a burst (wrk's 32: one worker served them all).
    The port is first bound alone and let go, so it is refused when taken, by a server
    started the same way too (unless both start in the same instant). The price: a
    connection waits for the worker whose set it landed in (docs/decisions.md)."""
    probe = listen(config)
    if not SPREADS_CONNECTIONS:
        return [probe] * config.workers
    for sock in probe:
        sock.close()
    groups: list[list[socket.socket]] = []
    try:
        for _ in range(config.workers):
            groups.append(listen(config, reuse_port=True))
    except StartupError:
        for sock in (sock for group in groups for sock in group):
            sock.close()
        raise
    return groups


def own_sockets(groups: list[list[socket.socket]], number: int) -> list[socket.socket]:
    """Worker `number`'s set; in its process the others' are closed (only the parent keeps
    them all, for a worker that replaces one)."""
    for group in groups:
        if group is not groups[number]:
            for sock in group:
                sock.close()
    return groups[number]


def listen_metrics_port(config: Config) -> list[socket.socket]:
    """METRICS_PORT's sockets (none when it is unset), on the server's address."""
    if not config.metrics_port:
        return []
    try:
        return bind_listening(config.metrics_port, config.server_host)
    except OSError as error:
        raise StartupError(
            f"METRICS_PORT {config.metrics_port} is not available ({error.strerror or error}): "
            "set it to a free port, or unset it to serve /metrics on SERVER_PORT"
        ) from None


def max_connections(config: Config) -> int:
    file_limit = open_file_limit()
    fitting = default_max_connections(file_limit)
    if not config.max_connections:
        return fitting
    if config.max_connections > fitting:
        log.warning(
            "MAX_CONNECTIONS=%d is more than the open-file limit (%d, ulimit -n) leaves room for "
            "(about %d): raise the limit or lower MAX_CONNECTIONS",
            config.max_connections,
            file_limit,
            fitting,
        )
    return config.max_connections


async def shutdown(
    listener: Listener, server: tornado.httpserver.HTTPServer, app: tornado.web.Application
) -> None:
    """Stop accepting, answer what is in flight, say goodbye to sockets, close the store."""
    listener.stop()
    # Each keep-alive connection gets one more answer, with `Connection: close`, and ends:
    # else clients that keep sending on their connections keep requests in flight for good.
    server.conn_params.no_keep_alive = True
    if app.settings.get("metrics_server"):
        app.settings["metrics_server"].stop()
    app.settings["broadcaster"].close_all(CLOSE_GOING_AWAY, "Server shutting down")
    rooms: Rooms = app.settings["rooms"]
    await rooms.stop()
    # Event handlers finish the call they are in meanwhile; the rest waits in the store.
    runner: EventHandlerRunner | None = app.settings["event_handlers"]
    handlers_stopped = asyncio.ensure_future(runner.stop(SHUTDOWN_SECONDS) if runner else asyncio.sleep(0))
    # Until nothing is in flight and no connection has closed for SHUTDOWN_QUIET_SECONDS:
    # a keep-alive client answered just before the signal sends once more, and is answered
    # with `Connection: close` (a token is answered within the turn that read it, so the
    # in-flight set alone is empty between a client's requests).
    in_flight: set[Any] = app.settings["requests_in_flight"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SHUTDOWN_SECONDS
    open_connections, quiet_since = listener.open_connections, loop.time()
    while loop.time() < deadline and (in_flight or loop.time() - quiet_since < SHUTDOWN_QUIET_SECONDS):
        await asyncio.sleep(0.02)
        if in_flight or listener.open_connections != open_connections:
            open_connections, quiet_since = listener.open_connections, loop.time()
    if in_flight:
        log.warning("%d requests still unanswered after %.1f s", len(in_flight), SHUTDOWN_SECONDS)
    # Idle keep-alive connections and closing sockets are owed nothing more.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.close_all_connections(), CONNECTIONS_CLOSE_SECONDS)
    await handlers_stopped
    await stop_app(app)


async def stop_app(app: tornado.web.Application) -> None:
    """After the requests: the event handlers, the room directory, the store, the ban
    store, the LiveKit API clients (the server's own and the extensions')."""
    runner: EventHandlerRunner | None = app.settings["event_handlers"]
    if runner is not None:
        await runner.stop(SHUTDOWN_SECONDS)
    rooms: Rooms = app.settings["rooms"]
    await rooms.stop()
    await app.settings["event_log"].close()
    await rooms.close()
    app_context: AppContext = app.settings["app_context"]
    await app_context.shared_api.aclose()
    if rooms.livekit_api is not None:
        await rooms.livekit_api.aclose()
    figures: WorkerFigures | None = app.settings["worker_figures"]
    if figures:
        figures.stop()  # last, with every request counted


if __name__ == "__main__":
    run()
