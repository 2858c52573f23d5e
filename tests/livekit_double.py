"""Test double: a LiveKit stand-in that hangs or answers garbage (the fault being
injected; nothing else here pretends to be LiveKit). Each RoomService method answers
as its `faults` entry says, or as `fault` says for the others:

- "ok": 200 with an empty protobuf message (no rooms, no participants);
- "hang": reads the request and never answers (until the test stops it);
- "html": 200 with an HTML page; "garbage": 200 with bytes that are no protobuf;
- "list": 400 with a JSON list where Twirp has an object.
"""

from __future__ import annotations

import http.server
import threading
import time
from typing import Any

from dev.livekit_server import free_port


class LiveKitDouble:
    def __init__(self) -> None:
        self.fault = "ok"
        self.faults: dict[str, str] = {}
        self.rooms = b""  # the ListRooms answer in "ok" (a serialized ListRoomsResponse)
        self.port = free_port()
        self.requests = 0
        self._stopped = threading.Event()
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                double.requests += 1
                method = self.path.rsplit("/", 1)[-1]
                fault = double.faults.get(method, double.fault)
                while fault == "hang" and not double._stopped.is_set():
                    time.sleep(0.05)
                    fault = double.faults.get(method, double.fault)
                body, status, kind = {
                    "ok": (double.rooms if method == "ListRooms" else b"", 200, "application/protobuf"),
                    "hang": (b"", 200, "application/protobuf"),
                    "html": (b"<html><body>502 Bad Gateway</body></html>", 200, "text/html"),
                    "garbage": (b"\xff\xff\xff\xff", 200, "application/protobuf"),
                    "list": (b'["not", "an", "object"]', 400, "application/json"),
                }[fault]
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the caller gave up meanwhile

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 512
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveKitDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self.server.shutdown()
        self.server.server_close()
