"""Real processes for the tests: this server in a subprocess, on free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dev.livekit_server import free_port
from ground.config import PROJECT_DIR


class ServerProcess:
    """`python server.py` with its own port and event store; stopped by stop() or kill()."""

    def __init__(self, log_dir: Path, **env: str) -> None:
        self.port_chosen_here = "SERVER_PORT" not in env
        self.port = int(env.pop("SERVER_PORT", 0)) or free_port()
        self.env = {
            **os.environ,
            "SERVER_PORT": str(self.port),
            "SERVER_HOST": "127.0.0.1",
            "EVENTS_DB": str(log_dir / "events.sqlite3"),
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "DEBUG",  # the tests read what each request logged
            **env,
        }
        self.log_path = log_dir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.preexec_fn: Callable[[], None] | None = None  # run in the child before the server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerProcess:
        try:
            return self._start_once(timeout)
        except RuntimeError as error:
            # Another process took the free port in between: once more on a new one.
            if not (self.port_chosen_here and "Address already in use" in str(error)):
                raise
            self.port = free_port()
            self.env["SERVER_PORT"] = str(self.port)
            return self._start_once(timeout)

    def _start_once(self, timeout: float) -> ServerProcess:
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, str(PROJECT_DIR / "server.py")],
                cwd=self.log_path.parent,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=self.preexec_fn,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; its log:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def history(self, since: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        query = f"?limit={limit}" + (f"&since={since}" if since else "")
        with urllib.request.urlopen(self.url + "/events/history" + query, timeout=5) as response:
            return list(json.loads(response.read()))


class EventSocket:
    """A WS /events client on a thread of its own, collecting every frame it receives."""

    def __init__(self, url: str) -> None:
        import asyncio
        import threading

        self.url = url
        self.frames: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self._loop = asyncio.new_event_loop()
        self._connected = threading.Event()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._run(),), daemon=True
        )
        self._thread.start()
        if not self._connected.wait(10):
            raise RuntimeError(f"could not connect to {url}")

    async def _run(self) -> None:
        from tornado.websocket import websocket_connect

        self._client = await websocket_connect(self.url)
        self._connected.set()
        while (message := await self._client.read_message()) is not None:
            self.frames.append(json.loads(message))
        self.close_code = self._client.close_code

    @property
    def events(self) -> list[dict[str, Any]]:
        return [frame for frame in self.frames if "cursor" in frame]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.events

    def wait_for_notice(self, code: str, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(frame.get("notice") == code for frame in self.frames):
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._client.close)
        self._thread.join(10)
        self._loop.close()


class Receiver:
    """An HTTP endpoint on a free loopback port, on a thread: it records every POST and
    answers with the next status of `statuses` (then `then`), like a service events are
    forwarded to."""

    def __init__(self, statuses: list[int] | None = None, then: int = 200) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.statuses = list(statuses or [])
        self.then = then
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.then
                    receiver.received.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def delivered(self) -> list[str]:
        """Event ids answered 2xx, in arrival order."""
        with self._lock:
            return [headers["X-Event-Id"] for headers, _, status in self.received if 200 <= status < 300]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.delivered()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.delivered()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
