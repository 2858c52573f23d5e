"""GET / (the demo page), GET /healthz, the page's static files and the vendored LiveKit JS client."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import tornado.web
from jinja2 import Environment, FileSystemLoader, select_autoescape

from eventlog import EventLog
from extensions.events import EventHandlerRunner
from ground.config import PROJECT_DIR
from handlers.support.admin_access import page_admin_mode
from handlers.support.base import Handler, Route
from handlers.support.broadcast import Broadcaster
from handlers.support.worker_figures import WorkerFigures
from rooms.directory import RoomDirectory


def content_security_policy(livekit_url: str) -> str:
    """Only this origin, plus the LiveKit server for connections (its WebSocket, and the
    HTTP form livekit-client uses to diagnose a failed connection)."""
    parts = urlsplit(livekit_url)
    http_scheme = "https" if parts.scheme in ("wss", "https") else "http"
    ws_scheme = "wss" if http_scheme == "https" else "ws"
    livekit = f"{ws_scheme}://{parts.netloc} {http_scheme}://{parts.netloc}" if parts.netloc else ""
    return (
        "default-src 'self'; "
        f"connect-src 'self' {livekit}; "
        "img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
        "script-src 'self'; style-src 'self'; worker-src 'self' blob:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


class IndexHandler(Handler):
    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")

    def initialize(self, jinja: Environment) -> None:
        self.jinja = jinja

    def get(self) -> None:
        config = self.config
        page = self.jinja.get_template("index.html").render(
            livekit_url=config.livekit_url,
            static_url=self.static_url,
            admin_api=page_admin_mode(config, self.request),
        )
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", content_security_policy(config.livekit_url))
        self.finish(page)

    head = get  # what GET answers, without the body (Tornado drops it)


class HealthHandler(Handler):
    """Liveness and readiness: non-200 while the event store is down, for load balancers.
    Says which store and whether it works; why it does not is in the log, not here."""

    def initialize(
        self,
        event_log: EventLog,
        broadcaster: Broadcaster,
        event_handlers: EventHandlerRunner | None,
        directory: RoomDirectory,
        worker: int | None,
        figures: WorkerFigures | None,
    ) -> None:
        self.event_log = event_log
        self.broadcaster = broadcaster
        self.event_handlers = event_handlers
        self.directory = directory
        self.worker = worker
        self.figures = figures

    def get(self) -> None:
        store: dict[str, Any] = self.event_log.health()  # {"store", "ok"}: no error text
        status = 200 if store["ok"] else 503
        health = {
            "status": "ok" if store["ok"] else "degraded",
            "eventStore": store,
            "sockets": self.broadcaster.count,
        }
        if self.event_handlers:  # parked events are counted, not a failure
            health["eventHandlers"] = self.event_handlers.health()
        # LiveKit unreachable is reported, not a failure of this server (tokens still work);
        # a background task that is down makes it "degraded" (still 200: see the docs).
        rooms = self.directory.health()
        health["rooms"] = rooms
        if rooms["down"] and store["ok"]:
            health["status"] = "degraded"
        if self.figures:  # WORKERS: the whole server's sockets and event handlers (worker 0's)
            everyone = self.figures.everyone_alive()
            health["sockets"] = sum(figures["sockets"] for figures in everyone)
            runners = [figures["eventHandlers"] for figures in everyone if figures["eventHandlers"]]
            if runners:
                health["eventHandlers"] = runners[0]
            health["workers"] = len(everyone)
            health["workersExpected"] = self.config.workers
            if len(everyone) < self.config.workers and health["status"] == "ok":
                health["status"] = "degraded"  # one is being replaced, or fails to start
        if self.worker is not None:  # which one answered
            health["worker"] = self.worker
        self.write_json(health, status=status)

    head = get  # load balancers check with HEAD


class StaticFileHandler(tornado.web.StaticFileHandler):
    """Tornado's, refusing a path no file can have (NUL) with 400 rather than failing on it."""

    def parse_url_path(self, url_path: str) -> str:
        if "\x00" in url_path:
            raise tornado.web.HTTPError(400)
        return super().parse_url_path(url_path)


class VendorFileHandler(StaticFileHandler):
    """The npm-installed livekit-client, served from this origin (no CDN)."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")


def routes(
    event_log: EventLog,
    broadcaster: Broadcaster,
    event_handlers: EventHandlerRunner | None,
    directory: RoomDirectory,
    worker: int | None = None,
    figures: WorkerFigures | None = None,
) -> list[Route]:
    """The demo page, health, and the npm packages the page loads from this origin."""
    vendor = PROJECT_DIR / "node_modules"
    jinja = Environment(loader=FileSystemLoader(PROJECT_DIR / "templates"), autoescape=select_autoescape())
    health = {
        "event_log": event_log,
        "broadcaster": broadcaster,
        "event_handlers": event_handlers,
        "directory": directory,
        "worker": worker,
        "figures": figures,
    }
    return [
        (r"/", IndexHandler, {"jinja": jinja}),
        (r"/healthz", HealthHandler, health),
        (
            r"/vendor/livekit-client/(.*)",
            VendorFileHandler,
            {"path": str(vendor / "livekit-client" / "dist")},
        ),
        # the demo page's invite QR code
        (
            r"/vendor/qrcode-generator/(.*)",
            VendorFileHandler,
            {"path": str(vendor / "qrcode-generator" / "dist")},
        ),
    ]
